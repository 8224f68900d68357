//! Loopback stand-ins for the two Azure endpoints a Linux VM talks to at
//! first boot, and for an outbound HTTPS peer: one process per guest
//! connection (QEMU's `guestfwd=…-cmd:`), speaking HTTP/1.1 on its standard
//! input and output, answering from `guest.json` and appending each exchange
//! to `requests.jsonl` for the boot check to read.
//!
//! Shapes, from the published protocol (read, not copied):
//! - IMDS (learn.microsoft.com "Azure Instance Metadata Service for Linux"):
//!   `GET /metadata/instance[/compute|/network]?api-version=…` with the
//!   header `Metadata: true`. It **refuses** as the service does: no
//!   `Metadata: true` header, an `X-Forwarded-For` header, or a missing or
//!   unknown api-version get 400 with IMDS's error body; another method
//!   gets 405.
//! - The wire server (WALinuxAgent's `protocol/wire.py`, cloud-init's
//!   `sources/helpers/azure.py`): `GET /?comp=versions`,
//!   `GET /machine/?comp=goalstate` (GoalState: incarnation, container id,
//!   role instance id, configuration URLs), the three configuration
//!   documents the agent fetches, and `POST /machine?comp=health` (the
//!   provisioning's Ready or NotReady report, which this stand-in records).
//! - Egress: any bytes on TCP 443 get one line back (the guest's outbound
//!   check; no TLS, the check is the admitted connection).
//!
//! Written by hand: an HTTP/1.1 server crate would bring a runtime to answer
//! one connection on a socket QEMU already opened; the parser here is
//! bounded (16 KiB of headers, 1 MiB of body, 30 s per read).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::provision::{Guest, xml_text};

/// The api-versions this stand-in serves (a subset of IMDS's list; the
/// versions cloud-init 22–24 and WALinuxAgent ask for are in it).
pub const IMDS_VERSIONS: &[&str] = &[
    "2019-06-01",
    "2020-09-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-12-13",
    "2023-07-01",
];

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const READ_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Wire,
    Imds,
    Egress,
    /// The base-image build's allow-listed proxy (`proxy`).
    Proxy,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "wire" => Some(Role::Wire),
            "imds" => Some(Role::Imds),
            "egress" => Some(Role::Egress),
            "proxy" => Some(Role::Proxy),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Role::Wire => "wire",
            Role::Imds => "imds",
            Role::Egress => "egress",
            Role::Proxy => "proxy",
        }
    }
}

/// One request and its answer, as recorded in `requests.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Exchange {
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub role: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    #[serde(default)]
    pub agent: String,
    /// A health report's `<State>` (Ready, NotReady).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// A health report's `<Description>` (why provisioning failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }
    fn xml(body: String) -> Response {
        Response::new(200, "text/xml; charset=utf-8", body)
    }
    fn imds_error(status: u16, message: &str) -> Response {
        let body = serde_json::json!({ "error": message, "newest-versions": newest_versions() });
        Response::new(status, "application/json; charset=utf-8", body.to_string())
    }
}

fn newest_versions() -> Vec<&'static str> {
    IMDS_VERSIONS.iter().rev().take(3).copied().collect()
}

/// Reads one request; `Ok(None)` at a clean end of the connection.
pub fn read_request(r: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(bad("connection closed inside a request head"))
            };
        }
        if head.is_empty() && (line == b"\r\n" || line == b"\n") {
            continue; // stray blank lines between requests
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(bad("request head over 16 KiB"));
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let start = lines.next().unwrap_or("");
    let mut parts = start.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not HTTP/1.x"));
    }
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(bad("chunked bodies are not served"));
    }
    let len: usize = match req.header("content-length") {
        None => 0,
        Some(v) => v.parse().map_err(|_| bad("bad Content-Length"))?,
    };
    if len > MAX_BODY {
        return Err(bad("request body over 1 MiB"));
    }
    req.body.resize(len, 0);
    r.read_exact(&mut req.body)?;
    Ok(Some(req))
}

/// The answer to one request; pure, so every route is unit-tested.
pub fn respond(role: Role, req: &Request, g: &Guest) -> Response {
    match role {
        Role::Imds => imds(req, g),
        Role::Wire => wire(req, g),
        // Served in `serve` (not HTTP); an HTTP request there gets the same line.
        Role::Egress => Response::new(200, "text/plain", "imgforge-egress\n"),
        // Served by `proxy::serve`; reached here only through `serve`.
        Role::Proxy => Response::new(405, "text/plain", "the proxy is served by proxy::serve\n"),
    }
}

