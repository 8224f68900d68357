//! Loopback HTTP stand-ins in front of Azurite: a proxy that injects faults,
//! and the half of Put Page From URL that Azurite 3.35.0 lacks (it answers
//! 501 NotImplemented), done the way the service documents it.

/// A loopback HTTP proxy in front of Azurite that injects faults: every
/// `every`-th request is answered 503 ServerBusy or has its connection dropped,
/// and after `cut_after_puts` Put Page requests every later one is dropped
/// (an interrupted copy). One request per connection: run imgforge with
/// IMGFORGE_HTTP_NO_POOL=1.
pub struct FaultProxy {
    pub port: u16,
    pub faults: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub page_puts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultProxy {
    pub fn start(upstream: u16, every: usize, cut_after_puts: Option<usize>) -> FaultProxy {
        FaultProxy::start_for(upstream, every, cut_after_puts, None)
    }

    /// As `start`, with the Put Page cut applied to one account's requests only
    /// (the others pass untouched): one destination failing mid-copy.
    pub fn start_for(
        upstream: u16,
        every: usize,
        cut_after_puts: Option<usize>,
        only_account: Option<&str>,
    ) -> FaultProxy {
        FaultProxy::start_with(upstream, every, cut_after_puts, only_account, false)
    }

    /// Passes everything, but flips the first byte of the first Put Page's
    /// body and keeps its Content-MD5: damage on the way that a service
    /// checking the hash refuses (Azure) and Azurite 3.35.0 accepts.
    pub fn corrupting_first_page(upstream: u16) -> FaultProxy {
        FaultProxy::start_with(upstream, 0, None, None, true)
    }

    fn start_with(
        upstream: u16,
        every: usize,
        cut_after_puts: Option<usize>,
        only_account: Option<&str>,
        corrupt_first_page: bool,
    ) -> FaultProxy {
        let corrupted =
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(!corrupt_first_page));
        let only_prefix = only_account.map(|a| format!(" /{a}/"));
        use std::io::Write;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(AtomicUsize::new(0));
        let page_puts = Arc::new(AtomicUsize::new(0));
        let count = Arc::new(AtomicUsize::new(0));
        let (f, p) = (faults.clone(), page_puts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let (faults, page_puts, count) = (f.clone(), p.clone(), count.clone());
                let only_prefix = only_prefix.clone();
                let corrupted = corrupted.clone();
                std::thread::spawn(move || {
                    let Some((head, mut body)) = read_request(&mut client) else {
                        return;
                    };
                    let first = head.lines().next().unwrap_or("");
                    let is_page_put = first.starts_with("PUT ")
                        && first.contains("comp=page")
                        && only_prefix.as_deref().is_none_or(|p| first.contains(p));
                    if is_page_put && !body.is_empty() && !corrupted.swap(true, Ordering::SeqCst) {
                        body[0] ^= 0xFF;
                        faults.fetch_add(1, Ordering::SeqCst);
                    }
                    if is_page_put {
                        let n = page_puts.fetch_add(1, Ordering::SeqCst) + 1;
                        if cut_after_puts.is_some_and(|k| n > k) {
                            faults.fetch_add(1, Ordering::SeqCst);
                            return; // dropped: the client sees the connection close
                        }
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    if every > 0 && n.is_multiple_of(every) {
                        faults.fetch_add(1, Ordering::SeqCst);
                        if (n / every).is_multiple_of(2) {
                            let _ = client.write_all(
                                b"HTTP/1.1 503 Server Busy\r\nx-ms-error-code: ServerBusy\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                            );
                        }
                        return;
                    }
                    forward(upstream, &head, &body, &mut client);
                });
            }
        });
        FaultProxy {
            port,
            faults,
            page_puts,
        }
    }
}

/// Reads one HTTP/1.1 request: the head (request line and headers) and the body.
pub(crate) fn read_request(stream: &mut std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    Some((head, buf[head_end..head_end + length].to_vec()))
}

