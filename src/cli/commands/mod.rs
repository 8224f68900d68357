//! One function per subcommand: load inputs, call the stages, print. The
//! dispatch and what every subcommand shares (stdout, JSON, the runtime,
//! Ctrl-C) are here; the subcommands, by area: `build` (plan, render, build,
//! status), `check` (validate, boot-check), `copies` (replicate, upload),
//! `publish`, `pool` (pool, skus) and `project` (init, catalog, templates,
//! clean, version, man).

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

mod build;
mod check;
mod copies;
mod inspect;
mod pool;
mod project;
mod publish;
use self::{build::*, check::*, copies::*, inspect::*, pool::*, project::*, publish::*};

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
            timeout,
        } => skus_online(
            json,
            credentials.as_deref(),
            account_url.as_deref(),
            timeout,
        ),
        Command::Skus { json, .. } => skus(json),
        Command::Status { dir, json } => status(dir.as_deref(), json),
        Command::Replicate(args) => replicate(args),
        Command::Upload(args) => upload(args),
        Command::Publish(args) => publish(args),
        Command::Promote(args) => promote(args),
        Command::Validate(args) => validate(args),
        Command::BootCheck(args) => boot_check(args),
        Command::BootStandIn { role, dir } => boot_stand_in(&role, &dir),
        Command::Inspect(args) => inspect(args),
        Command::Diff(args) => diff(args),
    }
}

pub(super) fn print_stdout(text: &str) -> Result<(), AppError> {
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

pub use crate::cli::error::JSON_SCHEMA;

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    with_schema(&serde_json::to_string_pretty(value).expect("serializable"))
}

/// `{"schema": 1, …}`: the field goes first, the rest keeps its order.
pub(super) fn with_schema(pretty: &str) -> String {
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

/// Runs `work` on a runtime of its own, bounded as a whole by `seconds`:
/// a service that answers slowly, each request within its own deadline,
/// cannot stretch a command past what the user allowed.
pub(super) fn bounded<T>(
    seconds: u64,
    what: &str,
    work: impl std::future::Future<Output = T>,
) -> Result<T, AppError> {
    let rt = runtime()?;
    // The timer is made inside the runtime (it needs its reactor).
    let limit = std::time::Duration::from_secs(seconds);
    match rt.block_on(async { tokio::time::timeout(limit, work).await }) {
        Ok(v) => Ok(v),
        Err(_) => {
            // A request may be in flight on a blocking thread: not waited for.
            rt.shutdown_background();
            Err(AppError::Rejected {
                message: format!("{what}: no result within {seconds} s; nothing was judged"),
                hint: Some("raise --timeout if the service is slow but working".into()),
            })
        }
    }
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    crate::util::runtime().map_err(|source| AppError::Io {
        context: "starting the async runtime".into(),
        source,
    })
}

/// Ctrl-C stops replication after the chunks in flight (exit 130); a rerun
/// finds the copies unverified and finishes them.
pub(super) fn stop_on_interrupt() -> (
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

/// A serializable value behind a trait object, for `emit_report`'s JSON document.
pub(super) mod erased_json {
    pub trait Json {
        fn to_json_pretty(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json_pretty(&self) -> String {
            serde_json::to_string_pretty(self).expect("serializable")
        }
    }
}
