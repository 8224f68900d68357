//! What every stage uses: bounded input reads and atomic writes (`fsutil`),
//! the terminal (`term`), signals, secret masking (`redact`), and the
//! failure categories the CLI turns into exit codes.

/// What kind of failure an error is. Stage errors say which; the CLI maps
/// each to its documented exit code (`cli::error::exit`) in one place, so no
/// stage depends on the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Checked and found wanting (a failed check, a refused request): 1.
    Failed,
    /// Input that cannot work (a manifest, a setting, a missing file): 2.
    Input,
    /// A tool (Packer, QEMU) missing or failing to start: 3.
    Tool,
    /// Writing imgforge's own output failed: 4.
    Io,
    /// Interrupted (Ctrl-C, SIGTERM): 130.
    Cancelled,
}

/// What to do about a failure, kept apart from its message. Errors leave the
/// hint out of `Display`; it is written once, where the failure is shown: a
/// `  hint:` line under the message on a terminal (`with_hint`), the `hint`
/// field of a `--json` error, a finding's own `hint`. An error that wraps
/// another passes the inner one's hint on.
pub trait Hint {
    fn hint(&self) -> Option<String>;
}

/// A failure as one text: its message, then its hint on a line of its own.
pub fn with_hint<E: std::fmt::Display + Hint + ?Sized>(e: &E) -> String {
    match e.hint() {
        Some(h) => format!("{e}\n  hint: {h}"),
        None => e.to_string(),
    }
}

/// The async runtime a command's network work runs on; a command makes one
/// and keeps it (`imgforge build` one for all its stages).
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

pub(crate) mod diskfmt;
pub(crate) mod fsutil;
pub(crate) mod lock;
pub(crate) mod redact;
pub(crate) mod signals;
pub mod term;
pub mod text;
