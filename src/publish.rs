//! Publishing a VHD the way Azure Batch takes custom images today: the
//! page blob becomes a managed image and/or an Azure Compute Gallery image
//! version, and the pool names it with `arm_image_id` (DOMAIN.md §6: pools on
//! unmanaged VHDs are refused; current Batch API versions name gallery
//! versions, older ones managed images).
//!
//! The plan half is pure (`PublishPlan::new`: where, which generation, how
//! many replicas per region); `publish` does the I/O: the staging account
//! is looked up in Resource Manager (its id and region), the VHD uploaded
//! there when it is a local file, then each resource is read first and
//! created only when absent, so reruns and `build --resume` pick up where a
//! failure or Ctrl-C left, and a resource that exists with other content is
//! refused instead of overwritten.
//!
//! Replicas: Azure's guidance for gallery images is one replica per 50
//! concurrent VM deployments (20 for the conservative reading of the
//! scale-set guidance), at most 100 per region; this is the modern form of
//! the requirements document's one-VHD-per-40-VMs rule. Per target region
//! `max(3, ceil(peak_nodes / K))`, capped at 100.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::azure::arm::{Arm, ArmError, normalize_region};
use crate::azure::compute::{self, GALLERY_API, IMAGES_API, Wait};
use crate::spec::manifest::{BootCheck, Builder, HyperVGeneration, RawManifest, Target};

pub const DEFAULT_NODES_PER_REPLICA: u32 = 50;
pub const MIN_REPLICAS: u32 = 3;
pub const MAX_REPLICAS: u32 = 100;
/// The variables `publish` signs in with (as Packer's azure-arm builder).
pub const ARM_VARIABLES: [&str; 4] = [
    "ARM_SUBSCRIPTION_ID",
    "ARM_TENANT_ID",
    "ARM_CLIENT_ID",
    "ARM_CLIENT_SECRET",
];

