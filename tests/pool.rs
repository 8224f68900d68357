//! `imgforge pool check`, `pool snippet` and `skus` on Batch Shipyard-style
//! pool configurations (YAML and JSON) in tests/fixtures/pool.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/pool").join(name)
}

/// `pool check --legacy`: the fixtures are Batch Shipyard 2.x files (VHD
/// image_uris, managed images), checked by the rules of their time; what
/// today's rules say of them is `todays_rules_refuse_what_batch_and_shipyard_refuse`.
fn check(name: &str, manifest: Option<&str>) -> (Run, serde_json::Value) {
    let mut cmd = imgforge();
    cmd.args(["pool", "check", "--json", "--legacy"])
        .arg(fixture(name));
    if let Some(m) = manifest {
        cmd.arg("--manifest").arg(repo().join(m));
    }
    let r = run(&mut cmd);
    let report =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{name}: {e}\n{}", r.all()));
    (r, report)
}

fn status_of<'a>(report: &'a serde_json::Value, id: &str) -> Vec<&'a str> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == id)
        .map(|f| f["status"].as_str().unwrap())
        .collect()
}

/// (fixture, manifest, expected exit, [(check id, status)])
type Case = (
    &'static str,
    Option<&'static str>,
    i32,
    &'static [(&'static str, &'static str)],
);

#[test]
fn each_rule_passes_and_fails_on_real_configs() {
    let cases: &[Case] = &[
        (
            "good-vhd.yaml",
            Some("contrib/legacy/gpu-ubuntu1604.toml"),
            0,
            &[
                ("pool.image.exactly-one", "pass"),
                ("pool.image-uris.https", "pass"),
                ("pool.image-uris.no-sas", "pass"),
                ("pool.image-uris.container-root", "pass"),
                ("pool.image-uris.vhd", "pass"),
                ("pool.image-uris.host", "pass"),
                ("pool.image-uris.distinct-accounts", "pass"),
                ("pool.image-uris.count", "pass"),
                ("pool.node-agent.known", "pass"),
                ("pool.node-agent.matches-image", "pass"),
                ("pool.vm-size.gpu", "pass"),
                ("pool.online.blobs", "skip"),
                ("pool.online.accounts", "skip"),
            ],
        ),
        (
            "good-arm.json",
            Some("contrib/legacy/managed-image-almalinux8.toml"),
            0,
            &[
                ("pool.arm-image-id.format", "pass"),
                ("pool.node-agent.matches-image", "pass"),
            ],
        ),
        (
            "both-images.yaml",
            None,
            1,
            &[("pool.image.exactly-one", "fail")],
        ),
        // A platform-image pool is not a failure: the checks that apply to any
        // pool run (its size, its node agent's lifecycle, the VM size against
        // the manifest's features).
        (
            "platform-only.yaml",
            None,
            0,
            &[
                ("pool.image.exactly-one", "pass"),
                ("pool.size", "pass"),
                ("pool.node-agent.retired", "warn"),
            ],
        ),
        (
            "legacy-flat.yaml",
            Some("contrib/legacy/gpu-ubuntu1604.toml"),
            0,
            &[
                ("pool.image.exactly-one", "pass"),
                ("pool.size", "pass"),
                ("pool.node-agent.retired", "pass"),
                ("pool.vm-size.gpu", "warn"),
            ],
        ),
        (
            "sas-uri.yaml",
            None,
            1,
            &[("pool.image-uris.no-sas", "fail")],
        ),
        (
            "nested-blob.yaml",
            None,
            1,
            &[
                ("pool.image-uris.container-root", "fail"),
                ("pool.image-uris.no-sas", "pass"),
            ],
        ),
        (
            "http-not-vhd.yaml",
            None,
            1,
            &[
                ("pool.image-uris.https", "fail"),
                ("pool.image-uris.vhd", "fail"),
            ],
        ),
        (
            "same-account.yaml",
            None,
            1,
            &[("pool.image-uris.distinct-accounts", "fail")],
        ),
        (
            "lookalike-host.yaml",
            None,
            1,
            &[
                ("pool.image-uris.host", "fail"),
                ("pool.image-uris.https", "pass"),
            ],
        ),
        (
            "too-few-autoscale.yaml",
            None,
            1,
            &[("pool.image-uris.count", "fail")],
        ),
        (
            "windows-21.json",
            None,
            1,
            &[
                ("pool.image-uris.count", "fail"),
                ("pool.node-agent.known", "pass"),
            ],
        ),
        (
            "unknown-agent.yaml",
            None,
            1,
            &[("pool.node-agent.known", "fail")],
        ),
        (
            "missing-agent.yaml",
            None,
            1,
            &[("pool.node-agent.present", "fail")],
        ),
        (
            "bad-arm-id.yaml",
            None,
            1,
            &[("pool.arm-image-id.format", "fail")],
        ),
        (
            "cpu-size-for-gpu-image.yaml",
            Some("contrib/legacy/gpu-ubuntu1604.toml"),
            0,
            &[
                ("pool.vm-size.gpu", "warn"),
                ("pool.image-uris.count", "pass"),
            ],
        ),
        (
            "agent-mismatch.yaml",
            Some("contrib/legacy/gpu-ubuntu1604.toml"),
            1,
            &[
                ("pool.node-agent.matches-image", "fail"),
                ("pool.node-agent.known", "pass"),
            ],
        ),
    ];
    for (name, manifest, code, expected) in cases {
        let (r, report) = check(name, *manifest);
        assert_eq!(r.code, *code, "{name}:\n{}", r.all());
        for (id, status) in *expected {
            assert_eq!(
                status_of(&report, id),
                vec![*status],
                "{name}: {id}\n{report:#}"
            );
        }
        for f in report["findings"].as_array().unwrap() {
            if f["status"] == "fail" {
                assert!(
                    f["hint"].is_string(),
                    "{name}: every failure has a hint: {f}"
                );
                assert!(
                    f["evidence"].is_string(),
                    "{name}: every failure has evidence: {f}"
                );
            }
        }
    }
}

#[test]
fn failures_point_at_the_line_and_hide_the_sas() {
    let r = run(imgforge()
        .args(["pool", "check"])
        .arg(fixture("sas-uri.yaml")));
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("sas-uri.yaml:6"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("U2VjcmV0"),
        "the SAS signature was printed:\n{}",
        r.stdout
    );

    let (_, report) = check("too-few-autoscale.yaml", None);
    let count = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "pool.image-uris.count")
        .unwrap();
    let message = count["message"].as_str().unwrap();
    assert!(
        message.contains("insufficient number of VHDs (2)"),
        "{message}"
    );
    assert!(message.contains("81 nodes"), "{message}");
    assert!(message.contains("at least 3"), "{message}");
}

