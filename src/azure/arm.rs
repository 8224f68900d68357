//! Azure Resource Manager: the signed-in client every Resource Manager call
//! goes through (`Arm::connect`, one `send` with its token renewal, retries
//! and bounded answers) — `compute` writes images, gallery versions and
//! promotions through it — and the two reads of its own: which storage
//! accounts a subscription holds and where, and how a Batch account
//! allocates its pools.
//!
//! `GET {endpoint}/subscriptions/{id}/providers/Microsoft.Storage/storageAccounts`
//! answers `{"value": [{"id", "name", "location", …}], "nextLink"?}`; the
//! subscription and resource group are read from each `id`.
//! `GET …/resourceGroups/{rg}/providers/Microsoft.Batch/batchAccounts/{name}`
//! answers `{"name", "location", "properties": {"poolAllocationMode", "accountEndpoint", …}}`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::azure::entra::ServicePrincipal;
use crate::azure::http::require_secure;
use crate::util::redact::Secret;
use crate::util::text::encode_component;
use crate::util::text::normalize_region;

/// The public cloud's Resource Manager; sovereign clouds name their own.
pub const PUBLIC_ENDPOINT: &str = "https://management.azure.com";
const STORAGE_API_VERSION: &str = "2023-05-01";
const BATCH_API_VERSION: &str = "2025-06-01";

