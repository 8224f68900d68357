//! Publishing a VHD as Azure Batch takes custom images today: a managed
//! image and a Compute Gallery image version, made over REST against the
//! loopback Resource Manager stand-in (tests/common/compute.rs, recorded
//! shapes in tests/fixtures/arm/compute) from a page blob uploaded to Azurite.

mod common;

use common::compute::Knobs;
use common::*;
use serde_json::{Value, json};

const GROUP: &str = "images-westus2";

fn manifest(dir: &std::path::Path, extra_build: &str, pool: &str) -> std::path::PathBuf {
    let path = dir.join("publish.toml");
    write(
        &path,
        &format!(
            r#"
[image]
name = "pub-debian12"
os = "linux"
distro = "debian-12"

[build]
builder = "local"
target = "gallery"
location = "westus2"
resource_group = "{GROUP}"
storage_account = "imgcopy0"
managed_image_name = "pub-debian12-1-0-0"
{extra_build}

[build.gallery]
name = "imgforge_gallery"
image_definition = "debian12-batch"
version = "1.0.0"
replication_regions = ["eastus"]

[pool]
{pool}

[replicate]
region = "westus2"
"#
        ),
    );
    path
}

fn publish_cmd(
    az: &Azurite,
    arm: &ArmReplay,
    manifest: &std::path::Path,
    image: &std::path::Path,
) -> Run {
    let mut cmd = imgforge();
    cmd.env("ARM_SUBSCRIPTION_ID", ARM_SUBSCRIPTION)
        .env("IMGFORGE_ARM_ENDPOINT", arm.endpoint())
        .env("AZURE_AUTHORITY_HOST", arm.endpoint())
        .arg("publish")
        .arg(image)
        .arg("--manifest")
        .arg(manifest)
        // These VHDs are blocks of noise, not images: what is tested here is
        // the publishing; that a VHD is validated first is tested below.
        .arg("--no-validate")
        .arg("--json");
    run(az.env(&mut cmd))
}

fn puts(arm: &ArmReplay) -> Vec<String> {
    arm.request_lines()
        .into_iter()
        .filter(|l| l.starts_with("PUT "))
        .collect()
}

fn version_id() -> String {
    format!(
        "/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/galleries/imgforge_gallery/images/debian12-batch/versions/1.0.0"
    )
}