fn imds(req: &Request, g: &Guest) -> Response {
    if req.header("x-forwarded-for").is_some() {
        return Response::imds_error(
            400,
            "Bad request. Requests with X-Forwarded-For are rejected",
        );
    }
    if req
        .header("metadata")
        .map(str::to_ascii_lowercase)
        .as_deref()
        != Some("true")
    {
        return Response::imds_error(400, "Bad request. Required metadata header not specified");
    }
    if req.method != "GET" {
        return Response::imds_error(405, "Method not allowed");
    }
    match req.query("api-version") {
        None => {
            return Response::imds_error(
                400,
                "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
            );
        }
        Some(v) if !IMDS_VERSIONS.contains(&v.as_str()) => {
            return Response::imds_error(
                400,
                "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds",
            );
        }
        Some(_) => {}
    }
    let doc = instance(g);
    let rest = req.path().trim_end_matches('/');
    let Some(rest) = rest.strip_prefix("/metadata/instance") else {
        return Response::imds_error(404, "Not found");
    };
    let mut node = &doc;
    for key in rest.split('/').filter(|k| !k.is_empty()) {
        node = match node {
            serde_json::Value::Object(m) => match m.get(key) {
                Some(v) => v,
                None => return Response::imds_error(404, "Not found"),
            },
            serde_json::Value::Array(a) => match key.parse::<usize>().ok().and_then(|i| a.get(i)) {
                Some(v) => v,
                None => return Response::imds_error(404, "Not found"),
            },
            _ => return Response::imds_error(404, "Not found"),
        };
    }
    if req.query("format").as_deref() == Some("text") {
        return match node {
            serde_json::Value::String(s) => {
                Response::new(200, "text/plain; charset=utf-8", s.clone())
            }
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                Response::imds_error(400, "Bad request. The text format is only for a leaf")
            }
            other => Response::new(200, "text/plain; charset=utf-8", other.to_string()),
        };
    }
    Response::new(200, "application/json; charset=utf-8", node.to_string())
}

/// The instance document, with the fields cloud-init and the agent read.
pub fn instance(g: &Guest) -> serde_json::Value {
    serde_json::json!({
        "compute": {
            "azEnvironment": "AzurePublicCloud",
            "location": g.location,
            "name": g.hostname,
            "osType": "Linux",
            "vmId": g.vm_id,
            "vmSize": g.vm_size,
            "osProfile": {
                "adminUsername": g.user,
                "computerName": g.hostname,
                "disablePasswordAuthentication": "true"
            },
            "publicKeys": [{
                "keyData": g.public_key,
                "path": format!("/home/{}/.ssh/authorized_keys", g.user)
            }],
            "resourceGroupName": "imgforge-boot-check",
            "subscriptionId": "00000000-0000-0000-0000-000000000000",
            "tags": "",
            "zone": ""
        },
        "network": {
            "interface": [{
                "ipv4": {
                    "ipAddress": [{ "privateIpAddress": "160.0.0.15", "publicIpAddress": "" }],
                    "subnet": [{ "address": "160.0.0.0", "prefix": "4" }]
                },
                "ipv6": { "ipAddress": [] },
                "macAddress": g.mac
            }]
        }
    })
}