#[test]
fn junit_report_lists_every_check() {
    let tmp = tempfile::tempdir().unwrap();
    let junit = tmp.path().join("report.xml");
    let r = run(imgforge()
        .args(["pool", "check", "--legacy"])
        .arg(fixture("same-account.yaml"))
        .arg("--junit")
        .arg(&junit));
    assert_eq!(r.code, 1);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testsuite name=\"imgforge pool check\""),
        "{xml}"
    );
    assert!(xml.contains("failures=\"1\""), "{xml}");
    assert!(
        xml.contains("name=\"pool.image-uris.distinct-accounts\""),
        "{xml}"
    );
}

#[test]
fn unreadable_configs_are_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("pool.yaml");
    write(&bad, "pool_specification: [unclosed\n");
    let r = run(imgforge().args(["pool", "check"]).arg(&bad));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("pool.yaml"), "{}", r.stderr);
    let r = run(imgforge().args(["pool", "check", "/nonexistent/pool.yaml"]));
    assert_eq!(r.code, 2, "{}", r.all());
    write(&bad, "jobs: []\n");
    let r = run(imgforge().args(["pool", "check"]).arg(&bad));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("pool_specification"), "{}", r.stderr);
}

/// A real build record (tests/fixtures/build/README.md) with `changes` put
/// over its top-level fields.
fn record(changes: serde_json::Value) -> serde_json::Value {
    let mut r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/build/vhd-copies.json")).unwrap(),
    )
    .unwrap();
    for (k, v) in changes.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

/// `pool snippet MANIFEST --from RECORD`, the record written to a temporary file.
fn snippet_from(manifest: &str, record: &serde_json::Value) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let build_json = tmp.path().join("build.json");
    write(&build_json, &record.to_string());
    run(imgforge()
        .args(["pool", "snippet", "--legacy"])
        .arg(repo().join(manifest))
        .arg("--from")
        .arg(&build_json))
}

fn snippet_roundtrip(manifest: &str, record: serde_json::Value) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let build_json = tmp.path().join("build.json");
    write(&build_json, &record.to_string());
    let out = tmp.path().join("pool.yaml");
    // Without --legacy a VHD or managed image gets no pool: Batch retired both.
    let refused = run(imgforge()
        .args(["pool", "snippet"])
        .arg(repo().join(manifest))
        .arg("--from")
        .arg(&build_json));
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert!(
        refused.stderr.contains("since 2026-03-31"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--legacy"), "{}", refused.stderr);
    let r = run(imgforge()
        .args(["pool", "snippet", "--legacy"])
        .arg(repo().join(manifest))
        .arg("--from")
        .arg(&build_json)
        .arg("--out")
        .arg(&out));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), r.stdout);
    assert!(r.stdout.starts_with("# Batch Shipyard"), "{}", r.stdout);
    assert!(
        r.stdout.contains("# LEGACY: Azure Batch creates no pool"),
        "{}",
        r.stdout
    );
    // The snippet alone is a valid pool config (by the rules of its time)
    // with no failure, and no warning but the ones that tell the truth: the
    // image source's retirement and a retired node agent's.
    let c = run(imgforge()
        .args(["pool", "check", "--json", "--legacy", "--manifest"])
        .arg(repo().join(manifest))
        .arg(&out));
    assert_eq!(c.code, 0, "{}\n{}", r.stdout, c.all());
    let report: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    assert_eq!(report["summary"]["fail"], 0, "{report:#}");
    let warned: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "warn")
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    let retired = text_of(manifest).contains("ubuntu-16.04");
    let mut expected = vec![];
    if r.stdout.contains("image_uris") {
        expected.push("pool.schema.keys");
    }
    expected.push("pool.custom-image.gallery");
    if retired {
        expected.push("pool.node-agent.retired");
    }
    assert_eq!(warned, expected, "{report:#}");
    r.stdout
}

fn text_of(manifest: &str) -> String {
    std::fs::read_to_string(repo().join(manifest)).unwrap()
}

#[test]
fn a_retired_node_agent_is_a_warning_with_its_date_and_what_to_use() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool.yaml");
    for (agent, status, needle) in [
        ("batch.node.ubuntu 16.04", "warn", "since 2021-05-21"),
        ("batch.node.ubuntu 20.04", "warn", "since 2025-04-23"),
        ("batch.node.centos 7", "warn", "since 2024-12-31"),
        ("batch.node.ubuntu 22.04", "warn", "ends on 2027-06-30"),
        ("batch.node.ubuntu 24.04", "pass", "not retired"),
    ] {
        write(
            &pool,
            &format!(
                "pool_specification:\n  id: p\n  vm_size: STANDARD_D2_V3\n  vm_count: 1\n  vm_configuration:\n    custom_image:\n      node_agent: {agent}\n      arm_image_id: /subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/img\n"
            ),
        );
        let r = run(imgforge().args(["pool", "check", "--json"]).arg(&pool));
        let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let f = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "pool.node-agent.retired")
            .unwrap_or_else(|| panic!("{agent}: {doc:#}"));
        assert_eq!(f["status"], status, "{agent}: {f}");
        assert!(
            f["message"].as_str().unwrap().contains(needle),
            "{agent}: {f}"
        );
        if status == "warn" && needle.starts_with("since") {
            assert!(f["hint"].as_str().unwrap().contains("ubuntu-24.04"), "{f}");
        }
    }
}

#[test]
fn vhd_snippet_round_trips_through_pool_check() {
    let text = snippet_roundtrip(
        "contrib/legacy/gpu-ubuntu1604.toml",
        record(serde_json::json!({})),
    );
    let doc: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    let ci = &doc["pool_specification"]["vm_configuration"]["custom_image"];
    assert_eq!(ci["node_agent"], "batch.node.ubuntu 16.04");
    assert_eq!(ci["image_uris"].as_array().unwrap().len(), 2);
    assert_eq!(doc["pool_specification"]["vm_size"], "Standard_NC6");
    assert!(
        text.starts_with("# "),
        "comments state the pool size:\n{text}"
    );
    assert!(
        text.contains("2 VHD copies serve up to 80 Linux nodes"),
        "{text}"
    );
}

#[test]
fn managed_image_snippet_round_trips_through_pool_check() {
    let text = snippet_roundtrip(
        "contrib/legacy/managed-image-almalinux8.toml",
        record(serde_json::json!({
            "image": "managed-almalinux8",
            "target": "managed_image",
            "artifact": {"kind": "managed_image", "id": "/subscriptions/s1/resourceGroups/imgforge-images/providers/Microsoft.Compute/images/managed-almalinux8"},
            "copies": [],
        })),
    );
    assert!(text.contains("arm_image_id: /subscriptions/s1/"), "{text}");
    assert!(!text.contains("image_uris"), "{text}");
}