#[test]
fn plan_shows_replicas_per_region_from_the_pool_size() {
    let tmp = tempfile::tempdir().unwrap();
    // Batch's rule: one replica per 300 pool nodes, at least one, at most 100.
    for (nodes, replicas) in [(1, 1), (60, 1), (3000, 10), (3001, 11), (40_000, 100)] {
        let m = manifest(tmp.path(), "", &format!("dedicated = {nodes}"));
        let r = run(imgforge().arg("plan").arg(&m).arg("--json"));
        assert_eq!(r.code, 0, "{}", r.all());
        let plan: Value = serde_json::from_str(&r.stdout).unwrap();
        let regions = plan["publish"]["gallery"]["regions"].as_array().unwrap();
        let got: Vec<(String, u64)> = regions
            .iter()
            .map(|r| {
                (
                    r["region"].as_str().unwrap().to_string(),
                    r["replicas"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("westus2".into(), replicas), ("eastus".into(), replicas)],
            "{nodes} nodes"
        );
    }
    let m = manifest(tmp.path(), "", "dedicated = 1000");
    let text = run(imgforge().arg("plan").arg(&m));
    assert_eq!(text.code, 0, "{}", text.all());
    assert!(
        text.stdout.contains("REPLICAS")
            && text
                .stdout
                .contains("ceil(1000 nodes / 300 per replica) = 4")
            && text.stdout.contains("(the Batch account's region)")
            && text.stdout.contains("Hyper-V generation V2"),
        "{}",
        text.stdout
    );
}

#[test]
fn a_vhd_becomes_a_managed_image_and_a_gallery_version_and_a_rerun_keeps_them() {
    let az = Azurite::start(&["imgcopy0"]);
    let arm = ArmReplay::start(ArmExpect::env_principal());
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "d12", 64, &[(0, 65536), (32 << 20, 1 << 20)]);
    let m = manifest(tmp.path(), "", "dedicated = 2000");

    let r = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains(CANARY));
    let record: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(record["arm_image_id"], version_id(), "{record:#}");
    let blob = az.url("imgcopy0", "images", "d12.vhd");
    assert_eq!(record["blob_url"], blob);
    // The page blob holds the file's bytes.
    assert_eq!(
        az.download(&blob, &tmp.path().join("dl.vhd")),
        std::fs::read(&vhd).unwrap()
    );

    // What Azure was asked to make.
    let rp = &arm.compute;
    let image = rp
        .resource(&format!(
            "/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/images/pub-debian12-1-0-0"
        ))
        .unwrap();
    assert_eq!(
        image["properties"]["storageProfile"]["osDisk"]["blobUri"],
        blob
    );
    assert_eq!(image["properties"]["hyperVGeneration"], "V2");
    assert_eq!(image["properties"]["provisioningState"], "Succeeded");
    let definition = rp
        .resource(version_id().rsplit_once("/versions/").unwrap().0)
        .unwrap();
    assert_eq!(
        definition["properties"]["identifier"],
        json!({"publisher": "imgforge", "offer": "pub-debian12", "sku": "debian-12"})
    );
    assert_eq!(definition["properties"]["hyperVGeneration"], "V2");
    // Said, not left to the API version's default.
    assert_eq!(
        definition["properties"]["features"],
        json!([{"name": "SecurityType", "value": "TrustedLaunchSupported"}])
    );
    let version = rp.resource(&version_id()).unwrap();
    let profile = &version["properties"]["publishingProfile"];
    assert_eq!(profile["excludeFromLatest"], false);
    for r in profile["targetRegions"].as_array().unwrap() {
        assert_eq!(r["storageAccountType"], "Standard_LRS", "{r}");
    }
    let regions: Vec<(String, u64)> = version["properties"]["publishingProfile"]["targetRegions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["regionalReplicaCount"].as_u64().unwrap(),
            )
        })
        .collect();
    // 2,000 nodes: ceil(2000 / 300) = 7 per region.
    assert_eq!(regions, vec![("westus2".into(), 7), ("eastus".into(), 7)]);
    assert_eq!(
        version["properties"]["storageProfile"]["osDiskImage"]["source"]["storageAccountId"],
        format!(
            "/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/images-westus2/providers/Microsoft.Storage/storageAccounts/imgcopy0"
        )
    );
    // Each of the three operations was polled until it ended: two
    // InProgress answers (honouring Retry-After: 1) and the final one.
    let polls = arm
        .request_lines()
        .iter()
        .filter(|l| l.contains("/operations/"))
        .count();
    assert_eq!(polls, 9, "{:#?}", arm.request_lines());
    let states: Vec<&str> = record["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["Completed", "Completed"], "{record:#}");
    assert_eq!(puts(&arm).len(), 3);

    // A rerun finds everything made with this content and changes nothing.
    let again = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(again.code, 0, "{}", again.all());
    let record: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(record["reused"].as_array().unwrap().len(), 3, "{record:#}");
    assert_eq!(puts(&arm).len(), 3, "a rerun PUT again");
}

#[test]
fn a_failure_between_image_and_version_resumes_without_redoing_the_image() {
    let az = Azurite::start(&["imgcopy0"]);
    let arm = ArmReplay::start_with(
        ArmExpect::env_principal(),
        Knobs {
            fail_first_version: Some((
                "OperationNotAllowed".into(),
                "Operation could not be completed as it results in exceeding approved gallery image version replica quota.".into(),
            )),
            ..Knobs::default()
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "d12", 16, &[(0, 4096)]);
    let m = manifest(tmp.path(), "", "dedicated = 10");
    let r = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("Create Gallery Image Version ended Failed OperationNotAllowed")
            && r.stderr.contains("quota increase"),
        "{}",
        r.stderr
    );
    let before = puts(&arm);
    assert_eq!(before.len(), 3, "{before:#?}");

    let again = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(again.code, 0, "{}", again.all());
    let after = puts(&arm);
    // Only the failed version is PUT again; image and definition are kept.
    assert_eq!(after.len(), 4, "{after:#?}");
    assert!(after[3].contains("/versions/1.0.0?"), "{after:#?}");
    let record: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(record["reused"].as_array().unwrap().len(), 2, "{record:#}");
}

#[test]
fn refusals_name_the_cause_and_the_fix() {
    let az = Azurite::start(&["imgcopy0", "imgeast0"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "d12", 16, &[(0, 4096)]);
    let m = manifest(tmp.path(), "", "dedicated = 10");

    // No role to write: 403 with the role to grant.
    let arm = ArmReplay::start_with(
        ArmExpect::env_principal(),
        Knobs {
            forbid_writes: true,
            ..Knobs::default()
        },
    );
    let r = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("HTTP 403 AuthorizationFailed") && r.stderr.contains("Contributor role"),
        "{}",
        r.stderr
    );

    // The stand-in with the image definition already there, as `properties`.
    let with_definition = |properties: Value| {
        ArmReplay::start_with(
            ArmExpect::env_principal(),
            Knobs {
                definitions: vec![(
                    GROUP.into(),
                    "imgforge_gallery".into(),
                    "debian12-batch".into(),
                    properties,
                )],
                ..Knobs::default()
            },
        )
    };

    // A Trusted Launch definition: Batch cannot use it.
    let arm = with_definition(
        json!({"hyperVGeneration": "V2", "features": [{"name": "SecurityType", "value": "TrustedLaunch"}]}),
    );
    let r = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("its versions run only on Trusted Launch VMs")
            && r.stderr.contains("security_type = \"trusted_launch\""),
        "{}",
        r.stderr
    );

    // TrustedLaunchSupported (what definitions made with gallery API
    // 2025-03-03 default to) runs standard VMs too: it is used, not refused.
    let arm = with_definition(
        json!({"hyperVGeneration": "V2", "features": [{"name": "SecurityType", "value": "TrustedLaunchSupported"}]}),
    );
    let r = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(r.code, 0, "{}", r.all());

    // A definition made for a marketplace image with a purchase plan: a VHD
    // built here carries none, and a definition's plan cannot change.
    let arm = with_definition(json!({
        "hyperVGeneration": "V2",
        "purchasePlan": {"name": "9-base", "publisher": "resf", "product": "rockylinux-x86_64"}
    }));
    let r = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("has purchase plan resf/rockylinux-x86_64/9-base; the image carries none")
            && r.stderr
                .contains("use another build.gallery.image_definition"),
        "{}",
        r.stderr
    );

    // A Generation 1 definition for a Generation 2 image.
    let arm = with_definition(json!({"hyperVGeneration": "V1"}));
    let r = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("is Hyper-V generation V1, the image is published as V2"),
        "{}",
        r.stderr
    );

    // No gallery.
    let arm = ArmReplay::start_with(
        ArmExpect::env_principal(),
        Knobs {
            galleries: Vec::new(),
            ..Knobs::default()
        },
    );
    let r = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("az sig create"), "{}", r.stderr);

    // A staging account in another region than the image.
    let arm = ArmReplay::start(ArmExpect::env_principal());
    let east = tmp.path().join("east");
    std::fs::create_dir(&east).unwrap();
    let m_east = manifest(&east, "", "dedicated = 10");
    let text = std::fs::read_to_string(&m_east).unwrap().replace(
        "storage_account = \"imgcopy0\"",
        "storage_account = \"imgeast0\"",
    );
    write(&m_east, &text);
    let r = publish_cmd(&az, &arm, &m_east, &vhd);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("`imgeast0` is in eastus, the image in westus2"),
        "{}",
        r.stderr
    );
    assert!(puts(&arm).is_empty(), "nothing may be created");

    // A published version never changes: another blob under the same version.
    let arm = ArmReplay::start(ArmExpect::env_principal());
    assert_eq!(publish_cmd(&az, &arm, &m, &vhd).code, 0);
    let other = sparse_vhd(tmp.path(), "other", 16, &[(4096, 4096)]);
    let image_refused = publish_cmd(&az, &arm, &m, &other);
    assert_eq!(image_refused.code, 2, "{}", image_refused.all());
    assert!(
        image_refused
            .stderr
            .contains("managed image `pub-debian12-1-0-0` already exists from")
            && image_refused.stderr.contains("managed_image_name"),
        "{}",
        image_refused.stderr
    );
    let gallery_only = tmp.path().join("gallery-only.toml");
    write(
        &gallery_only,
        &std::fs::read_to_string(&m)
            .unwrap()
            .replace("managed_image_name = \"pub-debian12-1-0-0\"\n", ""),
    );
    let r = publish_cmd(&az, &arm, &gallery_only, &other);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("version 1.0.0 of `debian12-batch` already exists from")
            && r.stderr.contains("raise build.gallery.version"),
        "{}",
        r.stderr
    );
    for r in [&r, &image_refused] {
        assert!(!r.all().contains(CANARY));
    }
}

