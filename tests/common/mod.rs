//! Helpers shared by the integration tests: the real imgforge binary, real
//! Packer and shellcheck, temporary directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod compute;
pub mod proxy;
use proxy::read_request;
#[allow(unused_imports)]
pub use proxy::{FaultProxy, PageFromUrl};

pub const CANARY: &str = "canary-S3cr3t-7f1d2c9a";

/// The service principal every test's environment names (its secret is the canary).
pub const ENV_CLIENT_ID: &str = "00000000-0000-0000-0000-000000000001";
pub const ENV_TENANT_ID: &str = "00000000-0000-0000-0000-000000000002";

/// A loopback port nothing listens on (the discard port, never served here).
pub const NOWHERE: &str = "http://127.0.0.1:9";

pub fn imgforge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgforge"));
    cmd.env("ARM_CLIENT_SECRET", CANARY)
        .env("ARM_CLIENT_ID", ENV_CLIENT_ID)
        .env("ARM_TENANT_ID", ENV_TENANT_ID)
        .env(
            "ARM_SUBSCRIPTION_ID",
            "00000000-0000-0000-0000-000000000003",
        )
        // Nothing reaches Azure: a test that signs in names the loopback
        // stand-in; any other sign-in or Batch request meets a closed port.
        .env("AZURE_AUTHORITY_HOST", NOWHERE)
        .env("IMGFORGE_ARM_ENDPOINT", NOWHERE)
        .env("IMGFORGE_BATCH_URL", NOWHERE)
        .env("CHECKPOINT_DISABLE", "1")
        .env("NO_COLOR", "1")
        .env_remove("IMGFORGE_TEMPLATES")
        .env_remove("IMGFORGE_PACKER");
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("spawn");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn contrib_manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("contrib"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    assert!(v.len() >= 6, "contrib/ should hold the example manifests");
    v
}

pub fn write(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

/// Every file under `dir`, as (relative path, bytes).
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

pub fn assert_no_canary(dir: &Path) {
    for (rel, bytes) in files(dir) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(CANARY), "the secret leaked into {rel}");
    }
}

/// The real `packer validate`, run from the template's directory.
pub fn packer_validate(dir: &Path) -> Run {
    run(Command::new("packer")
        .args(["validate", "packer.json"])
        .current_dir(dir)
        // Nothing reaches Azure: a test that signs in names the loopback
        // stand-in; any other sign-in or Batch request meets a closed port.
        .env("AZURE_AUTHORITY_HOST", NOWHERE)
        .env("IMGFORGE_ARM_ENDPOINT", NOWHERE)
        .env("IMGFORGE_BATCH_URL", NOWHERE)
        .env("CHECKPOINT_DISABLE", "1"))
}

