//! Batch's own pool body — the REST `POST {batchUrl}/pools` body of API
//! 2025-06-01 that `az batch pool create --json-file` sends and `pool snippet
//! --format batch-json` writes — checked offline as the service takes it:
//! the required properties, only properties the service defines (for the
//! parts an image's pool uses), a gallery image, a current node agent, and
//! the simplified node communication model.
//!
//! The property paths are the specification's (`BatchPoolCreateContent` in
//! Azure/azure-rest-api-specs, `specification/batch/data-plane/Azure.Batch/
//! stable/2025-06-01`); `tests/fixtures/batch/pool-add-2025-06-01.json`
//! records the same list with its source, and a test keeps the two equal.

use serde_json::Value;

use super::ShipyardFile;
use crate::report::Finding;
use crate::spec::catalog;
use crate::spec::plan::Plan;

/// The property paths the pool body defines, top level and under
/// `virtualMachineConfiguration` (objects below the other top-level
/// properties are not walked).
pub const KNOWN_PATHS: &[&str] = &[
    "id",
    "displayName",
    "vmSize",
    "virtualMachineConfiguration",
    "virtualMachineConfiguration.imageReference",
    "virtualMachineConfiguration.imageReference.publisher",
    "virtualMachineConfiguration.imageReference.offer",
    "virtualMachineConfiguration.imageReference.sku",
    "virtualMachineConfiguration.imageReference.version",
    "virtualMachineConfiguration.imageReference.virtualMachineImageId",
    "virtualMachineConfiguration.imageReference.sharedGalleryImageId",
    "virtualMachineConfiguration.imageReference.communityGalleryImageId",
    "virtualMachineConfiguration.nodeAgentSKUId",
    "virtualMachineConfiguration.windowsConfiguration",
    "virtualMachineConfiguration.dataDisks",
    "virtualMachineConfiguration.licenseType",
    "virtualMachineConfiguration.containerConfiguration",
    "virtualMachineConfiguration.diskEncryptionConfiguration",
    "virtualMachineConfiguration.nodePlacementConfiguration",
    "virtualMachineConfiguration.extensions",
    "virtualMachineConfiguration.osDisk",
    "virtualMachineConfiguration.securityProfile",
    "virtualMachineConfiguration.securityProfile.securityType",
    "virtualMachineConfiguration.securityProfile.encryptionAtHost",
    "virtualMachineConfiguration.securityProfile.uefiSettings",
    "virtualMachineConfiguration.securityProfile.uefiSettings.secureBootEnabled",
    "virtualMachineConfiguration.securityProfile.uefiSettings.vTpmEnabled",
    "virtualMachineConfiguration.serviceArtifactReference",
    "resizeTimeout",
    "resourceTags",
    "targetDedicatedNodes",
    "targetLowPriorityNodes",
    "enableAutoScale",
    "autoScaleFormula",
    "autoScaleEvaluationInterval",
    "enableInterNodeCommunication",
    "networkConfiguration",
    "startTask",
    "applicationPackageReferences",
    "taskSlotsPerNode",
    "taskSchedulingPolicy",
    "userAccounts",
    "metadata",
    "mountConfiguration",
    "targetNodeCommunicationMode",
    "upgradePolicy",
];

/// Required by the service.
pub const REQUIRED: &[&str] = &[
    "id",
    "vmSize",
    "virtualMachineConfiguration.imageReference",
    "virtualMachineConfiguration.nodeAgentSKUId",
];