/// What a build publishes, decided from the manifest alone.
#[derive(Debug, Clone, Serialize)]
pub struct PublishPlan {
    pub target: Target,
    /// "imgforge" (a local build's VHD, over REST) or "packer" (azure-arm).
    pub by: &'static str,
    pub resource_group: String,
    pub location: String,
    pub os_type: &'static str,
    pub hyper_v_generation: HyperVGeneration,
    /// Why this generation (what the boot check proved, or the manifest).
    pub generation_why: String,
    /// Where the VHD is uploaded first (local builds).
    pub staging_account: Option<String>,
    pub staging_container: String,
    pub managed_image: Option<String>,
    pub gallery: Option<GalleryPlan>,
    /// `[replicate] region`: the Batch account's region.
    pub batch_region: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GalleryPlan {
    pub name: String,
    pub resource_group: String,
    pub definition: String,
    pub version: String,
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub nodes_per_replica: u32,
    pub regions: Vec<RegionReplicas>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegionReplicas {
    pub region: String,
    pub replicas: u32,
    pub why: String,
}

/// `max(3, ceil(nodes / k))`, at most 100, and the reason in words.
pub fn replicas(peak_nodes: u32, k: u32) -> (u32, String) {
    let k = k.max(1);
    let needed = peak_nodes.div_ceil(k);
    let n = needed.clamp(MIN_REPLICAS, MAX_REPLICAS);
    let why = if needed > MAX_REPLICAS {
        format!(
            "{peak_nodes} nodes / {k} per replica = {needed}, capped at Azure's {MAX_REPLICAS} per region"
        )
    } else if needed < MIN_REPLICAS {
        format!(
            "{peak_nodes} nodes / {k} per replica = {needed}, raised to the minimum of {MIN_REPLICAS}"
        )
    } else {
        format!("{peak_nodes} nodes / {k} per replica")
    };
    (n, why)
}

impl PublishPlan {
    /// `None` for target = "vhd".
    pub fn new(raw: &RawManifest, os_type: &'static str, peak_nodes: u32) -> Option<PublishPlan> {
        let b = &raw.build;
        if b.target == Target::Vhd {
            return None;
        }
        let location = b.location.clone().unwrap_or_default();
        let boot = b.local.as_ref().map(|l| l.boot_check).unwrap_or_default();
        let (hyper_v_generation, generation_why) = match (b.builder, b.hyper_v_generation) {
            (_, Some(g)) => (g, "build.hyper_v_generation".to_string()),
            (Builder::Local, None) => match boot {
                BootCheck::Bios => (
                    HyperVGeneration::V1,
                    "the boot check boots BIOS only (Generation 1)".to_string(),
                ),
                BootCheck::Off => (
                    HyperVGeneration::V2,
                    "default (the image has BIOS and UEFI boot; the boot check is off)".to_string(),
                ),
                _ => (
                    HyperVGeneration::V2,
                    "the image boots UEFI (boot-checked), as Generation 2 VM sizes need"
                        .to_string(),
                ),
            },
            (Builder::AzureArm, None) => (
                HyperVGeneration::V1,
                "Packer's azure-arm builder keeps the marketplace image's generation".to_string(),
            ),
        };
        let gallery = (b.target == Target::Gallery)
            .then_some(b.gallery.as_ref())
            .flatten()
            .map(|g| {
                let k = g.nodes_per_replica.unwrap_or(DEFAULT_NODES_PER_REPLICA);
                let (n, why) = replicas(peak_nodes, k);
                let mut regions: Vec<String> = vec![location.clone()];
                for r in &g.replication_regions {
                    if !regions
                        .iter()
                        .any(|x| normalize_region(x) == normalize_region(r))
                    {
                        regions.push(r.clone());
                    }
                }
                GalleryPlan {
                    name: g.name.clone(),
                    resource_group: g
                        .resource_group
                        .clone()
                        .or(b.resource_group.clone())
                        .unwrap_or_default(),
                    definition: g.image_definition.clone(),
                    version: g.version.clone(),
                    publisher: g.publisher.clone().unwrap_or_else(|| "imgforge".into()),
                    offer: g.offer.clone().unwrap_or_else(|| raw.image.name.clone()),
                    sku: g.sku.clone().unwrap_or_else(|| raw.image.distro.clone()),
                    nodes_per_replica: k,
                    regions: regions
                        .into_iter()
                        .map(|region| RegionReplicas {
                            region,
                            replicas: n,
                            why: why.clone(),
                        })
                        .collect(),
                }
            });
        Some(PublishPlan {
            target: b.target,
            by: if b.builder == Builder::Local {
                "imgforge"
            } else {
                "packer"
            },
            resource_group: b.resource_group.clone().unwrap_or_default(),
            location,
            os_type,
            hyper_v_generation,
            generation_why,
            staging_account: (b.builder == Builder::Local)
                .then(|| b.storage_account.clone())
                .flatten(),
            staging_container: b
                .capture_container
                .clone()
                .unwrap_or_else(|| "images".into()),
            managed_image: b.managed_image_name.clone(),
            gallery,
            batch_region: raw.replicate.region.clone(),
        })
    }

    /// The lines `imgforge plan` shows.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "publish    by {}: Hyper-V generation {} ({}), in resource group `{}` at {}\n",
            self.by,
            self.hyper_v_generation.as_str(),
            self.generation_why,
            self.resource_group,
            self.location
        ));
        if let Some(a) = &self.staging_account {
            s.push_str(&format!(
                "           the VHD is uploaded to {a}/{} first\n",
                self.staging_container
            ));
        }
        if let Some(m) = &self.managed_image {
            s.push_str(&format!("           managed image `{m}`\n"));
        }
        if let Some(g) = &self.gallery {
            s.push_str(&format!(
                "           gallery `{}` image `{}` version {} ({} nodes per replica)\n",
                g.name, g.definition, g.version, g.nodes_per_replica
            ));
            s.push_str(&format!(
                "           {:<18} {:>8}  WHY\n",
                "REGION", "REPLICAS"
            ));
            for r in &g.regions {
                let batch = self
                    .batch_region
                    .as_ref()
                    .is_some_and(|b| normalize_region(b) == normalize_region(&r.region));
                s.push_str(&format!(
                    "           {:<18} {:>8}  {}{}\n",
                    r.region,
                    r.replicas,
                    r.why,
                    if batch {
                        " (the Batch account's region)"
                    } else {
                        ""
                    }
                ));
            }
        }
        s
    }

    /// The id the pool names: the gallery version's, else the managed image's.
    pub fn arm_image_id(&self, subscription: &str) -> Option<String> {
        if let Some(g) = &self.gallery {
            let gid = compute::gallery_id(subscription, &g.resource_group, &g.name);
            return Some(compute::version_id(
                &compute::definition_id(&gid, &g.definition),
                &g.version,
            ));
        }
        self.managed_image
            .as_ref()
            .map(|m| compute::image_id(subscription, &self.resource_group, m))
    }
}