/// shellcheck on every rendered script: the provisioning scripts and, for
/// the local builder, its steps.
pub fn shellcheck(dir: &Path) -> Run {
    let scripts: Vec<PathBuf> = ["scripts", "local"]
        .iter()
        .flat_map(|sub| {
            std::fs::read_dir(dir.join(sub))
                .map(|rd| rd.map(|e| e.unwrap().path()).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    let mut scripts: Vec<PathBuf> = scripts
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    if scripts.is_empty() {
        return Run {
            code: 0,
            stdout: String::new(),
            stderr: String::new(),
        };
    }
    run(Command::new("shellcheck").args(&scripts))
}

pub const MINIMAL: &str = r#"
[image]
name = "t1"
os = "linux"
distro = "ubuntu-22.04"

[build]
location = "eastus"
resource_group = "rg"
storage_account = "acct"
capture_container = "images"
"#;

/// The real Azure Storage emulator (Azurite, pinned in package.json), on a free
/// loopback port, with one account per name. Stopped when dropped.
pub struct Azurite {
    child: std::process::Child,
    pub port: u16,
    pub keys: Vec<(String, String)>,
    /// With TLS (and OAuth): the certificate clients must trust.
    pub ca: Option<PathBuf>,
}

/// A self-signed certificate and key for 127.0.0.1, made with openssl.
pub fn loopback_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let r = run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        // An end-entity certificate (webpki refuses a CA certificate as a server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert_eq!(r.code, 0, "openssl: {}", r.all());
    (cert, key)
}

fn random_key() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `Azurite::start_sized`'s limit for the next start (0: Azurite's default).
static EXTENT_LIMIT_MIB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Azurite {
    /// The emulator's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(accounts: &[&str]) -> Azurite {
        Azurite::start_with(accounts, None)
    }

    /// With room for `mib` MiB of blob data (the in-memory store's default
    /// limit is half the machine's memory): the fan-out benchmark's 50 copies.
    pub fn start_sized(accounts: &[&str], mib: u64) -> Azurite {
        EXTENT_LIMIT_MIB.store(mib, std::sync::atomic::Ordering::SeqCst);
        let az = Azurite::start_with(accounts, None);
        EXTENT_LIMIT_MIB.store(0, std::sync::atomic::Ordering::SeqCst);
        az
    }

    /// Over https with `--oauth basic`: Entra ID bearer tokens are accepted
    /// (their audience, issuer and lifetime checked; not their signature).
    pub fn start_oauth(accounts: &[&str], cert: &Path, key: &Path) -> Azurite {
        Azurite::start_with(accounts, Some((cert, key)))
    }

    fn start_with(accounts: &[&str], tls: Option<(&Path, &Path)>) -> Azurite {
        let extent_limit = EXTENT_LIMIT_MIB.load(std::sync::atomic::Ordering::SeqCst);
        use std::io::BufRead;
        let bin = repo().join("node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "Azurite is not installed: run `npm ci` in the repository (see .ci/run)"
        );
        let keys: Vec<(String, String)> = accounts
            .iter()
            .map(|a| (a.to_string(), random_key()))
            .collect();
        let spec = keys
            .iter()
            .map(|(a, k)| format!("{a}:{k}"))
            .collect::<Vec<_>>()
            .join(";");
        let workdir = std::env::temp_dir().join(format!("imgforge-azurite-{}", std::process::id()));
        std::fs::create_dir_all(&workdir).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]);
        if extent_limit > 0 {
            cmd.arg("--extentMemoryLimit").arg(extent_limit.to_string());
        }
        if let Some((cert, key)) = tls {
            cmd.args(["--oauth", "basic", "--cert"])
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
        let mut child = cmd
            .current_dir(&workdir)
            .env("AZURITE_ACCOUNTS", spec)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start azurite");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut port = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line
                .split("listens on http://127.0.0.1:")
                .nth(1)
                .or_else(|| line.split("listens on https://127.0.0.1:").nth(1))
            {
                port = rest.trim().parse().unwrap();
                break;
            }
        }
        assert!(port > 0, "Azurite did not report its port");
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Azurite {
            child,
            port,
            keys,
            ca: tls.map(|(cert, _)| cert.to_path_buf()),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.ca.is_some() { "https" } else { "http" }
    }

    pub fn endpoint_template(&self) -> String {
        format!("{}://127.0.0.1:{}/{{account}}", self.scheme(), self.port)
    }

    pub fn url(&self, account: &str, container: &str, blob: &str) -> String {
        format!(
            "{}://127.0.0.1:{}/{account}/{container}/{blob}",
            self.scheme(),
            self.port
        )
    }

    /// Keys and endpoint for imgforge (and the oracle).
    pub fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        for (a, k) in &self.keys {
            cmd.env(
                format!("IMGFORGE_STORAGE_KEY_{}", a.to_ascii_uppercase()),
                k,
            );
        }
        cmd.env("IMGFORGE_BLOB_ENDPOINT", self.endpoint_template())
    }

    /// Runs the independent client (Microsoft's @azure/storage-blob SDK).
    pub fn oracle(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("node");
        cmd.arg(repo().join("tests/support/blob-oracle.mjs"))
            .args(args);
        if let Some(ca) = &self.ca {
            cmd.env("NODE_EXTRA_CA_CERTS", ca);
        }
        let r = run(self.env(&mut cmd));
        assert_eq!(r.code, 0, "oracle {args:?}: {}", r.all());
        r.stdout.trim().to_string()
    }

    pub fn ranges(&self, url: &str) -> Vec<(u64, u64)> {
        let raw: Vec<(u64, u64)> = serde_json::from_str(&self.oracle(&["ranges", url])).unwrap();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, e) in raw {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out
    }

    pub fn download(&self, url: &str, to: &Path) -> Vec<u8> {
        self.oracle(&["download", url, to.to_str().unwrap()]);
        std::fs::read(to).unwrap()
    }

    pub fn props(&self, url: &str) -> serde_json::Value {
        serde_json::from_str(&self.oracle(&["props", url])).unwrap()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deterministic pseudo-random byte stream (xorshift64*), so fixtures differ
/// from run to run only when the seed does.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A real fixed VHD of `mib` MiB with data only where `islands` say:
/// (offset, length) pairs filled with noise; everything else stays sparse.
pub fn sparse_vhd(dir: &Path, name: &str, mib: u64, islands: &[(u64, usize)]) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let raw = dir.join(format!("{name}.raw"));
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(mib * 1024 * 1024).unwrap();
    for (i, (offset, len)) in islands.iter().enumerate() {
        f.write_all_at(&noise(i as u64 + 7, *len), *offset).unwrap();
    }
    drop(f);
    let vhd = dir.join(format!("{name}.vhd"));
    raw_to_fixed_vhd(&raw, &vhd);
    std::fs::remove_file(raw).unwrap();
    vhd
}