#[test]
fn a_vhd_build_without_copies_has_no_snippet_yet() {
    let r = snippet_from(
        "contrib/legacy/gpu-ubuntu1604.toml",
        &record(serde_json::json!({
            "artifact": {"kind": "azure_vhd", "os_disk_uri": "https://imgforgebuild.blob.core.windows.net/system/Microsoft.Compute/Images/images/gpu-ubuntu1604-osDisk.1.vhd", "os_type": "Linux", "storage_account_location": "eastus"},
            "copies": [],
        })),
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("imgforge replicate"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}

#[test]
fn only_a_succeeded_build_record_gives_a_snippet() {
    // A failed build's copies may be unverified or fail validation.
    let r = snippet_from(
        "contrib/legacy/gpu-ubuntu1604.toml",
        &record(serde_json::json!({"status": "failed", "failed_stage": "validate"})),
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("did not succeed (status failed, at stage `validate`)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("build.json"), "{}", r.stderr);
    // Not a build record (a partial one, or another tool's JSON): refused, naming the file.
    let r = snippet_from(
        "contrib/legacy/gpu-ubuntu1604.toml",
        &serde_json::json!({"status": "succeeded", "copies": [{"url": "https://a.blob.core.windows.net/c/x.vhd"}]}),
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("build.json: not a build record this imgforge reads"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
}

#[test]
fn skus_lists_the_catalog() {
    let r = run(imgforge().args(["skus", "--json"]));
    assert_eq!(r.code, 0);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["schema"], 1);
    let agents: Vec<&str> = doc["skus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node_agent"].as_str().unwrap())
        .collect();
    for want in [
        "batch.node.ubuntu 16.04",
        "batch.node.centos 7",
        "batch.node.windows amd64",
    ] {
        assert!(agents.contains(&want), "{want} missing: {agents:?}");
    }
    let text = run(imgforge().arg("skus"));
    assert!(text.stdout.contains("ubuntu-18.04"), "{}", text.stdout);
}

#[test]
fn skus_online_lists_every_page_of_the_batch_accounts_supported_images() {
    let tmp = tempfile::tempdir().unwrap();
    let arm = ArmReplay::start(shipyard_principal());
    // Batch Shipyard's form: a global aad with the tenant, batch.aad with the rest.
    let creds = tmp.path().join("credentials.yaml");
    let batch_aad = |endpoint: &str| {
        format!(
            "credentials:\n  aad:\n    directory_id: {ARM_TENANT}\n    authority_url: {}\n  batch:\n    account_service_url: https://imgbatch.westus2.batch.azure.com/\n    aad:\n      application_id: {ARM_CLIENT}\n      auth_key: {AUTH_KEY}\n{endpoint}",
            arm.endpoint()
        )
    };
    write(&creds, &batch_aad(""));
    let skus = |creds: &std::path::Path, url: &str, json: bool| {
        let mut cmd = imgforge();
        cmd.env("IMGFORGE_BATCH_URL", url)
            .args(["skus", "--online", "--credentials"])
            .arg(creds);
        if json {
            cmd.arg("--json");
        }
        let r = run(&mut cmd);
        assert_no_secrets(&r, &[AUTH_KEY]);
        r
    };
    let r = skus(&creds, &arm.endpoint(), true);
    assert_eq!(r.code, 0, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    // Both pages, in order, with a Batch token (Batch refuses a Resource Manager one).
    assert_eq!(doc["images"].as_array().unwrap().len(), 6, "{doc:#}");
    assert_eq!(
        arm.token_scopes(),
        vec!["https://batch.core.windows.net//.default"]
    );
    let agent = |id: &str| {
        doc["node_agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["node_agent"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id}: {doc:#}"))
    };
    assert_eq!(agent("batch.node.ubuntu 20.04")["status"], "retired");
    assert_eq!(
        agent("batch.node.ubuntu 20.04")["end_of_life"],
        "2025-04-23"
    );
    assert_eq!(agent("batch.node.ubuntu 24.04")["images"], 2);
    assert_eq!(agent("batch.node.ubuntu 24.04")["status"], "supported");
    assert_eq!(
        agent("batch.node.ubuntu 24.04")["distros"],
        serde_json::json!(["ubuntu-24.04"])
    );
    assert_eq!(
        agent("batch.node.ubuntu 22.04")["end_of_life"],
        "2027-06-30"
    );
    let not_listed: Vec<&str> = doc["not_listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_agent"].as_str().unwrap())
        .collect();
    assert!(
        not_listed.contains(&"batch.node.ubuntu 16.04")
            && not_listed.contains(&"batch.node.debian 12"),
        "{not_listed:?}"
    );
    assert!(
        !not_listed.contains(&"batch.node.ubuntu 24.04"),
        "{not_listed:?}"
    );

    let text = skus(&creds, &arm.endpoint(), false);
    assert_eq!(text.code, 0, "{}", text.all());
    for want in [
        "6 image(s), 5 node agent(s)",
        "retired 2025-04-23",
        "canonical/ubuntu-24_04-lts/server-gen1",
        "not listed by this account (Batch creates no pool with them here): batch.node.ubuntu 16.04 (ubuntu-16.04)",
    ] {
        assert!(text.stdout.contains(want), "{want}: {}", text.stdout);
    }

    // A next page on another host: the token is not sent there.
    let elsewhere = ArmReplay::start_with(
        shipyard_principal(),
        common::compute::Knobs {
            batch_link_elsewhere: true,
            ..Default::default()
        },
    );
    let moved = tmp.path().join("credentials-elsewhere.yaml");
    write(
        &moved,
        &batch_aad("").replace(&arm.endpoint(), &elsewhere.endpoint()),
    );
    let r = skus(&moved, &elsewhere.endpoint(), true);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("odata.nextLink `https://elsewhere.example.com/"),
        "{}",
        r.stderr
    );

    // A token for another resource is refused by Batch, with Batch's own words.
    let wrong = tmp.path().join("credentials-wrong-resource.yaml");
    write(
        &wrong,
        &batch_aad("      endpoint: https://management.azure.com/\n"),
    );
    let r = skus(&wrong, &arm.endpoint(), true);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("HTTP 401 AuthenticationFailed")
            && r.stderr.contains("The access token audience is invalid")
            && r.stderr.contains("hint: Batch refused the token"),
        "{}",
        r.stderr
    );

    // Only the Batch account key: no request, the fix named.
    let keyed = tmp.path().join("credentials-key.yaml");
    write(
        &keyed,
        &format!(
            "credentials:\n  batch:\n    account_service_url: https://imgbatch.westus2.batch.azure.com/\n    account_key: {BATCH_KEY}\n"
        ),
    );
    let before = arm.request_lines().len();
    let mut cmd = imgforge();
    cmd.env_remove("ARM_CLIENT_SECRET")
        .env("IMGFORGE_BATCH_URL", arm.endpoint())
        .args(["skus", "--online", "--credentials"])
        .arg(&keyed);
    let r = run(&mut cmd);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("no Entra ID credentials for Azure Batch"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("credentials.batch.aad"), "{}", r.stderr);
    assert_no_secrets(&r, &[BATCH_KEY]);
    assert_eq!(arm.request_lines().len(), before);

    // Plain http to anywhere but this machine is refused before the sign-in.
    let r = skus(&creds, "http://batch.example.com", true);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("https"), "{}", r.stderr);
}

