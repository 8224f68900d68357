//! One function per subcommand: load inputs, call the stages, print.

use std::io::Write;

use crate::cli::args::{
    BuildArgs, Cli, Command, PlanArgs, PoolCommand, RenderArgs, ReplicateArgs, TemplatesCommand,
    UploadArgs, ValidateArgs,
};
use crate::cli::error::{AppError, exit};
use crate::packer::Packer;
use crate::pipeline::{self, BuildOptions, BuildStatus};
use crate::render::templates::{self, TemplateSet};
use crate::spec::manifest::Manifest;
use crate::spec::plan::Plan;

pub fn run(cli: Cli) -> Result<i32, AppError> {
    crate::util::term::configure(cli.color, cli.quiet);
    let Some(command) = cli.command else {
        // `--version` (clap prints help for a bare `imgforge`).
        return version();
    };
    match command {
        Command::Init(args) => init(args),
        Command::Catalog { json } => catalog(json),
        Command::Clean {
            dir,
            keep,
            older_than,
            dry_run,
            json,
        } => clean(&dir, keep, older_than, dry_run, json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "imgforge", &mut out);
            print_stdout(&String::from_utf8_lossy(&out))?;
            Ok(exit::OK)
        }
        Command::Man { out } => man(out.as_deref()),
        Command::Plan(args) => plan(args),
        Command::Render(args) => render(args),
        Command::Build(args) => build(args),
        Command::Templates(cmd) => templates(cmd),
        Command::Pool(cmd) => pool(cmd),
        Command::Skus {
            json,
            online: true,
            credentials,
            account_url,
        } => skus_online(json, credentials.as_deref(), account_url.as_deref()),
        Command::Skus { json, .. } => skus(json),
        Command::Status { dir, json } => status(&dir, json),
        Command::Replicate(args) => replicate(args),
        Command::Upload(args) => upload(args),
        Command::Publish(args) => publish(args),
        Command::Validate(args) => validate(args),
        Command::BootCheck(args) => boot_check(args),
    }
}

/// Set when a failing command already printed its JSON document (a build's
/// record): the error then goes to stderr only, so stdout stays one document.
pub static JSON_SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn print_stdout(text: &str) -> Result<(), AppError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        // A closed pipe (`imgforge plan --json | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(AppError::Io {
            context: "stdout".into(),
            source,
        }),
        Ok(()) => Ok(()),
    }
}

/// The version of every `--json` document's layout; a document that has its
/// own `schema` (build.json) keeps it.
pub const JSON_SCHEMA: u32 = 1;

fn to_json<T: serde::Serialize>(value: &T) -> String {
    with_schema(&serde_json::to_string_pretty(value).expect("serializable"))
}

/// `{"schema": 1, …}`: the field goes first, the rest keeps its order.
fn with_schema(pretty: &str) -> String {
    let is_object_without = serde_json::from_str::<serde_json::Value>(pretty)
        .ok()
        .and_then(|v| {
            v.as_object()
                .map(|o| !o.contains_key("schema") && !o.is_empty())
        })
        .unwrap_or(false);
    let text = match pretty.strip_prefix("{\n") {
        Some(rest) if is_object_without => {
            format!("{{\n  \"schema\": {JSON_SCHEMA},\n{rest}")
        }
        _ => pretty.to_string(),
    };
    crate::util::redact::redact(&text) + "\n"
}

fn plan(args: PlanArgs) -> Result<i32, AppError> {
    let manifest = Manifest::load(&args.manifest)?;
    let plan = Plan::new(&manifest);
    if args.json {
        print_stdout(&to_json(&plan))?;
    } else {
        print_stdout(&plan.to_text())?;
    }
    Ok(exit::OK)
}

fn render(args: RenderArgs) -> Result<i32, AppError> {
    let manifest = Manifest::load(&args.manifest)?;
    let set = TemplateSet::with_overrides(args.templates.templates.as_deref())?;
    let plan = args.templates.plan(&manifest);
    for w in &plan.warnings {
        crate::util::term::warning(w);
    }
    let rendered = crate::render::render_to_dir(&plan, &manifest, &set, &args.out, args.force)?;
    if args.json {
        print_stdout(&to_json(&rendered))?;
    } else {
        let mut text = String::new();
        for f in &rendered.files {
            text.push_str(&format!("{}\n", rendered.dir.join(&f.path).display()));
        }
        print_stdout(&text)?;
        crate::util::term::status(
            "Rendered",
            &format!(
                "{} files into {}",
                rendered.files.len(),
                rendered.dir.display()
            ),
        );
    }
    Ok(exit::OK)
}

