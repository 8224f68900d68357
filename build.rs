//! Records the git commit the binary is built from, for `imgforge --version`.
//! Outside a git checkout (a crates.io tarball, a copied tree) it is "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    let hash = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=IMGFORGE_GIT_HASH={hash}");
    // A path that does not exist would make cargo rerun this every build.
    for p in [".git/HEAD", ".git/refs/heads"] {
        if Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