fn wire(req: &Request, g: &Guest) -> Response {
    let comp = req.query("comp");
    match (req.method.as_str(), comp.as_deref()) {
        ("GET", Some("versions")) => Response::xml(
            r#"<?xml version="1.0" encoding="utf-8"?>
<Versions><Preferred><Version>2012-11-30</Version></Preferred><Supported><Version>2012-11-30</Version><Version>2010-12-15</Version><Version>2010-28-10</Version></Supported></Versions>"#
                .to_string(),
        ),
        ("GET", Some("goalstate")) => Response::xml(goal_state(g)),
        ("GET", Some("config")) => match req.query("type").as_deref() {
            Some("hostingEnvironmentConfig") => Response::xml(format!(
                r#"<?xml version="1.0" encoding="utf-8"?>
<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="1"><StoredCertificates /><Deployment name="{c}" guid="{{{c}}}" incarnation="0"><Service name="imgforge" guid="{{00000000-0000-0000-0000-000000000000}}" /><ServiceInstance name="{c}.0" guid="{{{c}}}" /></Deployment><Incarnation number="1" instance="{h}" guid="{{{v}}}" /><Role guid="{{{v}}}" name="{h}" hostingEnvironmentVersion="1" software="" softwareType="ApplicationPackage" entryPoint="" parameters="" settleTimeSeconds="10" /><HostingEnvironmentSettings name="full" Runtime="rd_fabric_stable.imgforge"><CAS mode="full" /><PrivilegeLevel mode="max" /><AdditionalProperties><CgiHandlers></CgiHandlers></AdditionalProperties></HostingEnvironmentSettings><ApplicationSettings /><ResourceReferences /></HostingEnvironmentConfig>"#,
                c = xml_text(&g.container_id),
                v = xml_text(&g.vm_id),
                h = xml_text(&g.hostname),
            )),
            Some("sharedConfig") => Response::xml(format!(
                r#"<?xml version="1.0" encoding="utf-8"?>
<SharedConfig version="1.0.0.0" goalStateIncarnation="1"><Deployment name="{c}" guid="{{{c}}}" incarnation="0" isNonCancellableTopologyChangeEnabled="false"><Service name="imgforge" guid="{{00000000-0000-0000-0000-000000000000}}" /><ServiceInstance name="{c}.0" guid="{{{c}}}" /></Deployment><Incarnation number="1" instance="{h}" guid="{{{v}}}" /><Role guid="{{{v}}}" name="{h}" settleTimeSeconds="10" /><Instances><Instance id="{h}" address="160.0.0.15"><FaultDomains randomId="0" updateId="0" /><InputEndpoints /></Instance></Instances></SharedConfig>"#,
                c = xml_text(&g.container_id),
                v = xml_text(&g.vm_id),
                h = xml_text(&g.hostname),
            )),
            Some("extensionsConfig") => Response::xml(
                r#"<?xml version="1.0" encoding="utf-8"?>
<Extensions version="1.0.0.0" goalStateIncarnation="1"><GuestAgentExtension xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><GAFamilies /></GuestAgentExtension><StatusUploadBlob statusBlobType="BlockBlob"></StatusUploadBlob></Extensions>"#
                    .to_string(),
            ),
            _ => Response::new(404, "text/plain", "no such configuration"),
        },
        ("POST", Some("health" | "telemetrydata" | "roleProperties")) => {
            Response::new(200, "text/plain", "")
        }
        (_, Some(_)) | (_, None) => Response::new(400, "text/plain", "unsupported request"),
    }
}

/// The goal state: one started role instance with its configuration URLs.
pub fn goal_state(g: &Guest) -> String {
    let url = |t: &str| {
        format!(
            "http://{}:80/machine/{}/{}?comp=config&amp;type={t}&amp;incarnation=1",
            super::provision::WIRE_SERVER,
            xml_text(&g.container_id),
            xml_text(&g.instance_id)
        )
    };
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <Version>2012-11-30</Version>
  <Incarnation>1</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts><Port>16001</Port></LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>{c}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{i}</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>{hec}</HostingEnvironmentConfig>
          <SharedConfig>{sc}</SharedConfig>
          <ExtensionsConfig>{ec}</ExtensionsConfig>
          <FullConfig>{fc}</FullConfig>
          <ConfigName>{i}.1.xml</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"#,
        c = xml_text(&g.container_id),
        i = xml_text(&g.instance_id),
        hec = url("hostingEnvironmentConfig"),
        sc = url("sharedConfig"),
        ec = url("extensionsConfig"),
        fc = url("fullConfig"),
    )
}

/// The text of the first `<tag>…</tag>` in a small XML document (health
/// reports are a few hundred bytes; entities are decoded).
fn element(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    let text = xml[start..end].trim();
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
            .chars()
            .take(512)
            .collect(),
    )
}

fn record(role: Role, req: &Request, resp: &Response) -> Exchange {
    let body = String::from_utf8_lossy(&req.body);
    let health = role == Role::Wire && req.query("comp").as_deref() == Some("health");
    Exchange {
        at: now(),
        role: role.name().to_string(),
        method: req.method.chars().take(16).collect(),
        path: req.target.chars().take(256).collect(),
        status: resp.status,
        agent: req
            .header("user-agent")
            .unwrap_or("")
            .chars()
            .take(64)
            .collect(),
        state: health.then(|| element(&body, "State")).flatten(),
        detail: health.then(|| element(&body, "Description")).flatten(),
    }
}