/// Runs `cmd` under GNU time (package `time`), returning its output and its
/// peak RSS in KiB. Not wait4 on our own child: a child spawned from this
/// process starts with this process's high-water RSS (vfork shares the
/// memory map until exec, and exec keeps the maximum), so a test holding a
/// 100 MB string would see 100 MB in every child. `time` is small and forks
/// the command itself, so the figure is the command's own.
pub fn run_measured(cmd: &mut std::process::Command) -> (Run, u64) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-o")
        .arg(out.path())
        .args(["-f", "%M"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let r = run(&mut timed);
    let text = std::fs::read_to_string(out.path()).unwrap_or_default();
    let kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("GNU time (apt-get install time) printed no peak RSS: {text:?}"));
    (r, kib)
}

/// The Resource Manager subscription the ARM fixtures describe.
pub const ARM_SUBSCRIPTION: &str = "7c1d0f2e-3a4b-4c5d-8e6f-90a1b2c3d4e5";

/// A loopback stand-in for Entra ID's token endpoint and Resource Manager's
/// storage account list, answering with the recorded shapes in
/// tests/fixtures/arm. It checks what a real one checks: the tenant, client
/// id and secret; the bearer token; the subscription.
pub struct ArmReplay {
    pub port: u16,
    /// Request lines and bodies, in arrival order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// The Microsoft.Compute provider's state (images, galleries, versions).
    pub compute: std::sync::Arc<compute::ComputeRp>,
}

pub struct ArmExpect {
    pub tenant: String,
    pub client_id: String,
    pub secret: String,
    /// Answer the list with 403 AuthorizationFailed (a principal without Reader).
    pub forbid_list: bool,
    /// The Batch account `imgbatch` (resource group `batch-westus2`):
    /// `UserSubscription` or `BatchService`.
    pub pool_allocation_mode: &'static str,
}

impl ArmExpect {
    /// What the environment of `imgforge()` signs in as; a Reader; a User
    /// Subscription Batch account.
    pub fn env_principal() -> ArmExpect {
        ArmExpect {
            tenant: ENV_TENANT_ID.into(),
            client_id: ENV_CLIENT_ID.into(),
            secret: CANARY.into(),
            forbid_list: false,
            pool_allocation_mode: "UserSubscription",
        }
    }
}

impl ArmReplay {
    pub fn start(expect: ArmExpect) -> ArmReplay {
        ArmReplay::start_with(expect, compute::Knobs::default())
    }

