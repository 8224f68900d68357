//! The Batch Shipyard handoff: the `vm_configuration` snippet for `pool.yaml`,
//! and checks of an existing pool configuration against Azure Batch's rules.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::report::{Finding, Report};
use crate::spec::catalog::{self, Os};
use crate::spec::plan::{Plan, is_gpu_size, is_rdma_size, vhd_copies};

pub mod batch_form;
pub(crate) mod credentials;
pub(crate) mod online;
pub mod output;

pub const SNIPPET_FILE: &str = "pool-snippet.yaml";
/// The Batch REST pool body a build writes beside the Shipyard snippet.
pub const BATCH_POOL_FILE: &str = "pool.json";

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid pool configuration ({format}): {message}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("{path}: {message}")]
    Record {
        path: PathBuf,
        message: String,
        hint: String,
    },
}

impl crate::util::Hint for PoolError {
    fn hint(&self) -> Option<String> {
        match self {
            PoolError::Record { hint, .. } => Some(hint.clone()),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize)]
struct PoolDocument {
    pool_specification: PoolSpecification,
}

/// What Batch Shipyard's schema requires of a pool: an id, the image, the
/// size and the node counts, and the autoscale scenario when one is set.
#[derive(Debug, Serialize)]
struct PoolSpecification {
    id: String,
    vm_configuration: VmConfiguration,
    vm_size: String,
    vm_count: NodeCount,
    #[serde(skip_serializing_if = "Option::is_none")]
    autoscale: Option<Autoscale>,
}

#[derive(Debug, Serialize)]
struct NodeCount {
    dedicated: u32,
    low_priority: u32,
}

#[derive(Debug, Serialize)]
struct Autoscale {
    evaluation_interval: &'static str,
    scenario: AutoscaleScenario,
}

#[derive(Debug, Serialize)]
struct AutoscaleScenario {
    name: &'static str,
    maximum_vm_count: NodeCount,
}

#[derive(Debug, Serialize)]
struct VmConfiguration {
    custom_image: CustomImage,
}

#[derive(Debug, Serialize)]
struct CustomImage {
    #[serde(skip_serializing_if = "Option::is_none")]
    arm_image_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    image_uris: Vec<String>,
    node_agent: String,
}

/// The image a pool should use, as recorded by a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolImage {
    /// Bare URLs of the replicated VHDs, at container roots.
    Vhds(Vec<String>),
    /// A managed image or gallery image version.
    ArmImageId(String),
}

/// The `pool_specification` block for Batch Shipyard, as YAML with comments.
pub fn snippet(plan: &Plan, image: &PoolImage) -> String {
    // Bare URLs only: a SAS never goes into a pool file (Batch Shipyard
    // refuses one; a record could carry one).
    let bare = |u: &String| u.split('?').next().unwrap_or(u).to_string();
    let (arm_image_id, image_uris) = match image {
        PoolImage::Vhds(urls) => (None, urls.iter().map(bare).collect()),
        PoolImage::ArmImageId(id) => (Some(id.clone()), Vec::new()),
    };
    let doc = PoolDocument {
        pool_specification: PoolSpecification {
            id: plan.image.clone(),
            vm_configuration: VmConfiguration {
                custom_image: CustomImage {
                    arm_image_id,
                    image_uris,
                    node_agent: plan.node_agent.clone(),
                },
            },
            vm_size: plan.build.vm_size.clone(),
            vm_count: NodeCount {
                dedicated: plan.pool.dedicated,
                low_priority: plan.pool.low_priority,
            },
            autoscale: plan.pool.autoscale_max.map(|max| Autoscale {
                evaluation_interval: "00:05:00",
                scenario: AutoscaleScenario {
                    name: "pending_tasks",
                    maximum_vm_count: NodeCount {
                        dedicated: max,
                        low_priority: 0,
                    },
                },
            }),
        },
    };
    let mut out = format!(
        "# Batch Shipyard pool.yaml snippet for image {} ({}), written by imgforge.\n",
        plan.image, plan.distro.key
    );
    let retired = catalog::NON_GALLERY_POOLS_RETIRED;
    match image {
        PoolImage::Vhds(urls) => {
            out.push_str(&format!(
                "# LEGACY: Azure Batch creates no pool from VHD blobs since {} ({}), and Batch \
                 Shipyard 3.0+ refuses image_uris; this serves pools made before that date.\n",
                retired.date, retired.source
            ));
            let serves = urls.len() as u32 * plan.pool.vms_per_vhd;
            out.push_str(&format!(
                "# {} VHD cop{} serve up to {serves} {} nodes ({} per copy); the manifest's pool needs up to {}.\n",
                urls.len(),
                if urls.len() == 1 { "y" } else { "ies" },
                if plan.os == Os::Windows { "Windows" } else { "Linux" },
                plan.pool.vms_per_vhd,
                plan.pool.max_nodes,
            ));
        }
        PoolImage::ArmImageId(id) => {
            if is_gallery_id(id) {
                out.push_str(&format!(
                    "# Azure Compute Gallery image version: no VHD copies; the manifest's pool needs up to {} nodes.\n",
                    plan.pool.max_nodes
                ));
            } else {
                out.push_str(&format!(
                    "# LEGACY: Azure Batch creates no pool from a managed image since {} ({}).\n",
                    retired.date, retired.source
                ));
            }
            if !plan.distro.node_agent_verified {
                out.push_str(&format!(
                    "# WARNING: no primary source names a Batch node agent for {}: check `{}` against your account's supported images.\n",
                    plan.distro.key, plan.node_agent
                ));
            }
            if let Some(g) = plan.publish.as_ref().and_then(|p| p.gallery.as_ref()) {
                let regions: Vec<String> = g
                    .regions
                    .iter()
                    .map(|r| format!("{} x{}", r.region, r.replicas))
                    .collect();
                out.push_str(&format!(
                    "# Gallery replicas (one per {} nodes, Batch's rule): {}.\n",
                    g.nodes_per_replica,
                    regions.join(", ")
                ));
            }
        }
    }
    out.push_str(&serde_yaml_ng::to_string(&doc).expect("the snippet serializes"));
    crate::util::redact::redact(&out)
}

