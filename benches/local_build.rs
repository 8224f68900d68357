//! `cargo bench --bench local_build`: the local builder, first build (empty
//! root cache) and cached rebuild of the CI manifest
//! (tests/fixtures/local/full.toml), stage by stage, from the build record and
//! the time stamps of Packer's machine-readable log; bytes written; the VHD's
//! allocated against virtual size. The cached rebuild is reported as a ratio
//! of the first build measured in the same run.
//!
//! Needs root and the tools `.ci/run` installs. Runs the release binary
//! (`cargo build --release` first). A benchmark, not a test: it asserts nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Seconds at the first machine-readable line containing `needle`.
fn at(log: &str, needle: &str) -> Option<f64> {
    log.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.split(',').next())
        .and_then(|t| t.parse::<f64>().ok())
}

struct Figures {
    wall: f64,
    root: f64,
    provision: f64,
    disk: f64,
    convert: f64,
    validate: f64,
    boot: f64,
    boot_bios: f64,
    boot_uefi: f64,
    vhd_virtual: u64,
    vhd_allocated: u64,
    cache_bytes: u64,
}

fn stage_s(record: &serde_json::Value, name: &str) -> f64 {
    record["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["stage"] == name))
        .and_then(|s| s["duration_s"].as_f64())
        .unwrap_or(f64::NAN)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn build(binary: &Path, manifest: &Path, out: &Path, cache: &Path) -> Figures {
    let started = Instant::now();
    let status = Command::new(binary)
        .env("IMGFORGE_QEMU_ACCEL", "tcg")
        .arg("build")
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .args(["--no-replicate", "--json"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run imgforge");
    let wall = started.elapsed().as_secs_f64();
    assert!(status.success(), "the build failed: see {}", out.display());
    let log = std::fs::read_to_string(out.join("packer.log")).unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("build.json")).unwrap()).unwrap();
    let t = |n: &str| at(&log, n).unwrap_or(f64::NAN);
    let root0 = t("imgforge 10-root:");
    let prov0 = t("imgforge 20-provision:");
    let disk0 = t("imgforge 30-disk:");
    let conv0 = t("converting to a fixed VHD");
    let done = t("imgforge 30-disk: wrote");
    let vhd = PathBuf::from(record["artifact"]["path"].as_str().unwrap());
    let meta = std::fs::metadata(&vhd).unwrap();
    use std::os::unix::fs::MetadataExt;
    let runs = record["boot_check"]["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let login = |fw: &str| {
        runs.iter()
            .find(|r| r["firmware"] == fw)
            .and_then(|r| r["login_after_s"].as_f64())
            .unwrap_or(f64::NAN)
    };
    Figures {
        wall,
        root: prov0 - root0,
        provision: disk0 - prov0,
        disk: conv0 - disk0,
        convert: done - conv0,
        validate: stage_s(&record, "validate_image"),
        boot: stage_s(&record, "boot_check"),
        boot_bios: login("bios"),
        boot_uefi: login("uefi"),
        vhd_virtual: meta.len() - 512,
        vhd_allocated: meta.blocks() * 512,
        cache_bytes: dir_bytes(cache),
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("local_build: needs root (the local builder chroots); nothing measured");
        return;
    }
    let binary = repo().join("target/release/imgforge");
    if !binary.is_file() {
        eprintln!("local_build: run `cargo build --release` first");
        std::process::exit(2);
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let manifest = tmp.path().join("m.toml");
    let text = std::fs::read_to_string(repo().join("tests/fixtures/local/full.toml"))
        .unwrap()
        .replace(
            "cache_dir = \"../../../target/imgforge-root-cache\"",
            &format!("cache_dir = {:?}", cache.display().to_string()),
        );
    std::fs::write(&manifest, text).unwrap();
    std::fs::copy(
        repo().join("tests/fixtures/local/site-setup.sh"),
        tmp.path().join("site-setup.sh"),
    )
    .unwrap();

    let first = build(&binary, &manifest, &tmp.path().join("b1"), &cache);
    let cached = build(&binary, &manifest, &tmp.path().join("b2"), &cache);

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "local builder, tests/fixtures/local/full.toml (Debian 12, docker, nfs, glusterfs server, rdma nd, 4 GiB disk)"
    );
    println!(
        "{:<28} {:>12} {:>14} {:>8}",
        "stage", "first (s)", "cached (s)", "ratio"
    );
    let rows = [
        ("root (mmdebstrap / unpack)", first.root, cached.root),
        (
            "provisioning (10 scripts)",
            first.provision,
            cached.provision,
        ),
        ("disk (grub, sfdisk, mkfs)", first.disk, cached.disk),
        ("convert to fixed VHD", first.convert, cached.convert),
        (
            "validate image (ms)",
            first.validate * 1000.0,
            cached.validate * 1000.0,
        ),
        ("boot check (BIOS + UEFI)", first.boot, cached.boot),
        ("whole build, wall", first.wall, cached.wall),
    ];
    for (name, a, b) in rows {
        println!("{name:<28} {a:>12.1} {b:>14.1} {:>8.2}", b / a);
    }
    println!(
        "login prompt under TCG: BIOS {:.0} s, UEFI {:.0} s (first build); BIOS {:.0} s, UEFI {:.0} s (cached)",
        first.boot_bios, first.boot_uefi, cached.boot_bios, cached.boot_uefi
    );
    println!(
        "VHD: {:.0} MiB virtual, {:.0} MiB allocated ({:.1} %); cached root tarball {:.0} MiB",
        mib(first.vhd_virtual),
        mib(first.vhd_allocated),
        100.0 * first.vhd_allocated as f64 / first.vhd_virtual as f64,
        mib(first.cache_bytes)
    );
}
