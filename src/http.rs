//! Small HTTP helpers shared by the Azure clients (storage, entra, arm).
//!
//! Two rules hold for every request that carries a credential (a key's
//! signature, a bearer token, a SAS, a client secret, or a copy source with
//! its SAS): it goes over https, or to this machine only (`require_secure`);
//! and it never follows a redirect (`client_builder`). reqwest's default
//! policy follows up to 10 redirects to any origin, re-sending headers such as
//! `x-ms-copy-source` and a token request's body; a 3xx is therefore returned
//! as it is, and reported as the error it is.

use std::time::Duration;

/// The most bytes any response body may have where imgforge did not ask for a
/// range (page lists, JSON documents): far above what Azure sends.
pub const MAX_BODY: u64 = 16 * 1024 * 1024;

/// The one way the Azure clients build their HTTP client: bounded connect and
/// request times, our user agent, and no redirects.
pub fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        // A server that drips or stops mid-body is cut after 30 s of silence,
        // not after the whole request's time.
        .read_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("imgforge/", env!("CARGO_PKG_VERSION")))
}

/// A response body, refused past `limit` bytes (a server that never ends a
/// body, or ignores what it was asked, cannot exhaust memory).
pub async fn read_limited(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(format!(
            "{}: the response announces {} bytes, more than the {limit} allowed",
            resp.url(),
            resp.content_length().unwrap_or(0)
        ));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(format!(
                "{}: the response is longer than the {limit} bytes allowed",
                resp.url()
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode_component(s: &str) -> String {
    encode_except(s, b"-_.~")
}

/// As `encode_component`, keeping `/` (a URL path).
pub fn encode_path(s: &str) -> String {
    encode_except(s, b"-_.~/")
}

fn encode_except(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` sequences to bytes; anything else is kept as it is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error and its causes on one line (reqwest keeps the useful part in sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Refuses to send a secret or a token in clear text anywhere but this machine.
pub fn require_secure(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let host = url
        .strip_prefix("http://")
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(""))
        .map(|authority| match authority.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => authority,
        });
    match host {
        Some("127.0.0.1" | "localhost" | "[::1]") => Ok(()),
        _ => Err(format!(
            "`{url}` is not an https URL; credentials are only sent over https (or to this machine)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_travel_over_https_or_loopback_only() {
        assert!(require_secure("https://login.microsoftonline.com/t/oauth2/v2.0/token").is_ok());
        assert!(require_secure("http://127.0.0.1:8080/t/oauth2").is_ok());
        assert!(require_secure("http://localhost/x").is_ok());
        assert!(require_secure("http://[::1]:99/x").is_ok());
        assert!(require_secure("http://login.example.com/t").is_err());
        assert!(require_secure("http://127.0.0.1.evil.example/t").is_err());
        assert!(require_secure("http://localhost@evil.example/t").is_err());
    }
}