#[test]
fn missing_credentials_are_all_named_before_any_request() {
    let arm = ArmReplay::start(ArmExpect::env_principal());
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "d12", 4, &[(0, 512)]);
    let m = manifest(tmp.path(), "", "dedicated = 10");
    let r = run(imgforge()
        .env_remove("ARM_CLIENT_SECRET")
        .env_remove("ARM_TENANT_ID")
        .env("IMGFORGE_ARM_ENDPOINT", arm.endpoint())
        .env("AZURE_AUTHORITY_HOST", arm.endpoint())
        .arg("publish")
        .arg(&vhd)
        .arg("--manifest")
        .arg(&m));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("ARM_TENANT_ID, ARM_CLIENT_SECRET not set"),
        "{}",
        r.stderr
    );
    assert!(arm.request_lines().is_empty());
}

#[test]
fn a_local_build_to_publish_names_missing_credentials_before_it_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest(tmp.path(), "", "dedicated = 10");
    let out = tmp.path().join("build");
    let r = run(imgforge()
        .env_remove("ARM_CLIENT_ID")
        .env("ARM_SUBSCRIPTION_ID", "")
        .arg("build")
        .arg(&m)
        .arg("--out")
        .arg(&out));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("but ARM_SUBSCRIPTION_ID, ARM_CLIENT_ID are not set; nothing was built"),
        "{}",
        r.stderr
    );
    // The way on without Azure is named first.
    assert!(r.stderr.contains("hint: pass --no-publish"), "{}", r.stderr);
    let rec: Value =
        serde_json::from_slice(&std::fs::read(out.join("build.json")).unwrap()).unwrap();
    assert_eq!(rec["failed_stage"], "packer_build", "{rec:#}");
    // Nothing was built: no root, no disk.
    assert!(!out.join("work").exists() && !out.join("output").exists());
}

