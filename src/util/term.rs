//! Terminal output: colour only on a terminal and only without NO_COLOR
//! (unless `--color always` or CLICOLOR_FORCE), status lines unless `--quiet`.

use std::io::IsTerminal;
use std::sync::OnceLock;

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

struct Settings {
    color: ColorChoice,
    quiet: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// The command line's `--color` and `--quiet`, once, before any output.
pub fn configure(color: ColorChoice, quiet: bool) {
    let _ = SETTINGS.set(Settings { color, quiet });
}

/// `--quiet`: no status lines or progress.
pub fn quiet() -> bool {
    SETTINGS.get().is_some_and(|s| s.quiet)
}

pub fn color_enabled(stream_is_terminal: bool) -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty() && v != "0");
    match SETTINGS.get().map_or(ColorChoice::Auto, |s| s.color) {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        // https://no-color.org and https://bixense.com/clicolors: NO_COLOR wins.
        ColorChoice::Auto if set("NO_COLOR") => false,
        ColorChoice::Auto => stream_is_terminal || set("CLICOLOR_FORCE"),
    }
}

/// `text` in SGR colour `code` when `on`: the one place imgforge writes
/// colour (status lines, reports, Packer's error lines).
pub fn paint(code: &str, text: &str, on: bool) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

pub fn error(message: &str) {
    let on = color_enabled(std::io::stderr().is_terminal());
    eprintln!("{} {message}", paint("1;31", "error:", on));
}

pub fn warning(message: &str) {
    let on = color_enabled(std::io::stderr().is_terminal());
    eprintln!("{} {message}", paint("1;33", "warning:", on));
}

/// A status line on stderr, cargo style: a right-aligned green verb, then the text.
pub fn status(verb: &str, message: &str) {
    if quiet() {
        return;
    }
    let on = color_enabled(std::io::stderr().is_terminal());
    eprintln!("{} {message}", paint("1;32", &format!("{verb:>12}"), on));
}