/// A Batch Shipyard configuration file (YAML or JSON), parsed, with its source
/// text kept for line evidence.
pub struct ShipyardFile {
    pub path: PathBuf,
    pub text: String,
    pub value: Value,
}

impl ShipyardFile {
    /// A pool configuration: Batch Shipyard's (`pool_specification` at the
    /// top level) or Batch's own pool body (`id`, `vmSize`,
    /// `virtualMachineConfiguration`: `az batch pool create --json-file`).
    pub fn load_pool(path: &Path) -> Result<ShipyardFile, PoolError> {
        let (file, format) = ShipyardFile::read(path)?;
        if file.value["pool_specification"].is_object() || batch_form::is_batch_body(&file.value) {
            return Ok(file);
        }
        Err(PoolError::Parse {
            path: path.to_path_buf(),
            format,
            message: "neither a Batch Shipyard pool (`pool_specification` at the top level) nor a Batch pool body (`vmSize`, `virtualMachineConfiguration`)".into(),
        })
    }

    /// Reads `path` and requires the object `top` at its top level.
    pub fn load(path: &Path, top: &str) -> Result<ShipyardFile, PoolError> {
        let (file, format) = ShipyardFile::read(path)?;
        if !file.value[top].is_object() {
            return Err(PoolError::Parse {
                path: path.to_path_buf(),
                format,
                message: format!("no `{top}` object at the top level"),
            });
        }
        Ok(file)
    }

    /// Reads and parses `path` (JSON or YAML), bounded as every input is.
    fn read(path: &Path) -> Result<(ShipyardFile, &'static str), PoolError> {
        let text =
            crate::util::fsutil::read_input_string(path).map_err(|source| PoolError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            || text.trim_start().starts_with('{');
        let format = if is_json { "JSON" } else { "YAML" };
        let parsed = if is_json {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())
        };
        let value: Value = parsed.map_err(|message| PoolError::Parse {
            path: path.to_path_buf(),
            format,
            message,
        })?;
        Ok((
            ShipyardFile {
                path: path.to_path_buf(),
                text,
                value,
            },
            format,
        ))
    }

    /// `path:line` of the first line mentioning `needle`, or the path alone.
    pub fn at(&self, needle: &str) -> String {
        match self.text.lines().position(|l| l.contains(needle)) {
            Some(i) => format!("{}:{}", self.path.display(), i + 1),
            None => self.path.display().to_string(),
        }
    }
}

/// A node count: absent is 0; anything but a whole number (`100.0`, `"100"`,
/// `-100`) is an error naming the key, never silently 0 nodes.
fn count(v: &Value, key: &str) -> Result<u64, String> {
    let whole = |x: &Value, k: &str| match x {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("`{k}: {n}` is not a whole number of nodes")),
        other => Err(format!("`{k}: {other}` is not a whole number of nodes")),
    };
    match v {
        Value::Object(_) => Ok(whole(&v["dedicated"], &format!("{key}.dedicated"))?
            .saturating_add(whole(&v["low_priority"], &format!("{key}.low_priority"))?)),
        other => whole(other, key),
    }
}

/// The most nodes the configuration can reach: the fixed size, or the
/// autoscale maximum when larger.
pub fn max_nodes(spec: &Value) -> Result<u64, String> {
    let fixed = count(&spec["vm_count"], "vm_count")?;
    let autoscale = count(
        &spec["autoscale"]["scenario"]["maximum_vm_count"],
        "autoscale.scenario.maximum_vm_count",
    )?;
    Ok(fixed.max(autoscale))
}

