//! Entra ID (Azure AD) tokens for a service principal with a client secret:
//! the one sign-in imgforge does itself, for Azure Storage and Resource Manager.

use crate::azure::http::{error_chain, require_secure};
use crate::util::redact::Secret;
use crate::util::text::encode_component;

/// The public cloud's authority; sovereign clouds name their own.
pub const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";

/// A service principal and the authority that signs it in.
#[derive(Clone)]
pub struct ServicePrincipal {
    pub tenant: String,
    pub client_id: String,
    pub secret: Secret,
    pub authority: String,
}

impl ServicePrincipal {
    /// `ARM_TENANT_ID`, `ARM_CLIENT_ID`, `ARM_CLIENT_SECRET` (the variables
    /// Packer's azure-arm builder reads), with `AZURE_AUTHORITY_HOST` for
    /// sovereign clouds as in Azure's own SDKs.
    pub fn from_env() -> Option<ServicePrincipal> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(ServicePrincipal {
            tenant: get("ARM_TENANT_ID")?,
            client_id: get("ARM_CLIENT_ID")?,
            secret: Secret::new(get("ARM_CLIENT_SECRET")?),
            authority: get("AZURE_AUTHORITY_HOST").unwrap_or_else(|| PUBLIC_AUTHORITY.into()),
        })
    }
}

/// A client-credentials token for `scope` (e.g. `https://storage.azure.com/.default`).
/// Error messages are redacted.
pub async fn token(
    http: &reqwest::Client,
    principal: &ServicePrincipal,
    scope: &str,
) -> Result<Secret, String> {
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        principal.authority.trim_end_matches('/'),
        encode_component(&principal.tenant)
    );
    require_secure(&url)?;
    let body = format!(
        "client_id={}&client_secret={}&grant_type=client_credentials&scope={}",
        encode_component(&principal.client_id),
        encode_component(principal.secret.expose()),
        encode_component(scope)
    );
    let clean = |message: String| {
        crate::util::redact::redact(
            &message.replace(principal.secret.expose(), crate::util::redact::MASK),
        )
    };
    let resp = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| clean(error_chain(&e)))?;
    let status = resp.status();
    if status.is_redirection() {
        return Err(format!(
            "{url}: HTTP {status}: the token endpoint answered with a redirect, which is never followed with a client secret; set the authority (AZURE_AUTHORITY_HOST or authority_url) to the final address"
        ));
    }
    // A token answer is a few KiB; 1 MiB bounds a server that never stops.
    let bytes = crate::azure::http::read_limited(resp, 1024 * 1024)
        .await
        .map_err(clean)?;
    let text = String::from_utf8_lossy(&bytes);
    if !status.is_success() {
        // Entra's answer names the problem (AADSTS7000215: invalid client
        // secret, AADSTS700016: unknown application, …) in error_description.
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let detail = json["error_description"]
            .as_str()
            .and_then(|d| d.lines().next())
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(300).collect());
        return Err(clean(format!("{url}: HTTP {status}: {detail}")));
    }
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{url}: not JSON: {e}"))?;
    json["access_token"]
        .as_str()
        .map(|t| Secret::new(t.to_string()))
        .ok_or_else(|| format!("{url}: no access_token in the response"))
}
