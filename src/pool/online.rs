//! `pool check --online`: what only Azure can answer about a pool configuration.
//! Each image blob is asked of its storage service; each storage account of
//! Resource Manager, against the region and subscription of the pool's Batch
//! account (Batch reads custom-image VHDs only from there); the Batch account
//! itself, which must allocate pools in the user's subscription for VHD images.

use super::credentials::ShipyardCredentials;
use super::{ShipyardFile, image_uris};
use crate::azure::arm::{Arm, ArmError, Misplaced};
use crate::azure::entra::ServicePrincipal;
use crate::azure::storage::{BlobRef, Storage};
use crate::report::Finding;
use crate::util::text::normalize_region;

const BLOBS: &str = "pool.online.blobs";
const ACCOUNTS: &str = "pool.online.accounts";
const BATCH_ACCOUNT: &str = "pool.online.batch-account";
const BATCH_AUTH: &str = "pool.online.batch-auth";
const NODE_AGENT: &str = "pool.online.node-agent";
const ARM_IMAGE: &str = "pool.online.arm-image";

/// Where the pool's Batch account is, and how to reach Azure.
#[derive(Default)]
pub struct Online<'a> {
    /// Batch Shipyard's credentials file, when given.
    pub credentials: Option<&'a ShipyardCredentials>,
    /// `--region`, over the credentials file's.
    pub region: Option<String>,
    /// `--subscription`, over the credentials file's and `ARM_SUBSCRIPTION_ID`.
    pub subscription: Option<String>,
    /// `--account-url` (or `IMGFORGE_BATCH_URL`), over the credentials file's.
    pub account_url: Option<String>,
}

/// A setting and where it came from, for messages.
struct Sourced {
    value: String,
    from: String,
}

impl Sourced {
    fn from(value: Option<&String>, from: impl FnOnce() -> String) -> Option<Sourced> {
        value.map(|v| Sourced {
            value: v.clone(),
            from: from(),
        })
    }
}

impl Online<'_> {
    /// `--region`, else the credentials file's Batch account URL.
    fn region(&self) -> Option<Sourced> {
        Sourced::from(self.region.as_ref(), || "--region".into()).or_else(|| {
            let c = self.credentials?;
            Sourced::from(c.region.as_ref(), || {
                format!(
                    "{} (batch.account_service_url)",
                    c.file.at("account_service_url")
                )
            })
        })
    }

    /// `--subscription`, else the credentials file's, else `ARM_SUBSCRIPTION_ID`.
    fn subscription(&self) -> Option<Sourced> {
        let env = std::env::var("ARM_SUBSCRIPTION_ID")
            .ok()
            .filter(|v| !v.is_empty());
        Sourced::from(self.subscription.as_ref(), || "--subscription".into())
            .or_else(|| {
                let c = self.credentials?;
                Sourced::from(c.subscription.as_ref(), || {
                    format!(
                        "{} (management.subscription_id)",
                        c.file.at("subscription_id")
                    )
                })
            })
            .or_else(|| Sourced::from(env.as_ref(), || "ARM_SUBSCRIPTION_ID".into()))
    }
}