/// What was published, for build.json and `--json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PublishRecord {
    pub subscription: String,
    /// The page blob the image was made from (no SAS).
    pub blob_url: String,
    pub hyper_v_generation: String,
    pub managed_image_id: Option<String>,
    pub gallery_image_version_id: Option<String>,
    /// What the pool names.
    pub arm_image_id: String,
    /// Per target region: replicas asked for and the replication state.
    #[serde(default)]
    pub regions: Vec<RegionState>,
    /// Resources that already existed with this content and were kept.
    #[serde(default)]
    pub reused: Vec<String>,
    pub requests: u32,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegionState {
    pub region: String,
    pub replicas: u32,
    pub state: String,
    pub progress: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "publish: {} not set: the image is published with a service principal\n  hint: export {} (the variables Packer's azure-arm builder reads; the principal needs Contributor on the resource group)",
        .0.join(", "),
        .0.iter().map(|v| format!("{v}=…")).collect::<Vec<_>>().join(" ")
    )]
    Credentials(Vec<&'static str>),
    #[error("publish: {0}")]
    Arm(Box<ArmError>),
    #[error("publish: {0}")]
    Replicate(#[from] crate::replicate::ReplicateError),
    #[error("publish: {0}")]
    Storage(#[from] crate::azure::storage::StorageError),
    #[error("publish: {message}\n  hint: {hint}")]
    Refused { message: String, hint: String },
    #[error("publish: interrupted; rerun the same command to go on")]
    Cancelled,
}

impl From<ArmError> for PublishError {
    fn from(e: ArmError) -> PublishError {
        PublishError::Arm(Box::new(e))
    }
}

impl PublishError {
    pub fn exit_code(&self) -> i32 {
        use crate::cli::error::exit;
        match self {
            PublishError::Credentials(_) | PublishError::Refused { .. } => exit::BAD_INPUT,
            PublishError::Cancelled => exit::CANCELLED,
            PublishError::Arm(e) if matches!(**e, ArmError::Cancelled { .. }) => exit::CANCELLED,
            PublishError::Replicate(e) => e.exit_code(),
            _ => exit::FAILED,
        }
    }
}

fn refused(message: impl Into<String>, hint: impl Into<String>) -> PublishError {
    PublishError::Refused {
        message: message.into(),
        hint: hint.into(),
    }
}

/// Every `ARM_*` variable publishing needs that is unset or empty.
pub fn missing_variables() -> Vec<&'static str> {
    ARM_VARIABLES
        .iter()
        .copied()
        .filter(|v| std::env::var(v).map_or(true, |x| x.is_empty()))
        .collect()
}

/// What is published.
pub enum Source {
    /// A local fixed VHD: uploaded to the staging account as `blob_name`.
    File { path: PathBuf, blob_name: String },
    /// A page blob already in the subscription.
    Blob(crate::azure::storage::BlobRef),
}

pub struct Options {
    pub blob_endpoint: String,
    pub parallel: usize,
    pub show_progress: bool,
    pub cancel: Arc<AtomicBool>,
    /// For each long-running operation.
    pub timeout: Duration,
}

pub async fn publish(
    plan: &PublishPlan,
    source: Source,
    opts: &Options,
) -> Result<PublishRecord, PublishError> {
    let clock = Instant::now();
    let missing = missing_variables();
    if !missing.is_empty() {
        return Err(PublishError::Credentials(missing));
    }
    let subscription = std::env::var("ARM_SUBSCRIPTION_ID").unwrap_or_default();
    let principal = crate::azure::entra::ServicePrincipal::from_env()
        .ok_or_else(|| PublishError::Credentials(missing_variables()))?;
    let mut arm = Arm::connect(&crate::azure::arm::endpoint_from_env(), &principal).await?;

    // The blob's account: its id (the gallery wants it) and its region
    // (an image is made only from a blob in its own region).
    let account_name = match &source {
        Source::File { .. } => plan.staging_account.clone().ok_or_else(|| {
            refused(
                "no staging storage account to upload the VHD to",
                "set build.storage_account",
            )
        })?,
        Source::Blob(b) => b.account.clone(),
    };
    let accounts = arm.storage_accounts(&subscription).await?;
    let account = accounts
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(&account_name))
        .ok_or_else(|| {
            refused(
                format!(
                    "storage account `{account_name}` is not among the {} account(s) subscription {subscription} shows this service principal",
                    accounts.len()
                ),
                "create it in the image's region, or give the principal Reader on it, or fix build.storage_account",
            )
        })?
        .clone();
    if normalize_region(&account.location) != normalize_region(&plan.location) {
        return Err(refused(
            format!(
                "storage account `{}` is in {}, the image in {}: Azure makes images only from a blob in the image's own region",
                account.name, account.location, plan.location
            ),
            format!(
                "use a storage account in {} (build.storage_account), or set build.location = \"{}\"",
                plan.location, account.location
            ),
        ));
    }
    let account_id = compute::storage_account_id(
        &account.subscription,
        &account.resource_group,
        &account.name,
    );

    let blob = match source {
        Source::Blob(b) => b,
        Source::File { path, blob_name } => {
            use crate::azure::storage::{BlobRef, Storage};
            use crate::replicate::{self, ReplicateError};
            let local = replicate::Source::open_file(&path)?;
            let dest = BlobRef::at(
                &opts.blob_endpoint,
                &account.name,
                &plan.staging_container,
                &blob_name,
            );
            let storage = Arc::new(Storage::new(std::slice::from_ref(&account.name)).await?);
            crate::util::term::status(
                "Uploading",
                &format!("{} to {}", path.display(), dest.url()),
            );
            replicate::replicate(
                storage,
                Arc::new(local),
                vec![dest.clone()],
                replicate::Options {
                    parallel: opts.parallel,
                    max_requests: opts.parallel,
                    show_progress: opts.show_progress,
                    server_copy: false,
                    // The staging copy is read back whole: it is the only copy.
                    verify: crate::replicate::VerifyMode::Readback,
                    cancel: opts.cancel.clone(),
                },
            )
            .await
            .map_err(|e| match e {
                ReplicateError::Cancelled => PublishError::Cancelled,
                other => other.into(),
            })?;
            dest
        }
    };
    let blob_url = blob.url();

    let mut progress = |line: &str| crate::util::term::status("Publishing", line);
    let mut wait = Wait {
        timeout: opts.timeout,
        cancel: &opts.cancel,
        progress: &mut progress,
        every: Duration::from_secs(30),
    };
    let mut record = PublishRecord {
        subscription: subscription.clone(),
        blob_url: blob_url.clone(),
        hyper_v_generation: plan.hyper_v_generation.as_str().to_string(),
        ..Default::default()
    };

    if let Some(name) = &plan.managed_image {
        let id = compute::image_id(&subscription, &plan.resource_group, name);
        let body = json!({
            "location": plan.location,
            "properties": {
                "hyperVGeneration": plan.hyper_v_generation.as_str(),
                "storageProfile": {
                    "osDisk": {
                        "osType": plan.os_type,
                        "osState": "Generalized",
                        "blobUri": blob_url,
                        "storageAccountType": "Standard_LRS",
                    }
                }
            }
        });
        ensure(
            &mut arm,
            "Create Managed Image",
            &id,
            IMAGES_API,
            &body,
            |existing| {
                let disk = &existing["properties"]["storageProfile"]["osDisk"];
                let same_blob = disk["blobUri"].as_str() == Some(blob_url.as_str());
                let same_gen = existing["properties"]["hyperVGeneration"]
                    .as_str()
                    .is_none_or(|g| g == plan.hyper_v_generation.as_str());
                (same_blob && same_gen).then_some(()).ok_or_else(|| {
                    refused(
                        format!(
                            "managed image `{name}` already exists from {} ({})",
                            disk["blobUri"].as_str().unwrap_or("another source"),
                            existing["properties"]["hyperVGeneration"]
                                .as_str()
                                .unwrap_or("?")
                        ),
                        "choose another build.managed_image_name, or delete the old image (`az image delete`)",
                    )
                })
            },
            &mut wait,
            &mut record.reused,
        )
        .await?;
        record.managed_image_id = Some(id.clone());
        record.arm_image_id = id;
    }

    if let Some(g) = &plan.gallery {
        let gid = compute::gallery_id(&subscription, &g.resource_group, &g.name);
        if arm
            .get_resource("Get Gallery", &gid, GALLERY_API, None)
            .await?
            .is_none()
        {
            return Err(refused(
                format!(
                    "gallery `{}` does not exist in resource group `{}`",
                    g.name, g.resource_group
                ),
                format!(
                    "create it: az sig create -g {} -r {} -l {} (imgforge creates image definitions and versions, not galleries)",
                    g.resource_group, g.name, plan.location
                ),
            ));
        }
        let did = compute::definition_id(&gid, &g.definition);
        let definition = json!({
            "location": plan.location,
            "properties": {
                "osType": plan.os_type,
                "osState": "Generalized",
                "hyperVGeneration": plan.hyper_v_generation.as_str(),
                "identifier": {"publisher": g.publisher, "offer": g.offer, "sku": g.sku},
            }
        });
        ensure(
            &mut arm,
            "Create Gallery Image Definition",
            &did,
            GALLERY_API,
            &definition,
            |existing| check_definition(existing, plan, &g.definition),
            &mut wait,
            &mut record.reused,
        )
        .await?;
        let vid = compute::version_id(&did, &g.version);
        let version = json!({
            "location": plan.location,
            "properties": {
                "publishingProfile": {
                    "targetRegions": g.regions.iter().map(|r| json!({
                        "name": r.region,
                        "regionalReplicaCount": r.replicas,
                        "storageAccountType": "Standard_LRS",
                    })).collect::<Vec<_>>(),
                },
                "storageProfile": {
                    "osDiskImage": {
                        "hostCaching": "ReadOnly",
                        "source": {"uri": blob_url, "storageAccountId": account_id},
                    }
                }
            }
        });
        ensure(
            &mut arm,
            "Create Gallery Image Version",
            &vid,
            GALLERY_API,
            &version,
            |existing| {
                let src = &existing["properties"]["storageProfile"]["osDiskImage"]["source"];
                let uri = src["uri"].as_str();
                if uri == Some(blob_url.as_str()) {
                    Ok(())
                } else {
                    Err(refused(
                        format!(
                            "gallery image version {} of `{}` already exists from {}",
                            g.version,
                            g.definition,
                            uri.or(src["id"].as_str()).unwrap_or("another source")
                        ),
                        "a published version never changes: raise build.gallery.version (e.g. from the build date)",
                    ))
                }
            },
            &mut wait,
            &mut record.reused,
        )
        .await?;
        let status = arm
            .get_resource(
                "Get Gallery Image Version",
                &vid,
                GALLERY_API,
                Some("ReplicationStatus"),
            )
            .await?
            .unwrap_or(Value::Null);
        let summary = compute::replication_summary(&status);
        record.regions = g
            .regions
            .iter()
            .map(|r| {
                let (state, progress) = summary
                    .iter()
                    .find(|(region, _, _)| normalize_region(region) == normalize_region(&r.region))
                    .map(|(_, s, p)| (s.clone(), *p))
                    .unwrap_or(("Unknown".into(), 0));
                RegionState {
                    region: r.region.clone(),
                    replicas: r.replicas,
                    state,
                    progress,
                }
            })
            .collect();
        record.gallery_image_version_id = Some(vid.clone());
        record.arm_image_id = vid;
    }
    record.requests = arm.requests;
    record.seconds = clock.elapsed().as_secs_f64();
    Ok(record)
}