/// Put Page From URL, served in front of Azurite the way the service documents
/// it (learn.microsoft.com/rest/api/storageservices/put-page-from-url): the
/// request has no body, `x-ms-range` and `x-ms-source-range` are 512-aligned
/// and of one length (at most 4 MiB), `x-ms-copy-source` is a URL the service
/// can read (here a SAS on Azurite). The range is read from the source with a
/// GET; when `x-ms-source-content-md5` is given and differs from the MD5 of
/// what arrived, the answer is 400 `Md5Mismatch` and nothing is written.
/// Otherwise the bytes are written with a real Put Page to Azurite, under a
/// write SAS for the destination blob from the SDK oracle. Every other request
/// is forwarded untouched, so Azurite still checks their signatures; this one
/// request's SharedKey signature is not checked (the same signing code is).
pub struct PageFromUrl {
    pub port: u16,
    /// Put Page From URL requests written, per destination account.
    pub served: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
    /// Requests that carried no `x-ms-source-content-md5`.
    pub without_md5: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Requests refused with Md5Mismatch.
    pub mismatches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The most Put Page From URL requests in flight at once: (per account, in all).
    pub peak: std::sync::Arc<std::sync::Mutex<(std::collections::BTreeMap<String, usize>, usize)>>,
}

impl PageFromUrl {
    /// `damage`: an account whose source reads arrive with one byte flipped
    /// (the source changed after imgforge read it, or was damaged on the way).
    pub fn start(az: &super::Azurite, damage: Option<&str>) -> PageFromUrl {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let without_md5 = Arc::new(AtomicUsize::new(0));
        let mismatches = Arc::new(AtomicUsize::new(0));
        let upstream = az.port;
        let keys = az.keys.clone();
        let sas: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>> = Arc::default();
        let damage = damage.map(|a| format!("/{a}/"));
        let (s, w, m) = (served.clone(), without_md5.clone(), mismatches.clone());
        let peak: Arc<std::sync::Mutex<(std::collections::BTreeMap<String, usize>, usize)>> =
            Arc::default();
        // Requests in flight now: (per account, in all).
        let now: Arc<std::sync::Mutex<(std::collections::BTreeMap<String, usize>, usize)>> =
            Arc::default();
        let (p, n) = (peak.clone(), now.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let (served, without_md5, mismatches) = (s.clone(), w.clone(), m.clone());
                let (keys, sas, damage) = (keys.clone(), sas.clone(), damage.clone());
                let (peak, now) = (p.clone(), n.clone());
                std::thread::spawn(move || {
                    let Some((head, body)) = read_request(&mut client) else {
                        return;
                    };
                    let header = |name: &str| {
                        head.lines().skip(1).find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_string())
                        })
                    };
                    let first = head.lines().next().unwrap_or("").to_string();
                    let Some(source) = header("x-ms-copy-source")
                        .filter(|_| first.starts_with("PUT ") && first.contains("comp=page"))
                    else {
                        forward(upstream, &head, &body, &mut client);
                        return;
                    };
                    let path = first.split(' ').nth(1).unwrap_or("/").to_string();
                    let account = path.split('/').nth(1).unwrap_or("").to_string();
                    {
                        let (mut now, mut peak) = (now.lock().unwrap(), peak.lock().unwrap());
                        let (per, all) = &mut *now;
                        let here = per.entry(account.clone()).or_insert(0);
                        *here += 1;
                        *all += 1;
                        let (peak_per, peak_all) = &mut *peak;
                        let most = peak_per.entry(account.clone()).or_insert(0);
                        *most = (*most).max(*here);
                        *peak_all = (*peak_all).max(*all);
                    }
                    // Long enough for concurrent requests to overlap here.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let answer = (|| {
                        let range = |h: &str| -> Result<(u64, u64), String> {
                            let v = header(h).ok_or(format!("{h} is missing"))?;
                            let (a, b) = v
                                .strip_prefix("bytes=")
                                .and_then(|r| r.split_once('-'))
                                .ok_or(format!("{h} `{v}` is not bytes=a-b"))?;
                            let (a, b): (u64, u64) = (
                                a.parse().map_err(|_| format!("{h} `{v}`"))?,
                                b.parse().map_err(|_| format!("{h} `{v}`"))?,
                            );
                            if a % 512 != 0 || (b + 1) % 512 != 0 || b < a {
                                return Err(format!("{h} `{v}` is not 512-aligned"));
                            }
                            Ok((a, b))
                        };
                        let (dst, src) = (range("x-ms-range")?, range("x-ms-source-range")?);
                        if dst.1 - dst.0 != src.1 - src.0 || dst.1 - dst.0 >= 4 << 20 {
                            return Err("the ranges differ in length or exceed 4 MiB".into());
                        }
                        if !body.is_empty() {
                            return Err("Put Page From URL has no body".into());
                        }
                        let url = reqwest::Url::parse(&source).map_err(|e| e.to_string())?;
                        let mut bytes = http(
                            url.port().unwrap_or(80),
                            "GET",
                            &format!("{}?{}", url.path(), url.query().unwrap_or("")),
                            &[("x-ms-range", format!("bytes={}-{}", src.0, src.1))],
                            &[],
                        )
                        .filter(|(status, _)| *status == 206 || *status == 200)
                        .ok_or("the source could not be read")?
                        .1;
                        if damage.as_deref().is_some_and(|d| path.contains(d)) {
                            bytes[0] ^= 0x40;
                        }
                        match header("x-ms-source-content-md5") {
                            None => {
                                without_md5.fetch_add(1, Ordering::SeqCst);
                            }
                            Some(want) => {
                                use base64::Engine as _;
                                use md5::Digest as _;
                                let got = base64::engine::general_purpose::STANDARD
                                    .encode(md5::Md5::digest(&bytes));
                                if got != want {
                                    mismatches.fetch_add(1, Ordering::SeqCst);
                                    return Ok((400, "Md5Mismatch"));
                                }
                            }
                        }
                        // The destination blob's write SAS, once per blob.
                        let blob_path = path.split('?').next().unwrap_or("").to_string();
                        let token = sas
                            .lock()
                            .unwrap()
                            .entry(blob_path.clone())
                            .or_insert_with(|| write_sas(upstream, &keys, &blob_path))
                            .clone();
                        let (status, _) = http(
                            upstream,
                            "PUT",
                            &format!("{blob_path}?comp=page&{token}"),
                            &[
                                ("x-ms-page-write", "update".into()),
                                ("x-ms-range", format!("bytes={}-{}", dst.0, dst.1)),
                            ],
                            &bytes,
                        )
                        .ok_or("Azurite did not answer")?;
                        if status != 201 {
                            return Err(format!("Azurite answered {status} to the Put Page"));
                        }
                        *served.lock().unwrap().entry(account.clone()).or_insert(0) += 1;
                        Ok((201, ""))
                    })();
                    {
                        let mut now = now.lock().unwrap();
                        let (per, all) = &mut *now;
                        *per.get_mut(&account).unwrap() -= 1;
                        *all -= 1;
                    }
                    use std::io::Write;
                    let reply = match answer {
                        Ok((201, _)) => {
                            "HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                .to_string()
                        }
                        Ok((status, code)) => error_reply(
                            status,
                            code,
                            "The MD5 value specified in the request did not match the MD5 value calculated by the server.",
                        ),
                        Err(why) => error_reply(400, "InvalidHeaderValue", &why),
                    };
                    let _ = client.write_all(reply.as_bytes());
                });
            }
        });
        PageFromUrl {
            port,
            served,
            without_md5,
            mismatches,
            peak,
        }
    }
}

