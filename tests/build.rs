//! `imgforge build` with the real Packer 1.6.6 and local builders (null, file)
//! through a template override: streaming, failure, cancellation, a local VHD
//! captured, and secret redaction.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A template override directory whose Packer template is `packer_json`.
fn overrides(root: &Path, packer_json: &serde_json::Value) -> PathBuf {
    let dir = root.join("templates");
    write(
        &dir.join("packer/azure-arm.json.tera"),
        &format!(
            "{{% raw %}}{}{{% endraw %}}\n",
            serde_json::to_string_pretty(packer_json).unwrap()
        ),
    );
    dir
}

/// A null builder whose shell-local provisioner runs `inline`, then makes a
/// real fixed VHD that the `artifice` post-processor turns into the artifact,
/// the way an on-premises build hands its disk to imgforge.
fn null_build(inline: &[&str]) -> serde_json::Value {
    let mut steps: Vec<String> = inline.iter().map(|s| s.to_string()).collect();
    steps.push("truncate -s 1M disk.raw".into());
    steps.push(
        "qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on disk.raw disk.vhd".into(),
    );
    serde_json::json!({
        "builders": [{"type": "null", "communicator": "none"}],
        "provisioners": [{"type": "shell-local", "inline": steps}],
        "post-processors": [{"type": "artifice", "files": ["disk.vhd"]}]
    })
}

fn manifest(root: &Path) -> PathBuf {
    let m = root.join("m.toml");
    write(&m, MINIMAL);
    m
}

fn build_cmd(root: &Path, templates: &Path, extra: &[&str]) -> Command {
    let mut cmd = imgforge();
    cmd.arg("build")
        .arg(manifest(root))
        .arg("--out")
        .arg(root.join("build"))
        .arg("--templates")
        .arg(templates)
        // These tests stop at capture; tests/pipeline.rs runs the whole pipeline.
        // Their VHD is a 1 MiB stand-in, not a disk the validator could pass.
        .arg("--no-replicate")
        .arg("--no-validate")
        .args(extra);
    cmd
}

/// `imgforge build m.toml --resume build` as a user types it after a
/// failure: no other flag (the record holds the options).
fn resume_cmd(root: &Path) -> Command {
    let mut cmd = imgforge();
    cmd.arg("build")
        .arg(root.join("m.toml"))
        .arg("--resume")
        .arg(root.join("build"));
    cmd
}

fn record(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("build/build.json")).unwrap()).unwrap()
}

#[test]
fn provisioner_output_streams_as_it_happens() {
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(
        tmp.path(),
        &null_build(&[
            "echo tick-1",
            "sleep 1",
            "echo tick-2",
            "sleep 1",
            "echo tick-3",
        ]),
    );
    let mut child = build_cmd(tmp.path(), &t, &["--verbose"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        for tick in ["tick-1", "tick-2", "tick-3"] {
            if line.contains(tick) {
                seen.push((tick, start.elapsed()));
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    let ticks: Vec<&str> = seen.iter().map(|(t, _)| *t).collect();
    assert_eq!(ticks, ["tick-1", "tick-2", "tick-3"]);
    // Lines printed a second apart arrive a second apart, not all at exit.
    let gap = seen[2].1 - seen[0].1;
    assert!(
        gap >= Duration::from_millis(1500),
        "tick-1 to tick-3 took {gap:?}"
    );

    let r = record(tmp.path());
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["artifact"]["kind"], "local_vhd", "{r}");
    assert_eq!(r["artifact"]["bytes"], 1024 * 1024 + 512, "{r}");
    let log = std::fs::read_to_string(tmp.path().join("build/packer.log")).unwrap();
    assert!(
        log.contains(",ui,message,"),
        "raw machine-readable log kept"
    );
    assert!(log.contains("tick-2"));
}

#[test]
fn a_failing_provisioner_fails_the_build_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(tmp.path(), &null_build(&["echo about to fail", "exit 3"]));
    let r = run(&mut build_cmd(tmp.path(), &t, &[]));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("non-zero exit status: 3"), "{}", r.stderr);
    assert!(r.stderr.contains("packer.log"), "{}", r.stderr);
    let rec = record(tmp.path());
    assert_eq!(rec["status"], "failed");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("non-zero exit status: 3"),
        "{rec}"
    );
    assert!(rec["artifact"].is_null());
}