#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error("Resource Manager: cannot get a token: {0}")]
    Token(String),
    #[error("Resource Manager: {0}")]
    Insecure(String),
    #[error("Resource Manager: {op} failed: HTTP {status}{code}: {message}")]
    Status {
        op: &'static str,
        status: u16,
        code: String,
        message: String,
        hint: String,
    },
    #[error("Resource Manager: {op} failed after {attempts} attempts: {message}")]
    Transport {
        op: &'static str,
        attempts: u32,
        message: String,
    },
    #[error("Resource Manager: unexpected response to {op}: {message}")]
    Protocol { op: &'static str, message: String },
    #[error("Resource Manager: {op} ended {state}{code}: {message}")]
    Operation {
        op: &'static str,
        state: String,
        code: String,
        message: String,
        hint: String,
    },
    #[error("Resource Manager: {op} did not finish within {after_s} s (last state: {state})")]
    Timeout {
        op: &'static str,
        after_s: u64,
        state: String,
    },
    #[error("Resource Manager: {op}: interrupted")]
    Cancelled { op: &'static str },
}

impl crate::util::Hint for ArmError {
    fn hint(&self) -> Option<String> {
        match self {
            ArmError::Status { hint, .. } | ArmError::Operation { hint, .. } => Some(hint.clone()),
            ArmError::Timeout { .. } => Some(
                "Azure keeps working on it; rerun the same command later to pick it up (or allow more time: `publish --timeout SECONDS`, `build --publish-timeout SECONDS`)"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// A storage account as Resource Manager describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageAccount {
    pub name: String,
    pub location: String,
    pub subscription: String,
    pub resource_group: String,
}

/// A Batch account as Resource Manager describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAccount {
    pub name: String,
    pub location: String,
    /// `UserSubscription` or `BatchService`.
    pub pool_allocation_mode: String,
}

pub struct Arm {
    http: reqwest::Client,
    endpoint: String,
    token: Secret,
    /// Who signed in, to sign in again: a token lives about an hour, and a
    /// publish (gallery replication to several regions) can take longer.
    principal: ServicePrincipal,
    signed_in: std::time::Instant,
    pub requests: u32,
}

/// A token is renewed before it is this old (Entra's last about an hour).
const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(45 * 60);

impl Arm {
    /// Signs `principal` in for `endpoint` (e.g. `https://management.azure.com/`).
    pub async fn connect(endpoint: &str, principal: &ServicePrincipal) -> Result<Arm, ArmError> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        require_secure(&endpoint).map_err(ArmError::Insecure)?;
        let http = crate::azure::http::client_builder(Duration::from_secs(60))
            .build()
            .expect("the HTTP client builds");
        let token = crate::azure::entra::token(&http, principal, &format!("{endpoint}/.default"))
            .await
            .map_err(ArmError::Token)?;
        Ok(Arm {
            http,
            endpoint,
            token,
            principal: principal.clone(),
            signed_in: std::time::Instant::now(),
            requests: 0,
        })
    }

    /// A new token for the same principal.
    async fn sign_in_again(&mut self) -> Result<(), ArmError> {
        self.token = crate::azure::entra::token(
            &self.http,
            &self.principal,
            &format!("{}/.default", self.endpoint),
        )
        .await
        .map_err(ArmError::Token)?;
        self.signed_in = std::time::Instant::now();
        Ok(())
    }

    /// Every storage account in `subscription` that the principal may read,
    /// following `nextLink` pages.
    pub async fn storage_accounts(
        &mut self,
        subscription: &str,
    ) -> Result<Vec<StorageAccount>, ArmError> {
        const OP: &str = "List Storage Accounts";
        let mut url = format!(
            "{}/subscriptions/{}/providers/Microsoft.Storage/storageAccounts?api-version={STORAGE_API_VERSION}",
            self.endpoint,
            encode_component(subscription)
        );
        let mut accounts = Vec::new();
        // A subscription holds at most 250 storage accounts per region (500
        // on request) and Resource Manager pages them by the hundred: a list
        // longer than this is a server that never ends it (one that links
        // to itself ran to a 5 GiB RSS).
        const MAX_PAGES: usize = 100;
        const MAX_ACCOUNTS: usize = 50_000;
        for _ in 0..MAX_PAGES {
            let page = self.get_json(OP, &url).await?;
            let values = page["value"].as_array().ok_or_else(|| ArmError::Protocol {
                op: OP,
                message: "no `value` array".into(),
            })?;
            for v in values {
                accounts.push(parse_account(v).ok_or_else(|| ArmError::Protocol {
                    op: OP,
                    message: format!("an entry without name, location or id: {v}"),
                })?);
            }
            if accounts.len() > MAX_ACCOUNTS {
                return Err(ArmError::Protocol {
                    op: OP,
                    message: format!("more than {MAX_ACCOUNTS} storage accounts listed"),
                });
            }
            match crate::azure::http::next_page(&page, "nextLink", &self.endpoint)
                .map_err(|message| ArmError::Protocol { op: OP, message })?
            {
                Some(next) if next == url => {
                    return Err(ArmError::Protocol {
                        op: OP,
                        message: "nextLink names the page it is on: a list that never ends".into(),
                    });
                }
                Some(next) => url = next,
                None => return Ok(accounts),
            }
        }
        Err(ArmError::Protocol {
            op: OP,
            message: format!("more than {MAX_PAGES} pages: a list that never ends"),
        })
    }

    pub async fn batch_account(
        &mut self,
        subscription: &str,
        resource_group: &str,
        name: &str,
    ) -> Result<BatchAccount, ArmError> {
        const OP: &str = "Get Batch Account";
        let url = format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Batch/batchAccounts/{}?api-version={BATCH_API_VERSION}",
            self.endpoint,
            encode_component(subscription),
            encode_component(resource_group),
            encode_component(name)
        );
        let v = self.get_json(OP, &url).await?;
        let field = |s: Option<&str>, what: &str| {
            s.map(str::to_string).ok_or_else(|| ArmError::Protocol {
                op: OP,
                message: format!("no {what}"),
            })
        };
        Ok(BatchAccount {
            name: field(v["name"].as_str(), "name")?,
            location: field(v["location"].as_str(), "location")?,
            // Absent in old API versions, where every account was BatchService.
            pool_allocation_mode: v["properties"]["poolAllocationMode"]
                .as_str()
                .unwrap_or("BatchService")
                .to_string(),
        })
    }

    async fn get_json(&mut self, op: &'static str, url: &str) -> Result<Value, ArmError> {
        let answer = self
            .send(op, reqwest::Method::GET, url, None, false)
            .await?;
        Ok(answer.expect("404 is an error here").body)
    }

    /// The endpoint this client signs in for (every URL it follows must be on it).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One Resource Manager request with the bearer token, retried on 429,
    /// 5xx and transport errors (Retry-After honoured, at most 30 s); the
    /// body is read up to `http::MAX_JSON`. `Ok(None)` for a 404 when
    /// `allow_404`, for "does it exist yet" questions.
    pub(crate) async fn send(
        &mut self,
        op: &'static str,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        allow_404: bool,
    ) -> Result<Option<Answer>, ArmError> {
        if !url.starts_with(&format!("{}/", self.endpoint)) {
            // The bearer token goes to this endpoint and nowhere else.
            return Err(ArmError::Protocol {
                op,
                message: format!("`{url}` is not on {}", self.endpoint),
            });
        }
        if self.signed_in.elapsed() > TOKEN_RENEW_AFTER {
            self.sign_in_again().await?;
        }
        match self.send_once(op, &method, url, body, allow_404).await {
            // 401: the token was refused (expired, or revoked): one new
            // sign-in and one more try; a second 401 is the answer.
            Err(ArmError::Status { status: 401, .. }) => {
                self.sign_in_again().await?;
                self.send_once(op, &method, url, body, allow_404).await
            }
            other => other,
        }
    }

    async fn send_once(
        &mut self,
        op: &'static str,
        method: &reqwest::Method,
        url: &str,
        body: Option<&Value>,
        allow_404: bool,
    ) -> Result<Option<Answer>, ArmError> {
        let token = self.token.expose();
        let http = &self.http;
        let tries = std::cell::Cell::new(0u32);
        let reply = crate::azure::http::send_retrying(crate::azure::http::Retry::JSON, &|| {
            tries.set(tries.get() + 1);
            let mut req = http
                .request(method.clone(), url)
                .bearer_auth(token)
                .header("accept", "application/json");
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            req
        })
        .await;
        self.requests += tries.get();
        let reply = reply.map_err(|e| ArmError::Transport {
            op,
            attempts: e.attempts,
            message: e.message,
        })?;
        let header = |name: &str| {
            reply
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
        };
        let text = String::from_utf8_lossy(&reply.body);
        let status = reply.status;
        if status.is_success() {
            let body = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).map_err(|e| ArmError::Protocol {
                    op,
                    message: format!("not JSON: {e}"),
                })?
            };
            return Ok(Some(Answer {
                status: status.as_u16(),
                body,
                retry_after: header("retry-after").and_then(|v| v.parse::<u64>().ok()),
                async_operation: header("azure-asyncoperation"),
                location: header("location"),
            }));
        }
        if status == StatusCode::NOT_FOUND && allow_404 {
            return Ok(None);
        }
        Err(status_error(op, status, &text))
    }
}