    pub fn start_with(expect: ArmExpect, knobs: compute::Knobs) -> ArmReplay {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let compute_rp = std::sync::Arc::new(compute::ComputeRp::new(knobs, ARM_SUBSCRIPTION));
        // The subscription's storage accounts, as the list fixtures hold them.
        let accounts: std::sync::Arc<Vec<compute::Account>> = std::sync::Arc::new(
            [
                "storage-accounts-page-1.json",
                "storage-accounts-page-2.json",
            ]
            .iter()
            .flat_map(|f| {
                let v: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(repo().join("tests/fixtures/arm").join(f)).unwrap(),
                )
                .unwrap();
                v["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        (
                            a["name"].as_str().unwrap().to_string(),
                            a["location"].as_str().unwrap().to_string(),
                            a["id"]
                                .as_str()
                                .unwrap()
                                .split('/')
                                .nth(4)
                                .unwrap()
                                .to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
        );
        let fixture = |name: &str| {
            std::fs::read_to_string(repo().join("tests/fixtures/arm").join(name))
                .unwrap()
                .replace("{{endpoint}}", &endpoint)
                .replace("{{subscription}}", ARM_SUBSCRIPTION)
        };
        let token_doc = fixture("token.json");
        let token: String =
            serde_json::from_str::<serde_json::Value>(&token_doc).unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_string();
        let answers = std::sync::Arc::new(
            [
                "token.json",
                "invalid-client-secret.json",
                "invalid-token.json",
                "authorization-failed.json",
                "subscription-not-found.json",
                "storage-accounts-page-1.json",
                "storage-accounts-page-2.json",
                "batch-account.json",
                "resource-not-found.json",
            ]
            .map(|n| (n, fixture(n)))
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        );
        let batch_answers = std::sync::Arc::new(
            [
                "supported-images-page-1.json",
                "supported-images-page-2.json",
                "authentication-failed.json",
            ]
            .map(|n| {
                let text = std::fs::read_to_string(repo().join("tests/fixtures/batch").join(n))
                    .unwrap()
                    .replace("{{endpoint}}", &endpoint);
                (n, text)
            })
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        );
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let expect = std::sync::Arc::new(expect);
        let compute_rp_thread = compute_rp.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let (answers, recorded, expect, token) = (
                    answers.clone(),
                    recorded.clone(),
                    expect.clone(),
                    token.clone(),
                );
                let (compute_rp, accounts, endpoint, batch_answers) = (
                    compute_rp_thread.clone(),
                    accounts.clone(),
                    endpoint.clone(),
                    batch_answers.clone(),
                );
                std::thread::spawn(move || {
                    let Some((head, body)) = read_request(&mut client) else {
                        return;
                    };
                    let line = head.lines().next().unwrap_or("").to_string();
                    let body = String::from_utf8_lossy(&body).into_owned();
                    recorded.lock().unwrap().push((line.clone(), body.clone()));
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                    };
                    let form: std::collections::HashMap<String, String> = body
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), imgforge::azure::http::percent_decode(v)))
                        .collect();
                    let token_path = format!("POST /{}/oauth2/v2.0/token ", expect.tenant);
                    let subscription = format!("GET /subscriptions/{ARM_SUBSCRIPTION}/");
                    let list_path = format!(
                        "GET /subscriptions/{ARM_SUBSCRIPTION}/providers/Microsoft.Storage/storageAccounts?"
                    );
                    // …/resourceGroups/{rg}/providers/Microsoft.Batch/batchAccounts/{name}?…
                    let batch_account = line
                        .strip_prefix(&subscription)
                        .and_then(|rest| rest.strip_prefix("resourceGroups/"))
                        .and_then(|rest| {
                            rest.split_once("/providers/Microsoft.Batch/batchAccounts/")
                        })
                        .map(|(rg, rest)| {
                            (
                                rg.to_string(),
                                rest.split('?').next().unwrap_or("").to_string(),
                            )
                        });
                    let authorized = header("authorization") == Some(format!("Bearer {token}"));
                    let (method, target) = {
                        let mut it = line.split(' ');
                        (it.next().unwrap_or(""), it.next().unwrap_or(""))
                    };
                    // Azure Batch's data plane: the account's supported images.
                    if let Some(query) = target.strip_prefix("/supportedimages?") {
                        let batch_token = format!("{token}.batch");
                        let (status, doc) = if header("authorization")
                            != Some(format!("Bearer {batch_token}"))
                        {
                            // Batch checks the token's audience: an ARM token is refused.
                            (
                                "401 Unauthorized",
                                batch_answers["authentication-failed.json"].clone(),
                            )
                        } else if !query
                            .split('&')
                            .any(|kv| kv == "api-version=2024-07-01.20.0")
                        {
                            (
                                "400 Bad Request",
                                batch_answers["authentication-failed.json"]
                                    .replace("AuthenticationFailed", "InvalidQueryParameterValue"),
                            )
                        } else if query.contains("$skiptoken=page2") {
                            (
                                "200 OK",
                                batch_answers["supported-images-page-2.json"].clone(),
                            )
                        } else {
                            let next = if compute_rp.knobs.batch_link_elsewhere {
                                "https://elsewhere.example.com/supportedimages?api-version=2024-07-01.20.0&$skiptoken=page2".to_string()
                            } else {
                                format!(
                                    "{endpoint}/supportedimages?api-version=2024-07-01.20.0&$skiptoken=page2"
                                )
                            };
                            (
                                "200 OK",
                                batch_answers["supported-images-page-1.json"]
                                    .replace("{{next_link}}", &next),
                            )
                        };
                        let _ = client.write_all(
                            format!(
                                "HTTP/1.1 {status}\r\ncontent-type: application/json;odata=minimalmetadata\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                                doc.len()
                            )
                            .as_bytes(),
                        );
                        return;
                    }
                    if authorized
                        && target.starts_with(&format!("/subscriptions/{ARM_SUBSCRIPTION}/"))
                        && let Some(a) =
                            compute_rp.handle(method, target, &body, &endpoint, &accounts)
                    {
                        let mut head = format!(
                            "HTTP/1.1 {}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
                            a.status,
                            a.body.len()
                        );
                        for (k, v) in &a.headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str("\r\n");
                        let _ = client.write_all(head.as_bytes());
                        let _ = client.write_all(a.body.as_bytes());
                        return;
                    }
                    let (status, name) = if line.starts_with("POST ") {
                        let good = line.starts_with(&token_path)
                            && form.get("grant_type").map(String::as_str)
                                == Some("client_credentials")
                            && form.get("client_id") == Some(&expect.client_id)
                            && form.get("client_secret") == Some(&expect.secret);
                        let storage_scope = form.get("scope").map(String::as_str)
                            == Some("https://storage.azure.com/.default");
                        let batch_scope = form.get("scope").map(String::as_str)
                            == Some("https://batch.core.windows.net//.default");
                        if good && storage_scope {
                            ("200 OK", "storage-token")
                        } else if good && batch_scope {
                            ("200 OK", "batch-token")
                        } else if good {
                            ("200 OK", "token.json")
                        } else {
                            ("401 Unauthorized", "invalid-client-secret.json")
                        }
                    } else if header("authorization") != Some(format!("Bearer {token}")) {
                        ("401 Unauthorized", "invalid-token.json")
                    } else if !line.starts_with(&subscription) {
                        ("404 Not Found", "subscription-not-found.json")
                    } else if let Some((rg, account)) = &batch_account {
                        if rg == "batch-westus2" && account == "imgbatch" {
                            ("200 OK", "batch-account.json")
                        } else {
                            ("404 Not Found", "resource-not-found.json")
                        }
                    } else if !line.starts_with(&list_path) {
                        ("404 Not Found", "resource-not-found.json")
                    } else if expect.forbid_list {
                        ("403 Forbidden", "authorization-failed.json")
                    } else if line.contains("$skipToken=") {
                        ("200 OK", "storage-accounts-page-2.json")
                    } else {
                        ("200 OK", "storage-accounts-page-1.json")
                    };
                    let (rg, account) = batch_account.unwrap_or_default();
                    let storage_token;
                    let template = if name == "storage-token" {
                        storage_token =
                            storage_token_response(&expect.tenant, &answers["token.json"]);
                        &storage_token
                    } else if name == "batch-token" {
                        storage_token =
                            answers["token.json"].replace(&token, &format!("{token}.batch"));
                        &storage_token
                    } else {
                        &answers[name]
                    };
                    let doc = template
                        .replace("{{pool_allocation_mode}}", expect.pool_allocation_mode)
                        .replace("{{resource_group}}", &rg)
                        .replace("{{name}}", &account)
                        .replace(
                            "{{requested_subscription}}",
                            line.split('/').nth(2).unwrap_or(""),
                        );
                    let _ = client.write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                            doc.len()
                        )
                        .as_bytes(),
                    );
                });
            }
        });
        ArmReplay {
            port,
            requests,
            compute: compute_rp,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The scopes asked for, in order.
    pub fn token_scopes(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(line, _)| line.starts_with("POST "))
            .filter_map(|(_, body)| {
                body.split('&')
                    .find_map(|kv| kv.strip_prefix("scope="))
                    .map(imgforge::azure::http::percent_decode)
            })
            .collect()
    }

    pub fn request_lines(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(l, _)| l.clone())
            .collect()
    }
}

