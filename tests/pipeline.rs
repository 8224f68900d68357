//! The whole `imgforge build` for real, with no Azure: real Packer (a null
//! builder whose shell-local provisioner builds a fixed VHD from a folder tree
//! laid out per the feature catalog, handed over by the artifice
//! post-processor), real Azurite for the copies, remote validation of every
//! copy, the pool snippet; then a failure at replication and `--resume`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MANIFEST: &str = "contrib/legacy/gpu-ubuntu1604.toml";
/// The accounts contrib/legacy/gpu-ubuntu1604.toml lists under [replicate].
const ACCOUNTS: &[&str] = &["imgforgerep1", "imgforgerep2"];

/// A template override: the on-premises builder in place of azure-arm.
fn on_prem_templates(root: &Path) -> (PathBuf, PathBuf) {
    let tree = root.join("tree");
    good_ubuntu_tree(&tree);
    let counter = root.join("packer-runs.txt");
    let script = repo().join("tests/support/make-disk.sh");
    let template = serde_json::json!({
        "builders": [{"type": "null", "communicator": "none"}],
        "provisioners": [{
            "type": "shell-local",
            "inline": [format!("{} {} disk.vhd {}", script.display(), tree.display(), counter.display())]
        }],
        "post-processors": [{"type": "artifice", "files": ["disk.vhd"]}]
    });
    let dir = root.join("templates");
    write(
        &dir.join("packer/azure-arm.json.tera"),
        &format!(
            "{{% raw %}}{}{{% endraw %}}\n",
            serde_json::to_string_pretty(&template).unwrap()
        ),
    );
    (dir, counter)
}

/// `imgforge build` of the contrib manifest with the override, against Azurite.
fn build_cmd(az: &Azurite, templates: &Path, args: &[&str]) -> Command {
    let mut cmd = imgforge();
    cmd.env_remove("ARM_CLIENT_ID")
        .arg("build")
        .arg(repo().join(MANIFEST))
        // The headline manifest is Ubuntu 16.04, whose node agent is retired.
        .arg("--allow-retired")
        .arg("--templates")
        .arg(templates)
        .args(args);
    az.env(&mut cmd);
    cmd
}

fn build(az: &Azurite, templates: &Path, args: &[&str]) -> Run {
    run(&mut build_cmd(az, templates, args))
}