fn build(args: BuildArgs) -> Result<i32, AppError> {
    let manifest = Manifest::load(&args.manifest)?;
    let set = TemplateSet::with_overrides(args.templates.templates.as_deref())?;
    let plan = args.templates.plan(&manifest);
    if args.json {
        for w in &plan.warnings {
            crate::util::term::warning(w);
        }
    } else {
        eprint!("{}", plan.to_text());
    }
    if let crate::spec::catalog::AgentStatus::Retired { date, source } = plan.node_agent_status
        && !args.dry_run
        && !args.allow_retired
    {
        return Err(AppError::refused(
            format!(
                "{}: node agent `{}` is retired for new pools since {date} ({source}); Azure Batch would refuse a new pool with this image",
                manifest.path.display(),
                plan.node_agent,
            ),
            format!(
                "for a pool created today build {}; pass --allow-retired to build it anyway (existing pools can still scale)",
                crate::spec::catalog::CURRENT_LINUX
            ),
        ));
    }
    let packer = Packer::locate(args.packer.as_deref())?;
    let dir = match (&args.resume, &args.out) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => pipeline::default_build_dir(&plan.image, std::time::SystemTime::now()),
    };
    let result = pipeline::run(
        &manifest,
        &plan,
        BuildOptions {
            dir: dir.clone(),
            force: args.force,
            dry_run: args.dry_run,
            resume: args.resume.is_some(),
            templates: &set,
            packer,
            verbose: args.verbose,
            replicate: !args.no_replicate,
            validate: !args.no_validate,
            boot_check: !args.no_boot_check,
            blob_endpoint: crate::azure::storage::endpoint_template(args.blob_endpoint.as_deref())?,
            parallel: args.parallel,
            max_requests: args.max_requests,
            verify: args.verify,
            show_progress: !args.json,
            publish: !args.no_publish,
            publish_timeout: std::time::Duration::from_secs(args.publish_timeout),
        },
    );
    match result {
        Ok(record) => {
            if args.json {
                print_stdout(&to_json(&record))?;
            } else {
                if let Some(path) = &record.snippet
                    && let Ok(text) = std::fs::read_to_string(path)
                {
                    print_stdout(&text)?;
                }
                let what = match record.status {
                    BuildStatus::Validated => {
                        "dry run: rendered and validated; nothing was created in Azure".to_string()
                    }
                    _ => format!(
                        "build of {} succeeded in {:.1} s",
                        record.image, record.duration_s
                    ),
                };
                crate::util::term::status(
                    "Finished",
                    &format!(
                        "{what}\n{:>12} {}/{}",
                        "Record",
                        record.build_dir,
                        pipeline::RECORD_FILE
                    ),
                );
            }
            Ok(exit::OK)
        }
        Err(e) => {
            if args.json {
                // Pipelines get the record even on failure; it was written before the error.
                if let Ok(text) = std::fs::read_to_string(dir.join(pipeline::RECORD_FILE)) {
                    print_stdout(&text)?;
                    JSON_SENT.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Err(e.into())
        }
    }
}

fn status(dir: &std::path::Path, json: bool) -> Result<i32, AppError> {
    let record = pipeline::BuildRecord::load(dir)?;
    if json {
        print_stdout(&to_json(&record))?;
    } else {
        print_stdout(&pipeline::status_text(&record))?;
    }
    Ok(match record.status {
        BuildStatus::Succeeded | BuildStatus::Validated => exit::OK,
        BuildStatus::Cancelled => exit::CANCELLED,
        BuildStatus::Running | BuildStatus::Failed => exit::FAILED,
    })
}

fn templates(cmd: TemplatesCommand) -> Result<i32, AppError> {
    match cmd {
        TemplatesCommand::Export { dir, force } => {
            let written = templates::export(&dir, force)?;
            crate::util::term::status(
                "Exported",
                &format!(
                    "{} templates to {}; edit any of them and pass --templates {}",
                    written.len(),
                    dir.display(),
                    dir.display()
                ),
            );
        }
        TemplatesCommand::List => {
            let mut text = String::new();
            for (name, _) in templates::BUILTIN {
                text.push_str(name);
                text.push('\n');
            }
            print_stdout(&text)?;
        }
    }
    Ok(exit::OK)
}

fn pool(cmd: PoolCommand) -> Result<i32, AppError> {
    match cmd {
        PoolCommand::Snippet {
            manifest,
            from,
            out,
        } => {
            let manifest = Manifest::load(&manifest)?;
            let plan = Plan::new(&manifest);
            let record = pipeline::BuildRecord::read(&from)?;
            let refused = |why: &str, hint: &str| pipeline::BuildError::Record {
                path: from.clone(),
                why: why.to_string(),
                hint: hint.to_string(),
            };
            if record.status != BuildStatus::Succeeded {
                return Err(refused(
                    &format!(
                        "the build did not succeed (status {}{}): its image is not one to give a pool",
                        format!("{:?}", record.status).to_lowercase(),
                        record.failed_stage.map(|s| format!(", at stage `{}`", s.name())).unwrap_or_default()
                    ),
                    "finish it (`imgforge build MANIFEST --resume DIR`), or pass a succeeded build's record",
                )
                .into());
            }
            let image = record
                .pool_image()
                .map_err(|no| refused(no.message(), no.hint()))?;
            let text = crate::pool::snippet(&plan, &image);
            if let Some(out) = out {
                crate::util::fsutil::write_atomic(&out, text.as_bytes()).map_err(|source| {
                    AppError::Io {
                        context: out.display().to_string(),
                        source,
                    }
                })?;
            }
            print_stdout(&text)?;
            Ok(exit::OK)
        }
        PoolCommand::Check {
            config,
            manifest,
            online,
            credentials,
            region,
            subscription,
            account_url,
            json,
            junit,
        } => {
            let plan = match &manifest {
                Some(m) => Some(Plan::new(&Manifest::load(m)?)),
                None => None,
            };
            let config = crate::pool::PoolConfig::load_pool(&config)?;
            let credentials = credentials
                .as_deref()
                .map(crate::pool::credentials::ShipyardCredentials::load)
                .transpose()?;
            let mut report = crate::pool::check(&config, plan.as_ref(), online);
            if online {
                let online = crate::pool::online::Online {
                    credentials: credentials.as_ref(),
                    region,
                    subscription,
                    account_url,
                };
                let findings = runtime()?.block_on(crate::pool::online::check(&config, &online));
                report.findings.extend(findings);
                report = crate::report::Report::new(report.subject, report.findings);
            }
            emit_report(&report, json, junit.as_deref(), "imgforge pool check", None)
        }
    }
}

/// Prints a check report and turns it into the exit status.
fn emit_report(
    report: &crate::report::Report,
    json: bool,
    junit: Option<&std::path::Path>,
    suite: &str,
    json_doc: Option<&dyn erased_json::Json>,
) -> Result<i32, AppError> {
    if let Some(path) = junit {
        let junit = crate::util::redact::redact(&report.to_junit(suite));
        crate::util::fsutil::write_atomic(path, junit.as_bytes()).map_err(|source| {
            AppError::Io {
                context: path.display().to_string(),
                source,
            }
        })?;
    }
    if let Some(doc) = json_doc {
        print_stdout(&with_schema(&doc.to_json_pretty()))?;
    } else if json {
        print_stdout(&to_json(report))?;
    } else {
        use std::io::IsTerminal;
        let color = crate::util::term::color_enabled(std::io::stdout().is_terminal());
        print_stdout(&crate::util::redact::redact(&report.to_text(color)))?;
    }
    Ok(if report.failed() {
        exit::FAILED
    } else {
        exit::OK
    })
}

fn skus(json: bool) -> Result<i32, AppError> {
    #[derive(serde::Serialize)]
    struct Sku {
        distro: &'static str,
        os: crate::spec::catalog::Os,
        node_agent: &'static str,
        vms_per_vhd: u32,
        lifecycle: crate::spec::catalog::AgentStatus,
        verified: bool,
    }
    let today = crate::spec::plan::today();
    let rows: Vec<Sku> = crate::spec::catalog::DISTROS
        .iter()
        .map(|d| Sku {
            distro: d.key,
            os: d.os,
            node_agent: d.node_agent,
            vms_per_vhd: d.os.vms_per_vhd(),
            lifecycle: d.agent_status(&today),
            verified: d.node_agent_verified,
        })
        .collect();
    if json {
        print_stdout(&to_json(&serde_json::json!({ "skus": rows })))?;
    } else {
        let mut text = format!(
            "{:<14} {:<26} {:<12} {}\n",
            "DISTRO", "NODE AGENT SKU ID", "VMS PER VHD", "NEW POOLS"
        );
        for r in &rows {
            let state = match r.lifecycle {
                crate::spec::catalog::AgentStatus::Supported if !r.verified => {
                    "unverified: check your Batch account's supported images".to_string()
                }
                crate::spec::catalog::AgentStatus::Supported => "supported".to_string(),
                crate::spec::catalog::AgentStatus::Ends { date, .. } => format!("until {date}"),
                crate::spec::catalog::AgentStatus::Retired { date, .. } => {
                    format!("retired {date}")
                }
            };
            text.push_str(&format!(
                "{:<14} {:<26} {:<12} {state}\n",
                r.distro, r.node_agent, r.vms_per_vhd
            ));
        }
        print_stdout(&text)?;
    }
    Ok(exit::OK)
}

/// `skus --online`: the Batch account's own list, node agent by node agent,
/// held against imgforge's catalog.
fn skus_online(
    json: bool,
    credentials: Option<&std::path::Path>,
    account_url: Option<&str>,
) -> Result<i32, AppError> {
    let credentials = credentials
        .map(crate::pool::credentials::ShipyardCredentials::load)
        .transpose()?;
    let access = crate::pool::online::batch_access(credentials.as_ref(), account_url)
        .map_err(|(message, hint)| AppError::refused(message, hint))?;
    let images = runtime()?.block_on(crate::azure::batch::supported_images(
        &access.url,
        &access.principal,
        &access.resource,
    ))?;
    let today = crate::spec::plan::today();
    let agents = crate::azure::batch::agents(&images, &today);
    #[derive(serde::Serialize)]
    struct Agent<'a> {
        #[serde(flatten)]
        support: &'a crate::azure::batch::AgentSupport,
        /// The catalog's distros with this node agent.
        distros: Vec<&'static str>,
    }
    #[derive(serde::Serialize)]
    struct NotListed {
        distro: &'static str,
        node_agent: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        account_url: &'a str,
        today: &'a str,
        node_agents: Vec<Agent<'a>>,
        /// Catalog distros whose node agent this account does not list.
        not_listed: Vec<NotListed>,
        images: &'a [crate::azure::batch::SupportedImage],
    }
    let doc = Doc {
        account_url: &access.url,
        today: &today,
        node_agents: agents
            .iter()
            .map(|a| Agent {
                support: a,
                distros: crate::spec::catalog::DISTROS
                    .iter()
                    .filter(|d| d.node_agent.eq_ignore_ascii_case(&a.node_agent))
                    .map(|d| d.key)
                    .collect(),
            })
            .collect(),
        not_listed: crate::spec::catalog::DISTROS
            .iter()
            .filter(|d| crate::azure::batch::find(&agents, d.node_agent).is_none())
            .map(|d| NotListed {
                distro: d.key,
                node_agent: d.node_agent,
            })
            .collect(),
        images: &images,
    };
    if json {
        print_stdout(&to_json(&doc))?;
        return Ok(exit::OK);
    }
    let mut text = format!(
        "Batch account {} (from {}): {} image(s), {} node agent(s)\n\n{:<28} {:<8} {:<7} {:<22} {}\n",
        access.url,
        access.url_from,
        images.len(),
        agents.len(),
        "NODE AGENT SKU ID",
        "OS",
        "IMAGES",
        "NEW POOLS",
        "IMGFORGE DISTRO"
    );
    for a in &doc.node_agents {
        let state = match (a.support.status, &a.support.end_of_life) {
            ("retired", Some(d)) => format!("retired {d}"),
            ("ends", Some(d)) => format!("until {d}"),
            _ => "supported".to_string(),
        };
        text.push_str(&format!(
            "{:<28} {:<8} {:<7} {:<22} {}\n",
            a.support.node_agent,
            a.support.os_type,
            a.support.images,
            state,
            if a.distros.is_empty() {
                "-".to_string()
            } else {
                a.distros.join(", ")
            }
        ));
    }
    text.push_str(&format!(
        "\n{:<28} {:<52} {:<11} {}\n",
        "NODE AGENT SKU ID", "IMAGE (publisher/offer/sku)", "VERIFIED", "END OF LIFE"
    ));
    for i in &images {
        text.push_str(&format!(
            "{:<28} {:<52} {:<11} {}\n",
            i.node_agent,
            format!("{}/{}/{}", i.publisher, i.offer, i.sku),
            i.verification,
            i.end_of_life.as_deref().unwrap_or("-")
        ));
    }
    if !doc.not_listed.is_empty() {
        let names: Vec<String> = doc
            .not_listed
            .iter()
            .map(|n| format!("{} ({})", n.node_agent, n.distro))
            .collect();
        text.push_str(&format!(
            "\nnot listed by this account (Batch creates no pool with them here): {}\n",
            names.join(", ")
        ));
    }
    print_stdout(&crate::util::redact::redact(&text))?;
    Ok(exit::OK)
}