/// Serves one connection: requests until the peer closes or stalls.
pub fn serve(
    role: Role,
    dir: &Path,
    input: impl Read,
    mut output: impl Write,
) -> std::io::Result<()> {
    let guest: Guest =
        serde_json::from_slice(&crate::util::fsutil::read_input(&dir.join("guest.json"))?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("requests.jsonl"))?;
    let mut input = BufReader::new(input);
    if role == Role::Egress {
        // Not HTTP: whatever arrives first is answered with one line.
        let mut first = [0u8; 256];
        let _ = input.read(&mut first)?;
        output.write_all(b"imgforge-egress\n")?;
        let ex = Exchange {
            at: now(),
            role: role.name().into(),
            method: "TCP".into(),
            path: ":443".into(),
            status: 200,
            agent: String::new(),
            state: None,
            detail: None,
        };
        writeln!(log, "{}", serde_json::to_string(&ex).expect("plain data"))?;
        return Ok(());
    }
    while let Some(req) = read_request(&mut input)? {
        let resp = respond(role, &req, &guest);
        let ex = record(role, &req, &resp);
        // One write per line: O_APPEND keeps concurrent stand-ins' lines whole.
        log.write_all(format!("{}\n", serde_json::to_string(&ex).expect("plain data")).as_bytes())?;
        let close = req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        write!(
            output,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nServer: imgforge-boot-stand-in\r\n{}\r\n",
            resp.status,
            reason(resp.status),
            resp.content_type,
            resp.body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )?;
        output.write_all(&resp.body)?;
        output.flush()?;
        if close {
            break;
        }
    }
    Ok(())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

/// `imgforge boot-stand-in ROLE DIR`: QEMU runs it per guest connection with
/// the connection as standard input and output (a Unix socket, given a read
/// deadline so a stalled guest cannot keep it forever).
pub fn serve_stdio(role: Role, dir: &Path) -> std::io::Result<()> {
    use std::os::fd::FromRawFd;
    // SAFETY: fd 0 is open for the life of the process; the stream is
    // leaked below, never closing it twice.
    let sock = unsafe { std::os::unix::net::UnixStream::from_raw_fd(0) };
    let _ = sock.set_read_timeout(Some(READ_DEADLINE));
    let _ = sock.set_write_timeout(Some(READ_DEADLINE));
    if role == Role::Proxy {
        // The relay owns the stream (and closes fd 0 when it ends).
        return super::proxy::serve(dir, sock);
    }
    let out = sock.try_clone()?;
    let result = serve(role, dir, &sock, out);
    std::mem::forget(sock);
    result
}

/// What the stand-ins recorded, in order; a line that does not parse (a
/// stand-in killed mid-write) is skipped. Bounded: the first 4 MiB.
pub fn exchanges(path: &Path) -> Vec<Exchange> {
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(4 * 1024 * 1024).read_to_string(&mut text);
    }
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> Guest {
        serde_json::from_value(serde_json::json!({
            "user": "imgforge", "hostname": "imgforge-0123abcd",
            "vm_id": "0123abcd-4567-489a-8bcd-ef0123456789",
            "container_id": "6b3b7a52-0000-4000-8000-00000000c0de",
            "instance_id": "896ab2a1-0000-4000-8000-000000001d00._imgforge-boot",
            "mac": "6045BD0A0B0C", "public_key": "ssh-ed25519 AAAA k",
            "location": "westus2", "vm_size": "Standard_D2s_v5"
        }))
        .unwrap()
    }

    fn req(text: &str) -> Request {
        read_request(&mut text.as_bytes()).unwrap().unwrap()
    }

    /// cloud-init 22.4's first IMDS request (recorded from the Debian 12
    /// image's first boot under this stand-in).
    const CLOUD_INIT_IMDS: &str = "GET /metadata/instance?api-version=2021-08-01&extended=true HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: Cloud-Init/22.4.2\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\nMetadata: true\r\n\r\n";

    #[test]
    fn imds_answers_cloud_inits_request_with_the_guests_identity() {
        let r = respond(Role::Imds, &req(CLOUD_INIT_IMDS), &guest());
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["compute"]["osProfile"]["adminUsername"], "imgforge");
        assert_eq!(
            v["compute"]["publicKeys"][0]["keyData"],
            "ssh-ed25519 AAAA k"
        );
        assert_eq!(v["network"]["interface"][0]["macAddress"], "6045BD0A0B0C");
        let leaf = respond(
            Role::Imds,
            &req(
                "GET /metadata/instance/compute/vmSize?api-version=2021-02-01&format=text HTTP/1.1\r\nMetadata: true\r\n\r\n",
            ),
            &guest(),
        );
        assert_eq!(
            (leaf.status, leaf.body.as_slice()),
            (200, &b"Standard_D2s_v5"[..])
        );
    }

    #[test]
    fn imds_refuses_what_the_service_refuses() {
        let g = guest();
        let no_header = CLOUD_INIT_IMDS.replace("Metadata: true\r\n", "");
        let forwarded = CLOUD_INIT_IMDS.replace(
            "Metadata: true",
            "Metadata: true\r\nX-Forwarded-For: 1.2.3.4",
        );
        let no_version = CLOUD_INIT_IMDS.replace("api-version=2021-08-01&", "");
        let bad_version = CLOUD_INIT_IMDS.replace("2021-08-01", "2099-01-01");
        for (text, want) in [
            (no_header, "metadata header"),
            (forwarded, "X-Forwarded-For"),
            (no_version, "api-version was not specified"),
            (bad_version, "api-version is invalid"),
        ] {
            let r = respond(Role::Imds, &req(&text), &g);
            assert_eq!(r.status, 400, "{text}");
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert!(v["error"].as_str().unwrap().contains(want), "{v}");
            assert_eq!(v["newest-versions"][0], "2023-07-01");
        }
        let post = CLOUD_INIT_IMDS.replace("GET", "POST");
        assert_eq!(respond(Role::Imds, &req(&post), &g).status, 405);
        let other = CLOUD_INIT_IMDS.replace("/metadata/instance", "/metadata/nothing");
        assert_eq!(respond(Role::Imds, &req(&other), &g).status, 404);
    }

    #[test]
    fn the_wire_server_serves_the_goal_state_and_records_the_ready_report() {
        let g = guest();
        let gs = respond(
            Role::Wire,
            &req(
                "GET /machine/?comp=goalstate HTTP/1.1\r\nx-ms-agent-name: WALinuxAgent\r\nx-ms-version: 2012-11-30\r\n\r\n",
            ),
            &g,
        );
        let text = String::from_utf8(gs.body).unwrap();
        assert_eq!(element(&text, "ContainerId").unwrap(), g.container_id);
        assert_eq!(element(&text, "InstanceId").unwrap(), g.instance_id);
        assert_eq!(element(&text, "Incarnation").unwrap(), "1");
        // The configuration URLs point back at the wire server and are served.
        let hec = element(&text, "HostingEnvironmentConfig").unwrap();
        let path = hec.strip_prefix("http://168.63.129.16:80").unwrap();
        let doc = respond(
            Role::Wire,
            &req(&format!("GET {path} HTTP/1.1\r\n\r\n")),
            &g,
        );
        assert_eq!(doc.status, 200);
        assert!(String::from_utf8_lossy(&doc.body).contains("<HostingEnvironmentConfig"));
        // cloud-init's report (its template, with a failure's details).
        let report = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Health><GoalStateIncarnation>1</GoalStateIncarnation><Container><ContainerId>c</ContainerId><RoleInstanceList><Role><InstanceId>i</InstanceId><Health><State>NotReady</State><Details><SubStatus>ProvisioningFailed</SubStatus><Description>failure to find DHCP interface &amp; more</Description></Details></Health></Role></RoleInstanceList></Container></Health>";
        let post = format!(
            "POST /machine?comp=health HTTP/1.1\r\nUser-Agent: Cloud-Init/22.4.2\r\nContent-Length: {}\r\n\r\n{report}",
            report.len()
        );
        let r = req(&post);
        let resp = respond(Role::Wire, &r, &g);
        assert_eq!(resp.status, 200);
        let ex = record(Role::Wire, &r, &resp);
        assert_eq!(ex.state.as_deref(), Some("NotReady"));
        assert_eq!(
            ex.detail.as_deref(),
            Some("failure to find DHCP interface & more")
        );
        assert_eq!(ex.agent, "Cloud-Init/22.4.2");
    }

    #[test]
    fn a_connection_serves_several_requests_and_bounds_hostile_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("guest.json"),
            serde_json::to_vec(&guest()).unwrap(),
        )
        .unwrap();
        let two = format!("{CLOUD_INIT_IMDS}{CLOUD_INIT_IMDS}");
        let mut out = Vec::new();
        serve(Role::Imds, dir.path(), two.as_bytes(), &mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        let ex = exchanges(&dir.path().join("requests.jsonl"));
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].role, "imds");
        // A head without end, a huge body, a chunked body: refused, not read whole.
        let endless = "GET / HTTP/1.1\r\nX: ".to_string() + &"a".repeat(20_000);
        assert!(read_request(&mut endless.as_bytes()).is_err());
        let huge = "POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n";
        assert!(read_request(&mut huge.as_bytes()).is_err());
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(read_request(&mut chunked.as_bytes()).is_err());
        assert!(read_request(&mut "garbage\r\n\r\n".as_bytes()).is_err());
        assert!(read_request(&mut "".as_bytes()).unwrap().is_none());
    }
}