/// What only Azure can answer: how Batch Shipyard will sign in, whether the
/// Batch account supports the node agent, whether an `arm_image_id` exists
/// and is replicated to the account's region, and for VHD pools the blobs,
/// their accounts and the Batch account's allocation mode.
pub async fn check(config: &ShipyardFile, online: &Online<'_>) -> Vec<Finding> {
    let custom = &config.value["pool_specification"]["vm_configuration"]["custom_image"];
    // Batch's own pool body names the image and the agent elsewhere.
    let batch = super::batch_form::is_batch_body(&config.value);
    let (arm_image_id, node_agent) = if batch {
        (
            super::batch_form::image_id(&config.value),
            super::batch_form::node_agent(&config.value),
        )
    } else {
        (
            custom["arm_image_id"].as_str(),
            custom["node_agent"].as_str().unwrap_or(""),
        )
    };
    if !(custom.is_object() || batch && arm_image_id.is_some()) {
        return [
            BATCH_AUTH,
            NODE_AGENT,
            ARM_IMAGE,
            BLOBS,
            ACCOUNTS,
            BATCH_ACCOUNT,
        ]
        .into_iter()
        .map(|id| Finding::skip(id, "the pool uses no custom image"))
        .collect();
    }
    let mut arm = ArmSession {
        online,
        connection: None,
    };
    let mut out = vec![
        check_batch_auth(online),
        check_node_agent(config, node_agent, online).await,
    ];
    out.push(match arm_image_id {
        Some(id) => check_arm_image(config, id, online, &mut arm).await,
        None => Finding::skip(ARM_IMAGE, "the pool names no arm_image_id"),
    });
    out.extend(check_vhds(config, online, &mut arm).await);
    out
}

/// `pool.online.blobs`, `pool.online.accounts`, `pool.online.batch-account`.
async fn check_vhds(
    config: &ShipyardFile,
    online: &Online<'_>,
    arm: &mut ArmSession<'_>,
) -> Vec<Finding> {
    let uris = image_uris(config);
    if uris.is_empty() {
        return [BLOBS, ACCOUNTS, BATCH_ACCOUNT]
            .into_iter()
            .map(|id| {
                Finding::skip(
                    id,
                    "the pool names no image_uris (these checks are for VHD images)",
                )
            })
            .collect();
    }
    let mut blobs = Vec::new();
    for u in &uris {
        match BlobRef::parse(u) {
            Ok(b) => blobs.push(b),
            Err(e) => {
                let bad = Finding::fail(BLOBS, e.to_string()).evidence(config.at(u));
                return vec![
                    bad,
                    Finding::skip(ACCOUNTS, "an image URI is not a blob URL"),
                    Finding::skip(BATCH_ACCOUNT, "an image URI is not a blob URL"),
                ];
            }
        }
    }
    let mut accounts: Vec<String> = Vec::new();
    for b in &blobs {
        if !accounts.contains(&b.account) {
            accounts.push(b.account.clone());
        }
    }
    vec![
        check_blobs(config, &blobs, &accounts, online).await,
        check_accounts(config, &blobs, &accounts, online, arm).await,
        check_batch_account(online, arm).await,
    ]
}

/// Batch Shipyard signs in to Batch with `batch.account_key` whenever it is
/// set, and then refuses custom-image pools ("cannot allocate a pool with a
/// custom image without AAD credentials", Batch Shipyard issue 197), as Batch
/// itself does ("SharedKey is not allowed when external resources of type
/// Compute are linked").
fn check_batch_auth(online: &Online<'_>) -> Finding {
    let Some(c) = online.credentials else {
        return Finding::skip(
            BATCH_AUTH,
            "how Batch Shipyard signs in to Batch is not known (no --credentials)",
        );
    };
    let fix = "remove credentials.batch.account_key and give credentials.batch.aad (or a \
               global aad) a service principal: directory_id, application_id, auth_key \
               (Batch Shipyard issue 197)";
    if c.batch_shared_key {
        return Finding::fail(
            BATCH_AUTH,
            "credentials.batch.account_key is set: Batch Shipyard then signs in to Batch with \
             the shared key, and Batch creates no custom-image pool with it",
        )
        .evidence(c.file.at("account_key"))
        .hint(fix);
    }
    match (&c.batch_principal, &c.batch_unusable) {
        (Some(_), _) => Finding::pass(
            BATCH_AUTH,
            "Batch Shipyard signs in to Batch with Entra ID (a service principal), as \
             custom-image pools need",
        ),
        (None, Some(_)) => Finding::pass(
            BATCH_AUTH,
            "Batch Shipyard signs in to Batch with Entra ID (batch.aad, not a service \
             principal: imgforge cannot use it itself)",
        ),
        (None, None) => Finding::fail(
            BATCH_AUTH,
            "credentials.batch has neither account_key nor aad: Batch Shipyard cannot sign in \
             to Batch",
        )
        .evidence(c.file.path.display().to_string())
        .hint(fix),
    }
}