fn init(args: crate::cli::args::InitArgs) -> Result<i32, AppError> {
    let text = crate::cli::init::manifest_text(&args, &args.file).map_err(|e| match e {
        crate::cli::init::InitError::Invalid(m) => AppError::Manifest(*m),
        other => AppError::refused_by(&other),
    })?;
    if args.file == std::path::Path::new("-") {
        print_stdout(&text)?;
        return Ok(exit::OK);
    }
    if args.file.exists() && !args.force {
        return Err(AppError::refused(
            format!("{}: already exists", args.file.display()),
            "pass --force to replace it, or name another file",
        ));
    }
    crate::util::fsutil::write_atomic(&args.file, text.as_bytes()).map_err(|source| {
        AppError::Io {
            context: args.file.display().to_string(),
            source,
        }
    })?;
    crate::util::term::status(
        "Wrote",
        &format!(
            "{} (next: imgforge plan {})",
            args.file.display(),
            args.file.display()
        ),
    );
    Ok(exit::OK)
}

fn catalog(json: bool) -> Result<i32, AppError> {
    use crate::spec::catalog::{AgentStatus, DISTROS, FEATURES};
    let today = crate::spec::plan::today();
    #[derive(serde::Serialize)]
    struct DistroRow {
        key: &'static str,
        os: crate::spec::catalog::Os,
        base_image: String,
        node_agent: &'static str,
        new_pools: &'static str,
        until: Option<&'static str>,
        local_builder: bool,
    }
    #[derive(serde::Serialize)]
    struct FeatureRow {
        feature: String,
        script: &'static str,
        inbound_tcp: &'static [u16],
    }
    let distros: Vec<DistroRow> = DISTROS
        .iter()
        .map(|d| {
            let (new_pools, until) = match d.agent_status(&today) {
                AgentStatus::Supported => ("supported", None),
                AgentStatus::Ends { date, .. } => ("ends", Some(date)),
                AgentStatus::Retired { date, .. } => ("retired", Some(date)),
            };
            DistroRow {
                key: d.key,
                os: d.os,
                base_image: format!(
                    "{}:{}:{}",
                    d.base_image.publisher, d.base_image.offer, d.base_image.sku
                ),
                node_agent: d.node_agent,
                new_pools,
                until,
                local_builder: d.local.is_some(),
            }
        })
        .collect();
    let features: Vec<FeatureRow> = FEATURES
        .iter()
        .map(|f| FeatureRow {
            feature: serde_json::to_value(f.id)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            script: f
                .script
                .trim_start_matches("scripts/")
                .trim_end_matches(".tera"),
            inbound_tcp: f.inbound_tcp,
        })
        .collect();
    if json {
        print_stdout(&to_json(
            &serde_json::json!({"distros": distros, "features": features}),
        ))?;
        return Ok(exit::OK);
    }
    let mut t = format!(
        "{:<14} {:<8} {:<26} {:<22} {:<6} {}\n",
        "DISTRO", "OS", "NODE AGENT SKU ID", "NEW POOLS", "LOCAL", "BASE IMAGE (azure-arm)"
    );
    for d in &distros {
        let state = match (d.new_pools, d.until) {
            ("retired", Some(u)) => format!("retired {u}"),
            ("ends", Some(u)) => format!("until {u}"),
            _ => "supported".into(),
        };
        t.push_str(&format!(
            "{:<14} {:<8} {:<26} {:<22} {:<6} {}\n",
            d.key,
            serde_json::to_value(d.os)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            d.node_agent,
            state,
            if d.local_builder { "yes" } else { "-" },
            d.base_image
        ));
    }
    t.push_str(&format!(
        "\n{:<18} {:<16} {}\n",
        "FEATURE", "SCRIPT", "INBOUND TCP"
    ));
    for f in &features {
        let ports: Vec<String> = f.inbound_tcp.iter().map(u16::to_string).collect();
        t.push_str(&format!(
            "{:<18} {:<16} {}\n",
            f.feature,
            f.script,
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(", ")
            }
        ));
    }
    t.push_str("\nManifest keys: [features] docker, gpu, rdma (nd | sriov), nfs, glusterfs (client | server); `imgforge init` writes a starting point.\n");
    print_stdout(&t)?;
    Ok(exit::OK)
}

