//! Batch Shipyard's credentials file (`credentials.yaml` or `.json`): where the
//! pool's Batch account is, which subscription it lives in, and the sign-in and
//! storage keys `pool check --online` may use. Every secret in it is masked in
//! whatever imgforge prints from the moment it is read.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use super::{PoolError, ShipyardFile};
use crate::azure::entra::{PUBLIC_AUTHORITY, ServicePrincipal};
use crate::util::redact::Secret;

/// Keys whose values are secrets anywhere in the file.
const SECRET_KEYS: &[&str] = &["auth_key", "account_key", "password"];

pub struct ShipyardCredentials {
    pub file: ShipyardFile,
    /// From `batch.account_service_url`.
    pub region: Option<String>,
    /// The Batch account's name, from `batch.account_service_url`.
    pub batch_account: Option<String>,
    /// `batch.resource_group`.
    pub batch_resource_group: Option<String>,
    /// `management.subscription_id`.
    pub subscription: Option<String>,
    /// `management.aad` over the global `aad`, when it is a service principal with `auth_key`.
    pub management: Option<ServicePrincipal>,
    /// Why `management` is None although an `aad` section exists.
    pub management_unusable: Option<String>,
    /// `management.aad.endpoint`, for sovereign clouds.
    pub management_endpoint: Option<String>,
    /// `batch.account_service_url` as written.
    pub batch_url: Option<String>,
    /// `batch.aad` over the global `aad`, when it is a service principal with `auth_key`.
    pub batch_principal: Option<ServicePrincipal>,
    /// Why `batch_principal` is None although an `aad` section exists.
    pub batch_unusable: Option<String>,
    /// Batch's Entra resource: `batch.aad.endpoint`, else Batch's public one.
    pub batch_resource: String,
    /// `batch.account_key` is set: Batch Shipyard then signs in to Batch with
    /// the shared key, which Batch refuses for custom-image pools.
    pub batch_shared_key: bool,
    /// Storage account name → key, from `storage.<link>.account` / `account_key`.
    pub storage_keys: BTreeMap<String, Vec<u8>>,
}

impl ShipyardCredentials {
    pub fn load(path: &Path) -> Result<ShipyardCredentials, PoolError> {
        let file = ShipyardFile::load(path, "credentials")?;
        register_secrets(&file.value);
        let creds = &file.value["credentials"];
        let err = |key: &str, message: String, hint: &str| PoolError::Record {
            path: path.to_path_buf(),
            message: format!("{}: `credentials.{key}` {message}", file.at(key_leaf(key))),
            hint: hint.to_string(),
        };

        let account_url = match creds["batch"]["account_service_url"].as_str() {
            None => None,
            Some(url) => Some(batch_account_url(url).ok_or_else(|| {
                err(
                    "batch.account_service_url",
                    format!("is `{url}`, not a Batch account URL"),
                    "use the account's URL, https://<account>.<region>.batch.azure.com \
                     (`az batch account show -n <account> -g <group> --query accountEndpoint`)",
                )
            })?),
        };
        let (batch_account, region) = account_url.unzip();
        let batch_resource_group = creds["batch"]["resource_group"]
            .as_str()
            .map(str::to_string);
        let subscription = creds["management"]["subscription_id"]
            .as_str()
            .map(str::to_string);

        let (management, management_unusable) = principal(
            &merged_aad(&creds["aad"], &creds["management"]["aad"]),
            "management.aad",
        );
        let management_endpoint = creds["management"]["aad"]["endpoint"]
            .as_str()
            .map(str::to_string);
        let (batch_principal, batch_unusable) = principal(
            &merged_aad(&creds["aad"], &creds["batch"]["aad"]),
            "batch.aad",
        );
        let batch_resource = creds["batch"]["aad"]["endpoint"]
            .as_str()
            .unwrap_or(crate::azure::batch::PUBLIC_RESOURCE)
            .to_string();
        let batch_url = creds["batch"]["account_service_url"]
            .as_str()
            .map(str::to_string);
        let batch_shared_key = creds["batch"]["account_key"]
            .as_str()
            .is_some_and(|k| !k.trim().is_empty());

        let mut storage_keys = BTreeMap::new();
        if let Some(links) = creds["storage"].as_object() {
            for (link, entry) in links.iter().filter(|(link, _)| *link != "aad") {
                let (Some(account), Some(key)) =
                    (entry["account"].as_str(), entry["account_key"].as_str())
                else {
                    continue;
                };
                let decoded = B64.decode(key.trim()).map_err(|_| {
                    err(
                        &format!("storage.{link}.account_key"),
                        "is not base64".into(),
                        "copy key1 or key2 from the storage account's Access keys page",
                    )
                })?;
                storage_keys.insert(account.to_string(), decoded);
            }
        }

        Ok(ShipyardCredentials {
            file,
            region,
            batch_account,
            batch_resource_group,
            subscription,
            management,
            management_unusable,
            management_endpoint,
            batch_url,
            batch_principal,
            batch_unusable,
            batch_resource,
            batch_shared_key,
            storage_keys,
        })
    }
}