/// The node agent against the Batch account's own supported images.
async fn check_node_agent(config: &ShipyardFile, agent: &str, online: &Online<'_>) -> Finding {
    if agent.is_empty() {
        return Finding::skip(NODE_AGENT, "custom_image.node_agent is missing");
    }
    let access = match batch_access(online.credentials, online.account_url.as_deref()) {
        Ok(a) => a,
        Err((message, hint)) => {
            return Finding::skip(
                NODE_AGENT,
                format!("the Batch account's supported node agents: {message}"),
            )
            .hint(hint);
        }
    };
    let images = match crate::azure::batch::supported_images(
        &access.url,
        &access.principal,
        &access.resource,
    )
    .await
    {
        Ok(i) => i,
        Err(e) => {
            return Unavailable::from(e)
                .finding(NODE_AGENT, "the Batch account's supported images")
                .evidence(access.url_from);
        }
    };
    let agents = crate::azure::batch::agents(&images, &crate::spec::plan::today());
    let evidence = config.at("node_agent");
    let Some(a) = crate::azure::batch::find(&agents, agent) else {
        let same_os: Vec<&str> = agents
            .iter()
            .filter(|a| a.status != "retired")
            .filter(|a| {
                a.os_type
                    .eq_ignore_ascii_case(if agent.contains("windows") {
                        "windows"
                    } else {
                        "linux"
                    })
            })
            .map(|a| a.node_agent.as_str())
            .collect();
        return Finding::fail(
            NODE_AGENT,
            format!(
                "the Batch account {} does not list node agent `{agent}`: Batch creates no \
                 pool with it there",
                access.url
            ),
        )
        .evidence(evidence)
        .hint(format!(
            "build the image from a distro whose node agent the account lists ({}); \
             `imgforge skus --online` shows the whole list",
            if same_os.is_empty() {
                "none of this OS".to_string()
            } else {
                same_os.join(", ")
            }
        ));
    };
    match (a.status, &a.end_of_life) {
        ("retired", Some(date)) => Finding::fail(
            NODE_AGENT,
            format!(
                "the Batch account lists `{agent}` with end of life {date}: no new pool with \
                 it (an existing pool can still scale)"
            ),
        )
        .evidence(evidence)
        .hint(format!(
            "rebuild on a supported distro ({})",
            crate::spec::catalog::current_linux(&crate::spec::plan::today())
        )),
        ("ends", Some(date)) => Finding::warn(
            NODE_AGENT,
            format!(
                "the Batch account supports `{agent}` until {date} ({} image(s)); no new pool \
                 after that",
                a.images
            ),
        )
        .evidence(evidence),
        _ => Finding::pass(
            NODE_AGENT,
            format!(
                "the Batch account {} supports `{agent}` ({} image(s), from {})",
                access.url, a.images, access.url_from
            ),
        ),
    }
}

