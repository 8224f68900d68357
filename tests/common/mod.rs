//! Helpers shared by the integration tests, by concern: running the real
//! imgforge binary, Packer and shellcheck (here); Azurite (`azurite`); the
//! Entra ID / Resource Manager stand-in (`arm`, `compute`); real disk images
//! (`images`); loopback proxies in front of Azurite (`proxy`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod arm;
pub mod azurite;
pub mod compute;
pub mod images;
pub mod proxy;
// Each test binary uses a part of these.
#[allow(unused_imports)]
pub use arm::*;
#[allow(unused_imports)]
pub use azurite::*;
#[allow(unused_imports)]
pub use images::*;
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

/// Every example manifest: today's in contrib/, the retired ones the tests
/// still exercise in contrib/legacy/.
pub fn contrib_manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["contrib", "contrib/legacy"]
        .iter()
        .flat_map(|d| std::fs::read_dir(repo().join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    assert!(v.len() >= 10, "contrib/ should hold the example manifests");
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
target = "vhd"
location = "eastus"
resource_group = "rg"
storage_account = "acct"
capture_container = "images"
"#;

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
