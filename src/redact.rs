//! Keeps secrets out of everything imgforge prints or writes.
//!
//! Two layers: the values of secret-bearing environment variables are replaced
//! wherever they appear, and anything shaped like a SAS signature (`sig=…`) is
//! masked even when imgforge never saw the secret that produced it.

use std::borrow::Cow;

pub const MASK: &str = "[REDACTED]";

/// Environment variables whose values are secrets.
fn is_secret_var(name: &str) -> bool {
    matches!(
        name,
        "ARM_CLIENT_SECRET" | "AZURE_STORAGE_KEY" | "AZURE_CLIENT_SECRET"
    ) || name.starts_with("IMGFORGE_STORAGE_KEY_")
        || name.starts_with("IMGFORGE_SECRET_")
}

/// Secrets read from files (e.g. a Batch Shipyard credentials file), masked
/// like the environment's for the rest of the process.
static REGISTERED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Masks `secret` in everything redacted from now on.
pub fn register(secret: &str) {
    if secret.len() >= 4 {
        let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        if !registered.iter().any(|s| s == secret) {
            registered.push(secret.to_string());
        }
    }
}

fn secret_values() -> Vec<String> {
    let mut values: Vec<String> = std::env::vars()
        .filter(|(k, v)| is_secret_var(k) && v.len() >= 4)
        .map(|(_, v)| v)
        .collect();
    values.extend(
        REGISTERED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned(),
    );
    // Longest first, so a secret containing another is masked whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values
}

pub fn redact(text: &str) -> String {
    let mut out: Cow<str> = Cow::Borrowed(text);
    for secret in secret_values() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MASK));
        }
    }
    mask_sas_signatures(&out)
}

/// `…&sig=abc%2Bdef&…` → `…&sig=[REDACTED]&…`.
fn mask_sas_signatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = find_sig(rest) {
        let value_start = i + 4;
        out.push_str(&rest[..value_start]);
        let value_len = rest[value_start..]
            .find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace() || c == ',')
            .unwrap_or(rest.len() - value_start);
        if value_len > 0 {
            out.push_str(MASK);
        }
        rest = &rest[value_start + value_len..];
    }
    out.push_str(rest);
    out
}

fn find_sig(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = text[from..].find("sig=") {
        let at = from + pos;
        let before = text[..at].chars().next_back();
        if matches!(before, Some('?') | Some('&') | None) {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_sas_signatures_but_not_lookalikes() {
        let url = "https://a.blob.core.windows.net/c/b.vhd?sv=2020&sr=b&sig=AbC%2Bd%3D&se=2030";
        assert_eq!(
            mask_sas_signatures(url),
            "https://a.blob.core.windows.net/c/b.vhd?sv=2020&sr=b&sig=[REDACTED]&se=2030"
        );
        assert_eq!(mask_sas_signatures("config=1 xsig=2"), "config=1 xsig=2");
        assert_eq!(mask_sas_signatures("?sig=zz"), "?sig=[REDACTED]");
    }

    #[test]
    fn registered_secrets_are_masked_from_then_on() {
        let secret = "file-borne-key-0b7e";
        assert_eq!(redact(&format!("key={secret}")), format!("key={secret}"));
        register(secret);
        assert_eq!(redact(&format!("key={secret};")), "key=[REDACTED];");
    }
}