/// The service's error shape: status, `x-ms-error-code` and the XML body.
fn error_reply(status: u16, code: &str, message: &str) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status} Bad Request\r\nx-ms-error-code: {code}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A write-only SAS for one blob, from the SDK oracle.
fn write_sas(upstream: u16, keys: &[(String, String)], blob_path: &str) -> String {
    let url = format!("http://127.0.0.1:{upstream}{blob_path}");
    let mut cmd = std::process::Command::new("node");
    cmd.arg(super::repo().join("tests/support/blob-oracle.mjs"))
        .args(["sas-write", &url]);
    for (a, k) in keys {
        cmd.env(
            format!("IMGFORGE_STORAGE_KEY_{}", a.to_ascii_uppercase()),
            k,
        );
    }
    let out = cmd.output().expect("node");
    assert!(out.status.success(), "oracle sas-write: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default()
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; the status and the body.
fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut up = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-ms-version: 2021-08-06\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    up.write_all(req.as_bytes()).ok()?;
    up.write_all(body).ok()?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw).ok()?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, raw[end..].to_vec()))
}

/// Sends one request on to Azurite and relays its answer.
fn forward(upstream: u16, head: &str, body: &[u8], client: &mut std::net::TcpStream) {
    use std::io::Write;
    let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let mut new_head: Vec<String> = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(str::to_string)
        .collect();
    new_head.push("connection: close".into());
    let mut out = (new_head.join("\r\n") + "\r\n\r\n").into_bytes();
    out.extend_from_slice(body);
    if up.write_all(&out).is_err() {
        return;
    }
    let _ = std::io::copy(&mut up, client);
}