/// A managed image or gallery image version: it exists, it finished, and
/// Batch can read it in its own region.
async fn check_arm_image(
    config: &ShipyardFile,
    id: &str,
    online: &Online<'_>,
    arm: &mut ArmSession<'_>,
) -> Finding {
    let evidence = config.at("arm_image_id");
    let gallery = super::is_gallery_id(id);
    if !super::arm_image_id_ok(id) {
        return Finding::skip(ARM_IMAGE, "arm_image_id is not a resource id (see above)");
    }
    // Batch reads the image as the account: in the account's subscription.
    let image_sub = id.split('/').nth(2).unwrap_or("");
    if let Some(sub) = online.subscription()
        && !image_sub.eq_ignore_ascii_case(&sub.value)
    {
        return Finding::fail(
            ARM_IMAGE,
            format!(
                "the image is in subscription {image_sub}, the Batch account in {} (from {})",
                sub.value, sub.from
            ),
        )
        .evidence(evidence)
        .hint(
            "publish the image into a gallery in the Batch account's subscription (Batch \
             creates pools from gallery images of its own subscription)",
        );
    }
    let definition_only = gallery && id.trim_end_matches('/').split('/').count() == 11;
    let region = online.region();
    let (op, api, expand) = if definition_only {
        (
            "Get Gallery Image",
            crate::azure::compute::GALLERY_API,
            None,
        )
    } else if gallery {
        (
            "Get Gallery Image Version",
            crate::azure::compute::GALLERY_API,
            Some("ReplicationStatus"),
        )
    } else {
        ("Get Image", crate::azure::compute::IMAGES_API, None)
    };
    let got = match arm.get().await {
        Ok(arm) => arm
            .get_resource(op, id, api, expand)
            .await
            .map_err(Unavailable::from),
        Err(e) => Err(e),
    };
    let resource = match got {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Finding::fail(ARM_IMAGE, format!("{id} does not exist"))
                .evidence(evidence)
                .hint(
                    "publish the image (`imgforge publish` or a build with target \
                     \"managed_image\"/\"gallery\"), or fix arm_image_id",
                );
        }
        Err(e) => return e.finding(ARM_IMAGE, "the image").evidence(evidence),
    };
    let state = crate::azure::compute::provisioning_state(&resource);
    if state != "Succeeded" {
        return Finding::fail(
            ARM_IMAGE,
            format!("{id} is in provisioning state {state}, not Succeeded"),
        )
        .evidence(evidence)
        .hint("wait for it to finish, or publish it again (`imgforge publish` resumes)");
    }
    if definition_only {
        use crate::azure::compute::{RunsOn, runs_on, security_type};
        let t = security_type(&resource);
        return if runs_on(t.as_deref()) == RunsOn::Standard {
            Finding::warn(
                ARM_IMAGE,
                format!(
                    "the image definition {id} exists ({}): Batch takes its latest version not \
                     excluded from latest, which this check does not pick for you",
                    t.as_deref().unwrap_or("Standard")
                ),
            )
            .evidence(evidence)
            .hint("name the version (…/versions/X.Y.Z) to have its replication to the Batch account's region checked")
        } else {
            Finding::fail(
                ARM_IMAGE,
                format!(
                    "the image definition {id} has security type {}: a Batch Shipyard pool.yaml \
                     asks for standard VMs",
                    t.as_deref().unwrap_or("?")
                ),
            )
            .evidence(evidence)
            .hint("publish into a definition with security type TrustedLaunchSupported or Standard")
        };
    }
    let Some(region) = region else {
        return Finding::warn(
            ARM_IMAGE,
            format!("{id} exists (Succeeded); the Batch account's region is not known"),
        )
        .hint("pass --credentials (batch.account_service_url) or --region to check replication");
    };
    let want = normalize_region(&region.value);
    if !gallery {
        let location = resource["location"].as_str().unwrap_or("");
        return if normalize_region(location) == want {
            Finding::pass(
                ARM_IMAGE,
                format!(
                    "managed image {id} exists (Succeeded) in {location}, the Batch account's region"
                ),
            )
        } else {
            Finding::fail(
                ARM_IMAGE,
                format!(
                    "managed image {id} is in {location}, the Batch account in {} (from {})",
                    region.value, region.from
                ),
            )
            .evidence(evidence)
            .hint(
                "Batch reads a managed image only in its own region: publish a gallery image \
                 version replicated to the account's region (build.target = \"gallery\")",
            )
        };
    }
    // A gallery version: the definition must not be Trusted Launch, and the
    // version must be replicated to the Batch account's region.
    let definition_id = id.rsplitn(3, '/').nth(2).unwrap_or(id).to_string();
    let definition = match arm.get().await {
        Ok(arm) => arm
            .get_resource(
                "Get Gallery Image",
                &definition_id,
                crate::azure::compute::GALLERY_API,
                None,
            )
            .await
            .map_err(Unavailable::from),
        Err(e) => Err(e),
    };
    // A definition with a purchase plan: the pool's nodes are made under it.
    let mut plan_note = String::new();
    match definition {
        Ok(Some(d)) => {
            let p = &d["properties"]["purchasePlan"];
            if let (Some(publisher), Some(product), Some(name)) = (
                p["publisher"].as_str(),
                p["product"].as_str(),
                p["name"].as_str(),
            ) {
                plan_note = format!(
                    "; its definition carries purchase plan {publisher}/{product}/{name}: the \
                     Batch account's subscription must have accepted its terms once (az vm \
                     image terms accept --publisher {publisher} --offer {product} --plan {name})"
                );
            }
            use crate::azure::compute::{RunsOn, runs_on, security_type};
            let t = security_type(&d);
            // Batch's own body can ask for Trusted Launch nodes.
            let asks_trusted_launch = super::batch_form::trusted_launch(&config.value);
            let runs = runs_on(t.as_deref());
            if runs != RunsOn::Standard
                && !(runs == RunsOn::TrustedLaunchOnly && asks_trusted_launch)
            {
                return Finding::fail(
                    ARM_IMAGE,
                    format!(
                        "the image definition {definition_id} has security type {}: its versions \
                         run only on {} VMs, and this pool asks for standard ones (a Batch \
                         Shipyard pool.yaml has no security profile; Batch's body needs \
                         securityProfile.securityType trustedLaunch)",
                        t.as_deref().unwrap_or("?"),
                        if runs_on(t.as_deref()) == RunsOn::ConfidentialOnly {
                            "confidential"
                        } else {
                            "Trusted Launch"
                        }
                    ),
                )
                .evidence(evidence)
                .hint(
                    "publish into a definition with security type TrustedLaunchSupported (runs \
                     standard and Trusted Launch pools) or Standard; or make the pool with Batch's \
                     own API and securityProfile (`imgforge pool snippet --format batch-json`)",
                );
            }
        }
        Ok(None) => {
            return Finding::fail(
                ARM_IMAGE,
                format!("the image definition {definition_id} does not exist"),
            )
            .evidence(evidence);
        }
        Err(e) => {
            return e
                .finding(ARM_IMAGE, "the image definition")
                .evidence(evidence);
        }
    }
    let targets: Vec<(String, u64)> = resource["properties"]["publishingProfile"]["targetRegions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["name"].as_str().unwrap_or("").to_string(),
                        t["regionalReplicaCount"].as_u64().unwrap_or(1),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let Some((name, replicas)) = targets.iter().find(|(n, _)| normalize_region(n) == want) else {
        let names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
        return Finding::fail(
            ARM_IMAGE,
            format!(
                "{id} is replicated to {}, not to {} (the Batch account's region, from {})",
                names.join(", "),
                region.value,
                region.from
            ),
        )
        .evidence(evidence)
        .hint(format!(
            "add {} to the version's target regions ([replicate] region, or \
             build.gallery.replication_regions) and publish again",
            region.value
        ));
    };
    let status = crate::azure::compute::replication_summary(&resource);
    match status.iter().find(|(r, _, _)| normalize_region(r) == want) {
        Some((_, state, _)) if state == "Completed" => Finding::pass(
            ARM_IMAGE,
            format!(
                "gallery image version {id} (Succeeded) is replicated to {name}: {replicas} \
                 replica(s), Completed{plan_note}"
            ),
        ),
        Some((_, state, progress)) => Finding::fail(
            ARM_IMAGE,
            format!("replication of {id} to {name} is {state} ({progress} %)"),
        )
        .evidence(evidence)
        .hint("wait for replication to complete; Batch fails pool nodes until it has"),
        None => Finding::warn(
            ARM_IMAGE,
            format!(
                "{id} targets {name} ({replicas} replica(s)); Resource Manager reported no \
                 replication status for it"
            ),
        ),
    }
}