/// A gallery image definition that exists must fit the image: generalized,
/// the same OS and generation, and not Trusted Launch (Batch refuses those).
fn check_definition(existing: &Value, plan: &PublishPlan, name: &str) -> Result<(), PublishError> {
    let p = &existing["properties"];
    let fix = "use another build.gallery.image_definition, or set build.hyper_v_generation to the definition's";
    if p["osState"].as_str().is_some_and(|s| s != "Generalized") {
        return Err(refused(
            format!(
                "image definition `{name}` is {}, the image is generalized",
                p["osState"].as_str().unwrap_or("?")
            ),
            "use an image definition with osState Generalized",
        ));
    }
    if p["osType"]
        .as_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case(plan.os_type))
    {
        return Err(refused(
            format!(
                "image definition `{name}` is for {}, the image is {}",
                p["osType"].as_str().unwrap_or("?"),
                plan.os_type
            ),
            fix,
        ));
    }
    let generation = p["hyperVGeneration"].as_str().unwrap_or("V1");
    if generation != plan.hyper_v_generation.as_str() {
        return Err(refused(
            format!(
                "image definition `{name}` is Hyper-V generation {generation}, the image is published as {}",
                plan.hyper_v_generation.as_str()
            ),
            fix,
        ));
    }
    if crate::azure::compute::security_type(existing).is_some() {
        return Err(refused(
            format!("image definition `{name}` has security type Trusted Launch / Confidential VM"),
            "Azure Batch pools cannot use Trusted Launch image definitions: use a definition with the Standard security type",
        ));
    }
    Ok(())
}

