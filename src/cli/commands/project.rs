//! `init`, `catalog`, `templates`, `clean`, `version` and `man`: the tool itself.

use super::*;

pub(super) fn init(args: crate::cli::args::InitArgs) -> Result<i32, AppError> {
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

pub(super) fn catalog(json: bool) -> Result<i32, AppError> {
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
        /// A local build from the distro's Azure disk image (`base_image`).
        local_from_base: bool,
        /// The marketplace base's purchase plan (publisher/product/name).
        purchase_plan: Option<String>,
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
                // Debian: no primary source names a Batch agent for it.
                _ if !d.node_agent_verified => ("no agent", None),
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
                local_from_base: d.azure_base.is_some(),
                purchase_plan: d
                    .base_image
                    .plan
                    .map(|p| format!("{}/{}/{}", p.publisher, p.product, p.name)),
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
        "{:<14} {:<8} {:<26} {:<22} {:<10} {}\n",
        "DISTRO", "OS", "NODE AGENT SKU ID", "NEW POOLS", "LOCAL", "BASE IMAGE (azure-arm)"
    );
    for d in &distros {
        let state = match (d.new_pools, d.until) {
            ("retired", Some(u)) => format!("retired {u}"),
            ("ends", Some(u)) => format!("until {u}"),
            ("no agent", _) => "no Batch agent".into(),
            _ => "supported".into(),
        };
        t.push_str(&format!(
            "{:<14} {:<8} {:<26} {:<22} {:<10} {}\n",
            d.key,
            serde_json::to_value(d.os)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            d.node_agent,
            state,
            match (d.local_builder, d.local_from_base) {
                (true, true) => "root, base",
                (true, false) => "root",
                (false, true) => "base",
                (false, false) => "-",
            },
            match &d.purchase_plan {
                Some(p) => format!("{} (purchase plan {p})", d.base_image),
                None => d.base_image.clone(),
            }
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

pub(super) fn templates(cmd: TemplatesCommand) -> Result<i32, AppError> {
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

pub(super) fn clean(
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
        crate::pipeline::clean::Rules { keep, older_than },
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
pub(super) fn version() -> Result<i32, AppError> {
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
pub(super) fn man(out: Option<&std::path::Path>) -> Result<i32, AppError> {
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