#[test]
fn json_output_is_one_document_even_on_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(tmp.path(), &null_build(&["exit 7"]));
    let r = run(&mut build_cmd(tmp.path(), &t, &["--json"]));
    assert_eq!(r.code, 1, "{}", r.all());
    let doc: serde_json::Value =
        serde_json::from_str(&r.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc, record(tmp.path()));
}

fn processes_in(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == dir) {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    found
}

#[test]
fn sigint_cancels_cleanly_and_leaves_no_packer_behind() {
    let tmp = tempfile::tempdir().unwrap();
    // The provisioner ignores SIGINT and takes 5 s to finish (Packer waits
    // for it, as it waits for an azure-arm cleanup), so the second Ctrl-C
    // arrives while imgforge is still waiting. (A trap that sleeps in its
    // handler raced the shell's own exit under load.)
    let t = overrides(
        tmp.path(),
        &null_build(&[
            "trap '' INT; echo provisioning-started; sleep 5; exit 1",
            "echo never",
        ]),
    );
    let (code, transcript, took) = interrupt_after(
        &mut build_cmd(tmp.path(), &t, &["--verbose"]),
        "provisioning-started",
        &[Duration::ZERO, Duration::from_millis(500)],
    );
    assert_eq!(code, Some(130), "{transcript}");
    assert!(took < Duration::from_secs(30), "cancel took {took:?}");
    assert!(transcript.contains("cancelling"), "{transcript}");
    assert!(
        transcript.contains("still waiting for Packer's cleanup"),
        "{transcript}"
    );
    assert!(!transcript.contains("never"), "{transcript}");

    let rec = record(tmp.path());
    assert_eq!(rec["status"], "cancelled");
    let log = std::fs::read_to_string(tmp.path().join("build/packer.log")).unwrap();
    assert!(log.contains("Cleanly cancelled"), "{log}");
    let left = processes_in(&tmp.path().join("build"));
    assert!(left.is_empty(), "processes left running: {left:?}");
}

#[test]
fn a_build_without_an_image_artifact_fails_at_capture() {
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(
        tmp.path(),
        &serde_json::json!({"builders": [{"type": "null", "communicator": "none"}]}),
    );
    let r = run(&mut build_cmd(tmp.path(), &t, &[]));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("no image imgforge can use"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("null"), "{}", r.stderr);
    assert_eq!(record(tmp.path())["status"], "failed");
}

#[test]
fn a_local_vhd_artifact_is_captured() {
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "source", 4, &[]);
    let t = overrides(
        tmp.path(),
        &serde_json::json!({
            "builders": [{"type": "file", "source": vhd, "target": "disk.vhd"}],
            "post-processors": [{"type": "manifest", "output": "packer-manifest.json"}]
        }),
    );
    let r = run(&mut build_cmd(tmp.path(), &t, &["--json"]));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["artifact"]["kind"], "local_vhd");
    assert_eq!(doc["artifact"]["bytes"], 4 * 1024 * 1024 + 512);
    let path = PathBuf::from(doc["artifact"]["path"].as_str().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&vhd).unwrap());
    assert!(r.stderr.contains("Captured"), "{}", r.stderr);
}