/// The stand-in refuses what the service refuses: these bodies would be
/// accepted by a stand-in that only echoes, and imgforge's tests would then
/// prove nothing about them.
#[test]
fn the_stand_in_checks_bodies_as_the_service_does() {
    let rp = common::compute::ComputeRp::new(Knobs::default(), ARM_SUBSCRIPTION);
    let accounts = vec![(
        "imgcopy0".to_string(),
        "westus2".to_string(),
        GROUP.to_string(),
    )];
    let image = format!(
        "/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/images/x?api-version=2024-07-01"
    );
    let body = |os_state: &str, location: &str| {
        json!({"location": location, "properties": {"storageProfile": {"osDisk": {
            "osType": "Linux", "osState": os_state,
            "blobUri": "https://imgcopy0.blob.core.windows.net/images/x.vhd"}}}})
        .to_string()
    };
    let put = |target: &str, b: &str| {
        rp.handle("PUT", target, b, "http://127.0.0.1:1", &accounts)
            .unwrap()
    };
    let a = put(&image, &body("Specialized", "westus2"));
    assert!(
        a.status.starts_with("400") && a.body.contains("Generalized"),
        "{}",
        a.body
    );
    let a = put(&image, &body("Generalized", "eastus"));
    assert!(
        a.status.starts_with("400") && a.body.contains("same region"),
        "{}",
        a.body
    );
    let a = put(
        &image.replace("?api-version=2024-07-01", ""),
        &body("Generalized", "westus2"),
    );
    assert!(a.body.contains("MissingApiVersionParameter"), "{}", a.body);
    let a = put(&image, &body("Generalized", "westus2"));
    assert!(a.status.starts_with("201"), "{}", a.body);
    assert!(a.headers.iter().any(|(k, _)| k == "Azure-AsyncOperation"));

    let version = format!(
        "/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/galleries/imgforge_gallery/images/absent/versions/1.0.0?api-version=2025-03-03"
    );
    let a = put(
        &version,
        &json!({"location": "westus2", "properties": {}}).to_string(),
    );
    assert!(
        a.status.starts_with("404") && a.body.contains("ParentResourceNotFound"),
        "{}",
        a.body
    );
    let definition = version.replace("/versions/1.0.0", "");
    let a = put(
        &definition,
        &json!({"location": "westus2", "properties": {"osType": "Linux", "osState": "Generalized",
            "identifier": {"publisher": "p", "offer": "o"}}})
        .to_string(),
    );
    assert!(a.body.contains("identifier.sku"), "{}", a.body);
    let a = put(
        &definition,
        &json!({"location": "westus2", "properties": {"osType": "Linux", "osState": "Generalized",
            "identifier": {"publisher": "p", "offer": "o", "sku": "s"}}})
        .to_string(),
    );
    assert!(a.status.starts_with("201"), "{}", a.body);
    let version_body = |regions: Value, account: &str| {
        json!({"location": "westus2", "properties": {
            "publishingProfile": {"targetRegions": regions},
            "storageProfile": {"osDiskImage": {"source": {
                "uri": "https://imgcopy0.blob.core.windows.net/images/x.vhd",
                "storageAccountId": format!("/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Storage/storageAccounts/{account}")}}}}})
        .to_string()
    };
    // (target regions, staging account, what the answer must say)
    for (regions, account, says) in [
        (
            json!([{"name": "eastus", "regionalReplicaCount": 3}]),
            "imgcopy0",
            "must be one of its target regions",
        ),
        (
            json!([{"name": "westus2", "regionalReplicaCount": 101}]),
            "imgcopy0",
            "from 1 to 100",
        ),
        (
            json!([{"name": "westus2", "regionalReplicaCount": 3}]),
            "other",
            "does not match",
        ),
        (
            json!([{"name": "westus2", "regionalReplicaCount": 3, "storageAccountType": "Premium_ZRS"}]),
            "imgcopy0",
            "'Premium_ZRS' of parameter 'storageAccountType' is invalid",
        ),
    ] {
        let a = put(&version, &version_body(regions, account));
        assert!(a.body.contains(says), "{}", a.body);
    }
    let a = put(
        &version,
        &version_body(
            json!([{"name": "West US 2", "regionalReplicaCount": 3}]),
            "imgcopy0",
        ),
    );
    assert!(a.status.starts_with("201"), "{}", a.body);

    // PATCH of a version (promote), as GalleryImageVersion_Update: the same
    // source again passes, another is refused; so are a non-boolean
    // excludeFromLatest and a version that is not there.
    let patch = |target: &str, b: Value| {
        rp.handle(
            "PATCH",
            target,
            &b.to_string(),
            "http://127.0.0.1:1",
            &accounts,
        )
        .unwrap()
    };
    let source = |uri: &str| {
        json!({"osDiskImage": {"source": {"uri": uri,
            "storageAccountId": format!("/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Storage/storageAccounts/imgcopy0")}}})
    };
    let a = patch(
        &version,
        json!({"properties": {"publishingProfile": {"excludeFromLatest": false},
            "storageProfile": source("https://imgcopy0.blob.core.windows.net/images/x.vhd")}}),
    );
    assert!(
        a.status.starts_with("200") && a.body.contains("Updating"),
        "{}",
        a.body
    );
    assert!(a.headers.iter().any(|(k, _)| k == "Azure-AsyncOperation"));
    let a = patch(
        &version,
        json!({"properties": {"storageProfile": source("https://imgcopy0.blob.core.windows.net/images/other.vhd")}}),
    );
    assert!(
        a.status.starts_with("409") && a.body.contains("PropertyChangeNotAllowed"),
        "{}",
        a.body
    );
    let a = patch(
        &version,
        json!({"properties": {"publishingProfile": {"excludeFromLatest": "no"}}}),
    );
    assert!(
        a.status.starts_with("400") && a.body.contains("excludeFromLatest"),
        "{}",
        a.body
    );
    let a = patch(
        &version.replace("/versions/1.0.0", "/versions/9.9.9"),
        json!({"properties": {"publishingProfile": {"excludeFromLatest": false}}}),
    );
    assert!(
        a.status.starts_with("404") && a.body.contains("ResourceNotFound"),
        "{}",
        a.body
    );

    // Gallery API 2025-03-03: a Generation 2 definition made without a
    // SecurityType feature is TrustedLaunchSupported; Trusted Launch on a
    // Generation 1 definition is refused.
    let gen2 = definition.replace("/images/absent", "/images/gen2");
    let a = put(
        &gen2,
        &json!({"location": "westus2", "properties": {"osType": "Linux", "osState": "Generalized",
            "hyperVGeneration": "V2", "identifier": {"publisher": "p", "offer": "o", "sku": "s2"}}})
        .to_string(),
    );
    assert!(a.status.starts_with("201"), "{}", a.body);
    let made = rp.resource(gen2.split('?').next().unwrap()).unwrap();
    assert_eq!(
        made["properties"]["features"],
        json!([{"name": "SecurityType", "value": "TrustedLaunchSupported"}])
    );
    let a = put(
        &definition.replace("/images/absent", "/images/gen1tl"),
        &json!({"location": "westus2", "properties": {"osType": "Linux", "osState": "Generalized",
            "hyperVGeneration": "V1", "identifier": {"publisher": "p", "offer": "o", "sku": "s3"},
            "features": [{"name": "SecurityType", "value": "TrustedLaunch"}]}})
        .to_string(),
    );
    assert!(
        a.status.starts_with("400") && a.body.contains("need HyperVGeneration V2"),
        "{}",
        a.body
    );
}