fn clean(
    dir: &std::path::Path,
    keep: Option<usize>,
    older_than: Option<std::time::Duration>,
    dry_run: bool,
    json: bool,
) -> Result<i32, AppError> {
    use crate::pipeline::clean::{remove, scan, select};
    let builds = scan(dir).map_err(|e| AppError::refused_by(&e))?;
    let decisions = select(
        builds,
        keep,
        older_than,
        std::time::SystemTime::now(),
        &crate::pipeline::clean::has_mount_under,
    );
    let mut freed = 0u64;
    let mut removed = 0usize;
    for d in decisions.iter().filter(|d| d.remove) {
        if !dry_run {
            remove(d).map_err(|e| AppError::Io {
                context: d.build.path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        freed += d.build.bytes;
        removed += 1;
    }
    if json {
        print_stdout(&to_json(&serde_json::json!({
            "dir": dir,
            "dry_run": dry_run,
            "removed": removed,
            "freed_bytes": freed,
            "builds": decisions,
        })))?;
        return Ok(exit::OK);
    }
    let mut t = String::new();
    for d in &decisions {
        t.push_str(&format!(
            "{:<8} {:>10}  {}  ({}, {}; {})\n",
            if d.remove {
                if dry_run { "would rm" } else { "removed" }
            } else {
                "kept"
            },
            indicatif::HumanBytes(d.build.bytes).to_string(),
            d.build.path.display(),
            d.build.image,
            d.build.status,
            d.why
        ));
    }
    if keep.is_none() && older_than.is_none() {
        t.push_str("nothing selected: pass --keep N and/or --older-than AGE\n");
    }
    print_stdout(&t)?;
    crate::util::term::status(
        if dry_run { "Would free" } else { "Freed" },
        &format!(
            "{} in {removed} build director{}",
            indicatif::HumanBytes(freed),
            if removed == 1 { "y" } else { "ies" }
        ),
    );
    Ok(exit::OK)
}

/// `imgforge --version`: this build, and the Packer a build would use.
fn version() -> Result<i32, AppError> {
    let packer = match Packer::locate(None) {
        Ok(p) => format!("packer {} ({})", p.version, p.path.display()),
        Err(e) => format!(
            "packer: not usable: {}",
            e.to_string().lines().next().unwrap_or("")
        ),
    };
    print_stdout(&format!(
        "imgforge {} (git {})\n{packer}\n",
        env!("CARGO_PKG_VERSION"),
        env!("IMGFORGE_GIT_HASH")
    ))?;
    Ok(exit::OK)
}

/// `imgforge man`: roff pages from the same definitions as `--help`.
fn man(out: Option<&std::path::Path>) -> Result<i32, AppError> {
    use clap::CommandFactory;
    let render = |cmd: clap::Command| -> Vec<u8> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .expect("rendering into memory");
        buf
    };
    let top = Cli::command();
    let Some(dir) = out else {
        print_stdout(&String::from_utf8_lossy(&render(top)))?;
        return Ok(exit::OK);
    };
    let io = |source| AppError::Io {
        context: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // imgforge.1, imgforge-build.1, imgforge-pool-check.1, …
    let mut pages: Vec<(String, clap::Command)> = Vec::new();
    fn walk(prefix: &str, cmd: &clap::Command, pages: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
            let name = format!("{prefix}-{}", sub.get_name());
            // clap names are &'static str; a few page names for a process that ends now.
            let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
            pages.push((name.clone(), sub.clone().name(leaked)));
            walk(&name, sub, pages);
        }
    }
    let mut built = top.clone();
    built.build();
    walk("imgforge", &built, &mut pages);
    pages.insert(0, ("imgforge".to_string(), top));
    for (name, cmd) in &pages {
        let path = dir.join(format!("{name}.1"));
        crate::util::fsutil::write_atomic(&path, &render(cmd.clone())).map_err(|source| {
            AppError::Io {
                context: path.display().to_string(),
                source,
            }
        })?;
    }
    crate::util::term::status(
        "Wrote",
        &format!("{} manual pages into {}", pages.len(), dir.display()),
    );
    Ok(exit::OK)
}

fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    crate::util::runtime().map_err(|source| AppError::Io {
        context: "starting the async runtime".into(),
        source,
    })
}

fn print_replication(
    report: &crate::replicate::Replication,
    json: bool,
    plan: crate::replicate::CopyPlan,
    validation: Option<Vec<crate::replicate::CopyCheck>>,
) -> Result<(), AppError> {
    if json {
        let doc = crate::replicate::ReplicationDoc {
            plan,
            result: report,
            validation,
        };
        print_stdout(&to_json(&doc))?;
        return Ok(());
    }
    let mut text = String::new();
    for c in &report.copies {
        text.push_str(&c.url);
        text.push('\n');
    }
    print_stdout(&text)?;
    let moved = report.bytes_downloaded + report.bytes_uploaded;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    crate::util::term::status(
        "Replicated",
        &format!(
            "{} verified cop{} of {} ({:.1} MiB valid of {:.1} MiB) in {:.1} s; {:.1} MiB through imgforge, {:.1} MiB/s, {} retries",
            report.copies.len(),
            if report.copies.len() == 1 { "y" } else { "ies" },
            report.source,
            mib(report.valid_bytes),
            mib(report.source_length),
            report.duration_s,
            mib(moved),
            mib(moved) / report.duration_s.max(0.001),
            report.retries
        ),
    );
    Ok(())
}

fn replicate(args: ReplicateArgs) -> Result<i32, AppError> {
    use crate::azure::storage::BlobRef;
    use crate::replicate::{self, Source};
    let manifest = args.manifest.as_deref().map(Manifest::load).transpose()?;
    let plan = manifest.as_ref().map(Plan::new);
    let source = BlobRef::parse(&args.source).map_err(crate::replicate::ReplicateError::from)?;
    let candidates: Vec<String> = if !args.to.is_empty() {
        args.to.clone()
    } else {
        manifest
            .as_ref()
            .map(|m| m.raw.replicate.storage_accounts.clone())
            .unwrap_or_default()
    };
    let (needed, max_nodes, per_vhd) = match &plan {
        Some(p) => (p.pool.vhd_copies, p.pool.max_nodes, p.pool.vms_per_vhd),
        None => ((candidates.len() as u32).max(1), 0, 40),
    };
    let accounts = replicate::choose_accounts(needed, max_nodes, per_vhd, &candidates)?;
    let container = args
        .container
        .clone()
        .or_else(|| {
            manifest
                .as_ref()
                .and_then(|m| m.raw.replicate.container.clone())
        })
        .unwrap_or_else(|| "images".into());
    let name = args.name.clone().unwrap_or_else(|| {
        source
            .blob
            .rsplit('/')
            .next()
            .unwrap_or(&source.blob)
            .to_string()
    });
    let template = crate::azure::storage::endpoint_template(args.storage.blob_endpoint.as_deref())?;
    let destinations: Vec<BlobRef> = accounts
        .iter()
        .map(|a| BlobRef::at(&template, a, &container, &name))
        .collect();
    let copy_plan = replicate::CopyPlan {
        max_nodes,
        vms_per_vhd: per_vhd,
        copies_needed: needed,
        accounts: accounts.clone(),
        container: container.clone(),
        name: name.clone(),
    };
    // A source with its own SAS needs no credentials for its account.
    let mut involved = accounts.clone();
    if source.sas.is_none() && !involved.contains(&source.account) {
        involved.push(source.account.clone());
    }
    let rt = runtime()?;
    let region = args.storage.region.clone().or_else(|| {
        manifest
            .as_ref()
            .and_then(|m| m.raw.replicate.region.clone())
    });
    check_region(&rt, &accounts, region.as_deref(), args.storage.json)?;
    let (cancel, _signals) = stop_on_interrupt();
    let report = rt.block_on(replicate::copy_to(
        &involved,
        Source::Blob(source),
        destinations,
        replicate::Options {
            parallel: args.storage.parallel,
            max_requests: args.storage.max_requests,
            show_progress: !args.storage.json,
            server_copy: !args.no_server_copy,
            cancel: cancel.clone(),
            verify: args.storage.verify,
        },
    ))?;
    // With a manifest, each copy is also checked remotely, as `build` does.
    let checks = match (&plan, args.no_validate) {
        (Some(plan), false) => {
            let results = rt.block_on(replicate::validate_copies(&report.copies, plan, &cancel))?;
            // Copies are verified; only their validation was cut short.
            Some(results.ok_or(replicate::ReplicateError::Cancelled)?)
        }
        _ => None,
    };
    let validation = checks
        .as_ref()
        .map(|v| v.iter().map(replicate::CopyCheck::of).collect());
    print_replication(&report, args.storage.json, copy_plan, validation)?;
    let failed: Vec<&crate::validate::Validation> = checks
        .iter()
        .flatten()
        .filter(|v| v.report.failed())
        .collect();
    if let Some(checks) = &checks
        && !args.storage.json
    {
        crate::util::term::status(
            "Checked",
            &format!(
                "{} cop{}: {} failed validation",
                checks.len(),
                if checks.len() == 1 { "y" } else { "ies" },
                failed.len()
            ),
        );
    }
    for v in &failed {
        crate::util::term::error(&format!(
            "{} failed validation: {}",
            v.report.subject,
            v.report
                .findings
                .iter()
                .filter(|f| f.status == crate::report::Status::Fail)
                .map(|f| format!("{} ({})", f.id, f.message))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(if failed.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// With a region, the destination accounts must be there before a byte moves.
fn check_region(
    rt: &tokio::runtime::Runtime,
    accounts: &[String],
    region: Option<&str>,
    quiet: bool,
) -> Result<(), AppError> {
    if let Some(region) = region {
        let checked = rt.block_on(crate::replicate::check_region(accounts, region))?;
        if !quiet {
            crate::util::term::status("Checked", &checked);
        }
    }
    Ok(())
}

/// Ctrl-C stops replication after the chunks in flight (exit 130); a rerun
/// finds the copies unverified and finishes them.
fn stop_on_interrupt() -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    crate::util::signals::SignalWatch,
) {
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = crate::util::signals::SignalWatch::start(
        cancel.clone(),
        Default::default(),
        "interrupted: stopping after the chunks in flight; rerun the same command to finish",
    );
    (cancel, watch)
}

fn upload(args: UploadArgs) -> Result<i32, AppError> {
    use crate::azure::storage::BlobRef;
    use crate::replicate::{self, Source};
    let source = Source::open_file(&args.file)?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image.vhd".into())
    });
    let template = crate::azure::storage::endpoint_template(args.storage.blob_endpoint.as_deref())?;
    let dest = BlobRef::at(&template, &args.to, &args.container, &name);
    let rt = runtime()?;
    check_region(
        &rt,
        std::slice::from_ref(&args.to),
        args.storage.region.as_deref(),
        args.storage.json,
    )?;
    let (cancel, _signals) = stop_on_interrupt();
    let report = rt.block_on(replicate::copy_to(
        std::slice::from_ref(&args.to),
        source,
        vec![dest],
        replicate::Options {
            parallel: args.storage.parallel,
            max_requests: args.storage.max_requests,
            show_progress: !args.storage.json,
            server_copy: false,
            cancel,
            verify: args.storage.verify,
        },
    ))?;
    let copy_plan = replicate::CopyPlan {
        max_nodes: 0,
        vms_per_vhd: crate::spec::catalog::Os::Linux.vms_per_vhd(),
        copies_needed: 1,
        accounts: vec![args.to.clone()],
        container: args.container.clone(),
        name,
    };
    print_replication(&report, args.storage.json, copy_plan, None)?;
    Ok(exit::OK)
}

fn publish(args: crate::cli::args::PublishArgs) -> Result<i32, AppError> {
    use crate::publish::{Options, Source};
    let manifest = Manifest::load(&args.manifest)?;
    let plan = Plan::new(&manifest);
    let Some(publish) = plan.publish.as_ref() else {
        return Err(AppError::refused(
            format!(
                "{}: target = \"vhd\": there is nothing to publish",
                args.manifest.display()
            ),
            "set [build] target = \"managed_image\" or \"gallery\" (with location, resource_group, storage_account)",
        ));
    };
    // Named before the image is read: that may take a while, this not.
    let missing = crate::publish::missing_variables();
    if !missing.is_empty() {
        return Err(crate::publish::PublishError::Credentials(missing).into());
    }
    let is_url = args.image.starts_with("https://") || args.image.starts_with("http://");
    let source = if is_url {
        Source::Blob(crate::azure::storage::BlobRef::parse(&args.image)?)
    } else {
        let path = std::path::PathBuf::from(&args.image);
        let blob_name = args.name.clone().unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image.vhd".into())
        });
        // What Azure would accept but Batch could not boot (not generalized,
        // no agent, a GPU image without its driver) is caught here, before
        // an upload and an hour of replication.
        if !args.no_validate {
            let validation = crate::validate::validate_file(&path, &plan)?;
            if validation.report.failed() {
                let failed: Vec<String> = validation
                    .report
                    .findings
                    .iter()
                    .filter(|f| f.status == crate::report::Status::Fail)
                    .map(|f| {
                        crate::util::redact::redact(&format!("  FAIL {}: {}", f.id, f.message))
                    })
                    .collect();
                return Err(AppError::Rejected {
                    message: format!(
                        "{}: the image does not meet the manifest's checks, nothing was uploaded or published:\n{}",
                        path.display(),
                        failed.join("\n"),
                    ),
                    hint: Some(format!(
                        "fix the image (`imgforge validate {} --manifest {}` shows every check), or pass --no-validate to publish it anyway",
                        path.display(),
                        args.manifest.display()
                    )),
                });
            }
        }
        Source::File { path, blob_name }
    };
    let rt = runtime()?;
    let (cancel, _signals) = stop_on_interrupt();
    let record = rt.block_on(crate::publish::publish(
        publish,
        source,
        &Options {
            blob_endpoint: crate::azure::storage::endpoint_template(args.blob_endpoint.as_deref())?,
            parallel: args.parallel,
            show_progress: !args.json,
            cancel,
            timeout: std::time::Duration::from_secs(args.timeout),
        },
    ))?;
    if args.json {
        print_stdout(&to_json(&record))?;
    } else {
        let snippet = crate::pool::snippet(
            &plan,
            &crate::pool::PoolImage::ArmImageId(record.arm_image_id.clone()),
        );
        print_stdout(&snippet)?;
        crate::util::term::status(
            "Published",
            &format!(
                "{} in {:.1} s ({} Resource Manager requests)",
                record.arm_image_id, record.seconds, record.requests
            ),
        );
    }
    Ok(exit::OK)
}

fn validate(args: ValidateArgs) -> Result<i32, AppError> {
    use crate::validate::{ValidateError, validate_blob, validate_file};
    let manifest = Manifest::load(&args.manifest)?;
    let plan = Plan::new(&manifest);
    let is_url = args.image.starts_with("https://") || args.image.starts_with("http://");
    let validation = if is_url {
        let blob =
            crate::azure::storage::BlobRef::parse(&args.image).map_err(ValidateError::from)?;
        let rt = runtime()?;
        rt.block_on(async {
            let storage = crate::azure::storage::Storage::for_blobs(
                std::slice::from_ref(&blob.account),
                &[&blob],
            )
            .await?;
            validate_blob(std::sync::Arc::new(storage), blob, plan).await
        })?
    } else {
        validate_file(std::path::Path::new(&args.image), &plan)?
    };
    let code = emit_report(
        &validation.report,
        false,
        args.junit.as_deref(),
        "imgforge validate",
        args.json.then_some(&validation as &dyn erased_json::Json),
    )?;
    if !args.json {
        crate::util::term::status(
            "Read",
            &format!(
                "{} bytes in {} request(s)",
                validation.read.bytes, validation.read.requests
            ),
        );
    }
    Ok(code)
}

fn boot_check(args: crate::cli::args::BootCheckArgs) -> Result<i32, AppError> {
    use crate::packer::bootcheck::{BATCH_PORTS, BootOptions, Firmware, closed_port};
    let plan = match &args.manifest {
        Some(m) => Some(Plan::new(&Manifest::load(m)?)),
        None => None,
    };
    let inbound = match &plan {
        Some(p) => p.firewall.inbound_tcp.clone(),
        None => {
            crate::spec::catalog::required_inbound_tcp(crate::spec::catalog::Os::Linux).to_vec()
        }
    };
    let temp = match &args.logs {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("imgforge-boot-")
                .tempdir()
                .map_err(|source| AppError::Io {
                    context: "a temporary directory for the console logs".into(),
                    source,
                })?,
        ),
    };
    let log_dir = match (&args.logs, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!("a temporary directory when --logs is absent"),
    };
    use std::sync::Arc;
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _signals = crate::util::signals::SignalWatch::start(
        cancel.clone(),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        "interrupted: stopping QEMU",
    );
    let mut firmwares = vec![Firmware::Bios];
    if args.uefi {
        firmwares.push(Firmware::Uefi);
    }
    crate::util::term::status(
        "Booting",
        &format!(
            "{} ({}) under QEMU, up to {} s each",
            args.image.display(),
            firmwares
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(" and "),
            args.timeout
        ),
    );
    let result = crate::packer::bootcheck::boot_check(
        &args.image,
        &BootOptions {
            firmwares,
            timeout: std::time::Duration::from_secs(args.timeout),
            must_answer: BATCH_PORTS.to_vec(),
            must_be_dropped: closed_port(&inbound),
            log_dir: log_dir.clone(),
            needs_hardware: plan
                .as_ref()
                .map(crate::packer::bootcheck::hardware_units)
                .unwrap_or_default(),
            cancel,
        },
    )?;
    if result.report.failed()
        && let Some(t) = temp
    {
        // Keep the console logs the report points at.
        crate::util::term::warning(&format!("console logs kept in {}", t.keep().display()));
    }
    if !args.json {
        for run in result.runs.iter().filter(|r| !r.tail.is_empty()) {
            eprintln!("last console lines ({}):", run.firmware.name());
            for l in &run.tail {
                eprintln!("    {l}");
            }
        }
    }
    emit_report(
        &result.report,
        false,
        None,
        "imgforge boot-check",
        args.json.then_some(&result as &dyn erased_json::Json),
    )
}

/// A serializable value behind a trait object, for `emit_report`'s JSON document.
mod erased_json {
    pub trait Json {
        fn to_json_pretty(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json_pretty(&self) -> String {
            serde_json::to_string_pretty(self).expect("serializable")
        }
    }
}
