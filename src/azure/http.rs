//! Small HTTP helpers shared by the Azure clients (storage, entra, arm and
//! the compute calls made through it, batch): the one client builder, the
//! retry policy, bounded bodies.
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

/// A JSON service's answer (Resource Manager, Batch, Entra) is read up to
/// this: their largest pages are a few hundred KiB, and a JSON document
/// parses to `serde_json::Value` at ten or more times its size (a 16 MiB
/// answer of small values took 200–284 MiB of RSS).
pub const MAX_JSON: u64 = 4 * 1024 * 1024;

/// How many values a JSON answer may hold before it is parsed: a Resource
/// Manager page of 1,000 storage accounts holds about 60,000, a Batch page
/// of supported images fewer. A 4 MiB document of `1,1,1,…` holds two
/// million, which `serde_json::Value` would hold in about 70 MiB.
pub const MAX_JSON_VALUES: usize = 400_000;

/// Refuses a JSON document with more than `MAX_JSON_VALUES` values, counted
/// from its separators before anything is parsed (a comma or colon inside a
/// string counts too: the bound only errs towards refusing).
pub fn json_values_bounded(body: &[u8]) -> Result<(), String> {
    let values = body
        .iter()
        .filter(|&&b| matches!(b, b',' | b'[' | b'{'))
        .count();
    if values > MAX_JSON_VALUES {
        return Err(format!(
            "the answer holds about {values} JSON values, more than the {MAX_JSON_VALUES} a service's page has"
        ));
    }
    Ok(())
}

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

/// A JSON service's answer, read whole (up to `MAX_BODY`).
pub struct Reply {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// Why no reply came: the last transport error (redacted) after `attempts`.
pub struct NoReply {
    pub attempts: u32,
    pub message: String,
}

/// The one retry policy of the Azure clients: which answers are worth
/// another try, how many tries, and how long to wait before each. The
/// services differ only in the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The wait after the first failure, doubled after each one after it.
    pub first_wait: Duration,
    /// No wait is longer, a server's `Retry-After` included.
    pub cap: Duration,
}

impl Retry {
    /// Blob requests: a copy makes thousands, so failures are retried soon
    /// (0.1, 0.2, 0.4, 0.8, 1.6 s), six tries in all.
    pub const STORAGE: Retry = Retry {
        attempts: 6,
        first_wait: Duration::from_millis(100),
        cap: Duration::from_secs(3),
    };
    /// JSON services (Resource Manager, Batch): 2, 4, 8 s, or the server's
    /// `Retry-After` up to 30 s; four tries.
    pub const JSON: Retry = Retry {
        attempts: 4,
        first_wait: Duration::from_secs(2),
        cap: Duration::from_secs(30),
    };

    /// Timeouts, throttling and the server errors another try can cure; not
    /// 501 (never implemented) or 505, and no 4xx but 408 and 429.
    pub fn retryable(status: reqwest::StatusCode) -> bool {
        matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
    }

    /// The wait after failed try `attempt` (1-based): the server's
    /// `Retry-After` (seconds) when it sent one, else the doubling wait.
    pub fn wait(&self, attempt: u32, retry_after: Option<u64>) -> Duration {
        let doubled = self
            .first_wait
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        retry_after
            .map(Duration::from_secs)
            .unwrap_or(doubled)
            .min(self.cap)
    }

    /// A transport error (a refused or dropped connection) is retried at a
    /// quarter of the wait: nothing was answered, so nothing asked us to slow down.
    pub fn transport_wait(&self, attempt: u32) -> Duration {
        self.wait(attempt, None) / 4
    }
}

/// A service's error code as the error messages show it after the status:
/// ` AuthorizationFailed`, or nothing when the service named none.
pub fn code_suffix(code: &str) -> String {
    if code.is_empty() {
        String::new()
    } else {
        format!(" {code}")
    }
}

