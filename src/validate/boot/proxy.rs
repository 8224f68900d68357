//! The build VM's only way out when it boots a base image: an HTTP proxy
//! (plain requests and `CONNECT` tunnels) that serves only the `host:port`
//! pairs of `[build.local] allow_hosts` (by default the distro's package
//! archives) and answers everything else 403, naming the host and the key
//! that would allow it. QEMU runs one `imgforge boot-stand-in proxy DIR` per
//! guest connection (see `provision`); the guest network is `restrict=on`,
//! so this process is the only route beyond the provisioning stand-ins.
//!
//! Written by hand because it is one request head and a byte relay, run per
//! connection with the connection on standard input: a proxy crate (a server
//! with its own listener and runtime) would not fit QEMU's `guestfwd`. Every
//! decision is a line in `requests.jsonl`, beside the wire server's.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::standin::{Exchange, read_request};

/// The proxy's address in the guest network, and its port.
pub const PROXY_ADDR: &str = "160.0.0.60";
pub const PROXY_PORT: u16 = 3128;
/// How long to wait for an upstream connection.
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);
/// A relay with no byte either way for this long is closed.
const IDLE: Duration = Duration::from_secs(120);

/// What the proxy may reach, written by the build as `proxy.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Allow {
    /// `host:port`, lower-case.
    pub hosts: Vec<String>,
}

/// Where a request wants to go, or why it is refused (status, reason).
#[derive(Debug, PartialEq)]
pub enum Decision {
    Tunnel {
        host: String,
        port: u16,
    },
    Forward {
        host: String,
        port: u16,
        path: String,
    },
    Refuse(u16, String),
}

/// The decision for one request head; pure, so every case is unit-tested.
pub fn decide(method: &str, target: &str, allow: &Allow) -> Decision {
    let (host, port, path) = if method.eq_ignore_ascii_case("CONNECT") {
        match split_host_port(target, 443) {
            Some((h, p)) => (h, p, None),
            None => return Decision::Refuse(400, format!("`{target}` is not host:port")),
        }
    } else {
        let Ok(url) = url::Url::parse(target) else {
            return Decision::Refuse(
                400,
                "a proxy request names an absolute http:// URL".to_string(),
            );
        };
        if url.scheme() != "http" {
            return Decision::Refuse(400, format!("scheme {} is not proxied", url.scheme()));
        }
        let Some(h) = url.host_str() else {
            return Decision::Refuse(400, "the URL has no host".into());
        };
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        (h.to_ascii_lowercase(), url.port().unwrap_or(80), Some(path))
    };
    let wanted = format!("{host}:{port}");
    if !allow.hosts.iter().any(|a| a.eq_ignore_ascii_case(&wanted)) {
        let allowed = if allow.hosts.is_empty() {
            "none".to_string()
        } else {
            allow.hosts.join(", ")
        };
        return Decision::Refuse(
            403,
            format!(
                "imgforge build proxy: {wanted} is not in [build.local] allow_hosts (allowed: {allowed})"
            ),
        );
    }
    match path {
        None => Decision::Tunnel { host, port },
        Some(path) => Decision::Forward { host, port, path },
    }
}

fn split_host_port(s: &str, default: u16) -> Option<(String, u16)> {
    let (h, p) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (s, default),
    };
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    ok.then(|| (h.to_ascii_lowercase(), p))
}

