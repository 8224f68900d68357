//! `pool check --online`: what only Azure can answer about a pool configuration.
//! Each image blob is asked of its storage service; each storage account of
//! Resource Manager, against the region and subscription of the pool's Batch
//! account (Batch reads custom-image VHDs only from there); the Batch account
//! itself, which must allocate pools in the user's subscription for VHD images.

use super::credentials::ShipyardCredentials;
use super::{PoolConfig, image_uris};
use crate::arm::{Arm, ArmError, Misplaced, normalize_region};
use crate::entra::ServicePrincipal;
use crate::report::Finding;
use crate::storage::{BlobRef, Storage};

const BLOBS: &str = "pool.online.blobs";
const ACCOUNTS: &str = "pool.online.accounts";
const BATCH_ACCOUNT: &str = "pool.online.batch-account";

/// Where the pool's Batch account is, and how to reach Azure.
#[derive(Default)]
pub struct Online<'a> {
    /// Batch Shipyard's credentials file, when given.
    pub credentials: Option<&'a ShipyardCredentials>,
    /// `--region`, over the credentials file's.
    pub region: Option<String>,
    /// `--subscription`, over the credentials file's and `ARM_SUBSCRIPTION_ID`.
    pub subscription: Option<String>,
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

/// The findings `pool.online.blobs` and `pool.online.accounts`.
pub async fn check(config: &PoolConfig, online: &Online<'_>) -> Vec<Finding> {
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
    let mut arm = ArmSession {
        online,
        connection: None,
    };
    vec![
        check_blobs(config, &blobs, &accounts, online).await,
        check_accounts(config, &blobs, &accounts, online, &mut arm).await,
        check_batch_account(online, &mut arm).await,
    ]
}

/// Why Resource Manager cannot be asked, as a failed finding's message and hint.
#[derive(Clone)]
struct Unavailable {
    message: String,
    hint: Option<String>,
}

impl From<ArmError> for Unavailable {
    fn from(e: ArmError) -> Unavailable {
        match e {
            // The hint goes where findings keep hints, not into the message.
            ArmError::Status {
                op,
                status,
                code,
                message,
                hint,
            } => Unavailable {
                message: format!("Resource Manager: {op} failed: HTTP {status}{code}: {message}"),
                hint: Some(hint),
            },
            other => Unavailable {
                message: other.to_string(),
                hint: None,
            },
        }
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
        .unwrap_or_else(crate::arm::endpoint_from_env);
    Ok(Arm::connect(&endpoint, principal).await?)
}

async fn check_blobs(
    config: &PoolConfig,
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
        Err(e) => return Finding::fail(BLOBS, e.to_string()),
    };
    let mut problems = Vec::new();
    for b in blobs {
        match storage.properties(b).await {
            Ok(Some(p)) if p.blob_type == "PageBlob" => {}
            Ok(Some(p)) => {
                problems.push(format!("{} is a {}, not a page blob", b.url(), p.blob_type))
            }
            Ok(None) => problems.push(format!("{} does not exist", b.url())),
            Err(e) => problems.push(e.to_string()),
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
    config: &PoolConfig,
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

    let misplaced = crate::arm::misplaced(&listed, &subscription.value, accounts, &region.value);
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
