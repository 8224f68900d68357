//! The replicator and `upload` against the real Azure Storage emulator
//! (Azurite), with an independent client (Microsoft's SDK) as the oracle.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const MIB: u64 = 1024 * 1024;

/// Islands of data in a 64 MiB disk: a few bytes, a page-straddling write,
/// a multi-chunk run, and data near the end.
const ISLANDS: &[(u64, usize)] = &[
    (MIB, 5),
    (3 * MIB + 100, 1000),
    (20 * MIB, 9 * MIB as usize + 4096),
    (63 * MIB, 64 * 1024),
];

fn imgforge_for(az: &Azurite) -> Command {
    let mut cmd = imgforge();
    // No Entra ID: every account here is reached with its key or a SAS.
    cmd.env_remove("ARM_CLIENT_ID");
    az.env(&mut cmd);
    cmd
}

/// Non-zero 512-byte pages of a local file, coalesced, half-open.
fn nonzero_pages(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, page) in bytes.chunks(512).enumerate() {
        if page.iter().any(|b| *b != 0) {
            let s = i as u64 * 512;
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = s + page.len() as u64,
                _ => out.push((s, s + page.len() as u64)),
            }
        }
    }
    out
}

fn manifest_with_pool(dir: &Path, nodes: u32, accounts: &[&str]) -> std::path::PathBuf {
    let m = dir.join("m.toml");
    let list = accounts
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    write(
        &m,
        &format!(
            "{MINIMAL}\n[pool]\ndedicated = {nodes}\n\n[replicate]\nstorage_accounts = [{list}]\ncontainer = \"images\"\n"
        ),
    );
    m
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}\n{}", r.all()))
}

