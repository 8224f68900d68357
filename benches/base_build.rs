//! `cargo bench --bench base_build`: the local builder from a base image
//! against the chroot builder on the same manifest, in the same run. The CI
//! manifest (tests/fixtures/local/full.toml) is built with mmdebstrap (the
//! root cache of `target/imgforge-root-cache` is used when it is there), and
//! its VHD is then the `base_image` of a second build of the same manifest:
//! QEMU (TCG) boots it under Packer, provisioned as Azure does, the same
//! scripts run over SSH, waagent deprovisions it, and it is converted. Both
//! without the boot check, which is the same for both. Phases come from the
//! time stamps of Packer's machine-readable log and the build record.
//!
//! Needs root (for the chroot build) and the tools `.ci/run` installs. Runs
//! the release binary (`cargo build --release` first). A benchmark, not a
//! test: it asserts nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Seconds at the first (or last) machine-readable line containing `needle`.
fn at(log: &str, needle: &str, last: bool) -> f64 {
    let mut lines = log.lines().filter(|l| l.contains(needle));
    let line = if last {
        lines.next_back()
    } else {
        lines.next()
    };
    line.and_then(|l| l.split(',').next())
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

fn stage_s(record: &serde_json::Value, name: &str) -> f64 {
    record["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["stage"] == name))
        .and_then(|s| s["duration_s"].as_f64())
        .unwrap_or(f64::NAN)
}

fn build(binary: &Path, manifest: &Path, out: &Path) -> (f64, String, serde_json::Value) {
    let started = Instant::now();
    let status = Command::new(binary)
        .env("IMGFORGE_QEMU_ACCEL", "tcg")
        .arg("build")
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .args(["--no-replicate", "--no-boot-check", "--json"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run imgforge");
    let wall = started.elapsed().as_secs_f64();
    assert!(status.success(), "the build failed: see {}", out.display());
    let log = std::fs::read_to_string(out.join("packer.log")).unwrap();
    let record = serde_json::from_slice(&std::fs::read(out.join("build.json")).unwrap()).unwrap();
    (wall, log, record)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("base_build: needs root (the chroot build of the base); nothing measured");
        return;
    }
    let binary = repo().join("target/release/imgforge");
    if !binary.is_file() {
        eprintln!("base_build: run `cargo build --release` first");
        std::process::exit(2);
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = repo().join("target/imgforge-root-cache");
    let fixture = std::fs::read_to_string(repo().join("tests/fixtures/local/full.toml")).unwrap();
    let chroot_manifest = tmp.path().join("chroot.toml");
    std::fs::write(
        &chroot_manifest,
        fixture.replace(
            "cache_dir = \"../../../target/imgforge-root-cache\"",
            &format!("cache_dir = {:?}", cache.display().to_string()),
        ),
    )
    .unwrap();
    std::fs::copy(
        repo().join("tests/fixtures/local/site-setup.sh"),
        tmp.path().join("site-setup.sh"),
    )
    .unwrap();
    let (chroot_wall, chroot_log, chroot_rec) =
        build(&binary, &chroot_manifest, &tmp.path().join("chroot"));
    let vhd = chroot_rec["artifact"]["path"].as_str().unwrap().to_string();

    let base_manifest = tmp.path().join("base.toml");
    std::fs::write(
        &base_manifest,
        fixture.replace(
            "cache_dir = \"../../../target/imgforge-root-cache\"",
            &format!("base_image = {vhd:?}"),
        ),
    )
    .unwrap();
    let (base_wall, base_log, base_rec) = build(&binary, &base_manifest, &tmp.path().join("base"));

    let c = |n: &str| at(&chroot_log, n, false);
    let chroot_rows = [
        (
            "root (unpack the cached root)",
            c("imgforge 20-provision:") - c("imgforge 10-root:"),
        ),
        (
            "provisioning + deprovision (chroot)",
            c("imgforge 30-disk:") - c("imgforge 20-provision:"),
        ),
        (
            "disk layout (grub, sfdisk, mkfs)",
            c("converting to a fixed VHD") - c("imgforge 30-disk:"),
        ),
        (
            "convert to a fixed VHD",
            c("imgforge 30-disk: wrote") - c("converting to a fixed VHD"),
        ),
    ];
    let b = |n: &str, last: bool| at(&base_log, n, last);
    // Packer's first line: the machine-readable log starts with the build.
    let start = base_log
        .lines()
        .next()
        .and_then(|l| l.split(',').next())
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let ssh_wait = b("Waiting for SSH to become available", false);
    let ssh = b("Connected to SSH", false);
    let first_script = b("Provisioning with shell script", false);
    let deprov = b("Provisioning with shell script", true);
    let convert = b("imgforge convert:", false);
    let done = b("Created artifact from files", false);
    let packer_span = done - start;
    let base_rows = [
        (
            "prepare (read the OS, qcow2, CD, key)",
            stage_s(&base_rec, "packer_build") - packer_span,
        ),
        ("boot to SSH (cloud-init provisioning)", ssh - ssh_wait),
        ("provisioning (scripts over SSH)", deprov - first_script),
        ("deprovision + power off", convert - deprov),
        ("convert to a fixed VHD", done - convert),
    ];
    println!(
        "tests/fixtures/local/full.toml (Debian 12: docker, nfs, glusterfs server, rdma nd, 4 GiB), 2 cores, TCG, no boot check"
    );
    println!("chroot builder (mmdebstrap root):");
    for (name, s) in chroot_rows {
        println!("  {name:<40} {s:>8.1} s");
    }
    println!("from that VHD as base_image (Packer qemu):");
    for (name, s) in base_rows {
        println!("  {name:<40} {s:>8.1} s");
    }
    let cp = stage_s(&chroot_rec, "packer_build");
    let bp = stage_s(&base_rec, "packer_build");
    println!(
        "packer build stage: chroot {cp:.1} s, base image {bp:.1} s, ratio {:.2}",
        bp / cp
    );
    println!(
        "whole build, wall: chroot {chroot_wall:.1} s, base image {base_wall:.1} s, ratio {:.2}",
        base_wall / chroot_wall
    );
}
