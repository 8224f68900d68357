//! Text helpers the plan, the renderer and the validator share: POSIX shell
//! quoting (every manifest value that reaches a shell goes through it) and
//! SHA-256 in hex, percent-encoding for URLs (and for finding a secret in
//! its encoded form; the `percent-encoding` crate, with the character sets
//! Azure Storage signs), and Azure region names compared as Azure does.

use sha2::{Digest as _, Sha256};

/// A unit enum value as its serialized name (`both`, `ufw`, `succeeded`):
/// what people read is what the files and JSON say, never a Rust name.
pub fn name_of<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".to_string(),
    }
}

/// POSIX shell quoting: words made only of safe characters stay as they are;
/// anything else is single-quoted, so no value can become a command.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// As `COMPONENT`, keeping `/` (a URL path).
const PATH: &AsciiSet = &COMPONENT.remove(b'/');

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// As `encode_component`, keeping `/` (a URL path).
pub fn encode_path(s: &str) -> String {
    utf8_percent_encode(s, PATH).to_string()
}

/// `%XX` sequences to bytes; anything else is kept as it is.
pub fn percent_decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Regions compare without case or spaces: "West US 2" is `westus2`.
pub fn normalize_region(region: &str) -> String {
    region
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}