/// Create `id` unless it exists; an existing resource must pass `same`
/// (this content) and is then kept; one still being created is waited for.
#[allow(clippy::too_many_arguments)]
async fn ensure(
    arm: &mut Arm,
    op: &'static str,
    id: &str,
    api: &str,
    body: &Value,
    same: impl Fn(&Value) -> Result<(), PublishError>,
    wait: &mut Wait<'_>,
    reused: &mut Vec<String>,
) -> Result<Value, PublishError> {
    if let Some(existing) = arm.get_resource(op, id, api, None).await? {
        same(&existing)?;
        let state = compute::provisioning_state(&existing);
        if state == "Succeeded" {
            crate::util::term::status("Kept", &format!("{id} (exists with this content)"));
            reused.push(id.to_string());
            return Ok(existing);
        }
        // Failed or still in progress: the same PUT again is idempotent.
    }
    Ok(arm.put_and_wait(op, id, api, body, wait).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_follow_the_pool_size() {
        // 1 and 60 nodes: the minimum of 3; 2,000: 40; 10,000: capped at 100.
        assert_eq!(replicas(1, 50).0, 3);
        assert_eq!(replicas(60, 50).0, 3);
        assert_eq!(replicas(0, 50).0, 3);
        assert_eq!(replicas(2000, 50).0, 40);
        assert_eq!(replicas(2001, 50).0, 41);
        assert_eq!(
            replicas(10_000, 50),
            (
                100,
                "10000 nodes / 50 per replica = 200, capped at Azure's 100 per region".to_string()
            )
        );
        assert_eq!(replicas(2000, 20).0, 100);
        assert_eq!(replicas(1000, 20).0, 50);
        assert!(replicas(60, 50).1.contains("raised to the minimum of 3"));
    }
}
