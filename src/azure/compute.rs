//! Resource Manager's compute surface, as plain REST over `arm::Arm`:
//! managed images, Azure Compute Gallery image definitions and versions, and
//! the long-running operations that create them. Knows nothing of manifests.
//!
//! Why not `azure_mgmt_compute`: that crate is frozen at 2022 API versions
//! and takes minutes to compile; what imgforge needs is six calls.
//!
//! - `PUT …/providers/Microsoft.Compute/images/{name}?api-version=2024-07-01`
//! - `PUT …/galleries/{g}/images/{def}?api-version=2025-03-03`
//! - `PUT …/galleries/{g}/images/{def}/versions/{v}?api-version=2025-03-03`
//! - `GET` of each (404: absent), the version with `$expand=ReplicationStatus`
//! - `PATCH …/versions/{v}` with `publishingProfile.excludeFromLatest` (promote)
//!
//! A PUT answers 200/201 with `provisioningState` and, while Azure works,
//! an `Azure-AsyncOperation` (or `Location`) URL to poll, with `Retry-After`.
//! The operation's document is `{"status": "InProgress" | "Succeeded" |
//! "Failed" | "Canceled", "error"?: {"code", "message"}}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::azure::arm::{Arm, ArmError, hint_for};
use crate::util::text::encode_component;

/// api-version of Microsoft.Compute/images.
pub const IMAGES_API: &str = "2024-07-01";
/// api-version of Microsoft.Compute/galleries (Compute Gallery RP).
pub const GALLERY_API: &str = "2025-03-03";

/// How long to wait for a long-running operation, and how to report it.
pub struct Wait<'a> {
    pub timeout: Duration,
    pub cancel: &'a AtomicBool,
    /// Called with a line whenever the state changes, and every `every`.
    pub progress: &'a mut dyn FnMut(&str),
    pub every: Duration,
}

/// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/…` ids.
pub fn image_id(subscription: &str, group: &str, name: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/images/{}",
        encode_component(subscription),
        encode_component(group),
        encode_component(name)
    )
}

pub fn gallery_id(subscription: &str, group: &str, gallery: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/galleries/{}",
        encode_component(subscription),
        encode_component(group),
        encode_component(gallery)
    )
}

pub fn definition_id(gallery_id: &str, definition: &str) -> String {
    format!("{gallery_id}/images/{}", encode_component(definition))
}

pub fn version_id(definition_id: &str, version: &str) -> String {
    format!("{definition_id}/versions/{}", encode_component(version))
}

pub fn storage_account_id(subscription: &str, group: &str, account: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{}",
        encode_component(subscription),
        encode_component(group),
        encode_component(account)
    )
}

impl Arm {
    fn resource_url(&self, id: &str, api: &str, expand: Option<&str>) -> String {
        let mut url = format!("{}{id}?api-version={api}", self.endpoint());
        if let Some(e) = expand {
            url.push_str("&$expand=");
            url.push_str(&encode_component(e));
        }
        url
    }

    /// The resource, or `None` when Resource Manager answers 404.
    pub async fn get_resource(
        &mut self,
        op: &'static str,
        id: &str,
        api: &str,
        expand: Option<&str>,
    ) -> Result<Option<Value>, ArmError> {
        let url = self.resource_url(id, api, expand);
        Ok(self
            .send(op, reqwest::Method::GET, &url, None, true)
            .await?
            .map(|a| a.body))
    }

    /// PUT `body` at `id`, wait for the operation to end, and return the
    /// resource as Resource Manager then describes it.
    pub async fn put_and_wait(
        &mut self,
        op: &'static str,
        id: &str,
        api: &str,
        body: &Value,
        wait: &mut Wait<'_>,
    ) -> Result<Value, ArmError> {
        self.write_and_wait(op, reqwest::Method::PUT, id, api, body, wait)
            .await
    }

    /// PATCH `body` (the properties to change) at `id`, as `put_and_wait`.
    pub async fn patch_and_wait(
        &mut self,
        op: &'static str,
        id: &str,
        api: &str,
        body: &Value,
        wait: &mut Wait<'_>,
    ) -> Result<Value, ArmError> {
        self.write_and_wait(op, reqwest::Method::PATCH, id, api, body, wait)
            .await
    }

