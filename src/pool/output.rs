//! The pool that uses a build's image, in the forms today's clients take:
//! Batch Shipyard's `pool.yaml` block (`shipyard`), the Batch REST pool body
//! of API 2025-06-01 (`batch-json`, for `az batch pool create --json-file`),
//! a Bicep `Microsoft.Batch/batchAccounts/pools` resource (`bicep`) and a
//! Terraform `azurerm_batch_pool` block (`terraform`).
//!
//! Every form names the image by its resource id (a gallery image version),
//! the node agent, the simplified node communication model where the client
//! has the setting, and Trusted Launch where the gallery definition needs it.
//! A VHD (`image_uris`) or a managed image makes no pool since 2026-03-31:
//! such an image is refused unless the caller asks for the legacy form on
//! purpose, and then only Batch Shipyard's form carries VHD URLs (Batch's
//! own API dropped `osDisk.imageUris` after 2017-05-01.5.0).
//!
//! Written by hand: each form is a dozen keys; a YAML/JSON serializer writes
//! the first two, and the Bicep/HCL text is small enough that a template
//! engine would hide more than it saves.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::PoolImage;
use crate::spec::catalog::{self, Os};
use crate::spec::manifest::SecurityType;
use crate::spec::plan::Plan;

/// Which client the pool is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolFormat {
    /// Batch Shipyard's pool.yaml `pool_specification` block.
    Shipyard,
    /// Batch's REST pool body (API 2025-06-01): `az batch pool create --json-file`.
    BatchJson,
    /// A Bicep `Microsoft.Batch/batchAccounts/pools` resource.
    Bicep,
    /// A Terraform `azurerm_batch_pool` resource.
    Terraform,
}

impl PoolFormat {
    pub fn name(self) -> &'static str {
        match self {
            PoolFormat::Shipyard => "shipyard",
            PoolFormat::BatchJson => "batch-json",
            PoolFormat::Bicep => "bicep",
            PoolFormat::Terraform => "terraform",
        }
    }
}

/// Batch's data-plane API version of the `batch-json` body, and the
/// management API version of the Bicep resource.
pub const BATCH_POOL_API: &str = "2025-06-01";

/// Why a pool cannot be written for this image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub hint: String,
}

/// What every form says about the pool, resolved once.
struct PoolSpec<'a> {
    id: String,
    vm_size: &'a str,
    image_id: &'a str,
    node_agent: &'a str,
    dedicated: u32,
    low_priority: u32,
    autoscale_max: Option<u32>,
    /// ISO 8601 duration: at least 15 minutes per 1,000 nodes (batch-sig-images).
    resize_timeout: String,
    trusted_launch: bool,
}

/// At least 15 minutes per 1,000 VMs, as Batch advises for gallery images.
pub fn resize_timeout_minutes(nodes: u32) -> u32 {
    15 * nodes.div_ceil(1000).max(1)
}

/// Batch's own sample formula: the pending tasks of the last five minutes,
/// capped at the manifest's autoscale maximum.
fn autoscale_formula(max: u32) -> String {
    format!(
        "$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 5); \
         $tasks = $samples < 70 ? max(0, $PendingTasks.GetSample(1)) : \
         max($PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 5))); \
         $TargetDedicatedNodes = min({max}, $tasks); \
         $NodeDeallocationOption = taskcompletion;"
    )
}

