//! Terminal output: colour only on a terminal and only without NO_COLOR.

use std::io::IsTerminal;

pub fn color_enabled(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn paint(code: &str, text: &str, on: bool) -> String {
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
    let on = color_enabled(std::io::stderr().is_terminal());
    eprintln!("{} {message}", paint("1;32", &format!("{verb:>12}"), on));
}