/// The token endpoint's answer (tests/fixtures/arm/token.json) for the Azure
/// Storage scope: an access token shaped as Entra ID issues them (a JWT with
/// audience, v1 issuer, tenant, validity), which Azurite's `--oauth basic` checks.
fn storage_token_response(tenant: &str, arm_answer: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = format!(
        "{}.{}.{}",
        b64(serde_json::json!({"typ": "JWT", "alg": "RS256"})),
        b64(serde_json::json!({
            "aud": "https://storage.azure.com",
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "tid": tenant,
            "iat": now - 300,
            "nbf": now - 300,
            "exp": now + 3600,
            "ver": "1.0"
        })),
        "bm90LXNpZ25lZA"
    );
    let mut doc: serde_json::Value = serde_json::from_str(arm_answer).unwrap();
    doc["access_token"] = jwt.into();
    doc.to_string()
}

/// How the fixture disk is partitioned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layout {
    /// One MBR partition of type 0x83, as older Ubuntu images.
    Mbr,
    /// GPT with an EFI system partition and `cloudimg-rootfs`, as Ubuntu cloud images.
    Gpt,
}

/// The root tree of an AlmaLinux 8 image that meets every check for
/// contrib/managed-image-almalinux8.toml, its firewalld zone admitting `zone_ports`.
pub fn good_alma_tree(root: &Path, zone_ports: &[u16]) {
    let f = |p: &str, text: &str| write(&root.join(p), text);
    // As on AlmaLinux: /etc/os-release is a relative link into /usr/lib.
    f(
        "usr/lib/os-release",
        "NAME=\"AlmaLinux\"\nID=\"almalinux\"\nVERSION_ID=\"8.7\"\n",
    );
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    f(
        "etc/waagent.conf",
        "ResourceDisk.Format=y\nResourceDisk.MountPoint=/mnt/resource\n",
    );
    f("usr/sbin/sshd", "ELF");
    f("usr/lib/systemd/system/sshd.service", "[Unit]\n");
    f("usr/lib/systemd/system/firewalld.service", "[Unit]\n");
    f("usr/bin/docker", "ELF");
    f(
        "etc/docker/daemon.json",
        "{\"data-root\": \"/mnt/resource/docker\"}\n",
    );
    f("usr/sbin/mount.nfs4", "ELF");
    f("usr/sbin/mount.glusterfs", "ELF");
    let ports: String = zone_ports
        .iter()
        .map(|p| format!("  <port protocol=\"tcp\" port=\"{p}\"/>\n"))
        .collect();
    f(
        "etc/firewalld/zones/public.xml",
        &format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<zone>\n  <short>Public</short>\n  <service name=\"ssh\"/>\n{ports}</zone>\n"
        ),
    );
    std::fs::create_dir_all(root.join("home")).unwrap();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/sshd.service",
        wants.join("sshd.service"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/firewalld.service",
        wants.join("firewalld.service"),
    )
    .unwrap();
}

