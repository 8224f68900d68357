//! What imgforge costs around Packer, measured as whole processes:
//! - `plan` and `render` of contrib/legacy/gpu-ubuntu1604.toml next to `packer validate`
//!   of the same rendered template;
//! - `imgforge build` with a null builder next to `packer build` alone on the
//!   same template;
//! - the stage durations of one end-to-end pipeline run (on-prem builder,
//!   Azurite copies, remote validation), and imgforge's time outside Packer.
//!
//!   cargo bench --bench overhead

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;

fn median_of(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..n).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[n / 2]
}

fn timed(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}", r.all());
    t.elapsed().as_secs_f64()
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = repo().join("contrib/legacy/gpu-ubuntu1604.toml");

    let plan = median_of(15, || timed(imgforge().arg("plan").arg(&manifest)));
    let mut i = 0;
    let render = median_of(15, || {
        i += 1;
        timed(
            imgforge()
                .arg("render")
                .arg(&manifest)
                .arg("-o")
                .arg(tmp.path().join(format!("r{i}"))),
        )
    });
    let validate = median_of(5, || {
        timed(
            Command::new("packer")
                .args(["validate", "packer.json"])
                .current_dir(tmp.path().join("r1"))
                .env("CHECKPOINT_DISABLE", "1"),
        )
    });

    // A null build: imgforge build vs packer build on the same template.
    let templates = tmp.path().join("null-templates");
    let template = serde_json::json!({
        "builders": [{"type": "null", "communicator": "none"}],
        "provisioners": [{"type": "shell-local", "inline": ["echo provisioning", "truncate -s 1M disk.raw", "qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on disk.raw disk.vhd"]}],
        "post-processors": [{"type": "artifice", "files": ["disk.vhd"]}]
    });
    write(
        &templates.join("packer/azure-arm.json.tera"),
        &format!("{{% raw %}}{template}{{% endraw %}}\n"),
    );
    let mut j = 0;
    let imgforge_build = median_of(5, || {
        j += 1;
        timed(
            imgforge()
                .arg("build")
                .arg(&manifest)
                .arg("--templates")
                .arg(&templates)
                .args(["--no-replicate", "--out"])
                .arg(tmp.path().join(format!("b{j}"))),
        )
    });
    let packer_dir = tmp.path().join("b1");
    let packer_build = median_of(5, || {
        let _ = std::fs::remove_file(packer_dir.join("disk.vhd"));
        timed(
            Command::new("packer")
                .args(["build", "-machine-readable", "packer.json"])
                .current_dir(&packer_dir)
                .env("CHECKPOINT_DISABLE", "1")
                .stdout(std::process::Stdio::null()),
        )
    });

    let e2e = end_to_end(tmp.path());

    println!("overhead benchmark (whole processes, medians)");
    println!("{:<46} {:>9} {:>12}", "command", "median s", "vs packer");
    println!(
        "{:<46} {validate:>9.3} {:>12}",
        "packer validate (rendered gpu-ubuntu1604)", "1.00x"
    );
    println!(
        "{:<46} {plan:>9.3} {:>11.3}x",
        "imgforge plan gpu-ubuntu1604",
        plan / validate
    );
    println!(
        "{:<46} {render:>9.3} {:>11.3}x",
        "imgforge render gpu-ubuntu1604",
        render / validate
    );
    println!(
        "{:<46} {packer_build:>9.3} {:>12}",
        "packer build (null builder)", "1.00x"
    );
    println!(
        "{:<46} {imgforge_build:>9.3} {:>11.3}x   (+{:.3} s: render, packer validate, capture, journal)",
        "imgforge build (same template)",
        imgforge_build / packer_build,
        imgforge_build - packer_build
    );
    println!(
        "end-to-end pipeline (contrib/legacy/gpu-ubuntu1604.toml, on-prem builder, 2 copies on Azurite):"
    );
    let mut outside_packer = 0.0;
    for (stage, secs) in &e2e.stages {
        println!("  {stage:<16} {secs:>8.3} s");
        if stage != "packer_build" {
            outside_packer += secs;
        }
    }
    println!(
        "  total {:.3} s; imgforge outside Packer {outside_packer:.3} s",
        e2e.total
    );
}

struct E2e {
    stages: Vec<(String, f64)>,
    total: f64,
}

fn end_to_end(root: &Path) -> E2e {
    let az = Azurite::start(&["imgforgerep1", "imgforgerep2"]);
    let tree = root.join("tree");
    good_ubuntu_tree(&tree);
    let script = repo().join("tests/support/make-disk.sh");
    let template = serde_json::json!({
        "builders": [{"type": "null", "communicator": "none"}],
        "provisioners": [{"type": "shell-local", "inline": [format!("{} {} disk.vhd", script.display(), tree.display())]}],
        "post-processors": [{"type": "artifice", "files": ["disk.vhd"]}]
    });
    let templates = root.join("e2e-templates");
    write(
        &templates.join("packer/azure-arm.json.tera"),
        &format!("{{% raw %}}{template}{{% endraw %}}\n"),
    );
    let mut cmd = imgforge();
    cmd.env_remove("ARM_CLIENT_ID")
        .arg("build")
        .arg(repo().join("contrib/legacy/gpu-ubuntu1604.toml"))
        .arg("--templates")
        .arg(&templates)
        .arg("--json")
        .arg("--out")
        .arg(root.join("e2e"));
    let t = Instant::now();
    let r = run(az.env(&mut cmd));
    let total = t.elapsed().as_secs_f64();
    assert_eq!(r.code, 0, "{}", r.all());
    let record: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let stages = record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["duration_s"].as_f64().unwrap(),
            )
        })
        .collect();
    E2e { stages, total }
}