/// Serves one guest connection: one request, then the relay, then close.
pub fn serve(dir: &Path, sock: std::os::unix::net::UnixStream) -> std::io::Result<()> {
    let allow: Allow =
        serde_json::from_slice(&crate::util::fsutil::read_input(&dir.join("proxy.json"))?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut out = sock.try_clone()?;
    let mut input = BufReader::new(sock.try_clone()?);
    let Some(req) = read_request(&mut input)? else {
        return Ok(());
    };
    let decision = decide(&req.method, &req.target, &allow);
    let (status, upstream) = match &decision {
        Decision::Refuse(status, _) => (*status, None),
        Decision::Tunnel { host, port } | Decision::Forward { host, port, .. } => {
            match connect(host, *port) {
                Ok(s) => (200, Some(s)),
                Err(_) => (502, None),
            }
        }
    };
    log(dir, &req.method, &req.target, status)?;
    let Some(mut up) = upstream else {
        let body = match decision {
            Decision::Refuse(_, why) => why,
            _ => "imgforge build proxy: the upstream did not answer".to_string(),
        };
        write!(
            out,
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            if status == 403 {
                "Forbidden"
            } else if status == 502 {
                "Bad Gateway"
            } else {
                "Bad Request"
            },
            body.len()
        )?;
        return Ok(());
    };
    match decision {
        Decision::Tunnel { .. } => {
            out.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
            out.flush()?;
        }
        Decision::Forward { host, path, .. } => {
            let mut head = format!("{} {path} HTTP/1.1\r\nHost: {host}\r\n", req.method);
            for (k, v) in &req.headers {
                let hop = [
                    "host",
                    "connection",
                    "proxy-connection",
                    "keep-alive",
                    "proxy-authorization",
                ];
                if !hop.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
            }
            head.push_str("Connection: close\r\n\r\n");
            up.write_all(head.as_bytes())?;
            up.write_all(&req.body)?;
        }
        Decision::Refuse(..) => unreachable!("refusals returned above"),
    }
    relay(input, out, up)
}

fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("no address");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_DEADLINE) {
            Ok(s) => {
                s.set_read_timeout(Some(IDLE))?;
                s.set_write_timeout(Some(IDLE))?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Bytes both ways until either side ends or stalls for `IDLE`. What the
/// guest sent after the head (already buffered) goes first.
fn relay(
    mut guest_in: BufReader<std::os::unix::net::UnixStream>,
    mut guest_out: std::os::unix::net::UnixStream,
    up: TcpStream,
) -> std::io::Result<()> {
    let _ = guest_out.set_read_timeout(Some(IDLE));
    let mut up_write = up.try_clone()?;
    let pending = guest_in.buffer().to_vec();
    guest_in.consume(pending.len());
    let upward = std::thread::spawn(move || {
        let _ = up_write.write_all(&pending);
        let _ = std::io::copy(&mut guest_in.get_mut(), &mut up_write);
        let _ = up_write.shutdown(std::net::Shutdown::Write);
    });
    let mut up_read = up;
    let _ = std::io::copy(&mut up_read, &mut guest_out);
    let _ = guest_out.shutdown(std::net::Shutdown::Both);
    let _ = upward.join();
    Ok(())
}

fn log(dir: &Path, method: &str, target: &str, status: u16) -> std::io::Result<()> {
    let ex = Exchange {
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        role: "proxy".into(),
        method: method.chars().take(16).collect(),
        path: target.chars().take(256).collect(),
        status,
        agent: String::new(),
        state: None,
        detail: None,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("requests.jsonl"))?;
    // One write per line: O_APPEND keeps concurrent stand-ins' lines whole.
    f.write_all(format!("{}\n", serde_json::to_string(&ex).expect("plain data")).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn allow() -> Allow {
        Allow {
            hosts: vec!["deb.debian.org:80".into(), "deb.debian.org:443".into()],
        }
    }

    #[test]
    fn only_allowed_host_and_port_pairs_pass() {
        let a = allow();
        let rows: &[(&str, &str, Decision)] = &[
            (
                "GET",
                "http://deb.debian.org/debian/dists/bookworm/InRelease",
                Decision::Forward {
                    host: "deb.debian.org".into(),
                    port: 80,
                    path: "/debian/dists/bookworm/InRelease".into(),
                },
            ),
            (
                "CONNECT",
                "deb.debian.org:443",
                Decision::Tunnel {
                    host: "deb.debian.org".into(),
                    port: 443,
                },
            ),
            // Case does not matter; the query is kept.
            (
                "GET",
                "http://DEB.debian.org/x?y=1",
                Decision::Forward {
                    host: "deb.debian.org".into(),
                    port: 80,
                    path: "/x?y=1".into(),
                },
            ),
        ];
        for (m, t, want) in rows {
            assert_eq!(&decide(m, t, &a), want, "{m} {t}");
        }
        for (m, t, status) in [
            ("GET", "http://download.docker.com/linux/debian/gpg", 403),
            ("CONNECT", "download.docker.com:443", 403),
            // The right host on another port is another destination.
            ("CONNECT", "deb.debian.org:22", 403),
            ("GET", "http://deb.debian.org:8080/", 403),
            // Not a proxy request, not http, not a host.
            ("GET", "/debian/dists", 400),
            ("GET", "ftp://deb.debian.org/", 400),
            ("CONNECT", "deb.debian.org:notaport", 400),
            ("CONNECT", "a b:443", 400),
            // An address inside the guest network is not an escape hatch.
            ("CONNECT", "127.0.0.1:22", 403),
        ] {
            match decide(m, t, &a) {
                Decision::Refuse(s, why) => {
                    assert_eq!(s, status, "{m} {t}: {why}");
                    if s == 403 {
                        assert!(why.contains("allow_hosts"), "{why}");
                    }
                }
                other => panic!("{m} {t} passed: {other:?}"),
            }
        }
        let none = Allow { hosts: vec![] };
        match decide("CONNECT", "deb.debian.org:443", &none) {
            Decision::Refuse(403, why) => assert!(why.contains("allowed: none"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_request_is_answered_403_and_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("proxy.json"),
            serde_json::to_vec(&allow()).unwrap(),
        )
        .unwrap();
        let (mut guest, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        guest
            .write_all(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
            .unwrap();
        serve(tmp.path(), ours).unwrap();
        let mut answer = String::new();
        guest.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
        assert!(answer.contains("evil.example:443 is not in [build.local] allow_hosts"));
        let log = super::super::standin::exchanges(&tmp.path().join("requests.jsonl"));
        assert_eq!(log.len(), 1);
        assert_eq!((log[0].role.as_str(), log[0].status), ("proxy", 403));
    }

    #[test]
    fn an_allowed_request_is_relayed_to_its_upstream_with_the_path_only() {
        // A loopback upstream stands in for the archive.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
            head
        });
        let tmp = tempfile::tempdir().unwrap();
        let allow = Allow {
            hosts: vec![format!("127.0.0.1:{port}")],
        };
        std::fs::write(
            tmp.path().join("proxy.json"),
            serde_json::to_vec(&allow).unwrap(),
        )
        .unwrap();
        let (mut guest, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        write!(
            guest,
            "GET http://127.0.0.1:{port}/debian/x HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Connection: keep-alive\r\n\r\n"
        )
        .unwrap();
        serve(tmp.path(), ours).unwrap();
        let mut answer = String::new();
        guest.read_to_string(&mut answer).unwrap();
        assert!(answer.ends_with("hello"), "{answer}");
        let head = upstream.join().unwrap();
        assert!(head.starts_with("GET /debian/x HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Connection: close"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("proxy-connection"),
            "{head}"
        );
    }
}