/// The root tree of an image that meets every check for
/// contrib/gpu-ubuntu1604.toml (Ubuntu 16.04, Docker, GPU, NFS, ufw).
pub fn good_ubuntu_tree(root: &Path) {
    let f = |p: &str, text: &str| write(&root.join(p), text);
    f(
        "etc/os-release",
        "NAME=\"Ubuntu\"\nVERSION=\"16.04.7 LTS (Xenial Xerus)\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"16.04\"\n",
    );
    f(
        "etc/waagent.conf",
        "Provisioning.Enabled=y\nResourceDisk.Format=y\nResourceDisk.Filesystem=ext4\nResourceDisk.MountPoint=/mnt\nOS.EnableRDMA=n\n",
    );
    f("usr/sbin/sshd", "ELF");
    f(
        "etc/ssh/sshd_config",
        "# Port 2222\nPort 22\nPermitRootLogin no\n",
    );
    f(
        "lib/systemd/system/ssh.service",
        "[Unit]\nDescription=OpenBSD Secure Shell server\n",
    );
    f(
        "lib/systemd/system/docker.service",
        "[Unit]\nDescription=Docker\n",
    );
    f("usr/bin/docker", "ELF");
    f(
        "etc/docker/daemon.json",
        "{\n  \"data-root\": \"/mnt/docker\"\n}\n",
    );
    f("etc/ufw/ufw.conf", "ENABLED=yes\nLOGLEVEL=low\n");
    f(
        "etc/default/ufw",
        "IPV6=yes\nDEFAULT_INPUT_POLICY=\"DROP\"\nDEFAULT_OUTPUT_POLICY=\"ACCEPT\"\n",
    );
    let mut rules = String::from("*filter\n");
    for port in [22, 6006, 29876, 29877] {
        rules.push_str(&format!("### tuple ### allow tcp {port} 0.0.0.0/0 any 0.0.0.0/0 in\n-A ufw-user-input -p tcp --dport {port} -j ACCEPT\n"));
    }
    rules.push_str("### tuple ### allow tcp 443 0.0.0.0/0 any 0.0.0.0/0 out\n-A ufw-user-output -p tcp --dport 443 -j ACCEPT\nCOMMIT\n");
    f("etc/ufw/user.rules", &rules);
    f(
        "etc/modprobe.d/blacklist-nouveau.conf",
        "blacklist nouveau\noptions nouveau modeset=0\n",
    );
    f("usr/bin/nvidia-smi", "ELF");
    f("usr/bin/nvidia-container-cli", "ELF");
    for k in ["4.15.0-1113-azure", "4.15.0-1114-azure"] {
        f(&format!("lib/modules/{k}/updates/dkms/nvidia.ko"), "module");
        f(
            &format!("lib/modules/{k}/kernel/drivers/net/dummy.ko"),
            "module",
        );
    }
    f(
        "var/lib/dpkg/status",
        "Package: linux-image-4.15.0-1113-azure\nStatus: hold ok installed\n\nPackage: linux-image-4.15.0-1114-azure\nStatus: hold ok installed\n\nPackage: jq\nStatus: install ok installed\n",
    );
    f("sbin/mount.nfs4", "ELF");
    std::fs::create_dir_all(root.join("home")).unwrap();
    std::fs::create_dir_all(root.join("etc/systemd/system/multi-user.target.wants")).unwrap();
    std::os::unix::fs::symlink(
        "/lib/systemd/system/ssh.service",
        root.join("etc/systemd/system/multi-user.target.wants/ssh.service"),
    )
    .unwrap();
}