/// A `Retry-After` in seconds (the HTTP-date form is not used by Azure).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// One request to a JSON service (Resource Manager, Batch) under `retry`
/// (`Retry::JSON`): retried on the statuses `Retry::retryable` names and on
/// transport errors. The answer that ends the retries is returned as it is,
/// success or not; its body is bounded by `MAX_JSON`. `build` makes the
/// request afresh each time.
pub async fn send_retrying(
    retry: Retry,
    build: &dyn Fn() -> reqwest::RequestBuilder,
) -> Result<Reply, NoReply> {
    let attempts = retry.attempts;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let wait = match build().send().await {
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                let retry_after = retry_after(&headers);
                let body = read_limited(resp, MAX_JSON)
                    .await
                    .and_then(|b| json_values_bounded(&b).map(|()| b))
                    .map_err(|message| NoReply {
                        attempts: attempt,
                        message: crate::util::redact::redact(&message),
                    })?;
                if !Retry::retryable(status) || attempt >= attempts {
                    return Ok(Reply {
                        status,
                        headers,
                        body,
                    });
                }
                retry.wait(attempt, retry_after)
            }
            Err(e) => {
                if attempt >= attempts {
                    return Err(NoReply {
                        attempts: attempt,
                        message: crate::util::redact::redact(&error_chain(&e)),
                    });
                }
                retry.transport_wait(attempt)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The next page of a paged JSON list (`field`: `nextLink`, `odata.nextLink`):
/// `Ok(None)` on the last page, an error when the link leaves `origin` — the
/// bearer token goes to the service it was issued for and nowhere else.
pub fn next_page(
    page: &serde_json::Value,
    field: &str,
    origin: &str,
) -> Result<Option<String>, String> {
    match page[field].as_str() {
        Some(next) if !next.is_empty() => {
            if next.starts_with(&format!("{origin}/")) {
                Ok(Some(next.to_string()))
            } else {
                Err(format!("{field} `{next}` leaves {origin}"))
            }
        }
        _ => Ok(None),
    }
}

/// Refuses to send a secret or a token in clear text anywhere but this machine.
/// The URL is read as reqwest will read it (the `url` crate), so what is
/// checked is the host the request goes to.
pub fn require_secure(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).ok();
    let secure = parsed.as_ref().is_some_and(|u| match u.scheme() {
        "https" => true,
        // Exactly these three: another loopback address (127.0.0.2) may be
        // a different listener, and is not on the list.
        "http" => match u.host() {
            Some(url::Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
            Some(url::Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        },
        _ => false,
    });
    if secure {
        Ok(())
    } else {
        Err(format!(
            "`{url}` is not an https URL; credentials are only sent over https (or to this machine)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_answer_of_too_many_values_is_refused_before_it_is_parsed() {
        let page = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/arm/storage-accounts-page-1.json"
        ))
        .unwrap();
        assert!(json_values_bounded(&page).is_ok());
        let hostile = format!("{{\"value\":[{}1]}}", "1,".repeat(MAX_JSON_VALUES));
        let e = json_values_bounded(hostile.as_bytes()).unwrap_err();
        assert!(e.contains("more than the 400000"), "{e}");
    }

    /// A server answering `statuses` in turn (then 200), counting requests.
    fn server(
        statuses: &'static [u16],
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let status = statuses.get(n).copied().unwrap_or(200);
                let body = format!("{{\"n\":{n}}}");
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\nretry-after: 0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, count)
    }

    /// `Retry::JSON`'s statuses with `n` tries and no wait.
    fn tries(n: u32) -> Retry {
        Retry {
            attempts: n,
            first_wait: Duration::ZERO,
            cap: Duration::ZERO,
        }
    }

    #[test]
    fn one_policy_with_each_services_numbers() {
        let secs = |r: Retry, after: Option<u64>| -> Vec<f64> {
            (1..r.attempts)
                .map(|a| r.wait(a, after).as_secs_f64())
                .collect()
        };
        assert_eq!(secs(Retry::STORAGE, None), [0.1, 0.2, 0.4, 0.8, 1.6]);
        assert_eq!(secs(Retry::JSON, None), [2.0, 4.0, 8.0]);
        // A server's Retry-After wins, up to the cap.
        assert_eq!(secs(Retry::JSON, Some(5)), [5.0, 5.0, 5.0]);
        assert_eq!(secs(Retry::JSON, Some(3600)), [30.0, 30.0, 30.0]);
        assert_eq!(secs(Retry::STORAGE, Some(60))[0], 3.0);
        assert_eq!(Retry::JSON.transport_wait(1), Duration::from_millis(500));
        // Long runs of failures neither overflow nor pass the cap.
        assert_eq!(Retry::JSON.wait(200, None), Duration::from_secs(30));
        let retried: Vec<u16> = (100..600)
            .filter(|s| Retry::retryable(reqwest::StatusCode::from_u16(*s).unwrap()))
            .collect();
        assert_eq!(retried, [408, 429, 500, 502, 503, 504]);
    }

    #[tokio::test]
    async fn throttling_and_server_errors_are_retried_and_the_rest_returned_as_they_are() {
        let http = client_builder(Duration::from_secs(5)).build().unwrap();
        // 429 and 503 are retried (Retry-After: 0), the third answer is kept.
        let (url, count) = server(&[429, 503]);
        let r = send_retrying(tries(4), &|| http.get(&url))
            .await
            .ok()
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.body.as_slice()),
            (200, &b"{\"n\":2}"[..])
        );
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        // A 403 is an answer, not a reason to ask again.
        let (url, count) = server(&[403]);
        let r = send_retrying(tries(4), &|| http.get(&url))
            .await
            .ok()
            .unwrap();
        assert_eq!(r.status.as_u16(), 403);
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        // After the last attempt the 5xx itself is returned.
        let (url, count) = server(&[500, 500, 500]);
        let r = send_retrying(tries(3), &|| http.get(&url))
            .await
            .ok()
            .unwrap();
        assert_eq!(r.status.as_u16(), 500);
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        // Nobody listening: the transport error, after every attempt.
        let e = send_retrying(tries(2), &|| http.get("http://127.0.0.1:9/x"))
            .await
            .err()
            .unwrap();
        assert_eq!(e.attempts, 2);
        assert!(e.message.contains("onnect"), "{}", e.message);
    }

    #[test]
    fn secrets_travel_over_https_or_loopback_only() {
        assert!(require_secure("https://login.microsoftonline.com/t/oauth2/v2.0/token").is_ok());
        assert!(require_secure("http://127.0.0.1:8080/t/oauth2").is_ok());
        assert!(require_secure("http://localhost/x").is_ok());
        assert!(require_secure("http://[::1]:99/x").is_ok());
        assert!(require_secure("http://login.example.com/t").is_err());
        assert!(require_secure("http://127.0.0.1.evil.example/t").is_err());
        assert!(require_secure("http://localhost@evil.example/t").is_err());
        assert!(require_secure("http://127.0.0.1:80@evil.example/t").is_err());
        assert!(require_secure("http://evil.example\\@127.0.0.1/t").is_err());
        assert!(require_secure("http://127.0.0.2:10000/x").is_err());
        assert!(require_secure("not a url").is_err());
    }
}