/// A Batch Shipyard credentials file for the stand-ins: the Batch account
/// `imgbatch` in westus2, Resource Manager on loopback; `batch` is extra YAML
/// under `batch:` (e.g. an account_key).
fn credentials(dir: &std::path::Path, arm: &ArmReplay, batch: &str) -> std::path::PathBuf {
    let path = dir.join(format!("credentials-{}.yaml", batch.len()));
    write(
        &path,
        &format!(
            "credentials:\n  batch:\n    account_service_url: https://imgbatch.westus2.batch.azure.com/\n    resource_group: batch-westus2\n    aad:\n      directory_id: {ENV_TENANT_ID}\n      application_id: {ENV_CLIENT_ID}\n      auth_key: {CANARY}\n      authority_url: {}\n{batch}  management:\n    aad:\n      endpoint: {}/\n    subscription_id: {ARM_SUBSCRIPTION}\n",
            arm.endpoint(),
            arm.endpoint()
        ),
    );
    path
}

fn pool_check(
    arm: &ArmReplay,
    pool: &std::path::Path,
    creds: &std::path::Path,
    extra: &[&str],
) -> (Run, Value) {
    let mut cmd = imgforge();
    cmd.env("AZURE_AUTHORITY_HOST", arm.endpoint())
        .env("IMGFORGE_BATCH_URL", arm.endpoint())
        .args(["pool", "check", "--online", "--json", "--credentials"])
        .arg(creds)
        .args(extra)
        .arg(pool);
    let r = run(&mut cmd);
    assert!(!r.all().contains(CANARY));
    let doc: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.all()));
    let findings: serde_json::Map<String, Value> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_str().unwrap().to_string(), f.clone()))
        .collect();
    (r, Value::Object(findings))
}

