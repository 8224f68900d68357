//! A stateful stand-in for Resource Manager's Microsoft.Compute provider:
//! managed images, galleries, gallery image definitions and versions, and
//! the long-running operations that create them. Responses are the recorded
//! shapes in tests/fixtures/arm/compute (see its README); requests are
//! checked as the service checks them, so a wrong body fails a test:
//! api-version present, required properties, `osState: Generalized`,
//! Hyper-V generation V1/V2 and equal to the definition's, the parent
//! resource present, the blob's storage account in the subscription, named by
//! `storageAccountId` and in the image's region, target regions including
//! the version's own with 1–100 replicas, and no change of a version's source.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

/// How the provider behaves in one test.
#[derive(Clone)]
pub struct Knobs {
    /// Galleries that exist: (resource group, name).
    pub galleries: Vec<(String, String)>,
    /// Image definitions that exist: (resource group, gallery, name, properties).
    pub definitions: Vec<(String, String, String, Value)>,
    /// `InProgress` answers each operation gives before it ends.
    pub polls: u32,
    /// `Retry-After` on the PUT and each poll, in seconds.
    pub retry_after: u64,
    /// The first gallery version operation ends `Failed` with (code, message).
    pub fail_first_version: Option<(String, String)>,
    /// Every PUT answers 403 AuthorizationFailed.
    pub forbid_writes: bool,
    /// Batch's supportedimages page 1 links its next page on another host.
    pub batch_link_elsewhere: bool,
    /// Target regions whose replication is still running after the version succeeded.
    pub still_replicating: Vec<String>,
    /// Target regions whose replication ended `Failed`.
    pub failed_replication: Vec<String>,
    /// After its operation says `Succeeded`, a version's own
    /// `provisioningState` (`Failed`, `Creating`) instead of `Succeeded`.
    pub version_state_after: Option<String>,
    /// The succeeded operation's document carries no `status`.
    pub status_missing: bool,
    /// Resource Manager takes a token for this many requests, then answers
    /// 401 ExpiredAuthenticationToken until the client signs in again (a
    /// token's hour, in requests).
    pub token_expires_after: Option<u32>,
    /// What a disk's `beginGetAccess` hands out as `accessSAS` (a SAS URL of
    /// the blob standing for the disk's contents).
    pub disk_sas: String,
}

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs {
            galleries: vec![("images-westus2".into(), "imgforge_gallery".into())],
            definitions: Vec::new(),
            polls: 2,
            retry_after: 1,
            fail_first_version: None,
            forbid_writes: false,
            batch_link_elsewhere: false,
            still_replicating: Vec::new(),
            failed_replication: Vec::new(),
            version_state_after: None,
            status_missing: false,
            token_expires_after: None,
            disk_sas: String::new(),
        }
    }
}

/// A `Location`-polled operation (disk actions and deletes): 202 while
/// `polls_left`, then `status` with `body`.
struct Monitor {
    polls_left: u32,
    status: &'static str,
    body: Value,
}

struct Op {
    resource: String,
    polls_left: u32,
    failure: Option<(String, String)>,
}

pub struct ComputeRp {
    pub knobs: Knobs,
    resources: Mutex<HashMap<String, Value>>,
    ops: Mutex<HashMap<String, Op>>,
    monitors: Mutex<HashMap<String, Monitor>>,
    /// Disks with read access granted (an open SAS).
    granted: Mutex<std::collections::HashSet<String>>,
    version_failed: Mutex<bool>,
    fixtures: HashMap<&'static str, String>,
    /// Requests made with the current Resource Manager token.
    token_uses: Mutex<u32>,
}

pub struct Answer {
    pub status: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A storage account the subscription holds: (name, location, resource group).
pub type Account = (String, String, String);

fn err(status: &'static str, code: &str, message: &str, target: &str) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: json!({"error": {"code": code, "message": message, "target": target}}).to_string(),
    }
}