#[test]
fn secrets_never_reach_output_log_or_record() {
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(
        tmp.path(),
        &null_build(&[
            "echo \"the secret is $ARM_CLIENT_SECRET\"",
            "echo \"sas $TEST_SAS_URL\"",
            "echo \"and on stderr: $ARM_CLIENT_SECRET\" >&2",
            "exit 1",
        ]),
    );
    let r = run(build_cmd(tmp.path(), &t, &["--verbose", "--json"]).env(
        "TEST_SAS_URL",
        "https://acct.blob.core.windows.net/c/x.vhd?sv=2020-04-08&sr=b&sig=Zm9vYmFy%2Bbaz%3D&se=2030",
    ));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("the secret is [REDACTED]"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("sig=[REDACTED]"), "{}", r.stderr);
    assert!(!r.all().contains(CANARY), "secret printed");
    assert!(!r.all().contains("Zm9vYmFy"), "SAS signature printed");
    let log = std::fs::read_to_string(tmp.path().join("build/packer.log")).unwrap();
    assert!(log.contains("[REDACTED]"));
    assert_no_canary(&tmp.path().join("build"));
    for (rel, bytes) in files(&tmp.path().join("build")) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("Zm9vYmFy"),
            "signature in {rel}"
        );
    }
}

#[test]
fn a_real_azure_arm_build_without_azure_fails_fast_with_a_hint() {
    // The real azure-arm builder and the built-in template; the only way out is
    // a proxy on a closed loopback port, so nothing leaves the machine.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("build");
    let r = run(imgforge()
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env_remove("NO_PROXY")
        .arg("build")
        .arg(repo().join("contrib/legacy/managed-image-almalinux8.toml"))
        .arg("--out")
        .arg(&dir));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("stage `packer build` failed"),
        "{}",
        r.stderr
    );
    // imgforge signs in first, as Packer would: no answer is a network
    // problem by its kind, and Packer never starts.
    assert!(
        r.stderr
            .contains("signing in as ARM_CLIENT_ID before starting Packer"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("hint: Entra ID could not be reached"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("with packer build"), "{}", r.stderr);
    assert!(!r.all().contains(CANARY));
    assert_no_canary(&dir);
    let rec = record(tmp.path());
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["failed_stage"], "packer_build");
}

#[test]
fn provisioner_output_reaches_a_log_file_without_verbose() {
    // A CI log is a pipe: every provisioner line must reach it, not only a
    // terminal's self-overwriting line.
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(
        tmp.path(),
        &null_build(&[
            "echo '==> imgforge 10-site.sh: step one'",
            "echo plain-line-2",
        ]),
    );
    let r = run(&mut build_cmd(tmp.path(), &t, &[]));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("==> imgforge 10-site.sh: step one"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("plain-line-2"), "{}", r.stderr);
}

#[test]
fn missing_azure_variables_are_all_named_before_packer_runs() {
    // A wrapper that records each Packer subcommand and runs the real Packer.
    let tmp = tempfile::tempdir().unwrap();
    let calls = tmp.path().join("calls");
    let wrapper = tmp.path().join("packer");
    write(
        &wrapper,
        &format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\nexec packer \"$@\"\n",
            calls.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("build");
    let r = run(imgforge()
        .env_remove("ARM_CLIENT_SECRET")
        .env("ARM_TENANT_ID", "")
        .env("IMGFORGE_PACKER", &wrapper)
        .arg("build")
        .arg(repo().join("contrib/legacy/managed-image-almalinux8.toml"))
        .arg("--out")
        .arg(&dir));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(
            "packer.json reads ARM_CLIENT_SECRET, ARM_TENANT_ID from the environment and they are not set"
        ) && r.stderr.contains("export ARM_CLIENT_SECRET=… ARM_TENANT_ID=…"),
        "{}",
        r.stderr
    );
    // Packer's own version probe at most; neither validate nor build ran.
    let called = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        !called.contains("validate") && !called.contains("build"),
        "Packer ran: {called}"
    );
    // A dry run needs none of them: Packer validates the template, and the
    // missing variables are a warning for the real build.
    let r = run(imgforge()
        .env_remove("ARM_CLIENT_SECRET")
        .env("ARM_TENANT_ID", "")
        .env("IMGFORGE_PACKER", &wrapper)
        .arg("build")
        .arg(repo().join("contrib/legacy/managed-image-almalinux8.toml"))
        .arg("--dry-run")
        .arg("--out")
        .arg(tmp.path().join("dry")));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("ARM_CLIENT_SECRET, ARM_TENANT_ID")
            && r.stderr.contains("a real build needs them"),
        "{}",
        r.stderr
    );
    let called = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        called.contains("validate"),
        "Packer did not validate: {called}"
    );
}