/// The pool for `image` in `format`. A VHD or a managed image is refused
/// unless `legacy` (and a VHD then only in Batch Shipyard's form).
pub fn render(
    plan: &Plan,
    image: &PoolImage,
    format: PoolFormat,
    legacy: bool,
) -> Result<String, Refusal> {
    let retired = catalog::NON_GALLERY_POOLS_RETIRED;
    let kind = match image {
        PoolImage::Vhds(_) => Some("VHD blobs (image_uris)"),
        PoolImage::ArmImageId(id) if !super::is_gallery_id(id) => Some("a managed image"),
        PoolImage::ArmImageId(_) => None,
    };
    if let Some(kind) = kind {
        if !legacy {
            return Err(Refusal {
                message: format!(
                    "the build's image is {kind}: Azure Batch creates no pool from it since {} ({})",
                    retired.date, retired.source
                ),
                hint: "publish it to a Compute Gallery (target = \"gallery\" and `imgforge publish`), \
                       or pass --legacy for a pool that existed before that date"
                    .into(),
            });
        }
        if matches!(image, PoolImage::Vhds(_)) && format != PoolFormat::Shipyard {
            return Err(Refusal {
                message: format!(
                    "Batch's {} API has no VHD image source (osDisk.imageUris ended with API 2017-05-01.5.0)",
                    format.name()
                ),
                hint: "use --format shipyard --legacy for Batch Shipyard's image_uris, or publish the VHD to a gallery"
                    .into(),
            });
        }
    }
    let spec = match image {
        PoolImage::Vhds(urls) => return Ok(super::snippet(plan, &PoolImage::Vhds(urls.clone()))),
        PoolImage::ArmImageId(id) => PoolSpec {
            id: plan.image.clone(),
            vm_size: &plan.build.vm_size,
            image_id: id,
            node_agent: &plan.node_agent,
            dedicated: plan.pool.dedicated,
            low_priority: plan.pool.low_priority,
            autoscale_max: plan.pool.autoscale_max,
            resize_timeout: format!("PT{}M", resize_timeout_minutes(plan.pool.max_nodes)),
            trusted_launch: plan
                .publish
                .as_ref()
                .is_some_and(|p| p.security_type == SecurityType::TrustedLaunch),
        },
    };
    if spec.trusted_launch && format == PoolFormat::Shipyard {
        return Err(Refusal {
            message: "the gallery definition is TrustedLaunch (build.gallery.security_type): its \
                      versions run only on Trusted Launch VMs, and Batch Shipyard's pool.yaml \
                      cannot ask for them (it has no security profile)"
                .into(),
            hint: "use --format batch-json, bicep or terraform (they carry securityProfile), or \
                   publish with security_type = \"trusted_launch_supported\""
                .into(),
        });
    }
    let text = match format {
        PoolFormat::Shipyard => return Ok(super::snippet(plan, image)),
        PoolFormat::BatchJson => {
            let mut s =
                serde_json::to_string_pretty(&batch_json(&spec)).expect("a JSON value serializes");
            s.push('\n');
            s
        }
        PoolFormat::Bicep => bicep(&spec),
        PoolFormat::Terraform => terraform(&spec),
    };
    Ok(crate::util::redact::redact(&with_header(
        plan, format, text,
    )))
}

/// A comment naming the image, for the forms that have comments.
fn with_header(plan: &Plan, format: PoolFormat, text: String) -> String {
    let lead = match format {
        PoolFormat::Bicep | PoolFormat::Terraform => "//",
        _ => return text,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{lead} Azure Batch pool for image {} ({}), written by imgforge.",
        plan.image, plan.distro.key
    );
    let _ = writeln!(
        out,
        "{lead} Up to {} nodes; resize timeout {} min (15 per 1,000 nodes).",
        plan.pool.max_nodes,
        resize_timeout_minutes(plan.pool.max_nodes)
    );
    if plan.os == Os::Linux && !plan.distro.node_agent_verified {
        let _ = writeln!(
            out,
            "{lead} WARNING: no primary source names a Batch node agent for {}: check `{}` against your account's supported images.",
            plan.distro.key, plan.node_agent
        );
    }
    out.push_str(&text);
    out
}

/// Batch REST `POST {batchUrl}/pools?api-version=2025-06-01` body.
fn batch_json(p: &PoolSpec) -> Value {
    let mut vm = json!({
        "imageReference": {"virtualMachineImageId": p.image_id},
        "nodeAgentSKUId": p.node_agent,
    });
    if p.trusted_launch {
        vm["securityProfile"] = json!({
            "securityType": "trustedLaunch",
            "encryptionAtHost": false,
            "uefiSettings": {"secureBootEnabled": true, "vTpmEnabled": true},
        });
    }
    let mut pool = json!({
        "id": p.id,
        "vmSize": p.vm_size,
        "virtualMachineConfiguration": vm,
        "resizeTimeout": p.resize_timeout,
        "targetNodeCommunicationMode": "simplified",
    });
    match p.autoscale_max {
        Some(max) => {
            pool["enableAutoScale"] = json!(true);
            pool["autoScaleFormula"] = json!(autoscale_formula(max));
            pool["autoScaleEvaluationInterval"] = json!("PT5M");
        }
        None => {
            pool["targetDedicatedNodes"] = json!(p.dedicated);
            pool["targetLowPriorityNodes"] = json!(p.low_priority);
        }
    }
    pool
}