#[test]
fn online_blob_check_asks_the_storage_service() {
    let az = Azurite::start(&["acct1", "acct2"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 4, &[(0, 4096)]);
    let present = az.url("acct1", "images", "gpu.vhd");
    az.oracle(&["create", &present, vhd.to_str().unwrap()]);
    let missing = az.url("acct2", "images", "gpu.vhd");
    let config = |uris: &[&str]| {
        let path = tmp.path().join("pool.yaml");
        let list: String = uris.iter().map(|u| format!("      - {u}\n")).collect();
        write(
            &path,
            &format!(
                "pool_specification:\n  id: p\n  vm_configuration:\n    custom_image:\n      image_uris:\n{list}      node_agent: batch.node.ubuntu 16.04\n  vm_size: STANDARD_NC6\n  vm_count:\n    dedicated: 2\n"
            ),
        );
        path
    };
    let check = |path: &std::path::Path| {
        let mut cmd = imgforge();
        cmd.env_remove("ARM_CLIENT_ID")
            .args(["pool", "check", "--online", "--json"])
            .arg(path);
        let r = run(az.env(&mut cmd));
        let doc: serde_json::Value =
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.all()));
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "pool.online.blobs")
            .cloned()
            .unwrap()
    };
    let ok = check(&config(&[&present]));
    assert_eq!(ok["status"], "pass", "{ok}");
    let bad = check(&config(&[&present, &missing]));
    assert_eq!(bad["status"], "fail", "{bad}");
    says(&bad, "message", "acct2/images/gpu.vhd does not exist");
    says(&bad, "hint", "replicate");

    // A storage service that cannot be reached: the cause, and no advice to
    // replicate again (nothing is known about the blob).
    let unreachable = "http://127.0.0.1:9/acct1/images/gpu.vhd";
    let mut cmd = imgforge();
    cmd.args(["pool", "check", "--online", "--json"])
        .arg(config(&[unreachable]));
    let r = run(az.env(&mut cmd));
    assert_eq!(r.code, 1, "{}", r.all());
    let f = finding(&r, "pool.online.blobs");
    assert_eq!(f["status"], "fail", "{f}");
    says(&f, "message", "could not ask the storage service about");
    says(&f, "message", "Connection refused");
    assert!(!f["hint"].as_str().unwrap().contains("replicate"), "{f}");
    says(&f, "hint", "check the network");
}

/// Batch Shipyard's credentials file from tests/fixtures/shipyard, pointed at
/// the loopback Resource Manager and holding the Azurite accounts' keys.
fn credentials_file(
    dir: &std::path::Path,
    arm: &ArmReplay,
    az: &Azurite,
    auth_key: &str,
) -> PathBuf {
    let storage: String = az
        .keys
        .iter()
        .enumerate()
        .map(|(i, (account, key))| {
            format!("    imagestore{i}:\n      account: {account}\n      account_key: {key}\n      endpoint: core.windows.net\n")
        })
        .collect();
    let text = std::fs::read_to_string(repo().join("tests/fixtures/shipyard/credentials.yaml"))
        .unwrap()
        .replace("{{authority}}", &arm.endpoint())
        .replace("{{tenant}}", ARM_TENANT)
        .replace("{{arm}}", &arm.endpoint())
        .replace("{{client}}", ARM_CLIENT)
        .replace("{{auth_key}}", auth_key)
        .replace("{{batch_key}}", BATCH_KEY)
        .replace("{{docker_password}}", DOCKER_PASSWORD)
        .replace("{{storage}}\n", &storage);
    let path = dir.join(format!("credentials-{}.yaml", auth_key.len()));
    write(&path, &text);
    path
}

/// The service principal of the Shipyard credentials files here; a Reader; a
/// User Subscription Batch account.
fn shipyard_principal() -> ArmExpect {
    ArmExpect {
        tenant: ARM_TENANT.into(),
        client_id: ARM_CLIENT.into(),
        secret: AUTH_KEY.into(),
        forbid_list: false,
        pool_allocation_mode: "UserSubscription",
    }
}

const ARM_TENANT: &str = "3f2b8c1d-4e5f-4a6b-9c7d-8e9f0a1b2c3d";
const ARM_CLIENT: &str = "00000000-0000-0000-0000-00000000a991";
const AUTH_KEY: &str = "shipyard-auth-key-9Qz~e1";
const BATCH_KEY: &str = "YmF0Y2gta2V5LW5ldmVyLXByaW50ZWQ=";
const DOCKER_PASSWORD: &str = "docker-pw-never-printed";

/// A pool config with one image URI per account, and the 1-based line of each URI.
fn pool_on(dir: &std::path::Path, az: &Azurite, accounts: &[&str]) -> (PathBuf, Vec<usize>) {
    let list: String = accounts
        .iter()
        .map(|a| format!("      - {}\n", az.url(a, "images", "gpu.vhd")))
        .collect();
    let path = dir.join(format!("pool-{}.yaml", accounts.join("-")));
    write(
        &path,
        &format!(
            "pool_specification:\n  id: p\n  vm_configuration:\n    custom_image:\n      image_uris:\n{list}      node_agent: batch.node.ubuntu 16.04\n  vm_size: STANDARD_NC6\n  vm_count:\n    dedicated: 2\n"
        ),
    );
    (path, (0..accounts.len()).map(|i| 6 + i).collect())
}

/// The findings pool.online.blobs, pool.online.accounts, pool.online.batch-account.
fn online_findings(r: &Run) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    (
        finding(r, "pool.online.blobs"),
        finding(r, "pool.online.accounts"),
        finding(r, "pool.online.batch-account"),
    )
}

/// The finding `id` of a JSON report.
fn finding(r: &Run, id: &str) -> serde_json::Value {
    let doc: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.all()));
    doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id}: {doc}"))
}

/// `finding[field]` is a string containing `want`.
fn says(finding: &serde_json::Value, field: &str, want: &str) {
    let text = finding[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}: {finding}"));
    assert!(text.contains(want), "{field} lacks `{want}`: {finding}");
}

fn assert_no_secrets(r: &Run, extra: &[&str]) {
    let all = r.all();
    for secret in [AUTH_KEY, BATCH_KEY, DOCKER_PASSWORD, CANARY]
        .iter()
        .chain(extra)
    {
        assert!(!all.contains(secret), "secret {secret} printed:\n{all}");
    }
}