/// Why Resource Manager cannot be asked, as a failed finding's message and hint.
#[derive(Clone)]
struct Unavailable {
    message: String,
    hint: Option<String>,
}

/// A service error's hint goes where findings keep hints, not into the message.
fn unavailable(e: &(impl std::fmt::Display + crate::util::Hint)) -> Unavailable {
    Unavailable {
        message: e.to_string(),
        hint: e.hint(),
    }
}

impl From<ArmError> for Unavailable {
    fn from(e: ArmError) -> Unavailable {
        unavailable(&e)
    }
}

impl From<crate::azure::batch::BatchError> for Unavailable {
    fn from(e: crate::azure::batch::BatchError) -> Unavailable {
        unavailable(&e)
    }
}

impl Unavailable {
    fn finding(self, id: &str, what: &str) -> Finding {
        let f = Finding::fail(id, format!("{what}: {}", self.message));
        match self.hint {
            Some(h) => f.hint(h),
            None => f,
        }
    }
}

/// One sign-in to Resource Manager, made when a check first needs it.
struct ArmSession<'a> {
    online: &'a Online<'a>,
    connection: Option<Result<Arm, Unavailable>>,
}

impl ArmSession<'_> {
    async fn get(&mut self) -> Result<&mut Arm, Unavailable> {
        if self.connection.is_none() {
            self.connection = Some(connect(self.online).await);
        }
        match self.connection.as_mut().expect("connected above") {
            Ok(arm) => Ok(arm),
            Err(e) => Err(e.clone()),
        }
    }
}