#[test]
fn upload_skips_zero_pages_and_the_copy_is_byte_identical() {
    let az = Azurite::start(&["acct1"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 64, ISLANDS);
    let local = std::fs::read(&vhd).unwrap();
    let r = run(imgforge_for(&az)
        .args(["upload", "--json", "--to", "acct1", "--container", "images"])
        .arg(&vhd));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc = json(&r);
    let url = az.url("acct1", "images", "disk.vhd");
    assert_eq!(doc["result"]["copies"][0]["url"], url.as_str());
    let valid: u64 = nonzero_pages(&local).iter().map(|(s, e)| e - s).sum();
    assert_eq!(doc["result"]["valid_bytes"], valid);
    // Only the valid pages went up: not the 64 MiB virtual size.
    assert_eq!(doc["result"]["bytes_uploaded"], valid);
    assert!(valid < 12 * MIB, "fixture should be sparse: {valid}");

    assert_eq!(az.ranges(&url), nonzero_pages(&local));
    assert_eq!(az.download(&url, &tmp.path().join("dl.vhd")), local);
    let props = az.props(&url);
    assert_eq!(props["type"], "PageBlob");
    assert_eq!(props["metadata"]["imgforge_verified"], "true");
}

#[test]
fn replication_makes_verified_sparse_copies_and_a_rerun_skips_them() {
    let az = Azurite::start(&["build", "rep1", "rep2", "rep3"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 64, ISLANDS);
    let local = std::fs::read(&vhd).unwrap();
    // The source sits at Packer's nested capture path, written by the oracle.
    let source = az.url(
        "build",
        "system",
        "Microsoft.Compute/Images/images/gpu-osDisk.1234.vhd",
    );
    az.oracle(&["create", &source, vhd.to_str().unwrap()]);

    // The fixture is noise, not an OS image: replication only, no validation.
    // 41 nodes need two copies: the third candidate is left alone.
    let m = manifest_with_pool(tmp.path(), 41, &["rep1", "rep2", "rep3"]);
    let r = run(imgforge_for(&az)
        .args(["replicate", "--json", "--no-validate", "--source", &source])
        .arg(&m));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc = json(&r);
    assert_eq!(doc["plan"]["copies_needed"], 2);
    assert!(doc.get("validation").is_none(), "--no-validate: {doc}");
    // Azurite has no Put Page From URL (501), so the server-side copy is Copy Blob.
    assert_eq!(doc["result"]["copies"][0]["strategy"], "copy_blob", "{doc}");
    let copies = doc["result"]["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2);
    for (c, account) in copies.iter().zip(["rep1", "rep2"]) {
        let url = az.url(account, "images", "gpu-osDisk.1234.vhd");
        assert_eq!(c["url"], url.as_str(), "bare URL at the container root");
        assert_eq!(c["verified"], true);
        // No range of a Copy Blob was checked against imgforge's hash: read
        // back in full although the default is a sample.
        assert_eq!(c["verify"], "readback");
        assert_eq!(
            az.ranges(&url),
            nonzero_pages(&local),
            "sparse ranges preserved on {account}"
        );
        assert_eq!(
            az.download(&url, &tmp.path().join("dl.vhd")),
            local,
            "content on {account}"
        );
        assert_eq!(az.props(&url)["metadata"]["imgforge_verified"], "true");
    }
    assert_eq!(
        az.props(&az.url("rep3", "images", "gpu-osDisk.1234.vhd")),
        serde_json::Value::Null
    );

    // The same command again: nothing is copied.
    let again = run(imgforge_for(&az)
        .args(["replicate", "--json", "--no-validate", "--source", &source])
        .arg(&m));
    assert_eq!(again.code, 0, "{}", again.all());
    let doc = json(&again);
    for c in doc["result"]["copies"].as_array().unwrap() {
        assert_eq!(c["strategy"], "already_verified");
        assert_eq!(c["bytes_copied"], 0);
    }
    assert_eq!(doc["result"]["bytes_uploaded"], 0);
}

#[test]
fn an_interrupted_copy_resumes_without_recopying_what_landed() {
    let az = Azurite::start(&["acct1", "acct2"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 64, ISLANDS);
    let local = std::fs::read(&vhd).unwrap();
    // The proxy lets three Put Page requests through, then drops every later one.
    let proxy = FaultProxy::start(az.port, 0, Some(3));
    let through_proxy = format!("http://127.0.0.1:{}/{{account}}", proxy.port);
    let first = run(imgforge_for(&az)
        .env("IMGFORGE_HTTP_NO_POOL", "1")
        .args([
            "upload",
            "--json",
            "--parallel",
            "1",
            "--to",
            "acct2",
            "--blob-endpoint",
            &through_proxy,
        ])
        .arg(&vhd));
    assert_eq!(
        first.code,
        1,
        "the interrupted upload must fail: {}",
        first.all()
    );
    assert!(
        first.stderr.contains("acct2/images/disk.vhd"),
        "{}",
        first.stderr
    );
    let url = az.url("acct2", "images", "disk.vhd");
    assert_eq!(az.props(&url)["metadata"]["imgforge_verified"], "false");

    let second = run(imgforge_for(&az)
        .args(["upload", "--json", "--to", "acct2"])
        .arg(&vhd));
    assert_eq!(second.code, 0, "{}", second.all());
    let doc = json(&second);
    let copy = &doc["result"]["copies"][0];
    let total = copy["chunks_total"].as_u64().unwrap();
    let copied = copy["chunks_copied"].as_u64().unwrap();
    assert_eq!(
        copied,
        total - 3,
        "the three chunks that landed are not rewritten: {copy}"
    );
    assert_eq!(az.download(&url, &tmp.path().join("dl.vhd")), local);
    assert_eq!(az.props(&url)["metadata"]["imgforge_verified"], "true");
}

#[test]
fn injected_503s_and_dropped_connections_still_end_in_verified_copies() {
    let az = Azurite::start(&["acct1", "acct2", "acct3"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 64, ISLANDS);
    let local = std::fs::read(&vhd).unwrap();
    let source = az.url("acct1", "build", "disk.vhd");
    az.oracle(&["create", &source, vhd.to_str().unwrap()]);
    // Every 4th request fails, alternately 503 ServerBusy and a dropped connection.
    let proxy = FaultProxy::start(az.port, 4, None);
    let through_proxy = format!("http://127.0.0.1:{}/{{account}}", proxy.port);
    let source_via_proxy = source.replace(&az.port.to_string(), &proxy.port.to_string());
    let r = run(imgforge_for(&az)
        .env("IMGFORGE_HTTP_NO_POOL", "1")
        .args([
            "replicate",
            "--json",
            "--no-server-copy",
            "--verify",
            "readback",
            "--to",
            "acct2",
            "--to",
            "acct3",
        ])
        .args(["--blob-endpoint", &through_proxy])
        .args(["--source", &source_via_proxy]));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc = json(&r);
    let faults = proxy.faults.load(std::sync::atomic::Ordering::SeqCst);
    assert!(faults >= 5, "only {faults} faults injected");
    assert!(
        doc["result"]["retries"].as_u64().unwrap() >= faults as u64 / 2,
        "{doc}"
    );
    for c in doc["result"]["copies"].as_array().unwrap() {
        assert_eq!(c["strategy"], "client_stream");
    }
    // Each source chunk was read once for both destinations, then each copy read
    // back once; the rest is page-list XML (and no sparse byte).
    let valid = doc["result"]["valid_bytes"].as_u64().unwrap();
    let down = doc["result"]["bytes_downloaded"].as_u64().unwrap();
    assert!(
        (3 * valid..3 * valid + 64 * 1024).contains(&down),
        "{down} vs valid {valid}: {doc}"
    );
    for account in ["acct2", "acct3"] {
        let url = az.url(account, "images", "disk.vhd");
        assert_eq!(
            az.download(&url, &tmp.path().join("dl.vhd")),
            local,
            "{account}"
        );
    }
}

#[test]
fn a_wrong_key_fails_fast_naming_the_account() {
    let az = Azurite::start(&["acct1", "acct2"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 8, &[(0, 4096)]);
    let source = az.url("acct1", "build", "disk.vhd");
    az.oracle(&["create", &source, vhd.to_str().unwrap()]);
    let started = std::time::Instant::now();
    let r = run(imgforge_for(&az)
        .env(
            "IMGFORGE_STORAGE_KEY_ACCT2",
            "d3JvbmcgYnV0IHZhbGlkIGJhc2U2NCBrZXkgISEhIQ==",
        )
        .args(["replicate", "--to", "acct2", "--source", &source]));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("acct2"), "{}", r.stderr);
    assert!(r.stderr.contains("403"), "{}", r.stderr);
    assert!(
        r.stderr.contains("IMGFORGE_STORAGE_KEY_ACCT2"),
        "{}",
        r.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "403 is not retried"
    );
}

#[test]
fn too_few_accounts_fails_before_any_byte_moves() {
    let az = Azurite::start(&["acct1", "acct2"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 8, &[(0, 4096)]);
    let source = az.url("acct1", "build", "disk.vhd");
    az.oracle(&["create", &source, vhd.to_str().unwrap()]);
    // 81 Linux nodes need three copies; one candidate account is given.
    let m = manifest_with_pool(tmp.path(), 81, &["acct2"]);
    let r = run(imgforge_for(&az)
        .args(["replicate", "--source", &source])
        .arg(&m));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("needs 3 VHD copies"), "{}", r.stderr);
    assert!(r.stderr.contains("only 1 distinct"), "{}", r.stderr);
    assert_eq!(
        az.props(&az.url("acct2", "images", "disk.vhd")),
        serde_json::Value::Null
    );
}

#[test]
fn a_sas_source_is_used_and_never_printed() {
    let az = Azurite::start(&["acct1", "acct2"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 8, &[(4096, 70_000)]);
    let local = std::fs::read(&vhd).unwrap();
    let source = az.url("acct1", "build", "disk.vhd");
    az.oracle(&["create", &source, vhd.to_str().unwrap()]);
    let sas_url = az.oracle(&["sas", &source]);
    let sig = sas_url
        .split("sig=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let r = run(imgforge_for(&az)
        .env_remove("IMGFORGE_STORAGE_KEY_ACCT1")
        .args(["replicate", "--json", "--to", "acct2", "--source", &sas_url]));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        !r.all().contains(&sig),
        "the SAS signature was printed:\n{}",
        r.all()
    );
    let doc = json(&r);
    assert_eq!(
        doc["result"]["source"],
        source.as_str(),
        "the bare source URL is reported"
    );
    let url = az.url("acct2", "images", "disk.vhd");
    assert_eq!(az.download(&url, &tmp.path().join("dl.vhd")), local);
}

#[test]
fn upload_refuses_a_dynamic_vhd() {
    let az = Azurite::start(&["acct1"]);
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("d.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let vhd = tmp.path().join("dynamic.vhd");
    let q = run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=dynamic",
        ])
        .arg(&raw)
        .arg(&vhd));
    assert_eq!(q.code, 0, "{}", q.all());
    let r = run(imgforge_for(&az)
        .args(["upload", "--to", "acct1"])
        .arg(&vhd));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("dynamic.vhd"), "{}", r.stderr);
    assert!(
        r.stderr.to_lowercase().contains("fixed") || r.stderr.contains("footer"),
        "{}",
        r.stderr
    );
}

#[test]
fn with_a_manifest_each_copy_is_validated_remotely() {
    let az = Azurite::start(&["build", "imgforgerep1", "imgforgerep2"]);
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    good_ubuntu_tree(&tree);
    let vhd = disk_image(
        tmp.path(),
        "good",
        Layout::Gpt,
        RootFs::Ext4 {
            tree: &tree,
            dirty_journal: false,
        },
        0,
    );
    let source = az.url(
        "build",
        "system",
        "Microsoft.Compute/Images/images/gpu-osDisk.9.vhd",
    );
    az.oracle(&["create", &source, vhd.to_str().unwrap()]);
    let manifest = repo().join("contrib/legacy/gpu-ubuntu1604.toml");
    let r = run(imgforge_for(&az)
        .args(["replicate", "--json", "--source", &source])
        .arg(&manifest));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc = json(&r);
    let checks = doc["validation"].as_array().unwrap();
    assert_eq!(checks.len(), 2);
    for c in checks {
        assert_eq!(c["summary"]["fail"], 0, "{c}");
        assert!(c["summary"]["pass"].as_u64().unwrap() >= 20, "{c}");
    }

    // A source that is not a Batch image: copied, verified, and then refused.
    let noise = sparse_vhd(tmp.path(), "noise", 8, &[(0, 4096)]);
    let bad = az.url("build", "system", "noise.vhd");
    az.oracle(&["create", &bad, noise.to_str().unwrap()]);
    let r = run(imgforge_for(&az)
        .args(["replicate", "--source", &bad])
        .arg(&manifest));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("failed validation"), "{}", r.stderr);
    assert!(r.stderr.contains("disk.partition-table"), "{}", r.stderr);
}

#[test]
fn ctrl_c_stops_a_standalone_upload_and_a_rerun_finishes_it() {
    let az = Azurite::start(&["acct1"]);
    let proxy = FaultProxy::start(az.port, 0, None);
    let tmp = tempfile::tempdir().unwrap();
    let islands: Vec<(u64, usize)> = (0..16).map(|i| (i * 8 * MIB, 4 * MIB as usize)).collect();
    let vhd = sparse_vhd(tmp.path(), "big", 128, &islands);
    let upload = |through_proxy: bool| {
        let mut cmd = imgforge_for(&az);
        if through_proxy {
            // One request per connection and one chunk at a time, so the
            // proxy's count says how far the upload got.
            cmd.env(
                "IMGFORGE_BLOB_ENDPOINT",
                format!("http://127.0.0.1:{}/{{account}}", proxy.port),
            )
            .env("IMGFORGE_HTTP_NO_POOL", "1")
            .args(["upload", "--parallel", "1"]);
        } else {
            cmd.arg("upload");
        }
        cmd.args(["--to", "acct1", "--container", "images"])
            .arg(&vhd);
        cmd
    };
    let mut child = upload(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waited = std::time::Instant::now();
    while proxy.page_puts.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(waited.elapsed().as_secs() < 60, "no Put Page seen");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // SAFETY: signalling the child this test spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(stderr.contains("a rerun finishes them"), "{stderr}");
    let landed = proxy.page_puts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(landed < 16, "stopped after {landed} of 16 chunks");
    let url = az.url("acct1", "images", "big.vhd");
    let props = az.props(&url);
    assert_eq!(props["metadata"]["imgforge_verified"], "false", "{props}");

    let r = run(&mut upload(false));
    assert_eq!(r.code, 0, "{}", r.all());
    let local = std::fs::read(&vhd).unwrap();
    assert_eq!(az.download(&url, &tmp.path().join("dl.vhd")), local);
    assert_eq!(az.props(&url)["metadata"]["imgforge_verified"], "true");
}

#[test]
fn with_a_region_misplaced_accounts_are_refused_before_a_byte_moves() {
    let az = Azurite::start(&["build", "imgcopy0", "imgcopy1", "imgeast0"]);
    let arm = ArmReplay::start(ArmExpect::env_principal());
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 8, &[(MIB, 4096)]);
    let source = az.url("build", "captures", "gpu.vhd");
    az.oracle(&["create", &source, vhd.to_str().unwrap()]);
    let replicate = |accounts: &[&str], extra: &[&str]| {
        let m = manifest_with_pool(tmp.path(), 41, accounts);
        let mut text = std::fs::read_to_string(&m).unwrap();
        text.push_str("region = \"westus2\"\n");
        write(&m, &text);
        let mut cmd = imgforge_for(&az);
        cmd.env("ARM_CLIENT_ID", ENV_CLIENT_ID)
            .env("ARM_SUBSCRIPTION_ID", ARM_SUBSCRIPTION)
            .env("IMGFORGE_ARM_ENDPOINT", arm.endpoint())
            .env("AZURE_AUTHORITY_HOST", arm.endpoint())
            .args(["replicate", "--no-validate", "--source", &source])
            .args(extra)
            .arg(&m);
        let r = run(&mut cmd);
        assert!(!r.all().contains(CANARY), "{}", r.all());
        r
    };

    // 41 nodes need two copies; the second account is in eastus.
    let r = replicate(&["imgcopy0", "imgeast0"], &[]);
    let plan = run(imgforge().arg("plan").arg(tmp.path().join("m.toml")));
    assert!(
        plan.stdout.contains("copies     on accounts in westus2"),
        "{}",
        plan.stdout
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(
            "must be in westus2 (the Batch account's region) and in subscription 7c1d0f2e-3a4b-4c5d-8e6f-90a1b2c3d4e5: `imgeast0` (resource group images-eastus) is in eastus"
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("nothing was copied"), "{}", r.stderr);
    for account in ["imgcopy0", "imgeast0"] {
        assert_eq!(
            az.props(&az.url(account, "images", "gpu.vhd")),
            serde_json::Value::Null,
            "{account} got a copy"
        );
    }

    // Both in westus2: checked (token + two list pages), then copied.
    let before = arm.request_lines().len();
    let r = replicate(&["imgcopy0", "imgcopy1"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("2 destination account(s) in westus2"),
        "{}",
        r.stderr
    );
    assert_eq!(arm.request_lines().len() - before, 3);
    assert_eq!(
        az.props(&az.url("imgcopy1", "images", "gpu.vhd"))["metadata"]["imgforge_verified"],
        "true"
    );

    // --region overrides the manifest's.
    let r = replicate(&["imgcopy0", "imgcopy1"], &["--region", "eastus"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("must be in eastus"), "{}", r.stderr);

    // Without a subscription to look in, the command says which variable is missing.
    let m = manifest_with_pool(tmp.path(), 1, &["imgcopy0"]);
    let mut cmd = imgforge_for(&az);
    cmd.env_remove("ARM_SUBSCRIPTION_ID")
        .args([
            "replicate",
            "--no-validate",
            "--region",
            "westus2",
            "--source",
            &source,
        ])
        .arg(&m);
    let r = run(&mut cmd);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("ARM_SUBSCRIPTION_ID is not set"),
        "{}",
        r.stderr
    );
}

#[test]
fn without_keys_the_service_principal_signs_in_to_storage_with_entra_id() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = loopback_certificate(tmp.path());
    let az = Azurite::start_oauth(&["acct1"], &cert, &key);
    let arm = ArmReplay::start(ArmExpect::env_principal());
    let vhd = sparse_vhd(tmp.path(), "disk", 16, &[(MIB, 5000), (9 * MIB, 4096)]);
    // No storage key anywhere: the ARM_* principal's token is the only way in.
    let upload = || {
        let mut cmd = imgforge();
        cmd.env("IMGFORGE_BLOB_ENDPOINT", az.endpoint_template())
            .env("AZURE_AUTHORITY_HOST", arm.endpoint())
            .env("SSL_CERT_FILE", &cert)
            .env_remove("AZURE_STORAGE_KEY")
            .args(["upload", "--json", "--to", "acct1", "--container", "images"])
            .arg(&vhd);
        cmd
    };
    let r = run(&mut upload());
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains(CANARY));
    assert_eq!(arm.token_scopes(), ["https://storage.azure.com/.default"]);
    let url = az.url("acct1", "images", "disk.vhd");
    assert_eq!(
        az.download(&url, &tmp.path().join("dl.vhd")),
        std::fs::read(&vhd).unwrap()
    );
    assert_eq!(az.props(&url)["metadata"]["imgforge_verified"], "true");

    // A wrong secret: Entra's answer, named for the account, never the secret.
    let r = run(upload().env("ARM_CLIENT_SECRET", "wrong-secret-4d1f"));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("acct1: cannot get an Entra ID token for Azure Storage")
            && r.stderr.contains("AADSTS7000215"),
        "{}",
        r.stderr
    );
    assert!(!r.all().contains("wrong-secret-4d1f"), "{}", r.all());
}