#[test]
fn online_account_check_asks_resource_manager_with_shipyard_credentials() {
    let accounts = ["imgcopy0", "imgcopy1", "imgcopy2", "imgeast0"];
    let az = Azurite::start(&accounts);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 4, &[(0, 4096)]);
    for a in accounts {
        az.oracle(&[
            "create",
            &az.url(a, "images", "gpu.vhd"),
            vhd.to_str().unwrap(),
        ]);
    }
    let arm = ArmReplay::start(shipyard_principal());
    let creds = credentials_file(tmp.path(), &arm, &az, AUTH_KEY);
    let storage_keys: Vec<&str> = az.keys.iter().map(|(_, k)| k.as_str()).collect();
    // Storage keys come from the credentials file only; the ARM_* variables
    // (the canary) are set but the file's management.aad wins.
    let check_with = |creds: &std::path::Path, pool: &std::path::Path, extra: &[&str]| {
        let mut cmd = imgforge();
        cmd.env("IMGFORGE_BLOB_ENDPOINT", az.endpoint_template())
            .args(["pool", "check", "--online", "--json", "--credentials"])
            .arg(creds)
            .args(extra)
            .arg(pool);
        let r = run(&mut cmd);
        assert_no_secrets(&r, &storage_keys);
        r
    };
    let check = |pool: &std::path::Path, extra: &[&str]| check_with(&creds, pool, extra);

    // Three westus2 accounts, two of them on the list's second page.
    let (good, _) = pool_on(tmp.path(), &az, &["imgcopy0", "imgcopy1", "imgcopy2"]);
    let r = check(&good, &[]);
    let (blobs, accts, batch) = online_findings(&r);
    assert_eq!(blobs["status"], "pass", "{blobs}");
    assert_eq!(accts["status"], "pass", "{accts}");
    let msg = accts["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "3 storage account(s) in subscription {ARM_SUBSCRIPTION} and region westus2"
        )) && msg.contains("batch.account_service_url"),
        "{msg}"
    );
    assert_eq!(batch["status"], "pass", "{batch}");
    says(
        &batch,
        "message",
        "`imgbatch` in westus2 allocates pools in the user's subscription",
    );
    // One sign-in for both Resource Manager checks.
    let lines = arm.request_lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[3].starts_with(&format!(
            "GET /subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/batch-westus2/providers/Microsoft.Batch/batchAccounts/imgbatch?"
        )),
        "{lines:?}"
    );
    assert!(
        lines[0].starts_with(&format!("POST /{ARM_TENANT}/oauth2/v2.0/token")),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("GET /subscriptions/") && !lines[1].contains("skipToken"));
    assert!(lines[2].contains("$skipToken=imgcopy1"), "{lines:?}");
    let token_body = arm.requests.lock().unwrap()[0].1.clone();
    assert!(
        token_body.contains(&format!(
            "scope={}",
            format!("{}/.default", arm.endpoint())
                .replace(':', "%3A")
                .replace('/', "%2F")
        )),
        "{token_body}"
    );

    // A copy in another region fails, pointing at its line.
    let (mixed, uri_lines) = pool_on(tmp.path(), &az, &["imgcopy0", "imgeast0"]);
    let r = check(&mixed, &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    let (_, accts, _) = online_findings(&r);
    assert_eq!(accts["status"], "fail", "{accts}");
    says(
        &accts,
        "message",
        "`imgeast0` (resource group images-eastus) is in eastus, the pool's Batch account in westus2",
    );
    assert_eq!(
        accts["evidence"],
        format!("{}:{}", mixed.display(), uri_lines[1]),
        "{accts}"
    );

    // --region overrides the credentials file, written as the portal writes it.
    let r = check(&good, &["--region", "West US 2"]);
    assert_eq!(online_findings(&r).1["status"], "pass", "{}", r.stdout);
    let r = check(&good, &["--region", "eastus"]);
    let (_, accts, batch) = online_findings(&r);
    assert_eq!(accts["status"], "fail");
    says(
        &batch,
        "message",
        "`imgbatch` is in westus2, not eastus (from --region)",
    );
    assert_eq!(
        accts["message"]
            .as_str()
            .unwrap()
            .matches("is in westus2")
            .count(),
        3
    );

    // An account the subscription does not hold.
    az.oracle(&[
        "create",
        &az.url("imgcopy1", "images", "x.vhd"),
        vhd.to_str().unwrap(),
    ]);
    let (foreign, _) = pool_on(tmp.path(), &az, &["imgcopy0", "imgelse9"]);
    let (_, accts, _) = online_findings(&check(&foreign, &[]));
    says(
        &accts,
        "message",
        "`imgelse9` is not among the 5 storage account(s) subscription",
    );

    // Another subscription: Resource Manager's SubscriptionNotFound, with a hint.
    let r = check(
        &good,
        &["--subscription", "0badc0de-0000-4000-8000-000000000000"],
    );
    let (_, accts, _) = online_findings(&r);
    let msg = accts["message"].as_str().unwrap();
    assert!(
        msg.contains("HTTP 404 SubscriptionNotFound: The subscription '0badc0de-0000-4000-8000-000000000000' could not be found"),
        "{msg}"
    );
    says(&accts, "hint", "check the subscription id");

    // A Batch account in the wrong resource group: Resource Manager's ResourceNotFound.
    let text = std::fs::read_to_string(&creds).unwrap();
    let elsewhere = tmp.path().join("credentials-rg.yaml");
    write(
        &elsewhere,
        &text.replace("resource_group: batch-westus2", "resource_group: batch-old"),
    );
    let (_, _, batch) = online_findings(&check_with(&elsewhere, &good, &[]));
    let msg = batch["message"].as_str().unwrap();
    assert!(msg.contains("HTTP 404 ResourceNotFound"), "{batch}");
    says(&batch, "hint", "credentials.batch.resource_group");

    // A Batch account that allocates pools in Batch's own subscription.
    let service_mode = ArmReplay::start(ArmExpect {
        tenant: ARM_TENANT.into(),
        client_id: ARM_CLIENT.into(),
        secret: AUTH_KEY.into(),
        forbid_list: false,
        pool_allocation_mode: "BatchService",
    });
    let service_creds = tmp.path().join("credentials-service.yaml");
    write(
        &service_creds,
        &text.replace(&arm.endpoint(), &service_mode.endpoint()),
    );
    let r = check_with(&service_creds, &good, &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    let (_, accts, batch) = online_findings(&r);
    assert_eq!(accts["status"], "pass", "{accts}");
    assert_eq!(batch["status"], "fail", "{batch}");
    says(
        &batch,
        "message",
        "has pool allocation mode BatchService; pools from VHD image_uris need a User Subscription Batch account",
    );
    says(&batch, "hint", "arm_image_id");

    // A wrong auth_key: Entra's AADSTS code, never the key.
    let wrong = credentials_file(tmp.path(), &arm, &az, "wrong-auth-key-value");
    let mut cmd = imgforge();
    cmd.env("IMGFORGE_BLOB_ENDPOINT", az.endpoint_template())
        .args(["pool", "check", "--online", "--credentials"])
        .arg(&wrong)
        .arg(&good);
    let r = run(&mut cmd);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("AADSTS7000215"), "{}", r.all());
    assert_no_secrets(&r, &["wrong-auth-key-value"]);
}