#[test]
fn a_failing_script_is_named_with_its_last_lines_in_the_error_even_in_a_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(
        tmp.path(),
        &null_build(&[
            "printf '==> imgforge %s: %s\\n' 20-docker.sh 'installing Docker'",
            "echo docker done",
            "printf '==> imgforge %s: %s\\n' 30-gpu.sh 'installing the NVIDIA driver'",
            "for i in $(seq 1 40); do echo \"apt line $i\"; done",
            "echo 'E: Unable to locate package nvidia-driver-999' >&2",
            "exit 100",
        ]),
    );
    // stdout and stderr are pipes here, as in any CI job.
    let r = run(&mut build_cmd(tmp.path(), &t, &[]));
    assert_eq!(r.code, 1, "{}", r.all());
    let err = r
        .stderr
        .split("error: ")
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("the last script to run was 30-gpu.sh; its last 30 line(s):"),
        "{err}"
    );
    // Its error output is shown even when stdout lines arrived after it.
    assert!(
        err.contains("| E: Unable to locate package nvidia-driver-999")
            || err.contains("! E: Unable to locate package nvidia-driver-999"),
        "{err}"
    );
    assert!(err.contains("| apt line 40"), "{err}");
    // Thirty lines, not the whole output; the other script's lines are not in it.
    assert!(!err.contains("| apt line 1\n"), "{err}");
    assert!(!err.contains("docker done"), "{err}");
    assert_eq!(err.matches("\n    | ").count(), 30, "{err}");
    assert!(err.matches("\n    ! ").count() <= 1, "{err}");
}

#[test]
fn a_running_build_locks_its_directory_against_force_resume_and_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    // The provisioner waits (at most 60 s) until the test lets it finish.
    let wait = format!(
        "echo provisioning-started; for i in $(seq 600); do [ -e '{}' ] && break; sleep 0.1; done",
        go.display()
    );
    let t = overrides(tmp.path(), &null_build(&[&wait]));
    let mut first = build_cmd(tmp.path(), &t, &["--verbose"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = first.id();
    let stderr = first.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the first build reached its provisioner");
        if line.contains("provisioning-started") {
            break;
        }
    }
    let build_dir = tmp.path().join("build");

    // --force over it: refused, naming the process; nothing of it is touched.
    let r = run(&mut build_cmd(tmp.path(), &t, &["--force"]));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("a build is running in this directory")
            && r.stderr.contains(&format!("pid {pid} ")),
        "{}",
        r.stderr
    );
    // --resume: the same.
    let r = run(resume_cmd(tmp.path()).arg("--templates").arg(&t));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains(&format!("pid {pid} ")), "{}", r.stderr);
    // clean: kept, whatever the rules.
    let r = run(imgforge()
        .args(["clean", "--keep", "0", "--older-than", "0s", "--dir"])
        .arg(tmp.path()));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("a build is running in it (pid"),
        "{}",
        r.stdout
    );
    assert!(build_dir.join("build.json").exists());

    std::fs::write(&go, "").unwrap();
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(record(tmp.path())["status"], "succeeded");

    // Once it has ended, --force replaces the directory and leaves nothing aside.
    let r = run(&mut build_cmd(tmp.path(), &t, &["--force"]));
    assert_eq!(r.code, 0, "{}", r.all());
    let hidden: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".imgforge"))
        .collect();
    assert!(hidden.is_empty(), "left beside the build: {hidden:?}");
}