/// A successful Resource Manager answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Value,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
    /// Where a long-running operation's status is polled (`Azure-AsyncOperation`).
    pub async_operation: Option<String>,
    /// `Location`, the other long-running-operation header.
    pub location: Option<String>,
}

/// `{"error": {"code": "AuthorizationFailed", "message": "…"}}` → an error with a hint.
fn status_error(op: &'static str, status: StatusCode, body: &str) -> ArmError {
    let json: Value = serde_json::from_str(body).unwrap_or_default();
    let code = json["error"]["code"].as_str().unwrap_or("").to_string();
    let message = json["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.chars().take(300).collect());
    let hint = hint_for(op, &code, status.as_u16());
    ArmError::Status {
        op,
        status: status.as_u16(),
        code: crate::azure::http::code_suffix(&code),
        message: crate::util::redact::redact(&message),
        hint: hint.to_string(),
    }
}

/// What to do about an error code Resource Manager (or an operation's
/// status) names, for the operation `op`.
pub(crate) fn hint_for(op: &str, code: &str, status: u16) -> &'static str {
    match code {
        "SubscriptionNotFound" | "InvalidSubscriptionId" => {
            "check the subscription id (management.subscription_id, --subscription or ARM_SUBSCRIPTION_ID)"
        }
        "ResourceGroupNotFound" | "ResourceNotFound" => {
            "check the name and the resource group (credentials.batch.resource_group)"
        }
        "InvalidAuthenticationToken" | "InvalidAuthenticationTokenTenant" => {
            "the token was refused: is the service principal in the subscription's tenant?"
        }
        "AuthorizationFailed" | "LinkedAuthorizationFailed" if op.starts_with("Create") => {
            "give the service principal the Contributor role on the image's resource group \
             (it writes Microsoft.Compute/images or galleries/images/versions) and Reader on the \
             storage account that holds the VHD"
        }
        "AuthorizationFailed" => {
            "give the service principal the Reader role on the subscription (or on the resource groups involved)"
        }
        "GalleryNotFound" | "ParentResourceNotFound" => {
            "create the gallery first (`az sig create -g GROUP -r GALLERY`) or fix [build.gallery] name / resource_group"
        }
        "OperationNotAllowed" | "QuotaExceeded" => {
            "a subscription limit was reached (the message names it): request a quota increase \
             or delete unused images, or choose another region"
        }
        "InvalidParameter" | "BadRequest" => {
            "Azure refused a value: the message names the property (e.g. a VHD that is not \
             generalized, a Hyper-V generation the definition does not have, or a blob in another \
             region than the image)"
        }
        _ => match status {
            401 => "the token was refused: is the service principal in the subscription's tenant?",
            403 => "give the service principal the Reader role on the subscription",
            404 => "check the subscription id and resource names",
            _ => "Resource Manager reported an error; see the code and message",
        },
    }
}

