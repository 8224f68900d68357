//! Azure Batch's data plane, read-only: the images and node agents a Batch
//! account supports today, `GET {account_url}/supportedimages` (every page,
//! `odata.nextLink`). This list, not imgforge's catalog, is what decides
//! whether Batch creates a pool with a node agent.
//!
//! Plain REST with an Entra ID token for Batch's resource
//! (`https://batch.core.windows.net/`, scope `…//.default`). The Batch
//! account's shared key is deliberately not supported: pools from custom
//! images need Entra ID sign-in anyway (Batch Shipyard issue 197; Batch answers
//! "SharedKey is not allowed when external resources of type Compute are
//! linked"), so anyone who can use imgforge's images has a service principal.
//!
//! Answers are `{"value": [{"nodeAgentSKUId", "imageReference": {publisher,
//! offer, sku, version}, "osType", "verificationType", "capabilities"?,
//! "batchSupportEndOfLife"?}], "odata.nextLink"?}`; errors are Batch's OData
//! envelope `{"code", "message": {"lang", "value"}, "values"?: [{key, value}]}`.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;

use crate::azure::entra::ServicePrincipal;
use crate::azure::http::require_secure;

/// Batch's data-plane API version: 2025-06-01 (versions before it are on Batch's retirement list, Azure/Batch issue 140).
pub const API_VERSION: &str = "2025-06-01";
/// Batch's Entra resource in the public cloud; Batch Shipyard's
/// `credentials.batch.aad.endpoint` names a sovereign cloud's.
pub const PUBLIC_RESOURCE: &str = "https://batch.core.windows.net/";
/// Far more than the few dozen entries (one page) Batch lists today; a
/// server that pages forever is stopped here.
const MAX_PAGES: usize = 100;
/// A Batch account lists a few hundred supported images.
const MAX_IMAGES: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("Batch: cannot get a token for {resource}: {message}")]
    Token { resource: String, message: String },
    #[error("Batch: {0}")]
    Insecure(String),
    #[error("Batch: {op} failed: HTTP {status}{code}: {message}")]
    Status {
        op: &'static str,
        status: u16,
        code: String,
        message: String,
        hint: String,
    },
    #[error("Batch: {op} failed after {attempts} attempts: {message}")]
    Transport {
        op: &'static str,
        attempts: u32,
        message: String,
    },
    #[error("Batch: unexpected response to {op}: {message}")]
    Protocol { op: &'static str, message: String },
}

impl crate::util::Hint for BatchError {
    fn hint(&self) -> Option<String> {
        match self {
            BatchError::Status { hint, .. } => Some(hint.clone()),
            _ => None,
        }
    }
}

/// One entry of the account's supported images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SupportedImage {
    pub node_agent: String,
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub version: String,
    /// `linux` or `windows`.
    pub os_type: String,
    /// `verified` or `unverified`.
    pub verification: String,
    pub capabilities: Vec<String>,
    /// `batchSupportEndOfLife`, as YYYY-MM-DD.
    pub end_of_life: Option<String>,
}

/// What the list says about one node agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSupport {
    pub node_agent: String,
    pub os_type: String,
    /// How many listed images use it.
    pub images: usize,
    /// When every listed image of the agent has an end of life: the last one
    /// (the agent goes with it). `None` while any image has none.
    pub end_of_life: Option<String>,
    /// `supported`, `ends` (end of life in the future) or `retired`.
    pub status: &'static str,
}

/// The node agents in `images`, in the order first listed, as of `today` (YYYY-MM-DD).
pub fn agents(images: &[SupportedImage], today: &str) -> Vec<AgentSupport> {
    let mut out: Vec<AgentSupport> = Vec::new();
    // One look-up per image (a scan of `out` per image was quadratic:
    // 300,000 agents took 119 s).
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for img in images {
        let i = match index.get(&img.node_agent.to_ascii_lowercase()) {
            Some(&i) => i,
            None => {
                index.insert(img.node_agent.to_ascii_lowercase(), out.len());
                out.push(AgentSupport {
                    node_agent: img.node_agent.clone(),
                    os_type: img.os_type.clone(),
                    images: 0,
                    end_of_life: img.end_of_life.clone(),
                    status: "supported",
                });
                out.len() - 1
            }
        };
        let a = &mut out[i];
        a.images += 1;
        a.end_of_life = match (a.end_of_life.take(), &img.end_of_life) {
            (Some(a), Some(b)) => Some(a.max(b.clone())),
            _ => None,
        };
    }
    for a in &mut out {
        a.status = match &a.end_of_life {
            None => "supported",
            Some(d) if today >= d.as_str() => "retired",
            Some(_) => "ends",
        };
    }
    out
}

