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

use crate::azure::arm::{Arm, ArmError};
use crate::azure::compute::{self, GALLERY_API, IMAGES_API, Wait};
use crate::spec::publish::PublishPlan;
use crate::util::Category;
use crate::util::text::normalize_region;

/// The variables `publish` signs in with (as Packer's azure-arm builder).
pub const ARM_VARIABLES: [&str; 4] = [
    "ARM_SUBSCRIPTION_ID",
    "ARM_TENANT_ID",
    "ARM_CLIENT_ID",
    "ARM_CLIENT_SECRET",
];

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
        "publish: {} not set: the image is published with a service principal",
        .0.join(", ")
    )]
    Credentials(Vec<&'static str>),
    #[error("publish: {0}")]
    Arm(Box<ArmError>),
    #[error("publish: {0}")]
    Replicate(#[from] crate::replicate::ReplicateError),
    #[error("publish: {0}")]
    Storage(#[from] crate::azure::storage::StorageError),
    #[error("publish: {message}")]
    Refused { message: String, hint: String },
    #[error("publish: interrupted; rerun the same command to go on")]
    Cancelled,
    /// The version exists, but Azure could not replicate it to a region:
    /// pools there cannot use it.
    #[error("publish: gallery image version {version} failed to replicate to {}", .regions.join(", "))]
    ReplicationFailed {
        version: String,
        regions: Vec<String>,
    },
}

impl crate::util::Hint for PublishError {
    fn hint(&self) -> Option<String> {
        match self {
            PublishError::Credentials(vars) => Some(format!(
                "export {} (the variables Packer's azure-arm builder reads; the principal needs Contributor on the resource group)",
                vars.iter()
                    .map(|v| format!("{v}=…"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
            PublishError::Arm(e) => e.hint(),
            PublishError::Replicate(e) => e.hint(),
            PublishError::Storage(e) => e.hint(),
            PublishError::Refused { hint, .. } => Some(hint.clone()),
            PublishError::Cancelled => None,
            PublishError::ReplicationFailed { version, .. } => Some(format!(
                "`az sig image-version show --ids {version} --expand ReplicationStatus` shows Azure's reason; delete the version and publish again (a version never changes)"
            )),
        }
    }
}

impl From<ArmError> for PublishError {
    fn from(e: ArmError) -> PublishError {
        PublishError::Arm(Box::new(e))
    }
}

impl PublishError {
    /// What kind of failure this is; the CLI maps it to an exit code.
    pub fn category(&self) -> Category {
        match self {
            PublishError::Credentials(_) | PublishError::Refused { .. } => Category::Input,
            PublishError::Cancelled => Category::Cancelled,
            PublishError::Arm(e) if matches!(**e, ArmError::Cancelled { .. }) => {
                Category::Cancelled
            }
            PublishError::Replicate(e) => e.category(),
            _ => Category::Failed,
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

    let (account, account_id) = source_account(&mut arm, plan, &source, &subscription).await?;
    let blob = source_blob(source, &account.name, plan, opts).await?;
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
        managed_image(&mut arm, plan, name, &subscription, &mut wait, &mut record).await?;
    }
    if let Some(g) = &plan.gallery {
        gallery_version(
            &mut arm,
            plan,
            g,
            &subscription,
            &account_id,
            &mut wait,
            &mut record,
        )
        .await?;
    }
    record.requests = arm.requests;
    record.seconds = clock.elapsed().as_secs_f64();
    Ok(record)
}

/// What `promote` did to a gallery image version, kept in `build.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Promotion {
    pub version_id: String,
    /// When, UTC (RFC 3339).
    pub at: String,
    /// The service principal that asked (its client id).
    pub by: String,
    /// The gates that passed first, in words.
    pub checks: Vec<String>,
    /// False when the version was already in `latest`: nothing was changed.
    pub changed: bool,
    pub requests: u32,
}

/// Staged promotion: the version, published with `exclude_from_latest`, is
/// put into its definition's `latest` (a pool naming the definition without
/// a version then gets it). The caller has checked the gates; `checks` says
/// which. A version already in `latest` is left alone.
pub async fn promote(
    version_id: &str,
    checks: Vec<String>,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<Promotion, PublishError> {
    let missing = missing_variables();
    if !missing.is_empty() {
        return Err(PublishError::Credentials(missing));
    }
    if !version_id.contains("/providers/Microsoft.Compute/galleries/")
        || !version_id.contains("/versions/")
    {
        return Err(refused(
            format!("`{version_id}` is not a gallery image version id"),
            "give the build directory, or /subscriptions/…/galleries/G/images/D/versions/V",
        ));
    }
    let principal = crate::azure::entra::ServicePrincipal::from_env()
        .ok_or_else(|| PublishError::Credentials(missing_variables()))?;
    let mut arm = Arm::connect(&crate::azure::arm::endpoint_from_env(), &principal).await?;
    let Some(version) = arm
        .get_resource("promote", version_id, GALLERY_API, None)
        .await?
    else {
        return Err(refused(
            format!("no gallery image version {version_id}"),
            "check the id (`az sig image-version list`), or publish it first",
        ));
    };
    let excluded = |v: &Value| {
        v["properties"]["publishingProfile"]["excludeFromLatest"]
            .as_bool()
            .unwrap_or(false)
    };
    let mut promotion = Promotion {
        version_id: version_id.to_string(),
        at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        by: principal.client_id.clone(),
        checks,
        changed: false,
        requests: 0,
    };
    if excluded(&version) {
        let mut progress = |line: &str| crate::util::term::status("Promoting", line);
        let mut wait = Wait {
            timeout,
            cancel,
            progress: &mut progress,
            every: Duration::from_secs(30),
        };
        let body = json!({"properties": {"publishingProfile": {"excludeFromLatest": false}}});
        let after = arm
            .patch_and_wait("promote", version_id, GALLERY_API, &body, &mut wait)
            .await?;
        if excluded(&after) {
            return Err(ArmError::Protocol {
                op: "promote",
                message: "the update succeeded, but the version is still excluded from latest"
                    .into(),
            }
            .into());
        }
        promotion.changed = true;
    }
    promotion.requests = arm.requests;
    Ok(promotion)
}

/// The storage account the image is made from (the staging account for a
/// file, the blob's own otherwise), found in Resource Manager and in the
/// image's region; with its resource id (the gallery wants it).
async fn source_account(
    arm: &mut Arm,
    plan: &PublishPlan,
    source: &Source,
    subscription: &str,
) -> Result<(crate::azure::arm::StorageAccount, String), PublishError> {
    // The blob's account: its id (the gallery wants it) and its region
    // (an image is made only from a blob in its own region).
    let account_name = match source {
        Source::File { .. } => plan.staging_account.clone().ok_or_else(|| {
            refused(
                "no staging storage account to upload the VHD to",
                "set build.storage_account",
            )
        })?,
        Source::Blob(b) => b.account.clone(),
    };
    let accounts = arm.storage_accounts(subscription).await?;
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

    Ok((account, account_id))
}

/// The blob to publish: the source blob, or the file uploaded to the staging
/// container (read back whole: it is the only copy).
async fn source_blob(
    source: Source,
    account: &str,
    plan: &PublishPlan,
    opts: &Options,
) -> Result<crate::azure::storage::BlobRef, PublishError> {
    Ok(match source {
        Source::Blob(b) => b,
        Source::File { path, blob_name } => {
            use crate::azure::storage::{BlobRef, Storage};
            use crate::replicate::{self, ReplicateError};
            let local = replicate::Source::open_file(&path)?;
            let dest = BlobRef::at(
                &opts.blob_endpoint,
                account,
                &plan.staging_container,
                &blob_name,
            );
            let storage = Arc::new(Storage::new(&[account.to_string()]).await?);
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
    })
}

/// The managed image from the blob (kept when it exists from the same blob).
async fn managed_image(
    arm: &mut Arm,
    plan: &PublishPlan,
    name: &str,
    subscription: &str,
    wait: &mut Wait<'_>,
    record: &mut PublishRecord,
) -> Result<(), PublishError> {
    let blob_url = record.blob_url.clone();
    let id = compute::image_id(subscription, &plan.resource_group, name);
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
        arm,
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
        wait,
        &mut record.reused,
    )
    .await?;
    record.managed_image_id = Some(id.clone());
    record.arm_image_id = id;
    Ok(())
}

/// The gallery image definition (made when missing, checked when present)
/// and the version from the blob, with its replication per region.
async fn gallery_version(
    arm: &mut Arm,
    plan: &PublishPlan,
    g: &crate::spec::publish::GalleryPlan,
    subscription: &str,
    account_id: &str,
    wait: &mut Wait<'_>,
    record: &mut PublishRecord,
) -> Result<(), PublishError> {
    let blob_url = record.blob_url.clone();
    let did = ensure_definition(arm, plan, g, subscription, wait, &mut record.reused).await?;
    let vid = compute::version_id(&did, &g.version);
    let version = json!({
        "location": plan.location,
        "properties": {
            "publishingProfile": publishing_profile(g),
            "storageProfile": {
                "osDiskImage": {
                    "hostCaching": "ReadOnly",
                    "source": {"uri": blob_url, "storageAccountId": account_id},
                }
            }
        }
    });
    ensure(
        arm,
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
        wait,
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
    // A region whose replication failed has no image for its pools: the
    // publish failed there, whatever the version's own state.
    let failed: Vec<String> = record
        .regions
        .iter()
        .filter(|r| r.state.eq_ignore_ascii_case("Failed"))
        .map(|r| r.region.clone())
        .collect();
    record.gallery_image_version_id = Some(vid.clone());
    record.arm_image_id = vid.clone();
    if !failed.is_empty() {
        return Err(PublishError::ReplicationFailed {
            version: vid,
            regions: failed,
        });
    }
    Ok(())
}

/// The gallery must exist (imgforge creates definitions and versions, not
/// galleries); the image definition is created when absent — with the
/// image's generation, security type and purchase plan — and checked
/// against the image when present. Returns the definition's id.
async fn ensure_definition(
    arm: &mut Arm,
    plan: &PublishPlan,
    g: &crate::spec::publish::GalleryPlan,
    subscription: &str,
    wait: &mut Wait<'_>,
    reused: &mut Vec<String>,
) -> Result<String, PublishError> {
    let gid = compute::gallery_id(subscription, &g.resource_group, &g.name);
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
    let mut definition = json!({
        "location": plan.location,
        "properties": {
            "osType": plan.os_type,
            "osState": "Generalized",
            "hyperVGeneration": plan.hyper_v_generation.as_str(),
            "identifier": {"publisher": g.publisher, "offer": g.offer, "sku": g.sku},
            // Said even when standard: definitions made with this API
            // version are TrustedLaunchSupported unless told otherwise.
            "features": [{
                "name": "SecurityType",
                "value": plan.security_type.feature_value().unwrap_or("Standard"),
            }],
        }
    });
    if let Some(p) = &plan.purchase_plan {
        definition["properties"]["purchasePlan"] =
            json!({"name": p.name, "publisher": p.publisher, "product": p.product});
    }
    ensure(
        arm,
        "Create Gallery Image Definition",
        &did,
        GALLERY_API,
        &definition,
        |existing| check_definition(existing, plan, &g.definition),
        wait,
        reused,
    )
    .await?;
    Ok(did)
}

/// Before an azure-arm build that publishes to a gallery: Packer writes the
/// version into an existing definition and learns that it is missing, or
/// does not fit the image, only when the build's minutes are spent. Signs in
/// as `publish` does, then makes sure of the gallery and the definition.
/// Returns what was done, in words.
pub async fn prepare_gallery(plan: &PublishPlan, opts: &Options) -> Result<String, PublishError> {
    let Some(g) = &plan.gallery else {
        return Ok("no gallery to prepare".into());
    };
    let missing = missing_variables();
    if !missing.is_empty() {
        return Err(PublishError::Credentials(missing));
    }
    let subscription = std::env::var("ARM_SUBSCRIPTION_ID").unwrap_or_default();
    let principal = crate::azure::entra::ServicePrincipal::from_env()
        .ok_or_else(|| PublishError::Credentials(missing_variables()))?;
    let mut arm = Arm::connect(&crate::azure::arm::endpoint_from_env(), &principal).await?;
    let mut progress = |line: &str| crate::util::term::status("Preparing", line);
    let mut wait = Wait {
        timeout: opts.timeout,
        cancel: &opts.cancel,
        progress: &mut progress,
        every: Duration::from_secs(30),
    };
    let mut reused = Vec::new();
    let did = ensure_definition(&mut arm, plan, g, &subscription, &mut wait, &mut reused).await?;
    let plan_words = plan
        .purchase_plan
        .map(|p| format!(", purchase plan {}/{}/{}", p.publisher, p.product, p.name))
        .unwrap_or_default();
    Ok(format!(
        "{} {did} (Hyper-V {}, {}{plan_words}); Packer publishes version {} into it",
        if reused.is_empty() { "created" } else { "kept" },
        plan.hyper_v_generation.as_str(),
        plan.security_type.as_str(),
        g.version
    ))
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
    let have_plan = &p["purchasePlan"];
    let have_words = |k: &str| have_plan[k].as_str().unwrap_or("").to_string();
    let same_plan = match plan.purchase_plan {
        None => have_plan.is_null(),
        Some(want) => {
            have_words("name").eq_ignore_ascii_case(want.name)
                && have_words("publisher").eq_ignore_ascii_case(want.publisher)
                && have_words("product").eq_ignore_ascii_case(want.product)
        }
    };
    if !same_plan {
        let have_desc = if have_plan.is_null() {
            "no purchase plan".to_string()
        } else {
            format!(
                "purchase plan {}/{}/{}",
                have_words("publisher"),
                have_words("product"),
                have_words("name")
            )
        };
        let want_desc = plan.purchase_plan.map_or(
            "carries none (a VHD built on this machine, or a base without a plan)".to_string(),
            |w| {
                format!(
                    "carries {}/{}/{} from its marketplace base",
                    w.publisher, w.product, w.name
                )
            },
        );
        return Err(refused(
            format!(
                "image definition `{name}` has {have_desc}; the image {want_desc}: a gallery definition must repeat its image's purchase plan exactly (Batch: batch-sig-images)"
            ),
            "a definition's purchase plan cannot change: use another build.gallery.image_definition (imgforge creates it with the image's plan)",
        ));
    }
    use crate::azure::compute::{RunsOn, runs_on, security_type};
    use crate::spec::manifest::SecurityType;
    let have = security_type(existing);
    let have_name = have.as_deref().unwrap_or("Standard");
    match (runs_on(have.as_deref()), plan.security_type) {
        (RunsOn::Standard, SecurityType::Standard | SecurityType::TrustedLaunchSupported)
        | (RunsOn::TrustedLaunchOnly, SecurityType::TrustedLaunch) => Ok(()),
        (RunsOn::Standard, SecurityType::TrustedLaunch) => Err(refused(
            format!(
                "image definition `{name}` has security type {have_name}, but build.gallery.security_type is \"trusted_launch\""
            ),
            "a definition's security type cannot change: use another build.gallery.image_definition, or remove security_type (a TrustedLaunchSupported definition runs Trusted Launch pools too)",
        )),
        (RunsOn::TrustedLaunchOnly, _) => Err(refused(
            format!(
                "image definition `{name}` has security type {have_name}: its versions run only on Trusted Launch VMs, and this image is published as {}",
                plan.security_type.as_str()
            ),
            "set build.gallery.security_type = \"trusted_launch\" (the pool outputs then ask Batch for Trusted Launch nodes: securityProfile), or use a definition with security type TrustedLaunchSupported or Standard",
        )),
        (RunsOn::ConfidentialOnly, _) => Err(refused(
            format!(
                "image definition `{name}` has security type {have_name}: its versions run only on confidential VMs, which need a confidential OS disk imgforge does not build"
            ),
            "use a definition with security type TrustedLaunchSupported or Standard (another build.gallery.image_definition)",
        )),
    }
}

/// Where and how the version is replicated, and its lifecycle labels.
fn publishing_profile(g: &crate::spec::publish::GalleryPlan) -> Value {
    let mut profile = json!({
        "targetRegions": g.regions.iter().map(|r| json!({
            "name": r.region,
            "regionalReplicaCount": r.replicas,
            "storageAccountType": r.storage_account_type,
        })).collect::<Vec<_>>(),
        "excludeFromLatest": g.exclude_from_latest,
    });
    if let Some(d) = &g.end_of_life_date {
        profile["endOfLifeDate"] = json!(format!("{d}T00:00:00Z"));
    }
    profile
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