/// What goes into the root partition.
pub enum RootFs<'a> {
    Ext4 {
        tree: &'a Path,
        dirty_journal: bool,
    },
    /// An XFS root, empty or filled from a tree (mkfs.xfs -p with a
    /// prototype file: owners root, modes and symlinks as in the tree).
    Xfs {
        tree: Option<&'a Path>,
    },
}

/// mkfs.xfs's prototype file for `tree` (xfsprogs' mkfs.xfs(8), "-p"): a
/// line per entry, `name mode uid gid [source|target]`, `$` closing a directory.
pub fn xfs_protofile(tree: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    fn walk(dir: &Path, out: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.push_str(&format!("{name} l--777 0 0 {}\n", target.display()));
            } else if meta.is_dir() {
                out.push_str(&format!("{name} d--{mode:03o} 0 0\n"));
                walk(&path, out);
                out.push_str("$\n");
            } else {
                out.push_str(&format!("{name} ---{mode:03o} 0 0 {}\n", path.display()));
            }
        }
    }
    let mut out = String::from("/dev/null\n0 0\nd--755 0 0\n");
    walk(tree, &mut out);
    out.push_str("$\n");
    out
}

/// A real disk image: partition table by sfdisk, filesystem by mkfs (under
/// fakeroot, so files belong to root), fixed VHD by qemu-img. `extra_bytes`
/// makes the virtual size deliberately not a whole number of MiB.
pub fn disk_image(
    dir: &Path,
    name: &str,
    layout: Layout,
    root: RootFs<'_>,
    extra_bytes: u64,
) -> PathBuf {
    const MIB: u64 = 1024 * 1024;
    let (root_mib, total_mib) = match root {
        RootFs::Ext4 { .. } => (48, 64),
        RootFs::Xfs { .. } => (304, 320),
    };
    let raw = dir.join(format!("{name}.raw"));
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(total_mib * MIB + extra_bytes).unwrap();
    drop(f);
    let (script, root_start) = match layout {
        Layout::Mbr => (
            format!(
                "label: dos\nstart=2048, size={}, type=83\n",
                root_mib * 2048
            ),
            2048u64,
        ),
        Layout::Gpt => (
            format!(
                "label: gpt\nstart=2048, size=16384, type=U, name=UEFI\nstart=18432, size={}, type=L, name=cloudimg-rootfs\n",
                root_mib * 2048
            ),
            18432u64,
        ),
    };
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("--quiet")
        .arg(&raw)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().expect("sfdisk (package fdisk)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");

    let fs = dir.join(format!("{name}.fs"));
    match root {
        RootFs::Ext4 {
            tree,
            dirty_journal,
        } => {
            let r = run(Command::new("fakeroot")
                .args(["mkfs.ext4", "-q", "-F", "-L", "cloudimg-rootfs", "-d"])
                .arg(tree)
                .arg(&fs)
                .arg(format!("{root_mib}M")));
            assert_eq!(r.code, 0, "mkfs.ext4: {}", r.all());
            if dirty_journal {
                let r = run(Command::new("debugfs")
                    .args(["-w", "-R", "feature needs_recovery"])
                    .arg(&fs));
                assert_eq!(r.code, 0, "debugfs: {}", r.all());
            }
        }
        RootFs::Xfs { tree } => {
            std::fs::File::create(&fs)
                .unwrap()
                .set_len(root_mib * MIB)
                .unwrap();
            let mut mkfs = Command::new("mkfs.xfs");
            mkfs.args(["-q", "-f"]);
            if let Some(tree) = tree {
                let proto = dir.join(format!("{name}.proto"));
                std::fs::write(&proto, xfs_protofile(tree)).unwrap();
                mkfs.arg("-p").arg(proto);
            }
            let r = run(mkfs.arg(&fs));
            assert_eq!(r.code, 0, "mkfs.xfs (package xfsprogs): {}", r.all());
        }
    }
    let r = run(Command::new("dd")
        .arg(format!("if={}", fs.display()))
        .arg(format!("of={}", raw.display()))
        .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
        .arg(format!("seek={}", root_start * 512 / MIB)));
    assert_eq!(r.code, 0, "dd: {}", r.all());
    std::fs::remove_file(&fs).unwrap();
    let vhd = dir.join(format!("{name}.vhd"));
    raw_to_fixed_vhd(&raw, &vhd);
    std::fs::remove_file(&raw).unwrap();
    vhd
}