#[test]
fn online_account_check_with_the_environment_principal_skips_or_fails_honestly() {
    let az = Azurite::start(&["imgcopy0"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "disk", 4, &[(0, 4096)]);
    az.oracle(&[
        "create",
        &az.url("imgcopy0", "images", "gpu.vhd"),
        vhd.to_str().unwrap(),
    ]);
    let (pool, _) = pool_on(tmp.path(), &az, &["imgcopy0"]);

    // Neither --credentials nor --region: the account check is a skip, never a pass.
    let mut cmd = imgforge();
    cmd.args(["pool", "check", "--online", "--json"]).arg(&pool);
    let (blobs, accts, batch) = online_findings(&run(az.env(&mut cmd)));
    assert_eq!(blobs["status"], "pass", "{blobs}");
    assert_eq!(accts["status"], "skip", "{accts}");
    assert_eq!(batch["status"], "skip", "{batch}");
    says(&batch, "hint", "batch.resource_group");
    says(&accts, "hint", "--credentials");

    // The ARM_* principal (the canary secret) signs in; it lacks the Reader role.
    let arm = ArmReplay::start(ArmExpect {
        forbid_list: true,
        ..ArmExpect::env_principal()
    });
    let creds = tmp.path().join("credentials.json");
    write(
        &creds,
        &serde_json::json!({"credentials": {
            "batch": {"account_service_url": "https://imgbatch.westus2.batch.azure.com"},
            "management": {"aad": {"endpoint": format!("{}/", arm.endpoint())},
                           "subscription_id": ARM_SUBSCRIPTION}}})
        .to_string(),
    );
    let mut cmd = imgforge();
    cmd.env("AZURE_AUTHORITY_HOST", arm.endpoint())
        .env("IMGFORGE_BATCH_URL", arm.endpoint())
        .args(["pool", "check", "--online", "--json", "--credentials"])
        .arg(&creds)
        .arg(&pool);
    let r = run(az.env(&mut cmd));
    assert_no_secrets(&r, &[]);
    let (_, accts, _) = online_findings(&r);
    assert_eq!(accts["status"], "fail", "{accts}");
    let msg = accts["message"].as_str().unwrap();
    assert!(msg.contains("HTTP 403 AuthorizationFailed"), "{msg}");
    says(&accts, "hint", "Reader role");
    // The same principal asks Batch, with a Batch token, which agents it supports:
    // 16.04 is not among them.
    let agent = finding(&r, "pool.online.node-agent");
    assert_eq!(agent["status"], "fail", "{agent}");
    says(
        &agent,
        "message",
        "does not list node agent `batch.node.ubuntu 16.04`",
    );
    says(
        &agent,
        "hint",
        "batch.node.ubuntu 22.04, batch.node.ubuntu 24.04, batch.node.el 9",
    );
    assert_eq!(
        arm.token_scopes(),
        vec![
            "https://batch.core.windows.net//.default".to_string(),
            format!("{}/.default", arm.endpoint())
        ]
    );
    let lines = arm.request_lines();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("GET /supportedimages?"))
            .count(),
        2,
        "{lines:?}"
    );

    // Credentials only ever travel over https (or to this machine).
    write(
        &creds,
        &serde_json::json!({"credentials": {
            "batch": {"account_service_url": "https://imgbatch.westus2.batch.azure.com"},
            "management": {"aad": {"endpoint": "http://management.example.com/"},
                           "subscription_id": ARM_SUBSCRIPTION}}})
        .to_string(),
    );
    let mut cmd = imgforge();
    cmd.args(["pool", "check", "--online", "--json", "--credentials"])
        .arg(&creds)
        .arg(&pool);
    let (_, accts, _) = online_findings(&run(az.env(&mut cmd)));
    says(&accts, "message", "not an https URL");
}

#[test]
fn a_bad_credentials_file_is_named_with_its_key_and_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "credentials:\n  batch:\n    account_service_url: https://mybatch.batch.azure.com/\n",
            ":3: `credentials.batch.account_service_url` is `https://mybatch.batch.azure.com/`, not a Batch account URL",
            "https://<account>.<region>.batch.azure.com",
        ),
        (
            "credentials:\n  storage:\n    link:\n      account: a\n      account_key: not*base64\n",
            ":5: `credentials.storage.link.account_key` is not base64",
            "Access keys",
        ),
        ("batch:\n  account_key: x\n", "no `credentials` object", ""),
    ];
    for (i, (text, want, fix)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("credentials-{i}.yaml"));
        write(&path, text);
        let r = run(imgforge()
            .args(["pool", "check", "--online", "--credentials"])
            .arg(&path)
            .arg(fixture("good-vhd.yaml")));
        assert_eq!(r.code, 2, "{}", r.all());
        assert!(r.stderr.contains(want), "{want}\n{}", r.stderr);
        assert!(r.stderr.contains(fix), "{fix}\n{}", r.stderr);
        assert!(r.stderr.contains(path.to_str().unwrap()), "{}", r.stderr);
        assert!(!r.stderr.contains("not*base64"), "{}", r.stderr);
    }
    // The Azure settings are only for --online.
    let r = run(imgforge()
        .args(["pool", "check", "--region", "westus2"])
        .arg(fixture("good-vhd.yaml")));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("--online"), "{}", r.stderr);
}

#[test]
fn a_platform_image_pool_says_what_it_is_and_checks_what_applies() {
    let r = run(imgforge()
        .args(["pool", "check", "--legacy"])
        .arg(repo().join("tests/fixtures/pool/legacy-flat.yaml")));
    assert_eq!(r.code, 0, "{}", r.all());
    for want in [
        "pool_specification (legacy flat form) names the marketplace image Canonical/ubuntu-24_04-lts/server",
        "the pool uses no custom image",
        "up to 12 nodes",
        "`batch.node.ubuntu 24.04` is not retired",
    ] {
        assert!(r.stdout.contains(want), "{want}:\n{}", r.stdout);
    }
    // Node counts are still read strictly.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("pool.yaml");
    write(
        &bad,
        "pool_specification:\n  vm_configuration:\n    platform_image:\n      publisher: Canonical\n      offer: x\n      sku: y\n  vm_count: \"100\"\n",
    );
    let r = run(imgforge().args(["pool", "check", "--json"]).arg(&bad));
    assert_eq!(r.code, 1, "{}", r.all());
    let size = finding(&r, "pool.size");
    assert_eq!(size["status"], "fail", "{size}");
    assert_eq!(finding(&r, "pool.node-agent.retired")["status"], "skip");
}