#[test]
fn a_refused_sign_in_stops_an_azure_build_before_packer_with_the_credentials_hint() {
    // The Entra stand-in expects another secret than the environment's: it
    // answers 401 invalid_client, as Entra does for a wrong secret.
    let mut expect = ArmExpect::env_principal();
    expect.secret = "the-real-secret".into();
    let arm = ArmReplay::start(expect);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("build");
    let r = run(imgforge()
        .env("AZURE_AUTHORITY_HOST", arm.endpoint())
        .env("IMGFORGE_ARM_ENDPOINT", arm.endpoint())
        .arg("build")
        .arg(repo().join("contrib/legacy/managed-image-almalinux8.toml"))
        .arg("--out")
        .arg(&dir));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("hint: Entra ID refused the service principal"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("with packer build"), "{}", r.stderr);
    assert!(!r.all().contains(CANARY));
    assert_no_canary(&dir);
    assert_eq!(record(tmp.path())["failed_stage"], "packer_build");
}

#[test]
fn a_resume_reuses_the_recorded_options_and_reruns_a_fixed_script() {
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(tmp.path(), &null_build(&["echo broken-step; exit 3"]));
    let r = run(&mut build_cmd(tmp.path(), &t, &[]));
    assert_eq!(r.code, 1, "{}", r.all());
    let resume_line = r
        .stderr
        .lines()
        .find(|l| l.contains("resume with: "))
        .unwrap_or_else(|| panic!("{}", r.stderr))
        .to_string();
    let rec = record(tmp.path());
    assert_eq!(rec["options"]["replicate"], false, "{rec:#}");
    assert_eq!(rec["options"]["validate"], false);
    assert!(
        rec["options"]["templates"]
            .as_str()
            .unwrap()
            .ends_with("templates")
    );

    // The fix: the script now succeeds. The printed command, run as printed
    // (no --templates, no --no-replicate/--no-validate), picks it all up.
    overrides(tmp.path(), &null_build(&["echo fixed-step"]));
    let args: Vec<&str> = resume_line
        .split("resume with: imgforge ")
        .nth(1)
        .unwrap()
        .split(' ')
        .collect();
    let r = run(imgforge().args(&args));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("packer.json changed since this build started, before its image was built: render, packer validate and packer build run again"),
        "{}",
        r.stderr
    );
    let rec = record(tmp.path());
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    let skipped: Vec<&str> = rec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "skipped")
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert!(skipped.contains(&"replicate"), "{skipped:?}");
    let log = std::fs::read_to_string(tmp.path().join("build/packer.log")).unwrap();
    assert!(
        log.contains("fixed-step") && !log.contains("broken-step"),
        "{log}"
    );

    // Once the image is built, scripts that render differently need a new build.
    overrides(tmp.path(), &null_build(&["echo another-step"]));
    let r = run(imgforge().args(&args));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("the image was built from the scripts as they were"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_resume_never_writes_through_a_link_planted_in_the_build_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(tmp.path(), &null_build(&["exit 3"]));
    let r = run(&mut build_cmd(tmp.path(), &t, &[]));
    assert_eq!(r.code, 1, "{}", r.all());
    // packer.log replaced by a link to a file outside the build.
    let outside = tmp.path().join("outside.txt");
    std::fs::write(&outside, "keep me\n").unwrap();
    let log = tmp.path().join("build/packer.log");
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&outside, &log).unwrap();
    overrides(tmp.path(), &null_build(&["echo fixed"]));
    let r = run(&mut resume_cmd(tmp.path()));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me\n");
    let meta = std::fs::symlink_metadata(&log).unwrap();
    assert!(meta.is_file(), "packer.log is the build's own file again");
}