/// The agent named `agent` (case-insensitive), if the list has it.
pub fn find<'a>(agents: &'a [AgentSupport], agent: &str) -> Option<&'a AgentSupport> {
    agents
        .iter()
        .find(|a| a.node_agent.eq_ignore_ascii_case(agent.trim()))
}

/// How to reach one Batch account.
pub struct Access {
    pub url: String,
    /// Where `url` came from, for messages.
    pub url_from: String,
    pub principal: ServicePrincipal,
    pub resource: String,
}

/// `https://<account>.<region>.batch.azure.com` → its origin, without a trailing slash.
fn origin(account_url: &str) -> String {
    account_url.trim().trim_end_matches('/').to_string()
}

/// Every image the account at `account_url` supports, signed in as
/// `principal` for `resource` (default [`PUBLIC_RESOURCE`]).
pub async fn supported_images(
    account_url: &str,
    principal: &ServicePrincipal,
    resource: &str,
) -> Result<Vec<SupportedImage>, BatchError> {
    const OP: &str = "List Supported Images";
    let base = origin(account_url);
    require_secure(&base).map_err(BatchError::Insecure)?;
    let http = crate::azure::http::client_builder(Duration::from_secs(60))
        .build()
        .expect("the HTTP client builds");
    // Batch's resource id ends in `/`; Entra's scope for it is then
    // `https://batch.core.windows.net//.default`, as Azure's SDKs ask.
    let scope = format!("{resource}/.default");
    let token = crate::azure::entra::token(&http, principal, &scope)
        .await
        .map_err(|message| BatchError::Token {
            resource: resource.to_string(),
            message,
        })?;
    let mut url = format!("{base}/supportedimages?api-version={API_VERSION}");
    let mut images = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = get_json(&http, OP, &url, token.expose()).await?;
        let values = page["value"]
            .as_array()
            .ok_or_else(|| BatchError::Protocol {
                op: OP,
                message: "no `value` array".into(),
            })?;
        for v in values {
            images.push(parse_image(v).ok_or_else(|| BatchError::Protocol {
                op: OP,
                message: format!(
                    "an entry without nodeAgentSKUId or imageReference, or with fields longer than {MAX_FIELD} characters: {}",
                    v.to_string().chars().take(200).collect::<String>()
                ),
            })?);
        }
        if images.len() > MAX_IMAGES {
            return Err(BatchError::Protocol {
                op: OP,
                message: format!("more than {MAX_IMAGES} supported images listed"),
            });
        }
        match crate::azure::http::next_page(&page, "odata.nextLink", &base)
            .map_err(|message| BatchError::Protocol { op: OP, message })?
        {
            Some(next) => url = next,
            None => return Ok(images),
        }
    }
    Err(BatchError::Protocol {
        op: OP,
        message: format!("more than {MAX_PAGES} pages"),
    })
}

/// The longest field of a supported image kept (a real one is tens of
/// characters), and the most capabilities: an entry beyond them is not
/// Batch's, and is refused rather than kept.
const MAX_FIELD: usize = 256;
const MAX_CAPABILITIES: usize = 64;

