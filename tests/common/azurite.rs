//! The real Azure Storage emulator, Azurite (pinned in package.json), started
//! on a loopback port with the accounts a test names, and a loopback TLS
//! certificate for its OAuth mode.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

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

impl Azurite {
    /// The emulator's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(accounts: &[&str]) -> Azurite {
        Azurite::start_with(accounts, None, None)
    }

    /// With room for `mib` MiB of blob data (the in-memory store's default
    /// limit is half the machine's memory): the fan-out benchmark's 50 copies.
    pub fn start_sized(accounts: &[&str], mib: u64) -> Azurite {
        Azurite::start_with(accounts, None, Some(mib))
    }

    /// Over https with `--oauth basic`: Entra ID bearer tokens are accepted
    /// (their audience, issuer and lifetime checked; not their signature).
    pub fn start_oauth(accounts: &[&str], cert: &Path, key: &Path) -> Azurite {
        Azurite::start_with(accounts, Some((cert, key)), None)
    }

    /// `extent_limit`: MiB of blob data the in-memory store may hold
    /// (Azurite's default: half the machine's memory).
    fn start_with(
        accounts: &[&str],
        tls: Option<(&Path, &Path)>,
        extent_limit: Option<u64>,
    ) -> Azurite {
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
        if let Some(mib) = extent_limit {
            cmd.arg("--extentMemoryLimit").arg(mib.to_string());
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