    /// A POST action (`…/beginGetAccess`) or a DELETE, waited for: Resource
    /// Manager answers 200/204 with the result, or 202 with a `Location`
    /// polled (honouring `Retry-After`, within `wait.timeout`) until it
    /// answers other than 202 — that answer's body is the result. A DELETE
    /// of what is already gone (404) is done.
    pub async fn act_and_wait(
        &mut self,
        op: &'static str,
        method: reqwest::Method,
        path: &str,
        api: &str,
        body: Option<&Value>,
        wait: &mut Wait<'_>,
    ) -> Result<Value, ArmError> {
        let url = self.resource_url(path, api, None);
        let allow_404 = method == reqwest::Method::DELETE;
        let Some(mut answer) = self.send(op, method, &url, body, allow_404).await? else {
            return Ok(Value::Null);
        };
        let started = Instant::now();
        let mut last_line = Instant::now();
        (wait.progress)(&format!("{op}: {}", answer.status));
        while answer.status == 202 {
            let Some(poll) = answer.location.clone() else {
                return Err(ArmError::Protocol {
                    op,
                    message: "202 Accepted without a Location to poll".into(),
                });
            };
            let asked = Duration::from_secs(answer.retry_after.unwrap_or(5).clamp(1, 60));
            let left = wait.timeout.saturating_sub(started.elapsed());
            sleep_or_cancel(asked.min(left), wait.cancel)
                .await
                .map_err(|_| ArmError::Cancelled { op })?;
            if started.elapsed() >= wait.timeout {
                return Err(ArmError::Timeout {
                    op,
                    after_s: wait.timeout.as_secs(),
                    state: "Accepted".into(),
                });
            }
            let retry_after = answer.retry_after;
            answer = self
                .send(op, reqwest::Method::GET, &poll, None, false)
                .await?
                .expect("404 is an error here");
            answer.retry_after = answer.retry_after.or(retry_after);
            answer.location = answer.location.or(Some(poll));
            if last_line.elapsed() >= wait.every {
                (wait.progress)(&format!(
                    "{op}: running ({:.0} s)",
                    started.elapsed().as_secs_f64()
                ));
                last_line = Instant::now();
            }
        }
        Ok(answer.body)
    }

    async fn write_and_wait(
        &mut self,
        op: &'static str,
        method: reqwest::Method,
        id: &str,
        api: &str,
        body: &Value,
        wait: &mut Wait<'_>,
    ) -> Result<Value, ArmError> {
        let url = self.resource_url(id, api, None);
        let answer = self
            .send(op, method, &url, Some(body), false)
            .await?
            .expect("a write's 404 is an error");
        let state = provisioning_state(&answer.body);
        let poll = answer.async_operation.clone().or(answer.location.clone());
        let mut retry_after = answer.retry_after;
        let started = Instant::now();
        let mut last_state = state.clone();
        let mut last_line = Instant::now();
        (wait.progress)(&format!("{op}: {state}"));
        if poll.is_none() {
            // No operation to poll: the resource's own state tells.
            if is_terminal(&state) {
                return finish(op, answer.body, &state);
            }
        }
        loop {
            // The server's Retry-After is honoured within 1–60 s, and never
            // past the operation's own time limit.
            let asked = Duration::from_secs(retry_after.unwrap_or(15).clamp(1, 60));
            let left = wait.timeout.saturating_sub(started.elapsed());
            sleep_or_cancel(asked.min(left), wait.cancel)
                .await
                .map_err(|_| ArmError::Cancelled { op })?;
            if started.elapsed() >= wait.timeout {
                return Err(ArmError::Timeout {
                    op,
                    after_s: wait.timeout.as_secs(),
                    state: last_state,
                });
            }
            let (state, error, next_retry) = match &poll {
                Some(poll_url) => {
                    let a = self
                        .send(op, reqwest::Method::GET, poll_url, None, false)
                        .await?
                        .expect("404 is an error here");
                    // Azure-AsyncOperation: {"status"} always, a string;
                    // Location: 202 while running, then the resource (or
                    // nothing) with 200. A status document without a status
                    // says nothing, and is never taken for success.
                    let from_async = answer.async_operation.is_some();
                    let state = match a.body["status"].as_str() {
                        Some(s) => s.to_string(),
                        None if a.status == 202 => "InProgress".to_string(),
                        None if from_async => {
                            return Err(ArmError::Protocol {
                                op,
                                message: format!(
                                    "the operation's status document has no `status` string: {}",
                                    a.body.to_string().chars().take(200).collect::<String>()
                                ),
                            });
                        }
                        None => "Succeeded".to_string(),
                    };
                    (state, a.body["error"].clone(), a.retry_after)
                }
                None => {
                    let body = self.get_resource(op, id, api, None).await?.ok_or_else(|| {
                        ArmError::Protocol {
                            op,
                            message: "the resource vanished while being created".into(),
                        }
                    })?;
                    (provisioning_state(&body), Value::Null, None)
                }
            };
            retry_after = next_retry.or(retry_after);
            if state != last_state || last_line.elapsed() >= wait.every {
                (wait.progress)(&format!(
                    "{op}: {state} ({:.0} s)",
                    started.elapsed().as_secs_f64()
                ));
                last_line = Instant::now();
            }
            last_state = state.clone();
            match state.as_str() {
                "Succeeded" => {
                    let body = self.get_resource(op, id, api, None).await?.ok_or_else(|| {
                        ArmError::Protocol {
                            op,
                            message: "the operation succeeded but the resource is absent".into(),
                        }
                    })?;
                    // The resource itself must agree: one left Failed or still
                    // Creating is no image, whatever the operation said.
                    let resource_state = provisioning_state(&body);
                    if resource_state != "Succeeded" {
                        return Err(ArmError::Operation {
                            op,
                            state: resource_state,
                            code: String::new(),
                            message: "the operation reported Succeeded, but the resource's provisioningState is not".into(),
                            hint: hint_for(op, "", 400).to_string(),
                        });
                    }
                    return Ok(body);
                }
                "Failed" | "Canceled" => {
                    let code = error["code"].as_str().unwrap_or("").to_string();
                    return Err(ArmError::Operation {
                        op,
                        state,
                        hint: hint_for(op, &code, 400).to_string(),
                        code: crate::azure::http::code_suffix(&code),
                        message: crate::util::redact::redact(
                            error["message"].as_str().unwrap_or("no message"),
                        ),
                    });
                }
                _ => {}
            }
        }
    }
}

