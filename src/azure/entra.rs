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

/// Why no token came, by kind: the kind decides the hint, never the words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// No answer: DNS, connection, TLS, proxy or a timeout.
    Unreachable(String),
    /// Entra answered and refused the sign-in (HTTP 4xx: an unknown tenant or
    /// application, a wrong or expired secret).
    Refused(String),
    /// Anything else: a redirect, a server error, an answer that is no token.
    Other(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Unreachable(m) | TokenError::Refused(m) | TokenError::Other(m) => {
                f.write_str(m)
            }
        }
    }
}

impl crate::util::Hint for TokenError {
    fn hint(&self) -> Option<String> {
        match self {
            TokenError::Unreachable(_) => Some(
                "Entra ID could not be reached: check the network, DNS and proxy settings (HTTPS_PROXY, NO_PROXY) — Packer signs in the same way"
                    .into(),
            ),
            TokenError::Refused(_) => Some(
                "Entra ID refused the service principal: check ARM_TENANT_ID, ARM_CLIENT_ID and ARM_CLIENT_SECRET (the secret may have expired: `az ad app credential list --id $ARM_CLIENT_ID`)"
                    .into(),
            ),
            TokenError::Other(_) => None,
        }
    }
}

/// A client-credentials token for `scope` (e.g. `https://storage.azure.com/.default`).
/// Error messages are redacted.
pub async fn token(
    http: &reqwest::Client,
    principal: &ServicePrincipal,
    scope: &str,
) -> Result<Secret, String> {
    token_or_why(http, principal, scope)
        .await
        .map_err(|e| e.to_string())
}

/// As `token`, with the failure's kind.
pub async fn token_or_why(
    http: &reqwest::Client,
    principal: &ServicePrincipal,
    scope: &str,
) -> Result<Secret, TokenError> {
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        principal.authority.trim_end_matches('/'),
        encode_component(&principal.tenant)
    );
    require_secure(&url).map_err(TokenError::Other)?;
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
        .map_err(|e| TokenError::Unreachable(clean(error_chain(&e))))?;
    let status = resp.status();
    if status.is_redirection() {
        return Err(TokenError::Other(format!(
            "{url}: HTTP {status}: the token endpoint answered with a redirect, which is never followed with a client secret; set the authority (AZURE_AUTHORITY_HOST or authority_url) to the final address"
        )));
    }
    // A token answer is a few KiB; 1 MiB bounds a server that never stops.
    let bytes = crate::azure::http::read_limited(resp, 1024 * 1024)
        .await
        .map_err(|e| TokenError::Other(clean(e)))?;
    let text = String::from_utf8_lossy(&bytes);
    if !status.is_success() {
        // Entra's answer names the problem (AADSTS7000215: invalid client
        // secret, AADSTS700016: unknown application, …) in error_description.
        // Masked before it is cut: a secret the answer reflects must not
        // survive as a prefix too short to be recognised.
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let detail = json["error_description"]
            .as_str()
            .and_then(|d| d.lines().next())
            .map(|d| clean(d.to_string()))
            .unwrap_or_else(|| clean(text.to_string()).chars().take(300).collect());
        let message = clean(format!("{url}: HTTP {status}: {detail}"));
        return Err(if status.is_client_error() {
            TokenError::Refused(message)
        } else {
            TokenError::Other(message)
        });
    }
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TokenError::Other(format!("{url}: not JSON: {e}")))?;
    json["access_token"]
        .as_str()
        .map(|t| Secret::new(t.to_string()))
        .ok_or_else(|| TokenError::Other(format!("{url}: no access_token in the response")))
}