/// The credentials file's `management.aad` service principal, else the
/// `ARM_*` one; the file's Resource Manager endpoint, else the public cloud's.
async fn connect(online: &Online<'_>) -> Result<Arm, Unavailable> {
    let env_principal = ServicePrincipal::from_env();
    let Some(principal) = online
        .credentials
        .and_then(|c| c.management.as_ref())
        .or(env_principal.as_ref())
    else {
        let why = online
            .credentials
            .and_then(|c| c.management_unusable.as_deref().map(|w| (c, w)))
            .map(|(c, w)| format!(" ({} {w})", c.file.path.display()))
            .unwrap_or_default();
        return Err(Unavailable {
            message: format!("no credentials for Azure Resource Manager{why}"),
            hint: Some(
                "set ARM_TENANT_ID, ARM_CLIENT_ID and ARM_CLIENT_SECRET, or give \
                 credentials.management.aad directory_id, application_id and auth_key"
                    .into(),
            ),
        });
    };
    let endpoint = online
        .credentials
        .and_then(|c| c.management_endpoint.clone())
        .unwrap_or_else(crate::azure::arm::endpoint_from_env);
    Ok(Arm::connect(&endpoint, principal).await?)
}

async fn check_blobs(
    config: &ShipyardFile,
    blobs: &[BlobRef],
    accounts: &[String],
    online: &Online<'_>,
) -> Finding {
    let keys = online
        .credentials
        .map(|c| c.storage_keys.clone())
        .unwrap_or_default();
    let storage = match Storage::with_keys(accounts, &keys).await {
        Ok(s) => s,
        Err(e) => {
            let u = unavailable(&e);
            let f = Finding::fail(BLOBS, u.message);
            return match u.hint {
                Some(h) => f.hint(h),
                None => f,
            };
        }
    };
    let mut problems = Vec::new();
    for b in blobs {
        match storage.properties(b).await {
            Ok(Some(p)) if p.blob_type == "PageBlob" => {}
            Ok(Some(p)) => {
                problems.push(format!("{} is a {}, not a page blob", b.url(), p.blob_type))
            }
            Ok(None) => problems.push(format!("{} does not exist", b.url())),
            // Not an answer about the blob: the question did not get through.
            // Replicating again would not help, so the hint says what would.
            Err(e) => {
                return Finding::fail(
                    BLOBS,
                    format!("could not ask the storage service about {}: {e}", b.url()),
                )
                .evidence(config.at(&b.url()))
                .hint(
                    "nothing is known about the blobs: check the network (proxy, firewall, DNS) \
                     and the storage credentials, then run the check again",
                );
            }
        }
    }
    if problems.is_empty() {
        Finding::pass(
            BLOBS,
            format!("{} image blob(s) exist as page blobs", blobs.len()),
        )
    } else {
        Finding::fail(BLOBS, problems.join("; "))
            .evidence(config.at("image_uris"))
            .hint("replicate the image again (`imgforge replicate`) or fix the URLs")
    }
}