pub(crate) fn parse_account(v: &Value) -> Option<StorageAccount> {
    let id = v["id"].as_str()?;
    // /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/{name}
    let parts: Vec<&str> = id.split('/').collect();
    let after = |key: &str| {
        parts
            .iter()
            .position(|p| p.eq_ignore_ascii_case(key))
            .and_then(|i| parts.get(i + 1))
            .map(|s| s.to_string())
    };
    Some(StorageAccount {
        name: v["name"].as_str()?.to_string(),
        location: v["location"].as_str()?.to_string(),
        subscription: after("subscriptions")?,
        resource_group: after("resourceGroups")?,
    })
}

/// Why a storage account cannot serve a Batch account's pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misplaced {
    /// The subscription's list (as this principal sees it) does not hold it.
    NotInSubscription {
        account: String,
        subscription: String,
        listed: usize,
    },
    OtherRegion {
        account: String,
        location: String,
        resource_group: String,
    },
}

impl std::fmt::Display for Misplaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Misplaced::NotInSubscription {
                account,
                subscription,
                listed,
            } => write!(
                f,
                "`{account}` is not among the {listed} storage account(s) subscription \
                 {subscription} shows this service principal"
            ),
            Misplaced::OtherRegion {
                account,
                location,
                resource_group,
            } => write!(
                f,
                "`{account}` (resource group {resource_group}) is in {location}"
            ),
        }
    }
}

impl Misplaced {
    pub fn account(&self) -> &str {
        match self {
            Misplaced::NotInSubscription { account, .. }
            | Misplaced::OtherRegion { account, .. } => account,
        }
    }
}

/// The accounts of `accounts` that are not in `listed` (the storage accounts
/// of `subscription`) or not in `region`.
pub fn misplaced(
    listed: &[StorageAccount],
    subscription: &str,
    accounts: &[String],
    region: &str,
) -> Vec<Misplaced> {
    let want = normalize_region(region);
    accounts
        .iter()
        .filter_map(
            |account| match listed.iter().find(|a| a.name.eq_ignore_ascii_case(account)) {
                None => Some(Misplaced::NotInSubscription {
                    account: account.clone(),
                    subscription: subscription.to_string(),
                    listed: listed.len(),
                }),
                Some(a) if normalize_region(&a.location) != want => Some(Misplaced::OtherRegion {
                    account: account.clone(),
                    location: a.location.clone(),
                    resource_group: a.resource_group.clone(),
                }),
                Some(_) => None,
            },
        )
        .collect()
}

/// `IMGFORGE_ARM_ENDPOINT` (sovereign clouds, e.g. https://management.chinacloudapi.cn),
/// else the public cloud's.
pub fn endpoint_from_env() -> String {
    std::env::var("IMGFORGE_ARM_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| PUBLIC_ENDPOINT.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_read_from_the_list_shape() {
        let v: Value = serde_json::json!({
            "id": "/subscriptions/1111/resourceGroups/Images-RG/providers/Microsoft.Storage/storageAccounts/imgcopy0",
            "kind": "StorageV2",
            "location": "westus2",
            "name": "imgcopy0",
            "type": "Microsoft.Storage/storageAccounts"
        });
        assert_eq!(
            parse_account(&v),
            Some(StorageAccount {
                name: "imgcopy0".into(),
                location: "westus2".into(),
                subscription: "1111".into(),
                resource_group: "Images-RG".into(),
            })
        );
        assert_eq!(parse_account(&serde_json::json!({"name": "x"})), None);
        assert_eq!(normalize_region("West US 2"), "westus2");
    }

    #[test]
    fn error_bodies_become_hints() {
        let e = status_error(
            "List Storage Accounts",
            StatusCode::FORBIDDEN,
            r#"{"error":{"code":"AuthorizationFailed","message":"The client 'x' does not have authorization"}}"#,
        );
        use crate::util::Hint;
        let (message, hint) = (e.to_string(), e.hint().unwrap_or_default());
        assert!(
            message.contains("HTTP 403 AuthorizationFailed"),
            "{message}"
        );
        // The hint is a field, not part of the message.
        assert!(hint.contains("Reader role"), "{hint}");
        assert!(!message.contains("Reader role"), "{message}");
    }
}