#[test]
fn a_snippet_from_a_record_whose_copy_carries_a_sas_holds_only_the_bare_url() {
    let mut rec = record(serde_json::json!({}));
    rec["copies"][0]["url"] = "https://imgforgerep1.blob.core.windows.net/images/gpu-ubuntu1604.vhd?sv=2024-08-04&sr=b&sp=r&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D".into();
    let r = snippet_from("contrib/legacy/gpu-ubuntu1604.toml", &rec);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stdout.contains("sig="), "{}", r.stdout);
    assert!(!r.all().contains("c2VjcmV0LXNpZ25hdHVyZQ"), "{}", r.all());
    assert!(
        r.stdout
            .contains("- https://imgforgerep1.blob.core.windows.net/images/gpu-ubuntu1604.vhd\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn todays_rules_refuse_what_batch_and_shipyard_refuse() {
    // The Shipyard 2.x fixtures, without --legacy: a VHD pool and a
    // managed-image pool are what Batch retired on 2026-03-31; image_uris and
    // the flat image form are keys Shipyard 3.0+'s schema refuses.
    for (name, failed) in [
        (
            "good-vhd.yaml",
            &["pool.custom-image.gallery", "pool.schema.keys"][..],
        ),
        ("good-arm.json", &["pool.custom-image.gallery"][..]),
        ("legacy-flat.yaml", &["pool.schema.keys"][..]),
    ] {
        let r = run(imgforge()
            .args(["pool", "check", "--json"])
            .arg(fixture(name)));
        assert_eq!(r.code, 1, "{name}: {}", r.all());
        for id in failed {
            let f = finding(&r, id);
            assert_eq!(f["status"], "fail", "{name}: {f}");
            assert!(f["hint"].as_str().unwrap().contains("--legacy"), "{f}");
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool.yaml");
    let gallery =
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d";
    let image = |id: &str| {
        format!(
            "  vm_configuration:\n    custom_image:\n      arm_image_id: {id}\n      node_agent: batch.node.ubuntu 24.04\n"
        )
    };
    for (what, body, code, id, status) in [
        (
            "a gallery image version",
            format!(
                "pool_specification:\n  id: p\n{}  vm_size: Standard_D4ds_v5\n  vm_count:\n    dedicated: 4\n",
                image(&format!("{gallery}/versions/1.0.0"))
            ),
            0,
            "pool.custom-image.gallery",
            "pass",
        ),
        (
            "a gallery image definition (Batch takes its latest version)",
            format!(
                "pool_specification:\n  id: p\n{}  vm_size: Standard_D4ds_v5\n  vm_count:\n    dedicated: 4\n",
                image(gallery)
            ),
            0,
            "pool.arm-image-id.format",
            "pass",
        ),
        (
            "no id, no vm_count",
            format!(
                "pool_specification:\n{}  vm_size: Standard_D4ds_v5\n",
                image(gallery)
            ),
            1,
            "pool.schema.required",
            "fail",
        ),
        (
            "an integer vm_count",
            format!(
                "pool_specification:\n  id: p\n{}  vm_size: Standard_D4ds_v5\n  vm_count: 4\n",
                image(gallery)
            ),
            1,
            "pool.schema.types",
            "fail",
        ),
        (
            "an integer autoscale maximum",
            format!(
                "pool_specification:\n  id: p\n{}  vm_size: Standard_D4ds_v5\n  vm_count:\n    dedicated: 4\n  autoscale:\n    scenario:\n      name: pending_tasks\n      maximum_vm_count: 100\n",
                image(gallery)
            ),
            1,
            "pool.schema.types",
            "fail",
        ),
        (
            "a misspelt key",
            format!(
                "pool_specification:\n  id: p\n{}  vm_size: Standard_D4ds_v5\n  vm_count:\n    dedicated: 4\n  vm_sku: x\n",
                image(gallery)
            ),
            1,
            "pool.schema.keys",
            "fail",
        ),
    ] {
        write(&pool, &body);
        let r = run(imgforge().args(["pool", "check", "--json"]).arg(&pool));
        assert_eq!(r.code, code, "{what}: {}", r.all());
        assert_eq!(finding(&r, id)["status"], status, "{what}: {}", r.stdout);
    }
}

/// A succeeded gallery build of `manifest`, as its record says.
fn gallery_record(image: &str) -> serde_json::Value {
    let id = format!(
        "/subscriptions/s1/resourceGroups/imgforge-images/providers/Microsoft.Compute/galleries/imgforge_gallery/images/{image}/versions/1.0.0"
    );
    record(serde_json::json!({
        "image": image,
        "target": "gallery",
        "artifact": {"kind": "gallery_image_version", "id": id, "managed_image_id": null},
        "copies": [],
    }))
}

fn snippet_as(manifest: &Path, record: &serde_json::Value, format: &str) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let build_json = tmp.path().join("build.json");
    write(&build_json, &record.to_string());
    run(imgforge()
        .args(["pool", "snippet", "--format", format])
        .arg(manifest)
        .arg("--from")
        .arg(&build_json))
}

#[test]
fn a_gallery_image_gets_a_pool_in_each_clients_form() {
    let manifest = repo().join("contrib/gpu-ubuntu2404.toml");
    let rec = gallery_record("gpu-ubuntu2404");
    let id = rec["artifact"]["id"].as_str().unwrap().to_string();

    // Batch Shipyard: the snippet alone passes today's rules, with no warning.
    let r = snippet_as(&manifest, &rec, "shipyard");
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stdout.contains("LEGACY"), "{}", r.stdout);
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool.yaml");
    write(&pool, &r.stdout);
    let c = run(imgforge()
        .args(["pool", "check", "--json", "--manifest"])
        .arg(&manifest)
        .arg(&pool));
    assert_eq!(c.code, 0, "{}\n{}", r.stdout, c.all());
    let report: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    assert_eq!(report["summary"]["fail"], 0, "{report:#}");
    assert_eq!(report["summary"]["warn"], 0, "{report:#}");

    // Batch's REST body: only properties of the 2025-06-01 pool-add body
    // (tests/fixtures/batch/pool-add-2025-06-01.json names them and its source).
    let r = snippet_as(&manifest, &rec, "batch-json");
    assert_eq!(r.code, 0, "{}", r.all());
    let body: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/batch/pool-add-2025-06-01.json"))
            .unwrap(),
    )
    .unwrap();
    let known = |path: &str| spec["properties"][path].is_string();
    let mut paths = Vec::new();
    fn walk(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        if let Some(m) = v.as_object() {
            for (k, x) in m {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                out.push(p.clone());
                walk(x, p, out);
            }
        }
    }
    walk(&body, String::new(), &mut paths);
    for p in &paths {
        assert!(
            known(p),
            "`{p}` is not a property of Batch's pool body: {body:#}"
        );
    }
    for required in spec["required"].as_array().unwrap() {
        let r = required.as_str().unwrap();
        assert!(paths.iter().any(|p| p == r), "{r} missing: {body:#}");
    }
    assert_eq!(
        body["virtualMachineConfiguration"]["imageReference"]["virtualMachineImageId"],
        id.as_str()
    );
    assert_eq!(
        body["virtualMachineConfiguration"]["nodeAgentSKUId"],
        "batch.node.ubuntu 24.04"
    );
    assert_eq!(body["targetNodeCommunicationMode"], "simplified");
    // 600 nodes at most: autoscale to that, and 15 minutes per 1,000 nodes.
    assert_eq!(body["enableAutoScale"], true);
    assert!(
        body["autoScaleFormula"]
            .as_str()
            .unwrap()
            .contains("min(600,"),
        "{body:#}"
    );
    assert_eq!(body["resizeTimeout"], "PT15M");
    assert!(body.get("securityProfile").is_none());

    for (format, needles) in [
        (
            "bicep",
            &[
                "'Microsoft.Batch/batchAccounts/pools@2025-06-01'",
                "nodeAgentSkuId: 'batch.node.ubuntu 24.04'",
                "targetNodeCommunicationMode: 'Simplified'",
                "autoScale: {",
            ][..],
        ),
        (
            "terraform",
            &[
                "resource \"azurerm_batch_pool\" \"pool_gpu_ubuntu2404\"",
                "node_agent_sku_id              = \"batch.node.ubuntu 24.04\"",
                "storage_image_reference {",
                "auto_scale {",
            ][..],
        ),
    ] {
        let r = snippet_as(&manifest, &rec, format);
        assert_eq!(r.code, 0, "{format}: {}", r.all());
        assert!(r.stdout.contains(&id), "{format}: {}", r.stdout);
        for n in needles {
            assert!(r.stdout.contains(n), "{format}: {n}\n{}", r.stdout);
        }
    }

    // A TrustedLaunch definition runs only Trusted Launch VMs: Batch's forms
    // ask for them; Shipyard's pool.yaml cannot, so it is refused.
    let tl = tmp.path().join("tl.toml");
    write(
        &tl,
        &std::fs::read_to_string(&manifest).unwrap().replace(
            "version = \"1.0.0\"\n",
            "version = \"1.0.0\"\nsecurity_type = \"trusted_launch\"\n",
        ),
    );
    let r = snippet_as(&tl, &rec, "shipyard");
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("no security profile"), "{}", r.stderr);
    let r = snippet_as(&tl, &rec, "batch-json");
    let body: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        body["virtualMachineConfiguration"]["securityProfile"]["securityType"],
        "trustedLaunch"
    );
    let r = snippet_as(&tl, &rec, "terraform");
    assert!(
        r.stdout
            .contains("security_type           = \"trustedLaunch\""),
        "{}",
        r.stdout
    );

    // A VHD build: Batch's own API has no VHD source at all, even with --legacy.
    let r = run(imgforge()
        .args(["pool", "snippet", "--legacy", "--format", "batch-json"])
        .arg(repo().join("contrib/legacy/gpu-ubuntu1604.toml"))
        .arg("--from")
        .arg({
            let f = tmp.path().join("vhd.json");
            write(&f, &record(serde_json::json!({})).to_string());
            f
        }));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("osDisk.imageUris"), "{}", r.stderr);
}

