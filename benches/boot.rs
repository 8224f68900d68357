//! `cargo bench --bench boot`: the node's-eye boot check of one image, per
//! firmware and phase (login prompt, Ready report, first SSH login, in-VM
//! checks done; seconds from power-on), the two firmwares in sequence (one
//! `boot-check --firmware both`) and in parallel (two processes at once, one
//! per firmware), the parallel wall time as a ratio of the sequential one
//! measured in the same run. Under TCG on these 2-core machines unless KVM
//! works.
//!
//! The image: IMGFORGE_BENCH_VHD, else contrib/local-debian12.toml built
//! first (`--no-publish --no-boot-check`, not measured). Needs root and the
//! tools `.ci/run` installs; runs the release binary (`cargo build --release`
//! first). A benchmark, not a test: it asserts nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn imgforge() -> Command {
    Command::new(repo().join("target/release/imgforge"))
}

fn image(work: &Path) -> PathBuf {
    if let Some(v) = std::env::var_os("IMGFORGE_BENCH_VHD") {
        return PathBuf::from(v);
    }
    let out = work.join("build");
    let status = imgforge()
        .arg("build")
        .arg(repo().join("contrib/local-debian12.toml"))
        .args(["--no-publish", "--no-boot-check", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("imgforge build");
    assert!(status.success(), "the image build failed");
    out.join("output/local-debian12.vhd")
}

fn boot_check(vhd: &Path, firmware: &str, logs: &Path) -> Command {
    let mut c = imgforge();
    c.args(["boot-check", "--json", "--firmware", firmware, "--manifest"])
        .arg(repo().join("contrib/local-debian12.toml"))
        .arg("--logs")
        .arg(logs)
        .arg(vhd)
        .stderr(Stdio::null());
    c
}

fn phases(doc: &serde_json::Value) -> Vec<String> {
    let s = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |x| format!("{x:.0}"));
    doc["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .map(|r| {
                    format!(
                        "{:<5} {:<4} login {:>4} s  Ready {:>4} s  ssh {:>4} s  settled {:>4} s  checked {:>4} s  ({} passed, {} failed, {} skipped)",
                        r["firmware"].as_str().unwrap_or("?"),
                        r["accel"].as_str().unwrap_or("?"),
                        s(&r["login_after_s"]),
                        s(&r["provisioned_after_s"]),
                        s(&r["ssh_after_s"]),
                        s(&r["settled_after_s"]),
                        s(&r["checked_after_s"]),
                        doc["summary"]["pass"],
                        doc["summary"]["fail"],
                        doc["summary"]["skip"],
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let vhd = image(work.path());
    println!("image: {}", vhd.display());

    let started = Instant::now();
    let out = boot_check(&vhd, "both", &work.path().join("seq"))
        .output()
        .expect("boot-check");
    let sequential = started.elapsed().as_secs_f64();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    println!("in sequence (one process, both firmwares): {sequential:.0} s wall");
    for line in phases(&doc) {
        println!("  {line}");
    }

    let started = Instant::now();
    let children: Vec<_> = ["bios", "uefi"]
        .iter()
        .map(|fw| {
            boot_check(&vhd, fw, &work.path().join(format!("par-{fw}")))
                .stdout(Stdio::piped())
                .spawn()
                .expect("boot-check")
        })
        .collect();
    let docs: Vec<serde_json::Value> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("boot-check");
            serde_json::from_slice(&out.stdout).unwrap_or_default()
        })
        .collect();
    let parallel = started.elapsed().as_secs_f64();
    println!("in parallel (two processes, one firmware each): {parallel:.0} s wall");
    for doc in &docs {
        for line in phases(doc) {
            println!("  {line}");
        }
    }
    println!(
        "parallel / sequential wall time: {:.2} (below 1: the second firmware costs less than its own boot)",
        parallel / sequential
    );
}