/// A Batch pool body rather than a Batch Shipyard file.
pub fn is_batch_body(v: &Value) -> bool {
    v.is_object()
        && v.get("pool_specification").is_none()
        && (v["virtualMachineConfiguration"].is_object() || v["vmSize"].is_string())
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// The paths of `v` the checker walks: every key at the top level and, below
/// `virtualMachineConfiguration`, every key of the objects the list names.
fn paths(v: &Value) -> Vec<String> {
    fn walk(v: &Value, at: &str, out: &mut Vec<String>) {
        let Some(m) = v.as_object() else { return };
        for (k, x) in m {
            let p = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            out.push(p.clone());
            let deeper = p == "virtualMachineConfiguration"
                || KNOWN_PATHS
                    .iter()
                    .any(|known| known.starts_with(&format!("{p}.")));
            if deeper {
                walk(x, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

/// Whether the pool asks for Trusted Launch nodes.
pub fn trusted_launch(v: &Value) -> bool {
    v["virtualMachineConfiguration"]["securityProfile"]["securityType"]
        .as_str()
        .is_some_and(|t| t.eq_ignore_ascii_case("trustedLaunch"))
}

/// The gallery or managed image the body names, if any.
pub fn image_id(v: &Value) -> Option<&str> {
    v["virtualMachineConfiguration"]["imageReference"]["virtualMachineImageId"].as_str()
}

pub fn node_agent(v: &Value) -> &str {
    v["virtualMachineConfiguration"]["nodeAgentSKUId"]
        .as_str()
        .unwrap_or("")
}

pub fn check(config: &ShipyardFile, plan: Option<&Plan>, legacy: bool, f: &mut Vec<Finding>) {
    let v = &config.value;
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|p| get(v, p).is_null())
        .collect();
    f.push(if missing.is_empty() {
        Finding::pass(
            "pool.batch.required",
            "every property Batch's pool body requires is set",
        )
    } else {
        Finding::fail(
            "pool.batch.required",
            format!("Batch's pool body requires {}", missing.join(", ")),
        )
        .evidence(config.path.display().to_string())
        .hint("`imgforge pool snippet --format batch-json` writes a whole body")
    });
    let unknown: Vec<String> = paths(v)
        .into_iter()
        .filter(|p| !KNOWN_PATHS.contains(&p.as_str()))
        .collect();
    f.push(match unknown.first() {
        None => Finding::pass(
            "pool.batch.keys",
            "only properties Batch's pool body (API 2025-06-01) defines",
        ),
        Some(first) => Finding::fail(
            "pool.batch.keys",
            format!(
                "Batch's pool body (API 2025-06-01) has no {}",
                unknown.join(", ")
            ),
        )
        .evidence(config.at(first.rsplit('.').next().unwrap_or(first)))
        .hint(
            "fix the spelling, or remove them (`osDisk.imageUris` and `cloudServiceConfiguration` were removed from the API)",
        ),
    });

    let retired = catalog::CLASSIC_MODEL_RETIRED;
    f.push(match v["targetNodeCommunicationMode"].as_str() {
        Some(m) if m.eq_ignore_ascii_case("classic") => Finding::fail(
            "pool.batch.communication",
            format!(
                "targetNodeCommunicationMode is classic, retired {} ({})",
                retired.date, retired.source
            ),
        )
        .evidence(config.at("targetNodeCommunicationMode"))
        .hint("set \"simplified\" (outbound TCP 443 only, no inbound port)"),
        _ => Finding::pass(
            "pool.batch.communication",
            "the simplified node communication model",
        ),
    });

    let reference = &v["virtualMachineConfiguration"]["imageReference"];
    match image_id(v) {
        Some(id) => {
            f.push(if !super::arm_image_id_ok(id) {
                Finding::fail(
                    "pool.arm-image-id.format",
                    format!("`{id}` is not a gallery image version or managed image id"),
                )
                .evidence(config.at("virtualMachineImageId"))
                .hint("/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/galleries/G/images/DEF/versions/X.Y.Z")
            } else {
                Finding::pass(
                    "pool.arm-image-id.format",
                    "virtualMachineImageId is a resource id",
                )
            });
            let retired =
                (!super::is_gallery_id(id)).then_some(("a managed image", "virtualMachineImageId"));
            f.push(super::gallery_source(config, retired, legacy));
        }
        None if reference["publisher"].is_string() => f.push(Finding::pass(
            "pool.custom-image.gallery",
            format!(
                "the marketplace image {}/{}/{}: no custom image",
                reference["publisher"].as_str().unwrap_or("?"),
                reference["offer"].as_str().unwrap_or("?"),
                reference["sku"].as_str().unwrap_or("?")
            ),
        )),
        None => {}
    }
    super::check_node_agent(config, node_agent(v), "nodeAgentSKUId", plan, f);
    if let Some(plan) = plan {
        super::check_vm_size(
            config,
            "vmSize",
            v["vmSize"].as_str().unwrap_or(""),
            plan,
            f,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_walk_only_what_the_list_describes() {
        let v = serde_json::json!({
            "id": "p",
            "startTask": {"commandLine": "x"},
            "virtualMachineConfiguration": {"imageReference": {"virtualMachineImageId": "i", "imageUris": []}}
        });
        let p = paths(&v);
        assert!(p.contains(&"startTask".to_string()));
        assert!(!p.iter().any(|x| x.starts_with("startTask.")), "{p:?}");
        assert!(p.contains(&"virtualMachineConfiguration.imageReference.imageUris".to_string()));
        assert!(is_batch_body(&v));
        assert!(!is_batch_body(
            &serde_json::json!({"pool_specification": {}})
        ));
    }
}