/// `https://<account>.<region>.batch.azure.com/` (or a sovereign cloud's
/// `batch.chinacloudapi.cn`, `batch.usgovcloudapi.net`) → (`<account>`, `<region>`).
pub fn batch_account_url(url: &str) -> Option<(String, String)> {
    let url = url::Url::parse(url)
        .ok()
        .filter(|u| u.scheme() == "https")?;
    let host = url.host_str()?;
    let labels: Vec<&str> = host.split('.').collect();
    let valid = |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric());
    (labels.len() >= 4 && labels[2] == "batch" && valid(labels[0]) && valid(labels[1])).then(|| {
        (
            labels[0].to_ascii_lowercase(),
            labels[1].to_ascii_lowercase(),
        )
    })
}

/// A service principal from merged `aad` settings, or why there is none
/// although settings exist (`section` names them in the message).
fn principal(
    aad: &serde_json::Map<String, Value>,
    section: &str,
) -> (Option<ServicePrincipal>, Option<String>) {
    let text = |k: &str| aad.get(k).and_then(Value::as_str).map(str::to_string);
    match (
        text("directory_id"),
        text("application_id"),
        text("auth_key"),
    ) {
        (Some(tenant), Some(client_id), Some(secret)) => (
            Some(ServicePrincipal {
                tenant,
                client_id,
                secret: Secret::new(secret),
                authority: text("authority_url").unwrap_or_else(|| PUBLIC_AUTHORITY.into()),
            }),
            None,
        ),
        _ if aad.keys().all(|k| k == "endpoint") => (None, None),
        _ => (
            None,
            Some(format!(
                "its `{section}` (or global `aad`) is not a service principal with \
                 directory_id, application_id and auth_key; imgforge does not do certificate \
                 or user sign-in"
            )),
        ),
    }
}

/// Section settings override global ones, as in Batch Shipyard.
fn merged_aad(global: &Value, section: &Value) -> serde_json::Map<String, Value> {
    let mut out = global.as_object().cloned().unwrap_or_default();
    if let Some(s) = section.as_object() {
        out.extend(s.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out.retain(|_, v| !v.is_null());
    out
}

fn register_secrets(v: &Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (SECRET_KEYS.contains(&k.as_str()), v.as_str()) {
                    (true, Some(secret)) => crate::util::redact::register(secret),
                    _ => register_secrets(v),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(register_secrets),
        _ => {}
    }
}

fn key_leaf(dotted: &str) -> &str {
    dotted.rsplit('.').next().unwrap_or(dotted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_and_region_come_from_the_batch_account_url() {
        let parse = |u: &str| batch_account_url(u);
        assert_eq!(
            parse("https://mybatch.westus2.batch.azure.com/"),
            Some(("mybatch".into(), "westus2".into()))
        );
        assert_eq!(
            parse("https://b.chinanorth2.batch.chinacloudapi.cn"),
            Some(("b".into(), "chinanorth2".into()))
        );
        assert_eq!(parse("https://mybatch.batch.azure.com/"), None);
        assert_eq!(parse("http://mybatch.westus2.batch.azure.com/"), None);
        assert_eq!(parse("https://<account>.<region>.batch.azure.com/"), None);
    }
}