fn bicep(p: &PoolSpec) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "param batchAccountName string");
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "resource account 'Microsoft.Batch/batchAccounts@{BATCH_POOL_API}' existing = {{\n  name: batchAccountName\n}}\n"
    );
    let _ = writeln!(
        s,
        "resource pool 'Microsoft.Batch/batchAccounts/pools@{BATCH_POOL_API}' = {{"
    );
    let _ = writeln!(s, "  parent: account");
    let _ = writeln!(s, "  name: '{}'", p.id);
    let _ = writeln!(s, "  properties: {{");
    let _ = writeln!(s, "    vmSize: '{}'", p.vm_size);
    let _ = writeln!(s, "    targetNodeCommunicationMode: 'Simplified'");
    let _ = writeln!(s, "    deploymentConfiguration: {{");
    let _ = writeln!(s, "      virtualMachineConfiguration: {{");
    let _ = writeln!(s, "        imageReference: {{");
    let _ = writeln!(s, "          id: '{}'", p.image_id);
    let _ = writeln!(s, "        }}");
    let _ = writeln!(s, "        nodeAgentSkuId: '{}'", p.node_agent);
    if p.trusted_launch {
        let _ = writeln!(s, "        securityProfile: {{");
        let _ = writeln!(s, "          securityType: 'trustedLaunch'");
        let _ = writeln!(s, "          encryptionAtHost: false");
        let _ = writeln!(s, "          uefiSettings: {{");
        let _ = writeln!(s, "            secureBootEnabled: true");
        let _ = writeln!(s, "            vTpmEnabled: true");
        let _ = writeln!(s, "          }}");
        let _ = writeln!(s, "        }}");
    }
    let _ = writeln!(s, "      }}");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    scaleSettings: {{");
    match p.autoscale_max {
        Some(max) => {
            let _ = writeln!(s, "      autoScale: {{");
            let _ = writeln!(s, "        evaluationInterval: 'PT5M'");
            let _ = writeln!(s, "        formula: '{}'", autoscale_formula(max));
            let _ = writeln!(s, "      }}");
        }
        None => {
            let _ = writeln!(s, "      fixedScale: {{");
            let _ = writeln!(s, "        targetDedicatedNodes: {}", p.dedicated);
            let _ = writeln!(s, "        targetLowPriorityNodes: {}", p.low_priority);
            let _ = writeln!(s, "        resizeTimeout: '{}'", p.resize_timeout);
            let _ = writeln!(s, "      }}");
        }
    }
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

fn terraform(p: &PoolSpec) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "variable \"resource_group_name\" {{ type = string }}");
    let _ = writeln!(s, "variable \"batch_account_name\" {{ type = string }}");
    let _ = writeln!(s);
    // A Terraform name starts with a letter or '_'; an image name may start with a digit.
    let _ = writeln!(
        s,
        "resource \"azurerm_batch_pool\" \"pool_{}\" {{",
        p.id.replace('-', "_")
    );
    let _ = writeln!(s, "  name                           = \"{}\"", p.id);
    let _ = writeln!(
        s,
        "  resource_group_name            = var.resource_group_name"
    );
    let _ = writeln!(
        s,
        "  account_name                   = var.batch_account_name"
    );
    let _ = writeln!(s, "  vm_size                        = \"{}\"", p.vm_size);
    let _ = writeln!(s, "  node_agent_sku_id              = \"{}\"", p.node_agent);
    let _ = writeln!(s, "  target_node_communication_mode = \"Simplified\"");
    let _ = writeln!(s);
    let _ = writeln!(s, "  storage_image_reference {{");
    let _ = writeln!(s, "    id = \"{}\"", p.image_id);
    let _ = writeln!(s, "  }}");
    if p.trusted_launch {
        let _ = writeln!(s);
        let _ = writeln!(s, "  security_profile {{");
        let _ = writeln!(s, "    host_encryption_enabled = false");
        let _ = writeln!(s, "    security_type           = \"trustedLaunch\"");
        let _ = writeln!(s, "    secure_boot_enabled     = true");
        let _ = writeln!(s, "    vtpm_enabled            = true");
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s);
    match p.autoscale_max {
        Some(max) => {
            let _ = writeln!(s, "  auto_scale {{");
            let _ = writeln!(s, "    evaluation_interval = \"PT5M\"");
            let _ = writeln!(
                s,
                "    formula             = \"{}\"",
                autoscale_formula(max)
            );
            let _ = writeln!(s, "  }}");
        }
        None => {
            let _ = writeln!(s, "  fixed_scale {{");
            let _ = writeln!(s, "    target_dedicated_nodes    = {}", p.dedicated);
            let _ = writeln!(s, "    target_low_priority_nodes = {}", p.low_priority);
            let _ = writeln!(
                s,
                "    resize_timeout            = \"{}\"",
                p.resize_timeout
            );
            let _ = writeln!(s, "  }}");
        }
    }
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_timeout_is_15_minutes_per_1000_nodes() {
        assert_eq!(resize_timeout_minutes(0), 15);
        assert_eq!(resize_timeout_minutes(8), 15);
        assert_eq!(resize_timeout_minutes(1000), 15);
        assert_eq!(resize_timeout_minutes(1001), 30);
        assert_eq!(resize_timeout_minutes(3000), 45);
    }
}