#[test]
fn batchs_own_pool_body_is_checked_as_the_service_takes_it() {
    // The list in the code is the recorded specification's.
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/batch/pool-add-2025-06-01.json"))
            .unwrap(),
    )
    .unwrap();
    let mut recorded: Vec<&str> = spec["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    recorded.sort();
    let mut known = imgforge::pool::batch_form::KNOWN_PATHS.to_vec();
    known.sort();
    assert_eq!(known, recorded);

    // `pool snippet --format batch-json` round-trips with no failure, no warning.
    let manifest = repo().join("contrib/gpu-ubuntu2404.toml");
    let r = snippet_as(&manifest, &gallery_record("gpu-ubuntu2404"), "batch-json");
    assert_eq!(r.code, 0, "{}", r.all());
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool.json");
    write(&pool, &r.stdout);
    let c = run(imgforge()
        .args(["pool", "check", "--json", "--manifest"])
        .arg(&manifest)
        .arg(&pool));
    assert_eq!(c.code, 0, "{}", c.all());
    let report: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    assert_eq!(report["summary"]["fail"], 0, "{report:#}");
    assert_eq!(report["summary"]["warn"], 0, "{report:#}");
    assert_eq!(
        finding(&c, "pool.node-agent.matches-image")["status"],
        "pass"
    );
    assert_eq!(finding(&c, "pool.vm-size.gpu")["status"], "pass");

    // What the service refuses, each named.
    let body: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mutate = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut b = body.clone();
        f(&mut b);
        b
    };
    for (what, b, id) in [
        (
            "no node agent",
            mutate(&|b| {
                b["virtualMachineConfiguration"]
                    .as_object_mut()
                    .unwrap()
                    .remove("nodeAgentSKUId");
            }),
            "pool.batch.required",
        ),
        (
            "the classic communication model",
            mutate(&|b| b["targetNodeCommunicationMode"] = "classic".into()),
            "pool.batch.communication",
        ),
        (
            "a VHD source the API no longer has",
            mutate(&|b| {
                b["virtualMachineConfiguration"]["osDisk"] = serde_json::json!({});
                b["virtualMachineConfiguration"]["imageReference"]["imageUris"] =
                    serde_json::json!(["https://a.blob.core.windows.net/c/x.vhd"]);
            }),
            "pool.batch.keys",
        ),
        (
            "a managed image",
            mutate(&|b| {
                b["virtualMachineConfiguration"]["imageReference"]["virtualMachineImageId"] =
                    "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/images/img"
                        .into()
            }),
            "pool.custom-image.gallery",
        ),
        (
            "a retired node agent's id that is not the image's",
            mutate(&|b| {
                b["virtualMachineConfiguration"]["nodeAgentSKUId"] =
                    "batch.node.ubuntu 16.04".into()
            }),
            "pool.node-agent.matches-image",
        ),
    ] {
        write(&pool, &b.to_string());
        let c = run(imgforge()
            .args(["pool", "check", "--json", "--manifest"])
            .arg(&manifest)
            .arg(&pool));
        assert_eq!(c.code, 1, "{what}: {}", c.all());
        let f = finding(&c, id);
        assert_eq!(f["status"], "fail", "{what}: {f}");
        assert!(f["hint"].is_string(), "{what}: {f}");
    }
    // Neither form: named as such.
    write(&pool, "{\"pools\": []}");
    let c = run(imgforge().args(["pool", "check"]).arg(&pool));
    assert_eq!(c.code, 2, "{}", c.all());
    assert!(c.stderr.contains("nor a Batch pool body"), "{}", c.stderr);
}