/// `qemu-img convert` to a fixed VHD with the size kept exact (force_size=on),
/// as Azure needs.
pub fn raw_to_fixed_vhd(raw: &Path, vhd: &Path) {
    let r = run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed,force_size=on",
        ])
        .arg(raw)
        .arg(vhd));
    assert_eq!(r.code, 0, "qemu-img: {}", r.all());
}

/// Runs `cmd` with stderr captured, waits for a stderr line containing
/// `marker`, then sends SIGINT once after each delay in `interrupts`.
/// Returns the exit code, the whole stderr transcript, and the time from the
/// first SIGINT to the exit.
pub fn interrupt_after(
    cmd: &mut Command,
    marker: &str,
    interrupts: &[std::time::Duration],
) -> (Option<i32>, String, std::time::Duration) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut transcript = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        transcript.push_str(&line);
        transcript.push('\n');
        if line.contains(marker) {
            break;
        }
    }
    assert!(
        transcript.contains(marker),
        "never saw `{marker}`:\n{transcript}"
    );
    let mut first = None;
    for delay in interrupts {
        std::thread::sleep(*delay);
        first.get_or_insert_with(std::time::Instant::now);
        // SAFETY: signalling the child this function spawned.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
    }
    for line in lines {
        transcript.push_str(&line.unwrap());
        transcript.push('\n');
    }
    let status = child.wait().unwrap();
    let took = first.map(|t| t.elapsed()).unwrap_or_default();
    (status.code(), transcript, took)
}