fn stage_statuses(record: &serde_json::Value) -> Vec<(String, String)> {
    record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_whole_pipeline_runs_end_to_end() {
    let az = Azurite::start(ACCOUNTS);
    let tmp = tempfile::tempdir().unwrap();
    let (templates, counter) = on_prem_templates(tmp.path());
    let dir = tmp.path().join("build");
    let r = build(&az, &templates, &["--json", "--out", dir.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    let record: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    assert_eq!(record["status"], "succeeded");
    let stages = stage_statuses(&record);
    let expected: Vec<(String, String)> = [
        ("render", "done"),
        ("packer_validate", "done"),
        ("packer_build", "done"),
        ("capture", "done"),
        // The captured local VHD is validated before it is uploaded.
        ("validate_image", "done"),
        // Only the local builder's images are booted.
        ("boot_check", "skipped"),
        ("publish", "skipped"),
        ("replicate", "done"),
        ("validate", "done"),
        ("snippet", "done"),
    ]
    .iter()
    .map(|(s, st)| (s.to_string(), st.to_string()))
    .collect();
    assert_eq!(stages, expected);
    assert_eq!(record["artifact"]["kind"], "local_vhd");

    // 60 nodes (contrib manifest) → two copies, each verified and validated remotely.
    let copies = record["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2);
    let name = format!("{}.vhd", dir.file_name().unwrap().to_string_lossy());
    let local = std::fs::read(record["artifact"]["path"].as_str().unwrap()).unwrap();
    for (c, account) in copies.iter().zip(ACCOUNTS) {
        let url = az.url(account, "images", &name);
        assert_eq!(c["url"], url.as_str());
        assert_eq!(c["verified"], true);
        assert_eq!(c["validation"]["fail"], 0, "{c}");
        assert!(c["validation"]["pass"].as_u64().unwrap() >= 20, "{c}");
        assert_eq!(
            az.download(&url, &tmp.path().join("dl.vhd")),
            local,
            "{account}"
        );
    }

    // VHD copies make no pool today (Batch retired VHD pools on 2026-03-31):
    // the build writes no pool file and says why.
    assert!(record["snippet"].is_null(), "{record:#}");
    assert!(!dir.join("pool-snippet.yaml").exists());
    assert!(!dir.join("pool.json").exists());
    let said = record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "snippet")
        .unwrap()["detail"]
        .to_string();
    assert!(
        said.contains("no pool output") && said.contains("2026-03-31"),
        "{said}"
    );
    // `pool snippet --legacy --from` reads the record with the type `build`
    // wrote it with (the build directory will do): the copies and the
    // distro's node agent, for a pool made before that date.
    let again = run(imgforge()
        .args(["pool", "snippet", "--legacy"])
        .arg(repo().join(MANIFEST))
        .arg("--from")
        .arg(&dir));
    assert_eq!(again.code, 0, "{}", again.all());
    let doc: serde_json::Value = serde_yaml_ng::from_str(&again.stdout).unwrap();
    let ci = &doc["pool_specification"]["vm_configuration"]["custom_image"];
    assert_eq!(ci["node_agent"], "batch.node.ubuntu 16.04");
    assert_eq!(ci["image_uris"].as_array().unwrap().len(), 2);

    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().lines().count(),
        1
    );
    let status = run(imgforge().arg("status").arg(&dir));
    assert_eq!(status.code, 0, "{}", status.all());
    for s in ["packer build", "replicate", "validate", "snippet"] {
        assert!(status.stdout.contains(s), "{}", status.stdout);
    }
    assert_no_canary(&dir);
}

#[test]
fn a_failure_at_replication_resumes_without_running_packer_again() {
    let az = Azurite::start(ACCOUNTS);
    let tmp = tempfile::tempdir().unwrap();
    let (templates, counter) = on_prem_templates(tmp.path());
    let dir = tmp.path().join("build");

    // A wrong key for the second account: replication fails with 403.
    let mut cmd = build_cmd(&az, &templates, &["--out", dir.to_str().unwrap()]);
    cmd.env(
        "IMGFORGE_STORAGE_KEY_IMGFORGEREP2",
        "d3JvbmcgYnV0IHZhbGlkIGJhc2U2NCBrZXkgISEhIQ==",
    );
    let failed = run(&mut cmd);
    assert_eq!(failed.code, 1, "{}", failed.all());
    assert!(
        failed.stderr.contains("stage `replicate` failed"),
        "{}",
        failed.stderr
    );
    assert!(failed.stderr.contains("--resume"), "{}", failed.stderr);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "failed");
    assert_eq!(record["failed_stage"], "replicate");
    let status = run(imgforge().arg("status").arg(&dir));
    assert_eq!(status.code, 1);
    assert!(status.stdout.contains("resume"), "{}", status.stdout);

    // The fix comes with a changed manifest that renders the same files
    // (it was refused before): the finished stages stand, the rest run with
    // the manifest as it is now, and the recorded options (--allow-retired,
    // --templates) apply without being repeated.
    let changed = tmp.path().join("changed.toml");
    write(
        &changed,
        &std::fs::read_to_string(repo().join(MANIFEST))
            .unwrap()
            .replace("dedicated = 40", "dedicated = 41"),
    );
    let mut cmd = imgforge();
    cmd.env_remove("ARM_CLIENT_ID")
        .arg("build")
        .arg(&changed)
        .args(["--json", "--resume", dir.to_str().unwrap()]);
    let resumed = run(az.env(&mut cmd));
    assert_eq!(resumed.code, 0, "{}", resumed.all());
    assert!(
        resumed
            .stderr
            .contains("renders the same scripts and template: the finished stages stand"),
        "{}",
        resumed.stderr
    );
    assert!(
        resumed.stderr.contains("Skipping packer build"),
        "{}",
        resumed.stderr
    );
    let record: serde_json::Value = serde_json::from_str(&resumed.stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["copies"].as_array().unwrap().len(), 2);
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().lines().count(),
        1,
        "Packer's provisioner ran again on resume"
    );
    let packer_builds = stage_statuses(&record)
        .iter()
        .filter(|(s, _)| s == "packer_build")
        .count();
    assert_eq!(packer_builds, 1);
}