fn arm_pool(dir: &std::path::Path, id: &str, agent: &str) -> std::path::PathBuf {
    let path = dir.join(format!("pool-{}.yaml", id.len() + agent.len()));
    write(
        &path,
        &format!(
            "pool_specification:\n  id: p\n  vm_configuration:\n    custom_image:\n      arm_image_id: {id}\n      node_agent: {agent}\n  vm_size: STANDARD_D2S_V3\n  vm_count:\n    dedicated: 2\n"
        ),
    );
    path
}

#[test]
fn pool_check_online_follows_a_published_image_to_the_batch_accounts_region() {
    let az = Azurite::start(&["imgcopy0"]);
    let arm = ArmReplay::start_with(
        ArmExpect::env_principal(),
        Knobs {
            still_replicating: vec!["eastus".into()],
            ..Knobs::default()
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "d12", 16, &[(0, 65536)]);
    let m = manifest(tmp.path(), "", "dedicated = 60");
    let r = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(r.code, 0, "{}", r.all());
    let record: Value = serde_json::from_str(&r.stdout).unwrap();
    let image_id = record["managed_image_id"].as_str().unwrap().to_string();

    let creds = credentials(tmp.path(), &arm, "");
    let pool = arm_pool(tmp.path(), &version_id(), "batch.node.ubuntu 24.04");
    let (r, f) = pool_check(&arm, &pool, &creds, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let image = &f["pool.online.arm-image"];
    assert_eq!(image["status"], "pass", "{image}");
    assert!(
        image["message"]
            .as_str()
            .unwrap()
            .contains("is replicated to westus2: 1 replica(s), Completed"),
        "{image}"
    );
    assert!(
        !image["message"].as_str().unwrap().contains("purchase plan"),
        "{image}"
    );
    // Had the definition been made for a base with a purchase plan, the
    // pool's nodes are made under it: the check says whose terms to accept.
    let definition = version_id().rsplitn(3, '/').nth(2).unwrap().to_string();
    arm.compute.edit(&definition, |d| {
        d["properties"]["purchasePlan"] =
            json!({"name": "9-base", "publisher": "resf", "product": "rockylinux-x86_64"});
    });
    let (r, f) = pool_check(&arm, &pool, &creds, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let message = f["pool.online.arm-image"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("its definition carries purchase plan resf/rockylinux-x86_64/9-base")
            && message.contains(
                "az vm image terms accept --publisher resf --offer rockylinux-x86_64 --plan 9-base"
            ),
        "{message}"
    );
    arm.compute.edit(&definition, |d| {
        d["properties"]
            .as_object_mut()
            .unwrap()
            .remove("purchasePlan");
    });
    assert_eq!(f["pool.online.batch-auth"]["status"], "pass", "{f}");
    assert_eq!(f["pool.online.node-agent"]["status"], "pass", "{f}");
    for vhd_only in [
        "pool.online.blobs",
        "pool.online.accounts",
        "pool.online.batch-account",
    ] {
        assert_eq!(f[vhd_only]["status"], "skip", "{vhd_only}: {f}");
    }

    // A Batch account in the region still being replicated to.
    let (r, f) = pool_check(&arm, &pool, &creds, &["--region", "East US"]);
    assert_eq!(r.code, 1, "{}", r.all());
    let msg = f["pool.online.arm-image"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("to eastus is Replicating (40 %)"), "{msg}");
    // One the version is not replicated to at all.
    let (_, f) = pool_check(&arm, &pool, &creds, &["--region", "centralus"]);
    let image = &f["pool.online.arm-image"];
    assert!(
        image["message"]
            .as_str()
            .unwrap()
            .contains("is replicated to westus2, eastus, not to centralus"),
        "{image}"
    );
    assert!(
        image["hint"].as_str().unwrap().contains("add centralus"),
        "{image}"
    );

    // An image in another subscription than the Batch account's.
    let elsewhere = arm_pool(
        tmp.path(),
        &version_id().replace(ARM_SUBSCRIPTION, "00000000-1111-2222-3333-444444444444"),
        "batch.node.ubuntu 24.04",
    );
    let (r, f) = pool_check(&arm, &elsewhere, &creds, &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    let image = &f["pool.online.arm-image"];
    assert!(
        image["message"].as_str().unwrap().contains(
            "is in subscription 00000000-1111-2222-3333-444444444444, the Batch account in"
        ),
        "{image}"
    );
    // The definition alone: Batch takes its latest version.
    let definition = arm_pool(
        tmp.path(),
        version_id().rsplit_once("/versions/").unwrap().0,
        "batch.node.ubuntu 24.04",
    );
    let (r, f) = pool_check(&arm, &definition, &creds, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let image = &f["pool.online.arm-image"];
    assert_eq!(image["status"], "warn", "{image}");
    assert!(
        image["message"]
            .as_str()
            .unwrap()
            .contains("latest version"),
        "{image}"
    );

    // The managed image (legacy: no pool since 2026-03-31) lives in westus2 only.
    let managed = arm_pool(tmp.path(), &image_id, "batch.node.ubuntu 24.04");
    let (r, f) = pool_check(&arm, &managed, &creds, &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_eq!(f["pool.custom-image.gallery"]["status"], "fail", "{f}");
    let (r, f) = pool_check(&arm, &managed, &creds, &["--legacy"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(f["pool.online.arm-image"]["status"], "pass", "{f}");
    let (_, f) = pool_check(&arm, &managed, &creds, &["--legacy", "--region", "eastus"]);
    let image = &f["pool.online.arm-image"];
    assert_eq!(image["status"], "fail", "{image}");
    assert!(
        image["hint"]
            .as_str()
            .unwrap()
            .contains("only in its own region"),
        "{image}"
    );

    // A version that was never published.
    let missing = arm_pool(
        tmp.path(),
        &version_id().replace("1.0.0", "9.9.9"),
        "batch.node.ubuntu 24.04",
    );
    let (r, f) = pool_check(&arm, &missing, &creds, &[]);
    assert_eq!(r.code, 1);
    assert!(
        f["pool.online.arm-image"]["message"]
            .as_str()
            .unwrap()
            .ends_with("/versions/9.9.9 does not exist"),
        "{f}"
    );

    // Batch Shipyard with the Batch account's shared key: refused for custom images.
    let keyed = credentials(
        tmp.path(),
        &arm,
        "    account_key: YmF0Y2gta2V5LW5ldmVyLXByaW50ZWQ=\n",
    );
    let (r, f) = pool_check(&arm, &pool, &keyed, &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    let auth = &f["pool.online.batch-auth"];
    assert_eq!(auth["status"], "fail", "{auth}");
    assert_eq!(
        auth["evidence"],
        format!("{}:10", keyed.display()),
        "{auth}"
    );
    assert!(
        auth["hint"]
            .as_str()
            .unwrap()
            .contains("Batch Shipyard issue 197"),
        "{auth}"
    );
    assert!(
        !r.all().contains("YmF0Y2gta2V5LW5ldmVyLXByaW50ZWQ="),
        "{}",
        r.all()
    );

    // A node agent the account lists as ended, and one it does not list.
    let old = arm_pool(tmp.path(), &version_id(), "batch.node.ubuntu 20.04");
    let (_, f) = pool_check(&arm, &old, &creds, &[]);
    let agent = &f["pool.online.node-agent"];
    assert_eq!(agent["status"], "fail", "{agent}");
    assert!(
        agent["message"]
            .as_str()
            .unwrap()
            .contains("end of life 2025-04-23"),
        "{agent}"
    );
    let debian = arm_pool(tmp.path(), &version_id(), "batch.node.debian 12");
    let (_, f) = pool_check(&arm, &debian, &creds, &[]);
    assert!(
        f["pool.online.node-agent"]["message"]
            .as_str()
            .unwrap()
            .contains("does not list node agent `batch.node.debian 12`"),
        "{f}"
    );
}

#[test]
fn a_vhd_that_fails_the_manifests_checks_is_not_uploaded_or_published() {
    let az = Azurite::start(&["imgcopy0"]);
    let arm = ArmReplay::start(ArmExpect::env_principal());
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "noise", 16, &[(0, 65536)]);
    let m = manifest(tmp.path(), "", "dedicated = 10");
    let mut cmd = imgforge();
    cmd.env("ARM_SUBSCRIPTION_ID", ARM_SUBSCRIPTION)
        .env("IMGFORGE_ARM_ENDPOINT", arm.endpoint())
        .env("AZURE_AUTHORITY_HOST", arm.endpoint())
        .arg("publish")
        .arg(&vhd)
        .arg("--manifest")
        .arg(&m);
    let r = run(az.env(&mut cmd));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("does not meet the manifest's checks, nothing was uploaded or published")
            && r.stderr
                .contains("FAIL disk.partition-table: no MBR signature")
            && r.stderr.contains("--no-validate"),
        "{}",
        r.stderr
    );
    assert!(arm.request_lines().is_empty(), "{:?}", arm.request_lines());
    assert!(
        az.props(&az.url("imgcopy0", "images", "noise.vhd"))
            .is_null()
    );
}

/// `publish` exits 0 only for a version Azure made and replicated: a version
/// left Failed or Creating after its operation said Succeeded, a region whose
/// replication failed, or an operation document without a status are failures.
#[test]
fn publish_fails_unless_azure_really_made_and_replicated_the_version() {
    let cases: Vec<(Knobs, &str)> = vec![
        (
            Knobs {
                version_state_after: Some("Failed".into()),
                polls: 0,
                ..Knobs::default()
            },
            "ended Failed",
        ),
        (
            Knobs {
                version_state_after: Some("Creating".into()),
                polls: 0,
                ..Knobs::default()
            },
            "ended Creating",
        ),
        (
            Knobs {
                failed_replication: vec!["eastus".into()],
                polls: 0,
                ..Knobs::default()
            },
            "failed to replicate to eastus",
        ),
        (
            Knobs {
                status_missing: true,
                polls: 0,
                ..Knobs::default()
            },
            "has no `status` string",
        ),
    ];
    for (knobs, says) in cases {
        let az = Azurite::start(&["imgcopy0"]);
        let arm = ArmReplay::start_with(ArmExpect::env_principal(), knobs);
        let tmp = tempfile::tempdir().unwrap();
        let vhd = sparse_vhd(tmp.path(), "d12", 16, &[(0, 4096)]);
        let m = manifest(tmp.path(), "", "dedicated = 10");
        let r = publish_cmd(&az, &arm, &m, &vhd);
        assert_eq!(r.code, 1, "{says}: {}", r.all());
        assert!(r.stderr.contains(says), "{says}: {}", r.stderr);
    }
}

/// A Retry-After far beyond the time limit does not stretch it: publish
/// --timeout 3 ends in seconds (it waited 60 s, the Retry-After cap).
#[test]
fn a_long_retry_after_never_outlasts_the_publish_timeout() {
    let az = Azurite::start(&["imgcopy0"]);
    let arm = ArmReplay::start_with(
        ArmExpect::env_principal(),
        Knobs {
            polls: 5,
            retry_after: 999_999,
            ..Knobs::default()
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "d12", 16, &[(0, 4096)]);
    let m = manifest(tmp.path(), "", "dedicated = 10");
    let started = std::time::Instant::now();
    let mut cmd = imgforge();
    cmd.env("ARM_SUBSCRIPTION_ID", ARM_SUBSCRIPTION)
        .env("IMGFORGE_ARM_ENDPOINT", arm.endpoint())
        .env("AZURE_AUTHORITY_HOST", arm.endpoint())
        .arg("publish")
        .arg(&vhd)
        .arg("--manifest")
        .arg(&m)
        .args(["--no-validate", "--timeout", "3"]);
    let r = run(az.env(&mut cmd));
    let took = started.elapsed();
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("did not finish within 3 s"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("publish --timeout"), "{}", r.stderr);
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}

/// A publish outlives its Resource Manager token (the stand-in expires it
/// after a few requests, as an hour would): imgforge signs in again once
/// and carries on, where it used to fail with a 401 and a hint about the
/// tenant.
#[test]
fn a_publish_that_outlives_its_token_signs_in_again() {
    let az = Azurite::start(&["imgcopy0"]);
    let arm = ArmReplay::start_with(
        ArmExpect::env_principal(),
        Knobs {
            token_expires_after: Some(4),
            polls: 0,
            ..Knobs::default()
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let vhd = sparse_vhd(tmp.path(), "d12", 16, &[(0, 4096)]);
    let m = manifest(tmp.path(), "", "dedicated = 10");
    let r = publish_cmd(&az, &arm, &m, &vhd);
    assert_eq!(r.code, 0, "{}", r.all());
    let token_posts = arm
        .request_lines()
        .iter()
        .filter(|l| l.starts_with("POST ") && l.contains("/oauth2/v2.0/token"))
        .count();
    let requests = arm.request_lines().len();
    assert!(
        token_posts >= 3,
        "{token_posts} sign-ins in {requests} requests"
    );
    assert!(!r.all().contains(CANARY));
}
