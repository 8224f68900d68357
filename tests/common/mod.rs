//! Helpers shared by the integration tests: the real imgforge binary, real
//! Packer and shellcheck, temporary directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const CANARY: &str = "canary-S3cr3t-7f1d2c9a";

pub fn imgforge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgforge"));
    cmd.env("ARM_CLIENT_SECRET", CANARY)
        .env("ARM_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
        .env("ARM_TENANT_ID", "00000000-0000-0000-0000-000000000002")
        .env(
            "ARM_SUBSCRIPTION_ID",
            "00000000-0000-0000-0000-000000000003",
        )
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
        .env("CHECKPOINT_DISABLE", "1"))
}

pub fn shellcheck(dir: &Path) -> Run {
    let scripts: Vec<PathBuf> = std::fs::read_dir(dir.join("scripts"))
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
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