/// The image URIs of a pool configuration's custom image.
pub fn image_uris(config: &ShipyardFile) -> Vec<String> {
    config.value["pool_specification"]["vm_configuration"]["custom_image"]["image_uris"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn known_node_agents() -> Vec<&'static str> {
    catalog::DISTROS.iter().map(|d| d.node_agent).collect()
}

/// A marketplace image a pool names: `vm_configuration.platform_image`, or
/// Batch Shipyard's legacy flat form (`publisher`/`offer`/`sku` directly under
/// `pool_specification`).
fn platform_image(spec: &Value) -> Option<(&Value, &'static str)> {
    let vm = &spec["vm_configuration"];
    if vm["platform_image"].is_object() {
        Some((&vm["platform_image"], "platform_image"))
    } else if !vm.is_object() && spec["publisher"].is_string() && spec["offer"].is_string() {
        Some((spec, "publisher"))
    } else {
        None
    }
}

/// Keys Batch Shipyard 3.9.1's pool schema (`schemas/pool.yaml`) defines
/// under `pool_specification`; its validator (pykwalify) refuses any other.
const SHIPYARD_POOL_KEYS: &[&str] = &[
    "id",
    "vm_configuration",
    "vm_size",
    "vm_count",
    "max_tasks_per_node",
    "resize_timeout",
    "node_fill_type",
    "autoscale",
    "inter_node_communication_enabled",
    "reboot_on_start_task_failed",
    "attempt_recovery_on_unusable",
    "upload_diagnostics_logs_on_unusable",
    "block_until_all_global_resources_loaded",
    "transfer_files_on_pool_creation",
    "input_data",
    "resource_files",
    "ssh",
    "rdp",
    "remote_access_control",
    "virtual_network",
    "certificates",
    "gpu",
    "additional_node_prep_commands",
    "prometheus",
    "container_runtimes",
];

/// Batch Shipyard's schema rules a pool file must meet before Shipyard
/// sends anything to Batch: required keys, types, no unknown key. Files of
/// Shipyard 2.x (VHD `image_uris`, the flat image form) fail unless
/// `legacy`, where they warn.
fn check_schema(config: &ShipyardFile, legacy: bool, f: &mut Vec<Finding>) {
    let spec = &config.value["pool_specification"];
    let vm = &spec["vm_configuration"];
    let ci = &vm["custom_image"];
    let mut missing = Vec::new();
    // The flat form has no vm_configuration: said once, as a legacy key.
    let flat = spec["publisher"].is_string();
    for key in ["id", "vm_configuration", "vm_size", "vm_count"] {
        if spec[key].is_null() && !(flat && key == "vm_configuration") {
            missing.push(format!("pool_specification.{key}"));
        }
    }
    if ci.is_object() {
        for key in ["arm_image_id", "node_agent"] {
            if ci[key].is_null()
                && !(key == "arm_image_id" && legacy && !ci["image_uris"].is_null())
            {
                missing.push(format!("custom_image.{key}"));
            }
        }
    }
    f.push(if missing.is_empty() {
        Finding::pass("pool.schema.required", "every key Batch Shipyard requires is set")
    } else {
        Finding::fail(
            "pool.schema.required",
            format!("Batch Shipyard requires {}", missing.join(", ")),
        )
        .evidence(config.at("pool_specification"))
        .hint("add them: `imgforge pool snippet` writes vm_configuration; id, vm_size and vm_count (dedicated, low_priority) are the pool's")
    });

    let mut wrong = Vec::new();
    let is_count_map = |v: &Value| {
        v.as_object().is_some_and(|m| {
            m.iter().all(|(k, n)| {
                matches!(k.as_str(), "dedicated" | "low_priority") && n.as_u64().is_some()
            })
        })
    };
    for key in ["id", "vm_size"] {
        if !spec[key].is_null() && !spec[key].is_string() {
            wrong.push(format!("`{key}` must be a string"));
        }
    }
    if !spec["vm_count"].is_null() && !is_count_map(&spec["vm_count"]) {
        wrong.push(
            "`vm_count` must be a map of whole numbers (dedicated, low_priority), not a number"
                .to_string(),
        );
    }
    let scenario = &spec["autoscale"]["scenario"];
    if !scenario["maximum_vm_count"].is_null() && !is_count_map(&scenario["maximum_vm_count"]) {
        wrong.push(
            "`autoscale.scenario.maximum_vm_count` must be a map (dedicated, low_priority), not a number"
                .to_string(),
        );
    }
    if scenario.is_object() && !scenario["name"].is_string() {
        wrong.push("`autoscale.scenario.name` is required".to_string());
    }
    f.push(if wrong.is_empty() {
        Finding::pass("pool.schema.types", "values have the types Batch Shipyard's schema gives them")
    } else {
        Finding::fail("pool.schema.types", wrong.join("; "))
            .evidence(config.at("vm_count"))
            .hint("write vm_count: {dedicated: N, low_priority: M} (and the same for maximum_vm_count)")
    });

    // Keys Shipyard 3.0+ refuses; the 2.x ones are legacy rather than unknown.
    let legacy_keys: Vec<String> = ["publisher", "offer", "sku"]
        .into_iter()
        .filter(|k| !spec[*k].is_null())
        .map(|k| format!("pool_specification.{k} (Shipyard 2.x's flat image form)"))
        .chain((!ci["image_uris"].is_null()).then(|| {
            "custom_image.image_uris (VHD images; Shipyard 3.0 replaced it with arm_image_id)"
                .to_string()
        }))
        .collect();
    let unknown: Vec<String> = spec
        .as_object()
        .map(|m| {
            m.keys()
                .filter(|k| {
                    !SHIPYARD_POOL_KEYS.contains(&k.as_str())
                        && !matches!(k.as_str(), "publisher" | "offer" | "sku")
                })
                .map(|k| format!("pool_specification.{k}"))
                .collect()
        })
        .unwrap_or_default();
    f.push(match (unknown.is_empty(), legacy_keys.is_empty()) {
        (true, true) => Finding::pass("pool.schema.keys", "no key Batch Shipyard's schema does not define"),
        (false, _) => Finding::fail(
            "pool.schema.keys",
            format!("Batch Shipyard's schema does not define {}", unknown.join(", ")),
        )
        .evidence(config.at(unknown[0].trim_start_matches("pool_specification.")))
        .hint("remove them, or fix their spelling (Shipyard refuses unknown keys)"),
        (true, false) if legacy => Finding::warn(
            "pool.schema.keys",
            format!("legacy keys: {}", legacy_keys.join(", ")),
        )
        .evidence(config.at(if ci["image_uris"].is_null() { "publisher" } else { "image_uris" })),
        (true, false) => Finding::fail(
            "pool.schema.keys",
            format!("Batch Shipyard 3.0+ refuses {}", legacy_keys.join(", ")),
        )
        .evidence(config.at(if ci["image_uris"].is_null() { "publisher" } else { "image_uris" }))
        .hint("use vm_configuration.custom_image.arm_image_id with a gallery image version (`imgforge pool snippet`), or vm_configuration.platform_image; --legacy checks a file for a pool made before 2026-03-31"),
    });
}

/// Whether a resource id names a Compute Gallery image (version or definition).
pub(crate) fn is_gallery_id(id: &str) -> bool {
    id.to_ascii_lowercase()
        .contains("/providers/microsoft.compute/galleries/")
}

/// `pool.custom-image.gallery`: `retired` names a source Batch no longer
/// makes pools from (VHD blobs, a managed image) and the key naming it in the
/// file; it fails, or warns with `legacy`. Shared by both pool forms.
fn gallery_source(config: &ShipyardFile, retired: Option<(&str, &str)>, legacy: bool) -> Finding {
    const ID: &str = "pool.custom-image.gallery";
    let Some((kind, key)) = retired else {
        return Finding::pass(
            ID,
            "the image is a Compute Gallery image, the only custom image source Batch takes today",
        );
    };
    let r = catalog::NON_GALLERY_POOLS_RETIRED;
    let message = format!(
        "the pool's image is {kind}: Azure Batch creates no pool from it since {} ({})",
        r.date, r.source
    );
    if legacy {
        Finding::warn(ID, message).evidence(config.at(key))
    } else {
        Finding::fail(ID, message)
            .evidence(config.at(key))
            .hint("publish the image to a Compute Gallery (`imgforge publish`, target = \"gallery\") and name its version; --legacy checks a file for a pool made before that date")
    }
}

/// The image source Batch accepts today: a Compute Gallery image version
/// (or definition, for its latest version).
fn check_gallery_source(config: &ShipyardFile, legacy: bool, f: &mut Vec<Finding>) {
    let ci = &config.value["pool_specification"]["vm_configuration"]["custom_image"];
    let retired = if !ci["image_uris"].is_null() {
        Some(("VHD blobs (image_uris)", "image_uris"))
    } else {
        ci["arm_image_id"]
            .as_str()
            .filter(|id| !is_gallery_id(id) && arm_image_id_ok(id))
            .map(|_| ("a managed image", "arm_image_id"))
    };
    f.push(gallery_source(config, retired, legacy));
}

pub fn check(config: &ShipyardFile, plan: Option<&Plan>, online: bool, legacy: bool) -> Report {
    let mut f = Vec::new();
    if batch_form::is_batch_body(&config.value) {
        batch_form::check(config, plan, legacy, &mut f);
    } else {
        check_shipyard(config, plan, legacy, &mut f);
    }
    if !online {
        online_skipped(&mut f);
    }
    Report::new(config.path.display().to_string(), f)
}

/// A Batch Shipyard pool file: its schema, its image, its node agent and size.
fn check_shipyard(config: &ShipyardFile, plan: Option<&Plan>, legacy: bool, f: &mut Vec<Finding>) {
    let spec = &config.value["pool_specification"];
    let vm = &spec["vm_configuration"];
    check_schema(config, legacy, f);

    let platform = platform_image(spec);
    let custom = vm["custom_image"].is_object();
    f.push(match (platform, custom) {
        (None, true) => Finding::pass(
            "pool.image.exactly-one",
            "custom_image is set, platform_image is not",
        ),
        (Some(_), true) => Finding::fail(
            "pool.image.exactly-one",
            "both platform_image and custom_image are set",
        )
        .evidence(config.at("platform_image"))
        .hint("remove platform_image: a pool uses one image source"),
        (Some((image, key)), false) => {
            let name = |k: &str| image[k].as_str().unwrap_or("?").to_string();
            Finding::pass(
                "pool.image.exactly-one",
                format!(
                    "{} names the marketplace image {}/{}/{}: the pool uses no custom image, so \
                     only the checks that apply to any pool run",
                    if key == "publisher" {
                        "pool_specification (legacy flat form)"
                    } else {
                        "platform_image"
                    },
                    name("publisher"),
                    name("offer"),
                    name("sku")
                ),
            )
            .evidence(config.at(key))
        }
        (None, false) => Finding::fail(
            "pool.image.exactly-one",
            "neither platform_image nor custom_image is set",
        )
        .evidence(config.at("vm_configuration"))
        .hint("add the custom_image block from `imgforge pool snippet`"),
    });
    if custom {
        check_gallery_source(config, legacy, f);
        check_custom(config, plan, f);
    } else if let Some((image, key)) = platform {
        check_platform(config, image, key, f);
    }
    if let Some(plan) = plan
        && (custom || platform.is_some())
    {
        check_vm_size(
            config,
            "vm_size",
            spec["vm_size"].as_str().unwrap_or(""),
            plan,
            f,
        );
    }
}

/// The online rows, skipped: with --online the caller adds the answers of
/// `online::check` instead.
fn online_skipped(f: &mut Vec<Finding>) {
    for (id, what) in [
        (
            "pool.online.batch-auth",
            "Batch Shipyard signs in to Batch with Entra ID",
        ),
        (
            "pool.online.node-agent",
            "the Batch account supports the node agent",
        ),
        (
            "pool.online.arm-image",
            "the arm_image_id exists and is replicated to the Batch account's region",
        ),
        (
            "pool.online.blobs",
            "each image blob exists and is a page blob",
        ),
        (
            "pool.online.accounts",
            "each storage account is in the pool's region and subscription",
        ),
        (
            "pool.online.batch-account",
            "the Batch account allocates pools in the user's subscription",
        ),
    ] {
        f.push(Finding::skip(
            id,
            format!("{what}: not checked without --online"),
        ));
    }
}

/// A platform-image pool: its size, and its node agent's lifecycle where the
/// catalog knows the image.
fn check_platform(config: &ShipyardFile, image: &Value, key: &str, f: &mut Vec<Finding>) {
    let spec = &config.value["pool_specification"];
    f.push(match max_nodes(spec) {
        Ok(n) => Finding::pass("pool.size", format!("up to {n} nodes")),
        Err(e) => Finding::fail("pool.size", e)
            .evidence(config.at("vm_count"))
            .hint("write node counts as whole numbers"),
    });
    let text = |k: &str| image[k].as_str().unwrap_or("");
    let known = catalog::DISTROS.iter().find(|d| {
        [d.base_image].into_iter().chain(d.hpc_base_image).any(|b| {
            b.publisher.eq_ignore_ascii_case(text("publisher"))
                && b.offer.eq_ignore_ascii_case(text("offer"))
                && b.sku.eq_ignore_ascii_case(text("sku"))
        })
    });
    let Some(d) = known else {
        f.push(
            Finding::skip(
                "pool.node-agent.retired",
                "imgforge's catalog does not know this marketplace image's node agent",
            )
            .hint("`imgforge skus --online` lists the images and node agents your Batch account supports"),
        );
        return;
    };
    use crate::spec::catalog::AgentStatus;
    let agent = d.node_agent;
    f.push(match d.agent_status(&crate::spec::plan::today()) {
        AgentStatus::Retired { date, source } => Finding::warn(
            "pool.node-agent.retired",
            format!(
                "the image's node agent `{agent}` is retired: Azure Batch creates no new pool with it since {date} ({source}); an existing pool can still scale"
            ),
        )
        .evidence(config.at(key))
        .hint(format!("for a new pool use {}", catalog::current_linux(&crate::spec::plan::today()))),
        AgentStatus::Ends { date, source } => Finding::warn(
            "pool.node-agent.retired",
            format!("the image's node agent `{agent}` ends on {date} ({source}): no new pool after that"),
        )
        .evidence(config.at(key)),
        AgentStatus::Supported => Finding::pass(
            "pool.node-agent.retired",
            format!("the image's node agent `{agent}` is not retired for new pools"),
        ),
    });
}

fn check_custom(config: &ShipyardFile, plan: Option<&Plan>, f: &mut Vec<Finding>) {
    let spec = &config.value["pool_specification"];
    let vm = &spec["vm_configuration"];
    let ci = &vm["custom_image"];
    let node_agent = ci["node_agent"].as_str().unwrap_or("");
    let windows = node_agent.to_ascii_lowercase().contains("windows");
    let uris: Vec<String> = ci["image_uris"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| u.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let arm_image_id = ci["arm_image_id"].as_str();

    match (uris.is_empty(), arm_image_id) {
        (true, None) => f.push(
            Finding::fail(
                "pool.custom-image.source",
                "custom_image has neither image_uris nor arm_image_id",
            )
            .evidence(config.at("custom_image"))
            .hint("add image_uris (VHDs) or arm_image_id (managed or gallery image)"),
        ),
        (false, Some(_)) => f.push(
            Finding::fail(
                "pool.custom-image.source",
                "custom_image has both image_uris and arm_image_id",
            )
            .evidence(config.at("arm_image_id"))
            .hint("keep one: image_uris for VHDs, arm_image_id for a managed or gallery image"),
        ),
        _ => f.push(Finding::pass(
            "pool.custom-image.source",
            "one image source",
        )),
    }

    if !uris.is_empty() {
        check_uris(config, &uris, windows, spec, f);
    }
    if let Some(id) = arm_image_id {
        f.push(if arm_image_id_ok(id) {
            Finding::pass("pool.arm-image-id.format", "a gallery image version (or definition) id, or a managed image id").evidence(config.at(id))
        } else {
            Finding::fail("pool.arm-image-id.format", format!("`{id}` is not a managed image or gallery image version id"))
                .evidence(config.at(id))
                .hint("/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/galleries/G/images/DEF/versions/X.Y.Z (or …/images/DEF for its latest version)")
        });
    }

    check_node_agent(config, node_agent, "node_agent", plan, f);
}

/// The node agent a pool names: set, known, not retired, and (with the
/// manifest) the image's distro's. `key` is the key that names it in the file.
fn check_node_agent(
    config: &ShipyardFile,
    node_agent: &str,
    key: &str,
    plan: Option<&Plan>,
    f: &mut Vec<Finding>,
) {
    let known = known_node_agents();
    if node_agent.is_empty() {
        f.push(
            Finding::fail("pool.node-agent.present", format!("{key} is missing"))
                .evidence(config.at(key))
                .hint(format!(
                    "set the node agent SKU id of the image's distro (`imgforge skus`): {}",
                    known.join(", ")
                )),
        );
    } else {
        f.push(
            Finding::pass(
                "pool.node-agent.present",
                format!("{key} is `{node_agent}`"),
            )
            .evidence(config.at(key)),
        );
        f.push(
            if known.iter().any(|k| k.eq_ignore_ascii_case(node_agent)) {
                Finding::pass(
                    "pool.node-agent.known",
                    "a node agent SKU id imgforge knows",
                )
            } else {
                Finding::fail(
                    "pool.node-agent.known",
                    format!("`{node_agent}` is not a known node agent SKU id"),
                )
                .evidence(config.at(key))
                .hint(format!("known: {}", known.join(", ")))
            },
        );
        if let Some(d) = catalog::distro_by_agent(node_agent) {
            use crate::spec::catalog::AgentStatus;
            f.push(match d.agent_status(&crate::spec::plan::today()) {
                AgentStatus::Retired { date, source } => Finding::warn(
                    "pool.node-agent.retired",
                    format!(
                        "`{node_agent}` is retired: Azure Batch creates no new pool with it since {date} ({source}); an existing pool can still scale"
                    ),
                )
                .evidence(config.at(key))
                .hint(format!(
                    "for a new pool use an image of {}",
                    catalog::current_linux(&crate::spec::plan::today())
                )),
                AgentStatus::Ends { date, source } => Finding::warn(
                    "pool.node-agent.retired",
                    format!("`{node_agent}` ends on {date} ({source}): no new pool after that"),
                )
                .evidence(config.at(key)),
                AgentStatus::Supported => Finding::pass(
                    "pool.node-agent.retired",
                    "the node agent is not retired for new pools",
                ),
            });
        }
    }

    if let Some(plan) = plan {
        let want = plan.node_agent.as_str();
        f.push(if want.eq_ignore_ascii_case(node_agent) {
            Finding::pass(
                "pool.node-agent.matches-image",
                format!("matches the image's distro {}", plan.distro.key),
            )
        } else {
            Finding::fail(
                "pool.node-agent.matches-image",
                format!(
                    "{key} `{node_agent}` does not match the image's distro {} (`{want}`)",
                    plan.distro.key
                ),
            )
            .evidence(config.at(key))
            .hint(format!("set {key}: {want}"))
        });
    }
}

/// The manifest's hardware features against the pool's VM size.
fn check_vm_size(
    config: &ShipyardFile,
    key: &str,
    vm_size: &str,
    plan: &Plan,
    f: &mut Vec<Finding>,
) {
    {
        if plan.gpu.is_some() {
            f.push(if is_gpu_size(vm_size) {
                Finding::pass(
                    "pool.vm-size.gpu",
                    format!("{vm_size} is an N-series (GPU) size"),
                )
            } else {
                Finding::warn(
                    "pool.vm-size.gpu",
                    format!("the image has the GPU feature but vm_size `{vm_size}` has no GPU"),
                )
                .evidence(config.at(key))
                .hint("use an N-series size (NC, ND, NV) or an image without the GPU feature")
            });
        }
        if plan.rdma.is_some() {
            f.push(if is_rdma_size(vm_size) {
                Finding::pass(
                    "pool.vm-size.rdma",
                    format!("{vm_size} is an RDMA-capable size"),
                )
            } else {
                Finding::warn(
                    "pool.vm-size.rdma",
                    format!(
                        "the image has the RDMA feature but vm_size `{vm_size}` has no InfiniBand"
                    ),
                )
                .evidence(config.at(key))
                .hint("use an H-series size or an N-series size with 'r'")
            });
        }
    }
}

fn check_uris(
    config: &ShipyardFile,
    uris: &[String],
    windows: bool,
    spec: &Value,
    f: &mut Vec<Finding>,
) {
    let mut accounts: Vec<String> = Vec::new();
    let mut all_ok = [true; 5];
    // Each URI's line, from one pass over the file: `config.at` per URI would
    // rescan it each time (30,000 URIs took 101 s that way).
    let mut line_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, l) in config.text.lines().enumerate() {
        let item = l
            .trim()
            .trim_start_matches('-')
            .trim()
            .trim_end_matches(',')
            .trim_matches(|c| c == '"' || c == '\'');
        line_of.entry(item).or_insert(i + 1);
    }
    let at_of = |uri: &str| match line_of.get(uri) {
        Some(line) => format!("{}:{line}", config.path.display()),
        None => config.at(uri),
    };
    for uri in uris {
        let at = at_of(uri);
        // Read as Batch's HTTP client will read it.
        let parsed = url::Url::parse(uri).ok();
        let scheme = parsed.as_ref().map_or("", |u| u.scheme());
        if scheme != "https" {
            all_ok[0] = false;
            f.push(
                Finding::fail(
                    "pool.image-uris.https",
                    format!("`{uri}` is not an https URL"),
                )
                .evidence(at.clone())
                .hint("Batch reads custom images over https"),
            );
        }
        if parsed.as_ref().is_some_and(|u| u.query().is_some()) || uri.contains('?') {
            all_ok[1] = false;
            f.push(
                Finding::fail(
                    "pool.image-uris.no-sas",
                    format!(
                        "`{}` carries a query string (SAS)",
                        crate::util::redact::redact(uri)
                    ),
                )
                .evidence(at.clone())
                .hint("use the bare URL: Batch Shipyard forbids SAS of any kind in image_uris"),
            );
        }
        let host = parsed.as_ref().and_then(|u| u.host_str()).unwrap_or("");
        let path = parsed
            .as_ref()
            .map_or("", |u| u.path().trim_start_matches('/'));
        let account = host.split('.').next().unwrap_or("").to_string();
        let (container, blob) = path.split_once('/').unwrap_or((path, ""));
        if container.is_empty() || blob.is_empty() || blob.contains('/') {
            all_ok[2] = false;
            f.push(
                Finding::fail("pool.image-uris.container-root", format!("`{uri}` is not a blob at a container root"))
                    .evidence(at.clone())
                    .hint("Azure cannot create disks from a blob name with '/': copy it to CONTAINER/NAME.vhd (`imgforge replicate`)"),
            );
        }
        if !blob.to_ascii_lowercase().ends_with(".vhd") {
            all_ok[3] = false;
            f.push(
                Finding::fail(
                    "pool.image-uris.vhd",
                    format!("`{uri}` does not name a .vhd blob"),
                )
                .evidence(at.clone())
                .hint("image_uris point at page-blob VHDs"),
            );
        }
        if !crate::azure::storage::is_azure_blob_host(host, &account) {
            all_ok[4] = false;
            f.push(
                Finding::fail(
                    "pool.image-uris.host",
                    format!("`{host}` is not an Azure Storage blob endpoint"),
                )
                .evidence(at.clone())
                .hint(format!(
                    "Batch reads image blobs from ACCOUNT.blob.{} (or another Azure cloud's suffix); a look-alike host is not one, and imgforge sends it no credential",
                    crate::azure::storage::STORAGE_SUFFIXES[0]
                )),
            );
        }
        accounts.push(account);
    }
    let labels = [
        ("pool.image-uris.https", "every image URI is https"),
        ("pool.image-uris.no-sas", "no image URI carries a SAS"),
        (
            "pool.image-uris.container-root",
            "every image blob is at a container root",
        ),
        ("pool.image-uris.vhd", "every image URI names a .vhd"),
        (
            "pool.image-uris.host",
            "every image URI is on an Azure Storage blob endpoint",
        ),
    ];
    for (ok, (id, msg)) in all_ok.iter().zip(labels) {
        if *ok {
            f.push(Finding::pass(id, msg));
        }
    }

    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut dup = None;
    for a in &accounts {
        if !seen.insert(a.as_str()) && dup.is_none() {
            dup = Some(a.clone());
        }
    }
    f.push(match dup {
        None => Finding::pass(
            "pool.image-uris.distinct-accounts",
            format!(
                "{} copies on {} distinct storage accounts",
                uris.len(),
                seen.len()
            ),
        ),
        Some(a) => Finding::fail(
            "pool.image-uris.distinct-accounts",
            format!("storage account `{a}` holds more than one copy"),
        )
        .evidence(config.at(&format!("{a}.")))
        .hint("each copy must be on its own storage account: storage throttling is per account"),
    });

    let os = if windows { Os::Windows } else { Os::Linux };
    let total = match max_nodes(spec) {
        Ok(t) => t,
        Err(why) => {
            f.push(
                Finding::fail(
                    "pool.image-uris.count",
                    format!("cannot count the pool's nodes: {why}"),
                )
                .evidence(config.at("vm_count"))
                .hint("vm_count is a whole number, or dedicated and low_priority whole numbers"),
            );
            return;
        }
    };
    let needed = vhd_copies(total.min(u32::MAX as u64) as u32, os) as usize;
    f.push(if uris.len() >= needed {
        Finding::pass(
            "pool.image-uris.count",
            format!("{} cop{} serve up to {} nodes; the pool reaches {total}", uris.len(), if uris.len() == 1 { "y" } else { "ies" }, uris.len() as u32 * os.vms_per_vhd()),
        )
    } else {
        Finding::fail(
            "pool.image-uris.count",
            format!(
                "insufficient number of VHDs ({}) for up to {total} nodes: at least {needed} are required ({} {} VMs per VHD)",
                uris.len(),
                os.vms_per_vhd(),
                if windows { "Windows" } else { "Linux" }
            ),
        )
        .evidence(config.at("image_uris"))
        .hint("replicate to more storage accounts (`imgforge replicate`), or lower vm_count / autoscale maximum_vm_count")
    });
}

pub(crate) fn arm_image_id_ok(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    let is = |i: usize, want: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(want));
    let named = |i: usize| parts.get(i).is_some_and(|p| !p.is_empty());
    let base = parts.first() == Some(&"")
        && is(1, "subscriptions")
        && named(2)
        && is(3, "resourceGroups")
        && named(4)
        && is(5, "providers")
        && is(6, "Microsoft.Compute");
    let image = parts.len() == 9 && is(7, "images") && named(8);
    // A version, or the definition alone: Batch then takes its latest version.
    let gallery = (parts.len() == 13 || parts.len() == 11)
        && is(7, "galleries")
        && named(8)
        && is(9, "images")
        && named(10)
        && (parts.len() == 11 || (is(11, "versions") && named(12)));
    base && (image || gallery)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_image_ids() {
        assert!(arm_image_id_ok(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/img"
        ));
        assert!(arm_image_id_ok(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d/versions/1.0.0"
        ));
        // The definition alone: Batch uses its latest version.
        assert!(arm_image_id_ok(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d"
        ));
        assert!(!arm_image_id_ok(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d/versions"
        ));
        assert!(!arm_image_id_ok(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d"
        ));
        assert!(!arm_image_id_ok(
            "subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/img"
        ));
    }

    #[test]
    fn max_nodes_reads_both_vm_count_forms_and_autoscale() {
        let v: Value = serde_json::json!({"vm_count": {"dedicated": 30, "low_priority": 11}});
        assert_eq!(max_nodes(&v), Ok(41));
        let v: Value = serde_json::json!({"vm_count": 5, "autoscale": {"scenario": {"maximum_vm_count": {"dedicated": 60, "low_priority": 40}}}});
        assert_eq!(max_nodes(&v), Ok(100));
        for bad in [
            serde_json::json!({"vm_count": 100.0}),
            serde_json::json!({"vm_count": "100"}),
            serde_json::json!({"vm_count": -100}),
            serde_json::json!({"vm_count": {"dedicated": "ten"}}),
        ] {
            assert!(
                max_nodes(&bad).unwrap_err().contains("not a whole number"),
                "{bad}"
            );
        }
        let huge = serde_json::json!({"vm_count": {"dedicated": u64::MAX, "low_priority": 5}});
        assert_eq!(max_nodes(&huge), Ok(u64::MAX));
    }
}