fn ok(status: &'static str, body: &Value) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

fn norm(region: &str) -> String {
    region
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Deep-merges `from` into `into` (objects by key; anything else replaced).
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

impl ComputeRp {
    pub fn new(knobs: Knobs, subscription: &str) -> ComputeRp {
        let dir = super::repo().join("tests/fixtures/arm/compute");
        let fixtures = [
            "image.json",
            "gallery.json",
            "gallery-image.json",
            "gallery-image-version.json",
            "operation-in-progress.json",
            "operation-succeeded.json",
            "operation-failed.json",
        ]
        .map(|n| {
            (
                n,
                std::fs::read_to_string(dir.join(n))
                    .unwrap()
                    .replace("{{subscription}}", subscription),
            )
        })
        .into_iter()
        .collect();
        let rp = ComputeRp {
            knobs: knobs.clone(),
            resources: Mutex::new(HashMap::new()),
            ops: Mutex::new(HashMap::new()),
            monitors: Mutex::new(HashMap::new()),
            granted: Mutex::new(std::collections::HashSet::new()),
            version_failed: Mutex::new(false),
            fixtures,
            token_uses: Mutex::new(0),
        };
        let prefix = format!("/subscriptions/{subscription}/resourceGroups");
        for (rg, g) in &knobs.galleries {
            let id = format!("{prefix}/{rg}/providers/Microsoft.Compute/galleries/{g}");
            let mut v = rp.fixture("gallery.json");
            v["id"] = id.clone().into();
            v["name"] = g.clone().into();
            rp.resources.lock().unwrap().insert(id.to_lowercase(), v);
        }
        for (rg, g, d, props) in &knobs.definitions {
            let id = format!("{prefix}/{rg}/providers/Microsoft.Compute/galleries/{g}/images/{d}");
            let mut v = rp.fixture("gallery-image.json");
            merge(&mut v["properties"], props);
            v["properties"]["provisioningState"] = "Succeeded".into();
            v["id"] = id.clone().into();
            v["name"] = d.clone().into();
            v["location"] = "westus2".into();
            rp.resources.lock().unwrap().insert(id.to_lowercase(), v);
        }
        rp
    }

    fn fixture(&self, name: &str) -> Value {
        serde_json::from_str(&self.fixtures[name]).unwrap()
    }

    /// Answers `method path?query` (a Microsoft.Compute request) or `None`
    /// when the path is not one this provider serves.
    pub fn handle(
        &self,
        method: &str,
        target: &str,
        body: &str,
        endpoint: &str,
        accounts: &[Account],
    ) -> Option<Answer> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let api = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("api-version="))
            .unwrap_or("");
        let expand = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("$expand="))
            .unwrap_or("");
        // subscriptions/{s}/providers/Microsoft.Compute/locations/{l}/operations/{id}
        if parts.len() == 8 && parts[2] == "providers" && parts[6] == "operations" {
            if let Some(a) = self.poll_monitor(parts[7], endpoint, target) {
                return Some(a);
            }
            return Some(self.poll(parts[7], api));
        }
        // subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/{kind}/…
        if parts.len() < 8 || parts[2] != "resourceGroups" || parts[5] != "Microsoft.Compute" {
            return None;
        }
        let kind = match (parts[6], parts.len()) {
            ("images", 8) => "image",
            ("galleries", 8) => "gallery",
            ("galleries", 10) if parts[8] == "images" => "definition",
            ("galleries", 12) if parts[8] == "images" && parts[10] == "versions" => "version",
            ("disks", 8) => "disk",
            ("disks", 9) => "disk-action",
            _ => return None,
        };
        let want_api = match kind {
            "image" => "2024-07-01",
            "disk" | "disk-action" => "2024-03-02",
            _ => "2025-03-03",
        };
        if api.is_empty() {
            return Some(err(
                "400 Bad Request",
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
                "",
            ));
        }
        if api != want_api {
            return Some(err(
                "400 Bad Request",
                "NoRegisteredProviderFound",
                &format!(
                    "No registered resource provider found for API version '{api}' (this stand-in serves {want_api})."
                ),
                "",
            ));
        }
        let id = path.to_string();
        match (method, kind) {
            ("POST", "disk-action") => {
                return Some(self.disk_action(&parts, body, endpoint, api));
            }
            ("DELETE", "disk") => return Some(self.delete_disk(&id, &parts, endpoint, api)),
            (_, "disk-action") => {
                return Some(err(
                    "405 Method Not Allowed",
                    "MethodNotAllowed",
                    "The method is not allowed",
                    "",
                ));
            }
            _ => {}
        }
        match method {
            "GET" => Some(self.get(&id, kind, expand)),
            "PUT" if self.knobs.forbid_writes => Some(err(
                "403 Forbidden",
                "AuthorizationFailed",
                &format!(
                    "The client '00000000-0000-0000-0000-000000000001' with object id '5f0c8a1e-2b3d-4e6f-8a9b-0c1d2e3f4a5b' does not have authorization to perform action 'Microsoft.Compute/{}/write' over scope '{id}' or the scope is invalid.",
                    parts[6]
                ),
                "",
            )),
            "PUT" => {
                let Ok(req) = serde_json::from_str::<Value>(body) else {
                    return Some(err(
                        "400 Bad Request",
                        "InvalidRequestContent",
                        "The request content was invalid and could not be deserialized.",
                        "",
                    ));
                };
                Some(self.put(&id, kind, &parts, &req, endpoint, api, accounts))
            }
            "PATCH" if kind == "version" => {
                let Ok(req) = serde_json::from_str::<Value>(body) else {
                    return Some(err(
                        "400 Bad Request",
                        "InvalidRequestContent",
                        "The request content was invalid and could not be deserialized.",
                        "",
                    ));
                };
                Some(self.patch_version(&id, &parts, &req, endpoint, api))
            }
            _ => Some(err(
                "405 Method Not Allowed",
                "MethodNotAllowed",
                "The method is not allowed",
                "",
            )),
        }
    }

    fn get(&self, id: &str, kind: &str, expand: &str) -> Answer {
        let resources = self.resources.lock().unwrap();
        let Some(v) = resources.get(&id.to_lowercase()) else {
            let name = id.rsplit('/').next().unwrap_or("");
            return err(
                "404 Not Found",
                "ResourceNotFound",
                &format!("The Resource '{name}' was not found."),
                "",
            );
        };
        let mut v = v.clone();
        if kind == "version" && expand.eq_ignore_ascii_case("ReplicationStatus") {
            let done = v["properties"]["provisioningState"] == "Succeeded";
            let summary: Vec<Value> = v["properties"]["publishingProfile"]["targetRegions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    let here = |list: &Vec<String>| {
                        list.iter()
                            .any(|s| norm(s) == norm(r["name"].as_str().unwrap_or("")))
                    };
                    let failed = done && here(&self.knobs.failed_replication);
                    let running = !done || here(&self.knobs.still_replicating);
                    json!({
                        "region": r["name"],
                        "state": if failed { "Failed" } else if running { "Replicating" } else { "Completed" },
                        "details": if failed { "Replication failed: the source blob could not be read." } else { "" },
                        "progress": if failed { 0 } else if running { 40 } else { 100 },
                    })
                })
                .collect();
            v["properties"]["replicationStatus"] = json!({
                "aggregatedState": if summary.iter().all(|r| r["state"] == "Completed") {
                    "Completed"
                } else {
                    "InProgress"
                },
                "summary": summary,
            });
        }
        ok("200 OK", &v)
    }

    fn parent(&self, parts: &[&str], upto: usize) -> Option<Value> {
        let id = format!("/{}", parts[..upto].join("/"));
        self.resources
            .lock()
            .unwrap()
            .get(&id.to_lowercase())
            .cloned()
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        id: &str,
        kind: &str,
        parts: &[&str],
        req: &Value,
        endpoint: &str,
        api: &str,
        accounts: &[Account],
    ) -> Answer {
        let bad = |message: &str, target: &str| {
            err("400 Bad Request", "InvalidParameter", message, target)
        };
        let Some(location) = req["location"].as_str().filter(|l| !l.is_empty()) else {
            return err(
                "400 Bad Request",
                "LocationRequired",
                "The location property is required for this definition.",
                "",
            );
        };
        let p = &req["properties"];
        let generation = p["hyperVGeneration"].as_str().unwrap_or("V1");
        if !matches!(generation, "V1" | "V2") {
            return bad(
                &format!("The value '{generation}' of parameter 'hyperVGeneration' is invalid."),
                "hyperVGeneration",
            );
        }
        let account_of = |uri: &str| -> Option<Account> {
            // https://{account}.blob.core.windows.net/… or Azurite's http://127.0.0.1:p/{account}/…
            let rest = uri.split_once("://")?.1;
            let (host, path) = rest.split_once('/')?;
            let name = if host.starts_with("127.0.0.1") || host.starts_with("localhost") {
                path.split('/').next()?
            } else {
                host.split('.').next()?
            };
            accounts.iter().find(|a| a.0 == name).cloned()
        };
        let mut resource;
        match kind {
            "image" => {
                let disk = &p["storageProfile"]["osDisk"];
                for field in ["osType", "osState", "blobUri"] {
                    if disk[field].as_str().is_none_or(str::is_empty) {
                        return bad(
                            &format!("Required parameter 'osDisk.{field}' is missing (null)."),
                            &format!("osDisk.{field}"),
                        );
                    }
                }
                if disk["osState"] != "Generalized" {
                    return bad(
                        "Only a generalized OS disk can be used to create an image; 'osState' must be 'Generalized'.",
                        "osDisk.osState",
                    );
                }
                let uri = disk["blobUri"].as_str().unwrap_or("");
                let Some(acct) = account_of(uri) else {
                    return bad(
                        &format!(
                            "The storage account of blob '{uri}' was not found in the subscription."
                        ),
                        "osDisk.blobUri",
                    );
                };
                if norm(&acct.1) != norm(location) {
                    return bad(
                        &format!(
                            "Source blob '{uri}' is in region '{}' but the image is in '{location}'. The blob must be in the same region as the image.",
                            acct.1
                        ),
                        "osDisk.blobUri",
                    );
                }
                resource = self.fixture("image.json");
            }
            "gallery" => {
                resource = self.fixture("gallery.json");
            }
            "disk" => {
                // Disk_Create_FromAnAzureComputeGalleryImage (DiskRP
                // 2024-03-02): FromImage with a gallery version, or with a
                // managed image's id; the source must exist.
                let c = &p["creationData"];
                if c["createOption"] != "FromImage" {
                    return bad(
                        "The value of parameter 'creationData.createOption' is invalid: this stand-in makes disks FromImage.",
                        "creationData.createOption",
                    );
                }
                let source = c["galleryImageReference"]["id"]
                    .as_str()
                    .or(c["imageReference"]["id"].as_str())
                    .unwrap_or("");
                let Some(image) = self
                    .resources
                    .lock()
                    .unwrap()
                    .get(&source.to_lowercase())
                    .cloned()
                else {
                    return err(
                        "404 Not Found",
                        "NotFound",
                        &format!("The image '{source}' was not found."),
                        "creationData",
                    );
                };
                if norm(image["location"].as_str().unwrap_or("")) != norm(location) {
                    return bad(
                        "The disk must be in the region of its source image.",
                        "location",
                    );
                }
                resource = json!({
                    "properties": {
                        "osType": "Linux",
                        "hyperVGeneration": "V2",
                        "diskSizeGB": 30,
                        "diskState": "Unattached",
                    }
                });
            }
            "definition" => {
                if self.parent(parts, 8).is_none() {
                    return err(
                        "404 Not Found",
                        "ParentResourceNotFound",
                        &format!(
                            "Can not perform requested operation on nested resource. Parent resource '{}' not found.",
                            parts[7]
                        ),
                        "",
                    );
                }
                for field in ["osType", "osState"] {
                    if p[field].as_str().is_none_or(str::is_empty) {
                        return bad(
                            &format!("Required parameter '{field}' is missing (null)."),
                            field,
                        );
                    }
                }
                for field in ["publisher", "offer", "sku"] {
                    if p["identifier"][field].as_str().is_none_or(str::is_empty) {
                        return bad(
                            &format!("Required parameter 'identifier.{field}' is missing (null)."),
                            &format!("identifier.{field}"),
                        );
                    }
                }
                // Gallery API 2025-03-03: a Generation 2 definition created
                // without a SecurityType feature is TrustedLaunchSupported
                // ("trusted launch as default"); Trusted Launch needs Gen2.
                let features = p["features"].as_array().cloned().unwrap_or_default();
                let security = features
                    .iter()
                    .find(|f| f["name"] == "SecurityType")
                    .and_then(|f| f["value"].as_str())
                    .map(str::to_string);
                if generation == "V1"
                    && security.as_deref().is_some_and(|t| {
                        t.starts_with("TrustedLaunch") || t.starts_with("Confidential")
                    })
                {
                    return bad(
                        "The value of parameter 'features.SecurityType' is invalid: Trusted Launch and Confidential VM need HyperVGeneration V2.",
                        "features",
                    );
                }
                resource = self.fixture("gallery-image.json");
                // GalleryImage_Create's purchasePlan {name, publisher,
                // product} (echoed by the merge below): each a non-empty string.
                if !p["purchasePlan"].is_null() {
                    for field in ["name", "publisher", "product"] {
                        if p["purchasePlan"][field].as_str().is_none_or(str::is_empty) {
                            return bad(
                                &format!(
                                    "Required parameter 'purchasePlan.{field}' is missing (null)."
                                ),
                                &format!("purchasePlan.{field}"),
                            );
                        }
                    }
                }
                if security.is_none() && generation == "V2" {
                    resource["properties"]["features"] =
                        json!([{"name": "SecurityType", "value": "TrustedLaunchSupported"}]);
                }
            }
            _ => {
                let Some(definition) = self.parent(parts, 10) else {
                    return err(
                        "404 Not Found",
                        "ParentResourceNotFound",
                        &format!(
                            "Can not perform requested operation on nested resource. Parent resource '{}/{}' not found.",
                            parts[7], parts[9]
                        ),
                        "",
                    );
                };
                let source = &p["storageProfile"]["osDiskImage"]["source"];
                let (Some(uri), Some(account_id)) =
                    (source["uri"].as_str(), source["storageAccountId"].as_str())
                else {
                    return bad(
                        "Required parameter 'osDiskImage.source.uri' and 'storageAccountId' are missing (null).",
                        "osDiskImage.source",
                    );
                };
                let Some(acct) = account_of(uri) else {
                    return bad(
                        &format!(
                            "The storage account of blob '{uri}' was not found in the subscription."
                        ),
                        "osDiskImage.source.uri",
                    );
                };
                let expected = format!(
                    "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{}",
                    parts[1], acct.2, acct.0
                );
                if !account_id.eq_ignore_ascii_case(&expected) {
                    return bad(
                        &format!(
                            "The storage account id '{account_id}' does not match the account of the source blob '{uri}'."
                        ),
                        "osDiskImage.source.storageAccountId",
                    );
                }
                if norm(&acct.1) != norm(location) {
                    return bad(
                        &format!(
                            "The source blob's storage account is in '{}'; it must be in the gallery image version's region '{location}'.",
                            acct.1
                        ),
                        "osDiskImage.source.uri",
                    );
                }
                let regions = p["publishingProfile"]["targetRegions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !regions.iter().any(|r| {
                    r["name"]
                        .as_str()
                        .is_some_and(|n| norm(n) == norm(location))
                }) {
                    return bad(
                        "The gallery image version's location must be one of its target regions.",
                        "publishingProfile.targetRegions",
                    );
                }
                for r in &regions {
                    let t = r["storageAccountType"].as_str().unwrap_or("Standard_LRS");
                    if !matches!(t, "Standard_LRS" | "Standard_ZRS" | "Premium_LRS") {
                        return bad(
                            &format!(
                                "The value '{t}' of parameter 'storageAccountType' is invalid."
                            ),
                            "publishingProfile.targetRegions.storageAccountType",
                        );
                    }
                    let n = r["regionalReplicaCount"].as_u64().unwrap_or(1);
                    if !(1..=100).contains(&n) {
                        return bad(
                            &format!(
                                "regionalReplicaCount {n} is out of range: it must be from 1 to 100."
                            ),
                            "publishingProfile.targetRegions.regionalReplicaCount",
                        );
                    }
                }
                let _ = definition;
                if let Some(existing) = self.resources.lock().unwrap().get(&id.to_lowercase()) {
                    let old =
                        &existing["properties"]["storageProfile"]["osDiskImage"]["source"]["uri"];
                    if old.as_str() != Some(uri) {
                        return err(
                            "409 Conflict",
                            "PropertyChangeNotAllowed",
                            "Changing property 'galleryImageVersion.properties.storageProfile.osDiskImage.source.uri' is not allowed.",
                            "galleryImageVersion.properties.storageProfile.osDiskImage.source.uri",
                        );
                    }
                }
                resource = self.fixture("gallery-image-version.json");
            }
        }
        merge(&mut resource, req);
        let name = parts.last().copied().unwrap_or("");
        resource["id"] = id.into();
        resource["name"] = name.into();
        resource["location"] = location.into();
        resource["properties"]["provisioningState"] = "Creating".into();
        let existed = self
            .resources
            .lock()
            .unwrap()
            .insert(id.to_lowercase(), resource.clone())
            .is_some();
        let failure = if kind == "version" {
            let mut failed = self.version_failed.lock().unwrap();
            match (&self.knobs.fail_first_version, *failed) {
                (Some(f), false) => {
                    *failed = true;
                    Some(f.clone())
                }
                _ => None,
            }
        } else {
            None
        };
        let op = format!("{:08x}-op-{}", self.ops.lock().unwrap().len() + 1, kind);
        self.ops.lock().unwrap().insert(
            op.clone(),
            Op {
                resource: id.to_lowercase(),
                polls_left: self.knobs.polls,
                failure,
            },
        );
        let mut a = ok(if existed { "200 OK" } else { "201 Created" }, &resource);
        a.headers.push((
            "Azure-AsyncOperation".into(),
            format!(
                "{endpoint}/subscriptions/{}/providers/Microsoft.Compute/locations/{}/operations/{op}?api-version={api}",
                parts[1],
                norm(location)
            ),
        ));
        a.headers
            .push(("Retry-After".into(), self.knobs.retry_after.to_string()));
        a
    }

    /// `PATCH …/versions/{v}` (Microsoft's REST example
    /// GalleryImageVersion_Update, GalleryRP 2024-03-03: 200 with the
    /// version, `Updating`, and an `Azure-AsyncOperation` to poll). What the
    /// service refuses: a version that is not there (404), a change of its
    /// source (409 PropertyChangeNotAllowed; the same source again is
    /// accepted, as the example sends it), a non-boolean excludeFromLatest (400).
    fn patch_version(
        &self,
        id: &str,
        parts: &[&str],
        req: &Value,
        endpoint: &str,
        api: &str,
    ) -> Answer {
        let mut resources = self.resources.lock().unwrap();
        let Some(resource) = resources.get_mut(&id.to_lowercase()) else {
            return err(
                "404 Not Found",
                "ResourceNotFound",
                &format!(
                    "The Resource 'Microsoft.Compute/galleries/{}/images/{}/versions/{}' under resource group '{}' was not found.",
                    parts[7], parts[9], parts[11], parts[3]
                ),
                "",
            );
        };
        let p = &req["properties"];
        // The example sends the version's source again; what differs from
        // what the version was made from is refused.
        let mut after = resource.clone();
        merge(&mut after, req);
        if after["properties"]["storageProfile"] != resource["properties"]["storageProfile"] {
            return err(
                "409 Conflict",
                "PropertyChangeNotAllowed",
                "Changing property 'galleryImageVersion.properties.storageProfile.source.id' is not allowed.",
                "galleryImageVersion.properties.storageProfile.source.id",
            );
        }
        let x = &p["publishingProfile"]["excludeFromLatest"];
        if !x.is_null() && !x.is_boolean() {
            return err(
                "400 Bad Request",
                "InvalidParameter",
                &format!("The value '{x}' of parameter 'excludeFromLatest' is invalid."),
                "excludeFromLatest",
            );
        }
        merge(resource, req);
        resource["properties"]["provisioningState"] = "Updating".into();
        let location = resource["location"]
            .as_str()
            .unwrap_or("westus2")
            .to_string();
        let answer = resource.clone();
        drop(resources);
        let op = format!("{:08x}-op-update", self.ops.lock().unwrap().len() + 1);
        self.ops.lock().unwrap().insert(
            op.clone(),
            Op {
                resource: id.to_lowercase(),
                polls_left: self.knobs.polls,
                failure: None,
            },
        );
        let mut a = ok("200 OK", &answer);
        a.headers.push((
            "Azure-AsyncOperation".into(),
            format!(
                "{endpoint}/subscriptions/{}/providers/Microsoft.Compute/locations/{}/operations/{op}?api-version={api}",
                parts[1],
                norm(&location)
            ),
        ));
        a.headers
            .push(("Retry-After".into(), self.knobs.retry_after.to_string()));
        a
    }

    fn poll(&self, op: &str, api: &str) -> Answer {
        if api.is_empty() {
            return err(
                "400 Bad Request",
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
                "",
            );
        }
        let mut ops = self.ops.lock().unwrap();
        let Some(o) = ops.get_mut(op) else {
            return err(
                "404 Not Found",
                "NotFound",
                "The operation was not found.",
                "",
            );
        };
        let text = |name: &str| self.fixtures[name].replace("{{operation}}", op);
        if o.polls_left > 0 {
            o.polls_left -= 1;
            let mut a = Answer {
                status: "200 OK",
                headers: Vec::new(),
                body: text("operation-in-progress.json"),
            };
            a.headers
                .push(("Retry-After".into(), self.knobs.retry_after.to_string()));
            return a;
        }
        let mut resources = self.resources.lock().unwrap();
        let r = resources.get_mut(&o.resource).unwrap();
        match &o.failure {
            Some((code, message)) => {
                r["properties"]["provisioningState"] = "Failed".into();
                Answer {
                    status: "200 OK",
                    headers: Vec::new(),
                    body: text("operation-failed.json")
                        .replace("{{code}}", code)
                        .replace("{{message}}", message),
                }
            }
            None => {
                let state = match &self.knobs.version_state_after {
                    Some(s) if o.resource.contains("/versions/") => s.clone(),
                    _ => "Succeeded".to_string(),
                };
                r["properties"]["provisioningState"] = state.into();
                Answer {
                    status: "200 OK",
                    headers: Vec::new(),
                    body: if self.knobs.status_missing {
                        "{}".to_string()
                    } else {
                        text("operation-succeeded.json")
                    },
                }
            }
        }
    }

    /// A request with the Resource Manager token: whether the token has
    /// expired (`token_expires_after`).
    pub fn token_expired(&self) -> bool {
        let mut uses = self.token_uses.lock().unwrap();
        *uses += 1;
        self.knobs.token_expires_after.is_some_and(|n| *uses > n)
    }

    /// A new Resource Manager token was issued.
    pub fn token_renewed(&self) {
        *self.token_uses.lock().unwrap() = 0;
    }

    /// `POST …/disks/{d}/beginGetAccess` (Disk_BeginGetAccess: `access`,
    /// `durationInSeconds`; 202 with a `Location` answering the `accessSAS`)
    /// and `…/endGetAccess` (Disk_EndGetAccess: 202, then 200).
    fn disk_action(&self, parts: &[&str], body: &str, endpoint: &str, api: &str) -> Answer {
        let disk = parts[..8].join("/");
        let disk = format!("/{disk}").to_lowercase();
        if !self.resources.lock().unwrap().contains_key(&disk) {
            return err(
                "404 Not Found",
                "ResourceNotFound",
                &format!(
                    "The Resource 'Microsoft.Compute/disks/{}' under resource group '{}' was not found.",
                    parts[7], parts[3]
                ),
                "",
            );
        }
        let result = match parts[8] {
            "beginGetAccess" => {
                let req: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                if req["access"] != "Read"
                    || req["durationInSeconds"].as_u64().is_none_or(|d| d == 0)
                {
                    return err(
                        "400 Bad Request",
                        "InvalidParameter",
                        "The value of parameter 'grantAccessData' is invalid: access Read and a positive durationInSeconds are required.",
                        "grantAccessData",
                    );
                }
                self.granted.lock().unwrap().insert(disk);
                json!({"accessSAS": self.knobs.disk_sas})
            }
            "endGetAccess" => {
                self.granted.lock().unwrap().remove(&disk);
                Value::Null
            }
            _ => {
                return err("404 Not Found", "NotFound", "No such action.", "");
            }
        };
        self.monitor(parts[1], endpoint, api, "200 OK", result)
    }

    /// `DELETE …/disks/{d}` (Disk_Delete: 202 and a `Location`, then 200;
    /// 204 when there is no such disk). A disk with read access granted is
    /// refused (409), as Azure refuses to delete a disk being exported.
    fn delete_disk(&self, id: &str, parts: &[&str], endpoint: &str, api: &str) -> Answer {
        if self.granted.lock().unwrap().contains(&id.to_lowercase()) {
            return err(
                "409 Conflict",
                "OperationNotAllowed",
                "The disk cannot be deleted while read access (a SAS) is granted: revoke access first.",
                "",
            );
        }
        if self
            .resources
            .lock()
            .unwrap()
            .remove(&id.to_lowercase())
            .is_none()
        {
            return Answer {
                status: "204 No Content",
                headers: Vec::new(),
                body: String::new(),
            };
        }
        self.monitor(parts[1], endpoint, api, "200 OK", Value::Null)
    }

    /// Starts a `Location`-polled operation that ends with `status` and `body`.
    fn monitor(
        &self,
        subscription: &str,
        endpoint: &str,
        api: &str,
        status: &'static str,
        body: Value,
    ) -> Answer {
        let mut monitors = self.monitors.lock().unwrap();
        let id = format!("{:08x}-monitor", monitors.len() + 1);
        monitors.insert(
            id.clone(),
            Monitor {
                polls_left: self.knobs.polls,
                status,
                body,
            },
        );
        Answer {
            status: "202 Accepted",
            headers: vec![
                (
                    "Location".into(),
                    format!(
                        "{endpoint}/subscriptions/{subscription}/providers/Microsoft.Compute/locations/westus2/operations/{id}?monitor=true&api-version={api}"
                    ),
                ),
                ("Retry-After".into(), self.knobs.retry_after.to_string()),
            ],
            body: String::new(),
        }
    }

    fn poll_monitor(&self, id: &str, endpoint: &str, target: &str) -> Option<Answer> {
        let mut monitors = self.monitors.lock().unwrap();
        let m = monitors.get_mut(id)?;
        if m.polls_left > 0 {
            m.polls_left -= 1;
            return Some(Answer {
                status: "202 Accepted",
                headers: vec![
                    ("Location".into(), format!("{endpoint}{target}")),
                    ("Retry-After".into(), self.knobs.retry_after.to_string()),
                ],
                body: String::new(),
            });
        }
        Some(Answer {
            status: m.status,
            headers: Vec::new(),
            body: if m.body.is_null() {
                String::new()
            } else {
                m.body.to_string()
            },
        })
    }

    /// Adds a resource as another client would have made it (a gallery
    /// version an azure-arm build published), `Succeeded`.
    pub fn insert(&self, id: &str, mut resource: Value) {
        resource["id"] = id.into();
        resource["name"] = id.rsplit('/').next().unwrap_or("").into();
        resource["properties"]["provisioningState"] = "Succeeded".into();
        self.resources
            .lock()
            .unwrap()
            .insert(id.to_lowercase(), resource);
    }

    /// Changes a stored resource, as another client of Resource Manager
    /// would have made it (properties a test needs that imgforge never writes).
    pub fn edit(&self, id: &str, change: impl FnOnce(&mut Value)) {
        let mut all = self.resources.lock().unwrap();
        change(all.get_mut(&id.to_lowercase()).expect("stored"));
    }

    /// The resource as stored, for assertions.
    pub fn resource(&self, id: &str) -> Option<Value> {
        self.resources
            .lock()
            .unwrap()
            .get(&id.to_lowercase())
            .cloned()
    }
}