#[test]
fn a_resume_refuses_a_record_that_names_an_image_outside_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(tmp.path(), &null_build(&["echo built"]));
    let r = run(&mut build_cmd(tmp.path(), &t, &[]));
    assert_eq!(r.code, 0, "{}", r.all());
    // A forged record: the image is a file elsewhere on the machine.
    let outside = tmp.path().join("not-an-image.vhd");
    std::fs::write(&outside, "secret host data").unwrap();
    let mut rec = record(tmp.path());
    rec["artifact"]["path"] = outside.display().to_string().into();
    rec["status"] = "failed".into();
    let stages: Vec<serde_json::Value> = rec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stage"] != "snippet")
        .cloned()
        .collect();
    rec["stages"] = stages.into();
    write(&tmp.path().join("build/build.json"), &rec.to_string());
    let r = run(&mut resume_cmd(tmp.path()));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("which is not a file inside the build directory"),
        "{}",
        r.stderr
    );
    // And a record far larger than any build's is refused unread.
    let big = tmp.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::File::create(big.join("build.json"))
        .unwrap()
        .set_len(60 * 1024 * 1024)
        .unwrap();
    let r = run(imgforge().arg("status").arg(&big));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("more than a build record is"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_build_stops_at_its_timeout_as_ctrl_c_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let t = overrides(
        tmp.path(),
        &null_build(&["echo provisioning-started; sleep 60; echo never"]),
    );
    let started = Instant::now();
    let r = run(&mut build_cmd(tmp.path(), &t, &["--timeout", "3"]));
    let took = started.elapsed();
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("build stopped after --timeout 3 s, as Ctrl-C stops it"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--resume"), "{}", r.stderr);
    assert!(!r.all().contains("never"), "{}", r.all());
    assert!(took < Duration::from_secs(40), "took {took:?}");
    assert_eq!(record(tmp.path())["status"], "cancelled");
    let left = processes_in(&tmp.path().join("build"));
    assert!(left.is_empty(), "processes left running: {left:?}");
}

/// `--gallery-version`: a scheduled rebuild publishes a new version without
/// editing the manifest; the version reaches Packer, the record keeps it, a
/// resume uses it again, and what cannot be a gallery version is refused.
#[test]
fn gallery_version_names_this_builds_version_and_a_resume_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let m = repo().join("contrib/gpu-ubuntu2404.toml");
    let dry = tmp.path().join("dry");
    let r = run(imgforge()
        .env_remove("ARM_CLIENT_SECRET")
        .args(["build", "--dry-run", "--gallery-version", "1.0.42", "--out"])
        .arg(&dry)
        .arg(&m));
    assert_eq!(r.code, 0, "{}", r.all());
    let packer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dry.join("packer.json")).unwrap()).unwrap();
    assert_eq!(
        packer["builders"][0]["shared_image_gallery_destination"]["image_version"],
        "1.0.42"
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dry.join("build.json")).unwrap()).unwrap();
    assert_eq!(rec["options"]["gallery_version"], "1.0.42", "{rec:#}");

    // A real build stopped before Packer (no principal), then resumed: the
    // resume renders the same version, so nothing it built is out of date.
    let out = tmp.path().join("real");
    let first = run(imgforge()
        .env_remove("ARM_CLIENT_SECRET")
        .args(["build", "--gallery-version", "1.0.43", "--out"])
        .arg(&out)
        .arg(&m));
    assert_ne!(first.code, 0, "{}", first.all());
    // The resume line needs no flags: the record keeps the option.
    assert!(
        first.stderr.contains("resume with: imgforge build"),
        "{}",
        first.stderr
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("build.json")).unwrap()).unwrap();
    assert_eq!(rec["options"]["gallery_version"], "1.0.43", "{rec:#}");
    let again = run(imgforge()
        .env_remove("ARM_CLIENT_SECRET")
        .args(["build", "--resume"])
        .arg(&out)
        .arg(&m));
    assert_eq!(again.code, first.code, "{}", again.all());
    let packer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("packer.json")).unwrap()).unwrap();
    assert_eq!(
        packer["builders"][0]["shared_image_gallery_destination"]["image_version"],
        "1.0.43"
    );
    assert!(!again.stderr.contains("changed"), "{}", again.stderr);

    for (args, says) in [
        (
            vec!["--gallery-version", "1.0"],
            "not a gallery image version",
        ),
        (
            vec!["--gallery-version", "1.0.x"],
            "not a gallery image version",
        ),
    ] {
        let r = run(imgforge().arg("build").args(&args).arg("--dry-run").arg(&m));
        assert_eq!(r.code, 2, "{args:?}: {}", r.all());
        assert!(r.stderr.contains(says), "{}", r.stderr);
    }
    let r = run(imgforge()
        .args(["build", "--dry-run", "--gallery-version", "1.0.1"])
        .arg(repo().join("contrib/legacy/gpu-ubuntu1604.toml")));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("is for target = \"gallery\""),
        "{}",
        r.stderr
    );
}