/// `properties.provisioningState`, "Succeeded" when absent (older shapes).
pub fn provisioning_state(resource: &Value) -> String {
    resource["properties"]["provisioningState"]
        .as_str()
        .unwrap_or("Succeeded")
        .to_string()
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "Succeeded" | "Failed" | "Canceled")
}

fn finish(op: &'static str, body: Value, state: &str) -> Result<Value, ArmError> {
    if state == "Succeeded" {
        Ok(body)
    } else {
        Err(ArmError::Operation {
            op,
            state: state.to_string(),
            code: String::new(),
            message: "the resource's provisioningState".into(),
            hint: hint_for(op, "", 400).to_string(),
        })
    }
}

async fn sleep_or_cancel(d: Duration, cancel: &AtomicBool) -> Result<(), ()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cancel.load(Ordering::Relaxed) {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(100).min(end - Instant::now())).await;
    }
    if cancel.load(Ordering::Relaxed) {
        Err(())
    } else {
        Ok(())
    }
}

/// An image definition's security type, from its `SecurityType` feature in
/// `properties.features` (`None`: no feature, a standard definition):
/// `TrustedLaunchSupported`, `TrustedLaunch`, `ConfidentialVM`, …
pub fn security_type(definition: &Value) -> Option<String> {
    definition["properties"]["features"]
        .as_array()?
        .iter()
        .filter(|f| f["name"].as_str() == Some("SecurityType"))
        .filter_map(|f| f["value"].as_str())
        .find(|v| !v.eq_ignore_ascii_case("Standard"))
        .map(str::to_string)
}

/// Which VMs an image definition's versions run, by security type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsOn {
    /// Standard VMs (and Trusted Launch VMs where `TrustedLaunchSupported`).
    Standard,
    /// Trusted Launch VMs only: the pool needs securityProfile trustedLaunch.
    TrustedLaunchOnly,
    /// Confidential VMs only.
    ConfidentialOnly,
}

pub fn runs_on(security_type: Option<&str>) -> RunsOn {
    match security_type {
        None => RunsOn::Standard,
        Some(t) if t.eq_ignore_ascii_case("TrustedLaunchSupported") => RunsOn::Standard,
        Some(t) if t.eq_ignore_ascii_case("TrustedLaunchAndConfidentialVmSupported") => {
            RunsOn::Standard
        }
        Some(t) if t.to_ascii_lowercase().starts_with("confidential") => RunsOn::ConfidentialOnly,
        Some(_) => RunsOn::TrustedLaunchOnly,
    }
}

/// Per region, how far a gallery version's replication got:
/// `properties.replicationStatus.summary[]` (`$expand=ReplicationStatus`).
pub fn replication_summary(version: &Value) -> Vec<(String, String, u64)> {
    version["properties"]["replicationStatus"]["summary"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["region"].as_str().unwrap_or("").to_string(),
                        r["state"].as_str().unwrap_or("Unknown").to_string(),
                        r["progress"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_resource_manager_paths() {
        let g = gallery_id("s-1", "rg", "imgforge_gallery");
        let d = definition_id(&g, "gpu-ubuntu");
        assert_eq!(
            version_id(&d, "1.0.0"),
            "/subscriptions/s-1/resourceGroups/rg/providers/Microsoft.Compute/galleries/imgforge_gallery/images/gpu-ubuntu/versions/1.0.0"
        );
        assert_eq!(
            image_id("s", "my rg", "a"),
            "/subscriptions/s/resourceGroups/my%20rg/providers/Microsoft.Compute/images/a"
        );
    }

    #[test]
    fn replication_status_is_read_per_region() {
        // The shape of GalleryImageVersion_Get_WithReplicationStatus.json.
        let v = serde_json::json!({"properties": {"replicationStatus": {
        "aggregatedState": "InProgress",
        "summary": [
            {"region": "West US", "state": "Completed", "details": "", "progress": 100},
            {"region": "East US", "state": "Replicating", "details": "", "progress": 40}
        ]}}});
        assert_eq!(
            replication_summary(&v),
            vec![
                ("West US".into(), "Completed".into(), 100),
                ("East US".into(), "Replicating".into(), 40)
            ]
        );
        assert_eq!(provisioning_state(&v), "Succeeded");
    }
}