#[test]
fn off_a_terminal_a_copy_prints_progress_lines_at_a_steady_interval() {
    let az = Azurite::start(&["rep1"]);
    let tmp = tempfile::tempdir().unwrap();
    // 24 MiB of data: long enough for several 100 ms intervals on Azurite.
    let vhd = sparse_vhd(tmp.path(), "disk", 64, &[(0, 24 * MIB as usize)]);
    let r = run(imgforge_for(&az)
        .env("IMGFORGE_PROGRESS_INTERVAL_MS", "100")
        .args(["upload", "--to", "rep1"])
        .arg(&vhd));
    assert_eq!(r.code, 0, "{}", r.all());
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("Progress rep1"))
        .collect();
    assert!(lines.len() >= 2, "{}", r.stderr);
    // Phase, bytes, percent, rate, elapsed and time left in each line; both phases seen.
    for l in &lines {
        assert!(
            l.contains(" %), ")
                && l.contains("/s, ")
                && l.contains(" s elapsed, ")
                && l.contains(" left"),
            "{l}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("rep1 copy:")),
        "{}",
        r.stderr
    );
    assert!(
        lines.iter().any(|l| l.contains("rep1 verify:")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Verified"), "{}", r.stderr);
    // No terminal control characters in a log.
    assert!(
        !r.stderr.contains('\x1b') && !r.stderr.contains('\r'),
        "{:?}",
        r.stderr
    );
    // --json and --quiet print none.
    let quiet = run(imgforge_for(&az)
        .env("IMGFORGE_PROGRESS_INTERVAL_MS", "100")
        .args(["upload", "--quiet", "--to", "rep1", "--name", "q.vhd"])
        .arg(&vhd));
    assert_eq!(quiet.code, 0, "{}", quiet.all());
    assert!(!quiet.stderr.contains("Progress"), "{}", quiet.stderr);
}

#[test]
fn on_a_terminal_the_bars_show_phase_rate_and_time_left() {
    // A real pseudo-terminal (util-linux `script`), as a person sees it.
    let az = Azurite::start(&["rep1"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 64, &[(0, 24 * MIB as usize)]);
    let inner = format!(
        "{} upload --to rep1 {}",
        env!("CARGO_BIN_EXE_imgforge"),
        vhd.display()
    );
    let typescript = tmp.path().join("typescript");
    let mut cmd = imgforge_for(&az);
    let cmd = cmd
        .env("COLUMNS", "120")
        .env("IMGFORGE_PROGRESS_INTERVAL_MS", "100");
    // `script` runs the command on a new terminal and records what it drew.
    let r = run(std::process::Command::new("script")
        .args(["-q", "-e", "-c", &inner])
        .arg(&typescript)
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .env_remove("NO_COLOR"));
    assert_eq!(r.code, 0, "{}", r.all());
    let drawn = std::fs::read_to_string(&typescript).unwrap();
    // Bars redraw in place and carry phase, bytes, rate and time left…
    assert!(drawn.contains('\r') || drawn.contains("\x1b["), "{drawn:?}");
    assert!(
        drawn.contains("verify") && drawn.contains("/24.00 MiB"),
        "{drawn:?}"
    );
    assert!(
        drawn.contains("MiB/s") && drawn.contains(" eta "),
        "{drawn:?}"
    );
    // …and the log lines meant for pipes are not printed there.
    assert!(!drawn.contains("Progress rep1"), "{drawn:?}");
}

#[test]
fn storage_settings_that_cannot_work_are_named_before_any_request() {
    let az = Azurite::start(&["rep1"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 4, &[(0, 4096)]);
    // The endpoint is a closed port: any request would fail as a transport
    // error, so each message below proves nothing was sent first.
    let nowhere = "http://127.0.0.1:9/{account}";
    // A key that is not base64: named, not silently replaced by other credentials.
    let r = run(imgforge_for(&az)
        .env("IMGFORGE_STORAGE_KEY_REP1", "not base64!")
        .env("IMGFORGE_BLOB_ENDPOINT", nowhere)
        .args(["upload", "--to", "rep1"])
        .arg(&vhd));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(
            "IMGFORGE_STORAGE_KEY_REP1 (the key of storage account `rep1`) is not base64"
        ),
        "{}",
        r.stderr
    );
    assert!(
        !r.all().contains("not base64!"),
        "the value is never printed"
    );
    // No key and no service principal for an account that is written to.
    let r = run(imgforge_for(&az)
        .env_remove("IMGFORGE_STORAGE_KEY_REP1")
        .env_remove("AZURE_STORAGE_KEY")
        .env("IMGFORGE_BLOB_ENDPOINT", nowhere)
        .args(["upload", "--to", "rep1"])
        .arg(&vhd));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("no credentials for storage account `rep1`"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("IMGFORGE_STORAGE_KEY_REP1"),
        "{}",
        r.stderr
    );
    // An endpoint template without {account}.
    let r = run(imgforge_for(&az)
        .args([
            "upload",
            "--to",
            "rep1",
            "--blob-endpoint",
            "http://127.0.0.1:10000/devstoreaccount1",
        ])
        .arg(&vhd));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("does not contain `{account}`"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_sampled_verification_reads_back_less_and_a_full_one_is_not_taken_for_it() {
    let az = Azurite::start(&["rep1"]);
    let tmp = tempfile::tempdir().unwrap();
    // Two runs of 40 MiB: a sample reads 64 KiB at each of the 4 ends and 4
    // pieces of 1 MiB.
    let vhd = sparse_vhd(
        tmp.path(),
        "disk",
        128,
        &[(0, 40 * MIB as usize), (64 * MIB, 40 * MIB as usize)],
    );
    let upload = |verify: &str, name: &str| {
        let r = run(imgforge_for(&az)
            .args([
                "upload", "--json", "--to", "rep1", "--name", name, "--verify", verify,
            ])
            .arg(&vhd));
        assert_eq!(r.code, 0, "{}", r.all());
        json(&r)
    };
    let down = |doc: &serde_json::Value| doc["result"]["bytes_downloaded"].as_u64().unwrap();
    let sampled = upload("sample", "s.vhd");
    let full = upload("readback", "f.vhd");
    assert_eq!(
        sampled["result"]["copies"][0]["verify"], "sample",
        "{sampled:#}"
    );
    assert_eq!(full["result"]["copies"][0]["verify"], "readback");
    // Read back: all 80 MiB (and a few KiB of page lists), against at most
    // 4 × 64 KiB + 4 MiB.
    assert!(
        (80 * MIB..80 * MIB + 65536).contains(&down(&full)),
        "{full:#}"
    );
    let s = down(&sampled);
    assert!((MIB..4 * MIB + 256 * 1024 + 65536).contains(&s), "{s}");
    let s_url = az.url("rep1", "images", "s.vhd");
    assert_eq!(az.props(&s_url)["metadata"]["imgforge_verify"], "sample");
    assert_eq!(
        az.download(&s_url, &tmp.path().join("dl")),
        std::fs::read(&vhd).unwrap()
    );

    // A full read-back asked of the sampled copy: it is verified again, in full.
    let again = upload("readback", "s.vhd");
    let copy = &again["result"]["copies"][0];
    assert_ne!(copy["strategy"], "already_verified", "{again:#}");
    assert_eq!(copy["verify"], "readback");
    assert_eq!(az.props(&s_url)["metadata"]["imgforge_verify"], "readback");
    // A copy read back in full counts for a sampled run too.
    let once_more = upload("sample", "s.vhd");
    assert_eq!(
        once_more["result"]["copies"][0]["strategy"],
        "already_verified"
    );
    assert_eq!(once_more["result"]["copies"][0]["verify"], "readback");
}

#[test]
fn a_destination_that_fails_mid_copy_does_not_stop_the_others() {
    let az = Azurite::start(&["src", "rep1", "rep2", "rep3"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 64, ISLANDS);
    let source = az.url("src", "build", "disk.vhd");
    az.oracle(&["create", &source, vhd.to_str().unwrap()]);
    // rep2's Put Page requests are dropped after the second; rep1 and rep3 pass.
    let proxy = FaultProxy::start_for(az.port, 0, Some(2), Some("rep2"));
    let through_proxy = format!("http://127.0.0.1:{}/{{account}}", proxy.port);
    let replicate = |endpoint: &str| {
        run(imgforge_for(&az)
            .env("IMGFORGE_HTTP_NO_POOL", "1")
            .args([
                "replicate",
                "--json",
                "--no-server-copy",
                "--source",
                &source,
            ])
            .args(["--to", "rep1", "--to", "rep2", "--to", "rep3"])
            .args(["--blob-endpoint", endpoint]))
    };
    let r = replicate(&through_proxy);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("1 of 3 copies failed (2 verified and kept)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("\n  rep2: "), "{}", r.stderr);
    let url = |a: &str| az.url(a, "images", "disk.vhd");
    assert_eq!(
        az.props(&url("rep1"))["metadata"]["imgforge_verified"],
        "true"
    );
    assert_eq!(
        az.props(&url("rep3"))["metadata"]["imgforge_verified"],
        "true"
    );
    assert_eq!(
        az.props(&url("rep2"))["metadata"]["imgforge_verified"],
        "false"
    );
    assert!(proxy.faults.load(std::sync::atomic::Ordering::SeqCst) > 0);

    // The same command without the fault: only rep2 is worked on.
    let again = replicate(&az.endpoint_template());
    assert_eq!(again.code, 0, "{}", again.all());
    let doc = json(&again);
    let strategies: Vec<&str> = doc["result"]["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(
        strategies,
        vec!["already_verified", "client_stream", "already_verified"]
    );
    assert_eq!(
        az.download(&url("rep2"), &tmp.path().join("dl")),
        std::fs::read(&vhd).unwrap()
    );
}

#[test]
fn put_page_from_url_carries_the_source_md5_and_a_damaged_range_is_refused() {
    // Azurite answers Put Page From URL with 501; the stand-in in
    // tests/common/proxy.rs serves it as the service documents, over Azurite.
    let az = Azurite::start(&["src", "rep1", "rep2", "rep3"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 64, ISLANDS);
    let local = std::fs::read(&vhd).unwrap();
    for name in ["disk.vhd", "other.vhd"] {
        az.oracle(&[
            "create",
            &az.url("src", "build", name),
            vhd.to_str().unwrap(),
        ]);
    }
    let replicate = |service: &PageFromUrl, name: &str| {
        let endpoint = format!("http://127.0.0.1:{}/{{account}}", service.port);
        let source = format!("http://127.0.0.1:{}/src/build/{name}", service.port);
        run(imgforge_for(&az)
            .args(["replicate", "--json", "--source", &source])
            .args(["--to", "rep1", "--to", "rep2", "--to", "rep3"])
            .args(["--parallel", "2", "--max-requests", "3"])
            .args(["--blob-endpoint", &endpoint]))
    };

    let service = PageFromUrl::start(&az, None);
    let r = replicate(&service, "disk.vhd");
    assert_eq!(r.code, 0, "{}", r.all());
    let doc = json(&r);
    let valid = doc["result"]["valid_bytes"].as_u64().unwrap();
    let chunks = doc["result"]["copies"][0]["chunks_total"].as_u64().unwrap() as usize;
    for c in doc["result"]["copies"].as_array().unwrap() {
        assert_eq!(c["strategy"], "put_page_from_url", "{doc:#}");
        assert_eq!(c["verify"], "sample");
        assert_eq!(c["chunks_copied"], chunks);
    }
    // Every range went through the service, each with the source's MD5.
    let served = service.served.lock().unwrap().clone();
    assert_eq!(
        served.values().copied().collect::<Vec<_>>(),
        vec![chunks; 3],
        "{served:?}"
    );
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(service.without_md5.load(SeqCst), 0);
    assert_eq!(service.mismatches.load(SeqCst), 0);
    // No copy byte was uploaded through imgforge; the source was read once
    // (for the hashes) and a sample of each copy read back.
    assert!(
        doc["result"]["bytes_uploaded"].as_u64().unwrap() < 64 * 1024,
        "{doc:#}"
    );
    let down = doc["result"]["bytes_downloaded"].as_u64().unwrap();
    assert!(
        (valid..valid + 3 * valid).contains(&down),
        "{down} vs {valid}"
    );
    // The bounds: 2 chunks in flight (so 2 requests per account), 3 in all;
    // the writes of a chunk do overlap.
    let (per_account, all) = service.peak.lock().unwrap().clone();
    assert!(per_account.values().all(|&n| n <= 2), "{per_account:?}");
    assert!((2..=3).contains(&all), "{all} in flight at most");
    for account in ["rep1", "rep2", "rep3"] {
        let url = az.url(account, "images", "disk.vhd");
        assert_eq!(
            az.download(&url, &tmp.path().join("dl")),
            local,
            "{account}"
        );
    }

    // What rep2's service reads from the source differs from what imgforge
    // read: the service refuses those writes and rep2 alone fails.
    let service = PageFromUrl::start(&az, Some("rep2"));
    let r = replicate(&service, "other.vhd");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("1 of 3 copies failed (2 verified and kept)"),
        "{}",
        r.stderr
    );
    let rep2 = r
        .stderr
        .lines()
        .find(|l| l.starts_with("  rep2: "))
        .unwrap();
    assert!(rep2.contains("Md5Mismatch"), "{rep2}");
    assert!(service.mismatches.load(SeqCst) >= 1);
    let url = |a: &str| az.url(a, "images", "other.vhd");
    for (account, verified) in [("rep1", "true"), ("rep2", "false"), ("rep3", "true")] {
        assert_eq!(
            az.props(&url(account))["metadata"]["imgforge_verified"],
            verified,
            "{account}"
        );
    }
}

#[test]
fn a_page_damaged_on_the_way_is_accepted_by_azurite_and_refused_by_verification() {
    let az = Azurite::start(&["rep1"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 64, ISLANDS);
    for verify in ["sample", "readback"] {
        // The first Put Page (one chunk at a time, so the first chunk: an
        // edge every sample reads) arrives with one byte flipped and its
        // original Content-MD5.
        let proxy = FaultProxy::corrupting_first_page(az.port);
        let endpoint = format!("http://127.0.0.1:{}/{{account}}", proxy.port);
        let name = format!("{verify}.vhd");
        let r = run(imgforge_for(&az)
            .env("IMGFORGE_HTTP_NO_POOL", "1")
            .args([
                "upload", "--to", "rep1", "--name", &name, "--verify", verify,
            ])
            .args(["--parallel", "1"])
            .args(["--blob-endpoint", &endpoint])
            .arg(&vhd));
        assert_eq!(proxy.faults.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Azurite took the write (it does not check Content-MD5); the copy is
        // refused and stays unverified.
        assert_eq!(r.code, 1, "{verify}: {}", r.all());
        assert!(
            r.stderr.contains("differ from the source (MD5 mismatch"),
            "{}",
            r.stderr
        );
        let url = az.url("rep1", "images", &name);
        assert_eq!(az.props(&url)["metadata"]["imgforge_verified"], "false");
    }
}

/// `--timeout` bounds a whole copy: when it runs out the copy stops at its
/// next safe point, as Ctrl-C does, exits 1 saying so, and a rerun with
/// time to spare finishes it. (`--timeout 0`: the time is out before the
/// first chunk, so the case is the same on a fast or a loaded machine.)
#[test]
fn a_copy_stops_at_its_timeout_and_a_rerun_finishes_it() {
    let az = Azurite::start(&["acct1"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 64, ISLANDS);
    let upload = |timeout: &str| {
        run(imgforge_for(&az)
            .args([
                "upload",
                "--to",
                "acct1",
                "--container",
                "images",
                "--timeout",
                timeout,
            ])
            .arg(&vhd))
    };
    let r = upload("0");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("stopped after --timeout 0 s at a safe point"),
        "{}",
        r.stderr
    );
    let url = az.url("acct1", "images", "disk.vhd");
    assert_ne!(az.props(&url)["metadata"]["imgforge_verified"], "true");
    let r = upload("600");
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(az.props(&url)["metadata"]["imgforge_verified"], "true");
}