/// An azure-arm build into a gallery from a base with a purchase plan
/// (Rocky Linux 9): Packer's build VM names the plan, and the image
/// definition Packer publishes into is created with it before Packer runs —
/// or, when it exists without it, refused before the build's minutes.
#[test]
fn an_azure_arm_gallery_build_makes_its_definition_with_the_bases_purchase_plan_first() {
    let tmp = tempfile::tempdir().unwrap();
    let calls = tmp.path().join("calls");
    let wrapper = tmp.path().join("packer");
    // Packer validates for real; its build would need Azure: it records and fails.
    write(
        &wrapper,
        &format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\n[ \"$1\" = build ] && exit 1\nexec packer \"$@\"\n",
            calls.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let definition_id = format!(
        "/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/images-westus2/providers/Microsoft.Compute/galleries/imgforge_gallery/images/rocky9-nfs"
    );
    let build = |arm: &ArmReplay, dir: &str| {
        let _ = std::fs::remove_file(&calls);
        run(imgforge()
            .env("AZURE_AUTHORITY_HOST", arm.endpoint())
            .env("IMGFORGE_ARM_ENDPOINT", arm.endpoint())
            .env("ARM_SUBSCRIPTION_ID", ARM_SUBSCRIPTION)
            .env("IMGFORGE_PACKER", &wrapper)
            .arg("build")
            .arg(repo().join("contrib/rocky9-nfs.toml"))
            .arg("--out")
            .arg(tmp.path().join(dir)))
    };

    let arm = ArmReplay::start(ArmExpect::env_principal());
    let r = build(&arm, "first");
    // The definition was made, then the (recording) Packer build failed.
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("created ")
            && r.stderr
                .contains("purchase plan resf/rockylinux-x86_64/9-base); Packer publishes version 1.0.0 into it"),
        "{}",
        r.stderr
    );
    let made = arm
        .compute
        .resource(&definition_id)
        .expect("definition created");
    assert_eq!(
        made["properties"]["purchasePlan"],
        serde_json::json!({"name": "9-base", "publisher": "resf", "product": "rockylinux-x86_64"}),
        "{made:#}"
    );
    assert_eq!(made["properties"]["hyperVGeneration"], "V2");
    let called = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(called.contains("build"), "Packer did not build: {called}");
    // Packer's build VM names the plan too.
    let packer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("first/packer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        packer["builders"][0]["plan_info"],
        serde_json::json!({"plan_name": "9-base", "plan_product": "rockylinux-x86_64", "plan_publisher": "resf"})
    );
    assert!(!r.all().contains(CANARY));

    // The definition exists without the plan (made for another base):
    // refused before Packer builds.
    let arm = ArmReplay::start_with(
        ArmExpect::env_principal(),
        compute::Knobs {
            definitions: vec![(
                "images-westus2".into(),
                "imgforge_gallery".into(),
                "rocky9-nfs".into(),
                serde_json::json!({"hyperVGeneration": "V2"}),
            )],
            ..compute::Knobs::default()
        },
    );
    let r = build(&arm, "second");
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(
            "image definition `rocky9-nfs` has no purchase plan; the image carries resf/rockylinux-x86_64/9-base from its marketplace base"
        ),
        "{}",
        r.stderr
    );
    let called = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(!called.contains("build"), "Packer built: {called}");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("second/build.json")).unwrap())
            .unwrap();
    assert_eq!(rec["failed_stage"], "packer_build");

    // Packer succeeds and names the gallery version it published (as Packer
    // 1.6.6's machine-readable artifact says): the build reads the image
    // where it lies, through a temporary disk, and writes what a local
    // build writes — inspect.json and the SBOM.
    let version = format!("{definition_id}/versions/1.0.0");
    let packer_ok = tmp.path().join("packer-ok");
    write(
        &packer_ok,
        &format!(
            "#!/bin/sh
[ \"$1\" = build ] || exec packer \"$@\"
\
             echo '1,azure-arm,artifact,0,builder-id,Azure.ResourceManagement.VMImage'
\
             printf '%s\\n' '1,azure-arm,artifact,0,string,Azure.ResourceManagement.VMImage:\\n\\nOSType: Linux\\nManagedImageResourceGroupName: images-westus2\\nManagedImageName: rocky9-nfs-1-0-0\\nManagedImageId: /subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/images-westus2/providers/Microsoft.Compute/images/rocky9-nfs-1-0-0\\nManagedImageLocation: westus2\\nManagedImageSharedImageGalleryId: {version}\\n'
\
             echo '1,azure-arm,artifact,0,end'
"
        ),
    );
    std::fs::set_permissions(&packer_ok, std::fs::Permissions::from_mode(0o755)).unwrap();
    let az = Azurite::start(&["mdimport"]);
    let tree = tmp.path().join("tree");
    good_ubuntu_tree(&tree);
    let vhd = disk_image(
        tmp.path(),
        "published",
        Layout::Gpt,
        RootFs::Ext4 {
            tree: &tree,
            dirty_journal: false,
        },
        0,
    );
    let blob = az.url("mdimport", "disks", "abcd");
    az.oracle(&["create", &blob, vhd.to_str().unwrap()]);
    let arm = ArmReplay::start_with(
        ArmExpect::env_principal(),
        compute::Knobs {
            disk_sas: az.oracle(&["sas", &blob]),
            polls: 0,
            ..compute::Knobs::default()
        },
    );
    // What Packer's publishing left in the gallery.
    arm.compute.insert(
        &version,
        serde_json::json!({"location": "westus2", "properties": {}}),
    );
    let r = run(imgforge()
        .env("AZURE_AUTHORITY_HOST", arm.endpoint())
        .env("IMGFORGE_ARM_ENDPOINT", arm.endpoint())
        .env("ARM_SUBSCRIPTION_ID", ARM_SUBSCRIPTION)
        .env("IMGFORGE_PACKER", &packer_ok)
        .arg("build")
        .arg(repo().join("contrib/rocky9-nfs.toml"))
        .arg("--out")
        .arg(tmp.path().join("third")));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("Inspected") && r.stderr.contains("3 packages"),
        "{}",
        r.stderr
    );
    let inspected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("third/inspect.json")).unwrap())
            .unwrap();
    assert_eq!(inspected["subject"], version.as_str());
    assert!(tmp.path().join("third/sbom.spdx.json").is_file());
    let deleted = arm
        .request_lines()
        .iter()
        .any(|l| l.starts_with("DELETE ") && l.contains("/disks/imgforge-inspect-"));
    assert!(deleted, "{:?}", arm.request_lines());
    assert!(!r.all().contains("sig="), "a SAS was printed");
}