async fn check_accounts(
    config: &ShipyardFile,
    blobs: &[BlobRef],
    accounts: &[String],
    online: &Online<'_>,
    arm: &mut ArmSession<'_>,
) -> Finding {
    let what = "each storage account is in the pool's region and subscription";
    let settings_hint = "pass Batch Shipyard's credentials file (--credentials credentials.yaml: \
                         batch.account_service_url, management.subscription_id), or --region and \
                         --subscription";
    let (Some(region), Some(subscription)) = (online.region(), online.subscription()) else {
        let missing = match (online.region(), online.subscription()) {
            (None, None) => "the pool's region and subscription are",
            (None, _) => "the pool's region is",
            _ => "the pool's subscription is",
        };
        return Finding::skip(ACCOUNTS, format!("{what}: {missing} not known")).hint(settings_hint);
    };
    let listed = match arm.get().await {
        Ok(arm) => arm
            .storage_accounts(&subscription.value)
            .await
            .map_err(Unavailable::from),
        Err(e) => Err(e),
    };
    let listed = match listed {
        Ok(l) => l,
        Err(e) => {
            return e
                .finding(ACCOUNTS, what)
                .evidence(subscription.from.clone());
        }
    };

    let misplaced =
        crate::azure::arm::misplaced(&listed, &subscription.value, accounts, &region.value);
    let problems: Vec<String> = misplaced
        .iter()
        .map(|m| match m {
            Misplaced::NotInSubscription { .. } => m.to_string(),
            Misplaced::OtherRegion { .. } => {
                format!("{m}, the pool's Batch account in {}", region.value)
            }
        })
        .collect();
    let evidence: Vec<String> = misplaced
        .iter()
        .filter_map(|m| blobs.iter().find(|b| b.account == m.account()))
        .map(|b| config.at(&b.url()))
        .collect();
    if problems.is_empty() {
        Finding::pass(
            ACCOUNTS,
            format!(
                "{} storage account(s) in subscription {} and region {} (region from {}, \
                 subscription from {})",
                accounts.len(),
                subscription.value,
                region.value,
                region.from,
                subscription.from
            ),
        )
    } else {
        Finding::fail(ACCOUNTS, problems.join("; "))
            .evidence(evidence.join(", "))
            .hint(
                "Batch reads custom-image VHDs only from storage accounts in its own \
                 subscription and region: replicate into accounts there (`imgforge replicate \
                 --to ACCOUNT …`), or, if the account is in the subscription, give the service \
                 principal Reader on it",
            )
    }
}