#[test]
fn ctrl_c_during_replication_stops_cleanly_and_resume_finishes() {
    let az = Azurite::start(ACCOUNTS);
    let tmp = tempfile::tempdir().unwrap();
    // 128 MiB of data: enough 4 MiB chunks that the interrupt lands mid-copy.
    let islands: Vec<(u64, usize)> = (0..32)
        .map(|i| (i * 8 * 1024 * 1024, 4 * 1024 * 1024))
        .collect();
    let vhd = sparse_vhd(tmp.path(), "big", 256, &islands);
    let template = serde_json::json!({
        "builders": [{"type": "null", "communicator": "none"}],
        "provisioners": [{"type": "shell-local", "inline": [format!("cp --sparse=always {} disk.vhd", vhd.display())]}],
        "post-processors": [{"type": "artifice", "files": ["disk.vhd"]}]
    });
    let templates = tmp.path().join("templates");
    write(
        &templates.join("packer/azure-arm.json.tera"),
        &format!("{{% raw %}}{template}{{% endraw %}}\n"),
    );
    let dir = tmp.path().join("build");
    let mut cmd = build_cmd(
        &az,
        &templates,
        &[
            "--no-validate",
            "--parallel",
            "1",
            "--out",
            dir.to_str().unwrap(),
        ],
    );
    let (code, transcript, _) = interrupt_after(
        &mut cmd,
        "Captured",
        &[std::time::Duration::from_millis(300)],
    );
    assert_eq!(code, Some(130), "{transcript}");
    assert!(transcript.contains("interrupted"), "{transcript}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "cancelled", "{record:#}");
    assert_eq!(record["failed_stage"], "replicate", "{record:#}");

    let resumed = build(
        &az,
        &templates,
        &["--json", "--no-validate", "--resume", dir.to_str().unwrap()],
    );
    assert_eq!(resumed.code, 0, "{}", resumed.all());
    let record: serde_json::Value = serde_json::from_str(&resumed.stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    let local = std::fs::read(&vhd).unwrap();
    for c in record["copies"].as_array().unwrap() {
        let url = c["url"].as_str().unwrap();
        assert_eq!(az.download(url, &tmp.path().join("dl.vhd")), local, "{url}");
    }
}

#[test]
fn a_replication_account_outside_the_region_stops_the_build_before_packer() {
    let az = Azurite::start(ACCOUNTS);
    let arm = ArmReplay::start(ArmExpect::env_principal());
    let tmp = tempfile::tempdir().unwrap();
    let (templates, counter) = on_prem_templates(tmp.path());
    let manifest = tmp.path().join("gpu.toml");
    let text = std::fs::read_to_string(repo().join(MANIFEST)).unwrap();
    write(&manifest, &format!("{text}region = \"westus2\"\n"));
    let dir = tmp.path().join("build");
    let mut cmd = imgforge();
    cmd.env("ARM_SUBSCRIPTION_ID", ARM_SUBSCRIPTION)
        .env("IMGFORGE_ARM_ENDPOINT", arm.endpoint())
        .env("AZURE_AUTHORITY_HOST", arm.endpoint())
        .arg("build")
        .arg(&manifest)
        .arg("--allow-retired")
        .arg("--templates")
        .arg(&templates)
        .args(["--out", dir.to_str().unwrap()]);
    let r = run(az.env(&mut cmd));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("`imgforgerep1` is not among the 5 storage account(s) subscription"),
        "{}",
        r.stderr
    );
    assert!(!r.all().contains(CANARY));
    assert!(!counter.exists(), "Packer ran anyway");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "failed", "{record:#}");
    assert_eq!(record["failed_stage"], "packer_build", "{record:#}");
}
