//! Keeps secrets out of everything imgforge prints or writes.
//!
//! Two layers: the values of secret-bearing environment variables are replaced
//! wherever they appear — as they are, and in the encodings they travel in
//! (percent-encoded in a form body or query, base64, JSON-escaped) — and
//! anything shaped like a SAS signature (`sig=…`, also after a `%26`, an XML
//! `&amp;` or a JSON-escaped `\u0026`) is masked even when imgforge never saw the secret
//! that produced it.

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

/// The secret values in this process's environment (the build's own), at
/// least 8 characters: what the validator searches images for. The same
/// variables as every mask applies to, so the two lists cannot drift.
pub fn environment_secrets() -> Vec<String> {
    environment_values(8)
}

/// Values of the secret variables at least `min` characters long.
fn environment_values(min: usize) -> Vec<String> {
    std::env::vars()
        .filter(|(k, v)| is_secret_var(k) && v.len() >= min)
        .map(|(_, v)| v)
        .collect()
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
    let mut values = environment_values(4);
    values.extend(
        REGISTERED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned(),
    );
    let mut all = Vec::new();
    for v in values {
        all.extend(encodings(&v));
        all.push(v);
    }
    all.retain(|v| v.len() >= 4);
    all.sort();
    all.dedup();
    // Longest first, so a secret containing another is masked whole.
    all.sort_by_key(|v| std::cmp::Reverse(v.len()));
    all
}

/// The forms a secret takes on the wire, in documents and in files a
/// provisioner may leave: percent-encoded, base64 (standard and URL-safe, and
/// inside a longer encoded text at each of the three byte alignments — an
/// `Authorization: Basic` header encodes `user:SECRET`), JSON-escaped, every
/// character `\u`-escaped, hex, and shell-escaped (`printf %q`, quoted).
/// The longer forms only for secrets of 8 characters or more, so a short
/// value cannot mask ordinary text.
fn encodings(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let json = serde_json::to_string(secret).unwrap_or_default();
    let mut out = vec![
        crate::util::text::encode_component(secret),
        base64::engine::general_purpose::STANDARD.encode(secret),
        json.trim_matches('"').to_string(),
    ];
    if secret.len() < 8 {
        return out;
    }
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ] {
        out.extend(base64_cores(secret.as_bytes(), engine));
    }
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_ascii_uppercase());
    out.push(hex);
    let unicode: String = secret
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    out.push(unicode.to_ascii_uppercase().replace("\\U", "\\u"));
    out.push(unicode);
    let backslashed: String = secret
        .chars()
        .flat_map(|c| {
            let escape = !(c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c));
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect();
    out.push(backslashed);
    out.push(crate::util::text::shell_quote(secret));
    out
}

/// The part of base64(PREFIX + secret + SUFFIX) that depends on the secret
/// alone, for a PREFIX of each length modulo 3: what is found whatever text
/// surrounds the secret before it was encoded.
fn base64_cores(secret: &[u8], engine: &base64::engine::GeneralPurpose) -> Vec<String> {
    use base64::Engine as _;
    (0..3usize)
        .filter_map(|k| {
            let mut bytes = vec![0u8; k];
            bytes.extend_from_slice(secret);
            let enc = engine.encode(&bytes);
            // Characters holding bits of the prefix, and those after the
            // last whole 6 bits of the secret (they hold what follows).
            let skip = (k * 8).div_ceil(6);
            let whole = bytes.len() * 8 / 6;
            (whole > skip + 8).then(|| enc[skip..whole].to_string())
        })
        .collect()
}

/// Whether `text` holds any secret this process knows, in any of its forms
/// — also base64 wrapped over lines (PEM, `base64` without `-w0`).
pub fn contains_secret(text: &str) -> bool {
    let values = secret_values();
    if values.iter().any(|s| text.contains(s.as_str())) {
        return true;
    }
    let unwrapped: String = text.chars().filter(|c| !matches!(c, '\n' | '\r')).collect();
    unwrapped.len() != text.len() && values.iter().any(|s| unwrapped.contains(s.as_str()))
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
        let before = &text[..at];
        let separated = before.is_empty()
            || [
                "?", "&", "&amp;", "%26", "%3F", "%3f", "\\u0026", "\\u003f", "\\u003F",
            ]
            .iter()
            .any(|s| before.ends_with(s));
        if separated {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// A secret string: never serialized, never printed.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
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
    fn escaped_separators_before_sig_are_recognised() {
        assert_eq!(
            mask_sas_signatures(r#"{"u":"https://a/b?sv=1\u0026sig=AbC"}"#),
            r#"{"u":"https://a/b?sv=1\u0026sig=[REDACTED]"}"#
        );
        assert_eq!(mask_sas_signatures("x%26sig=AbC"), "x%26sig=[REDACTED]");
        // XML-escaped, as in a JUnit report.
        assert_eq!(
            mask_sas_signatures("a.vhd?sv=1&amp;sig=AbC\"/>"),
            "a.vhd?sv=1&amp;sig=[REDACTED]\"/>"
        );
    }

    #[test]
    fn encoded_forms_of_a_secret_are_masked() {
        use base64::Engine as _;
        let secret = "enc+oded/secret=1&x";
        register(secret);
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let pct = crate::util::text::encode_component(secret);
        for form in [secret.to_string(), b64, pct] {
            let out = redact(&format!("body: client_secret={form}; end"));
            assert_eq!(out, "body: client_secret=[REDACTED]; end", "{form}");
        }
        assert!(contains_secret(&format!(
            "x{}y",
            crate::util::text::encode_component(secret)
        )));
        assert!(!contains_secret("nothing here"));
    }

    #[test]
    fn a_secret_is_found_in_every_form_a_provisioner_could_leave_it_in() {
        use base64::Engine as _;
        let secret = "s3cr3t-V4lue+with$chars&more";
        register(secret);
        let b64 = base64::engine::general_purpose::STANDARD;
        let basic = b64.encode(format!("builder:{secret}"));
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        let wrapped = {
            let long = b64.encode(format!("-----{secret}-----{secret}"));
            let (a, b) = long.split_at(20);
            format!("{a}\n{b}\n")
        };
        let unicode: String = secret
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        for (what, text) in [
            ("basic auth", format!("Authorization: Basic {basic}")),
            ("hex", format!("key={hex}")),
            ("hex upper", format!("key={}", hex.to_ascii_uppercase())),
            ("wrapped base64", wrapped),
            ("unicode-escaped", format!("{{\"s\":\"{unicode}\"}}")),
            (
                "shell-escaped",
                "export K=s3cr3t-V4lue+with\\$chars\\&more".to_string(),
            ),
            ("shell-quoted", format!("export K='{secret}'")),
        ] {
            assert!(contains_secret(&text), "{what}: {text}");
        }
        // What is printed is masked in those forms too (one line each).
        let out = redact(&format!("Authorization: Basic {basic}"));
        assert!(!out.contains(&basic[4..20]), "{out}");
        assert!(!contains_secret("nothing here at all, 0123456789abcdef"));
    }

    #[test]
    fn registered_secrets_are_masked_from_then_on() {
        let secret = "file-borne-key-0b7e";
        assert_eq!(redact(&format!("key={secret}")), format!("key={secret}"));
        register(secret);
        assert_eq!(redact(&format!("key={secret};")), "key=[REDACTED];");
    }
}