pub(crate) fn parse_image(v: &Value) -> Option<SupportedImage> {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let r = &v["imageReference"];
    let too_long = [
        &v["nodeAgentSKUId"],
        &r["publisher"],
        &r["offer"],
        &r["sku"],
        &r["version"],
        &v["osType"],
        &v["verificationType"],
        &v["batchSupportEndOfLife"],
    ]
    .iter()
    .any(|f| f.as_str().is_some_and(|t| t.len() > MAX_FIELD));
    let capabilities = v["capabilities"].as_array().map_or(0, Vec::len);
    if too_long || capabilities > MAX_CAPABILITIES {
        return None;
    }
    let image = SupportedImage {
        node_agent: v["nodeAgentSKUId"].as_str()?.to_string(),
        publisher: text(&r["publisher"]),
        offer: text(&r["offer"]),
        sku: text(&r["sku"]),
        version: text(&r["version"]),
        os_type: text(&v["osType"]),
        verification: text(&v["verificationType"]),
        capabilities: v["capabilities"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        // "2019-11-01T00:00:00.0Z" → "2019-11-01".
        end_of_life: v["batchSupportEndOfLife"]
            .as_str()
            .filter(|d| d.len() >= 10 && d.is_char_boundary(10))
            .map(|d| d[..10].to_string()),
    };
    (r.is_object() && !image.node_agent.is_empty()).then_some(image)
}

async fn get_json(
    http: &reqwest::Client,
    op: &'static str,
    url: &str,
    token: &str,
) -> Result<Value, BatchError> {
    let reply = crate::azure::http::send_retrying(crate::azure::http::Retry::JSON, &|| {
        http.get(url)
            .bearer_auth(token)
            .header("accept", "application/json")
    })
    .await
    .map_err(|e| BatchError::Transport {
        op,
        attempts: e.attempts,
        message: e.message,
    })?;
    let text = String::from_utf8_lossy(&reply.body);
    if !reply.status.is_success() {
        return Err(status_error(op, reply.status, &text));
    }
    serde_json::from_str(&text).map_err(|e| BatchError::Protocol {
        op,
        message: format!("not JSON: {e}"),
    })
}

/// Batch's OData error envelope → an error with a hint.
fn status_error(op: &'static str, status: StatusCode, body: &str) -> BatchError {
    let json: Value = serde_json::from_str(body).unwrap_or_default();
    let code = json["code"].as_str().unwrap_or("").to_string();
    let mut message = json["message"]["value"]
        .as_str()
        .map(|m| m.lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|| body.chars().take(300).collect());
    if let Some(detail) = json["values"].as_array().and_then(|vs| {
        vs.iter()
            .find(|v| v["key"] == "AuthenticationErrorDetail")
            .and_then(|v| v["value"].as_str())
    }) {
        message.push_str(&format!(" ({detail})"));
    }
    let hint = match (status.as_u16(), code.as_str()) {
        (401, _) | (_, "AuthenticationFailed") => {
            "Batch refused the token: the service principal must belong to the Batch account's \
             tenant, and the token must be for Batch (credentials.batch.aad.endpoint, default \
             https://batch.core.windows.net/)"
        }
        (403, _) => {
            "give the service principal a role on the Batch account that may read it \
             (Reader or Contributor, assigned on the account or its resource group)"
        }
        (404, _) => {
            "check the Batch account URL (batch.account_service_url or --account-url): \
             `az batch account show -n ACCOUNT -g GROUP --query accountEndpoint`"
        }
        _ => "Azure Batch could not answer; try again later",
    }
    .to_string();
    BatchError::Status {
        op,
        status: status.as_u16(),
        code: crate::azure::http::code_suffix(&code),
        message: crate::util::redact::redact(&message),
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(agent: &str, eol: Option<&str>) -> SupportedImage {
        SupportedImage {
            node_agent: agent.into(),
            publisher: "p".into(),
            offer: "o".into(),
            sku: "s".into(),
            version: "latest".into(),
            os_type: "linux".into(),
            verification: "verified".into(),
            capabilities: vec![],
            end_of_life: eol.map(str::to_string),
        }
    }

    #[test]
    fn agents_are_counted_case_insensitively_in_first_seen_order() {
        let list = [
            image("batch.node.ubuntu 22.04", None),
            image("batch.node.el 9", None),
            image("BATCH.NODE.UBUNTU 22.04", None),
        ];
        let a = agents(&list, "2026-12-03");
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].node_agent.as_str(), a[0].images),
            ("batch.node.ubuntu 22.04", 2)
        );
        assert_eq!(
            (a[1].node_agent.as_str(), a[1].images),
            ("batch.node.el 9", 1)
        );
    }

    #[test]
    fn an_entry_with_an_oversized_field_is_refused_not_kept() {
        let ok = serde_json::json!({"nodeAgentSKUId": "batch.node.el 9",
            "imageReference": {"publisher": "almalinux", "offer": "almalinux-x86_64", "sku": "9-gen2", "version": "latest"},
            "osType": "linux", "verificationType": "verified", "capabilities": []});
        assert!(parse_image(&ok).is_some());
        let mut big = ok.clone();
        big["imageReference"]["sku"] = "x".repeat(MAX_FIELD + 1).into();
        assert!(parse_image(&big).is_none());
        let mut many = ok;
        many["capabilities"] = vec!["c"; MAX_CAPABILITIES + 1].into();
        assert!(parse_image(&many).is_none());
    }

    #[test]
    fn an_agent_ends_only_when_every_one_of_its_images_does() {
        let list = [
            image("batch.node.ubuntu 20.04", Some("2025-04-23")),
            image("batch.node.ubuntu 20.04", Some("2025-04-23")),
            image("batch.node.ubuntu 22.04", Some("2027-06-30")),
            image("batch.node.el 9", Some("2026-01-01")),
            image("batch.node.el 9", None),
        ];
        let a = agents(&list, "2026-12-01");
        let by = |id: &str| find(&a, id).unwrap();
        assert_eq!(by("batch.node.ubuntu 20.04").images, 2);
        assert_eq!(by("batch.node.ubuntu 20.04").status, "retired");
        assert_eq!(by("BATCH.NODE.UBUNTU 22.04").status, "ends");
        assert_eq!(
            by("batch.node.ubuntu 22.04").end_of_life.as_deref(),
            Some("2027-06-30")
        );
        assert_eq!(by("batch.node.el 9").status, "supported");
        assert_eq!(by("batch.node.el 9").end_of_life, None);
        assert!(find(&a, "batch.node.debian 12").is_none());
        // The end of life day itself is the first day without new pools.
        assert_eq!(agents(&list, "2027-06-30")[1].status, "retired");
    }

    #[test]
    fn entries_are_read_from_the_recorded_shape() {
        // An entry of AccountListSupportedImages.json (azure-rest-api-specs).
        let v = serde_json::json!({
            "nodeAgentSKUId": "batch.node.centos 7",
            "imageReference": {"publisher": "OpenLogic", "offer": "CentOS", "sku": "7.1", "version": "latest"},
            "verificationType": "unverified",
            "osType": "linux",
            "batchSupportEndOfLife": "2019-11-01T00:00:00.0Z"
        });
        let i = parse_image(&v).unwrap();
        assert_eq!(i.node_agent, "batch.node.centos 7");
        assert_eq!(i.sku, "7.1");
        assert_eq!(i.end_of_life.as_deref(), Some("2019-11-01"));
        assert!(parse_image(&serde_json::json!({"nodeAgentSKUId": "x"})).is_none());
        // A multi-byte character at byte 10 is not a date, not a panic.
        let odd = serde_json::json!({"nodeAgentSKUId": "x", "imageReference": {},
            "batchSupportEndOfLife": "2019-11-0é"});
        assert_eq!(parse_image(&odd).unwrap().end_of_life, None);
    }

    #[test]
    fn error_envelopes_become_hints() {
        let body = r#"{"odata.metadata":"https://a.westus2.batch.azure.com/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element","code":"AuthenticationFailed","message":{"lang":"en-US","value":"Server failed to authenticate the request.\nRequestId:1"},"values":[{"key":"AuthenticationErrorDetail","value":"The specified type of authentication SharedKey is not allowed when external resources of type Compute are linked."}]}"#;
        let e = crate::util::with_hint(&status_error(
            "List Supported Images",
            StatusCode::FORBIDDEN,
            body,
        ));
        assert!(e.contains("HTTP 403 AuthenticationFailed"), "{e}");
        assert!(e.contains("SharedKey is not allowed"), "{e}");
        assert!(e.contains("\n  hint: Batch refused the token"), "{e}");
        let e = crate::util::with_hint(&status_error("x", StatusCode::NOT_FOUND, "not json"));
        assert!(
            e.contains("HTTP 404: not json") && e.contains("accountEndpoint"),
            "{e}"
        );
    }
}