/// Batch reads VHD images (`image_uris`) only into pools of a Batch account
/// that allocates them in the user's subscription.
async fn check_batch_account(online: &Online<'_>, arm: &mut ArmSession<'_>) -> Finding {
    let what = "the Batch account allocates pools in the user's subscription";
    let c = online.credentials;
    let (Some(name), Some(group), Some(subscription)) = (
        c.and_then(|c| c.batch_account.clone()),
        c.and_then(|c| c.batch_resource_group.clone()),
        online.subscription(),
    ) else {
        return Finding::skip(
            BATCH_ACCOUNT,
            format!("{what}: the Batch account is not known"),
        )
        .hint(
            "pass Batch Shipyard's credentials file with batch.account_service_url and \
             batch.resource_group (--credentials)",
        );
    };
    let evidence = c
        .map(|c| format!("{} (batch.resource_group)", c.file.at("resource_group")))
        .unwrap_or_default();
    let account = match arm.get().await {
        Ok(arm) => arm
            .batch_account(&subscription.value, &group, &name)
            .await
            .map_err(Unavailable::from),
        Err(e) => Err(e),
    };
    let account = match account {
        Ok(a) => a,
        Err(e) => return e.finding(BATCH_ACCOUNT, what).evidence(evidence),
    };
    if let Some(region) = online.region()
        && normalize_region(&region.value) != normalize_region(&account.location)
    {
        return Finding::fail(
            BATCH_ACCOUNT,
            format!(
                "Batch account `{}` is in {}, not {} (from {})",
                account.name, account.location, region.value, region.from
            ),
        )
        .hint("check --region; the storage accounts must be in the Batch account's region");
    }
    if account.pool_allocation_mode != "UserSubscription" {
        return Finding::fail(
            BATCH_ACCOUNT,
            format!(
                "Batch account `{}` has pool allocation mode {}; pools from VHD image_uris need \
                 a User Subscription Batch account",
                account.name, account.pool_allocation_mode
            ),
        )
        .evidence(evidence)
        .hint(
            "use a Batch account created with pool allocation mode \"User subscription\" (it \
             cannot be changed later), or build a managed image or gallery image version \
             (build.target = \"managed_image\" or \"gallery\") and use arm_image_id",
        );
    }
    Finding::pass(
        BATCH_ACCOUNT,
        format!(
            "Batch account `{}` in {} allocates pools in the user's subscription \
             (UserSubscription)",
            account.name, account.location
        ),
    )
}

/// The Batch account to ask and how to sign in to it: `--account-url` (or
/// `IMGFORGE_BATCH_URL`), else the credentials file's
/// `batch.account_service_url`; the file's `batch.aad` (or global `aad`)
/// service principal, else the `ARM_*` one. `Err((message, hint))` says what
/// is missing.
pub fn batch_access(
    credentials: Option<&ShipyardCredentials>,
    account_url: Option<&str>,
) -> Result<crate::azure::batch::Access, (String, String)> {
    let from_file = credentials.and_then(|c| c.batch_url.as_ref().map(|u| (c, u)));
    let (url, url_from) = match (account_url.filter(|u| !u.trim().is_empty()), from_file) {
        (Some(u), _) => (
            u.to_string(),
            "--account-url or IMGFORGE_BATCH_URL".to_string(),
        ),
        (None, Some((c, u))) => (
            u.clone(),
            format!(
                "{} (batch.account_service_url)",
                c.file.at("account_service_url")
            ),
        ),
        (None, None) => {
            return Err((
                "the Batch account is not known".into(),
                "pass Batch Shipyard's credentials file (--credentials credentials.yaml, with \
                 batch.account_service_url) or --account-url https://ACCOUNT.REGION.batch.azure.com"
                    .into(),
            ));
        }
    };
    let file_principal = credentials.and_then(|c| c.batch_principal.clone());
    let env_principal = ServicePrincipal::from_env();
    let Some(principal) = file_principal.or(env_principal) else {
        let why = credentials
            .and_then(|c| c.batch_unusable.as_deref().map(|w| (c, w)))
            .map(|(c, w)| format!(" ({} {w})", c.file.path.display()))
            .unwrap_or_default();
        return Err((
            format!("no Entra ID credentials for Azure Batch{why}"),
            "give credentials.batch.aad directory_id, application_id and auth_key (Batch \
             Shipyard's form), or set ARM_TENANT_ID, ARM_CLIENT_ID and ARM_CLIENT_SECRET; \
             a Batch account key is not enough: custom-image pools need Entra ID"
                .into(),
        ));
    };
    Ok(crate::azure::batch::Access {
        url,
        url_from,
        principal,
        resource: credentials
            .map(|c| c.batch_resource.clone())
            .unwrap_or_else(|| crate::azure::batch::PUBLIC_RESOURCE.to_string()),
    })
}
