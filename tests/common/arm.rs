//! A loopback stand-in for Entra ID and Resource Manager answering with
//! recorded response shapes (tests/fixtures/arm, tests/fixtures/batch).
#![allow(dead_code)]

use super::*;

/// The Resource Manager subscription the ARM fixtures describe.
pub const ARM_SUBSCRIPTION: &str = "7c1d0f2e-3a4b-4c5d-8e6f-90a1b2c3d4e5";

/// A loopback stand-in for Entra ID's token endpoint and Resource Manager's
/// storage account list, answering with the recorded shapes in
/// tests/fixtures/arm. It checks what a real one checks: the tenant, client
/// id and secret; the bearer token; the subscription.
pub struct ArmReplay {
    pub port: u16,
    /// Request lines and bodies, in arrival order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// The Microsoft.Compute provider's state (images, galleries, versions).
    pub compute: std::sync::Arc<compute::ComputeRp>,
}

pub struct ArmExpect {
    pub tenant: String,
    pub client_id: String,
    pub secret: String,
    /// Answer the list with 403 AuthorizationFailed (a principal without Reader).
    pub forbid_list: bool,
    /// The Batch account `imgbatch` (resource group `batch-westus2`):
    /// `UserSubscription` or `BatchService`.
    pub pool_allocation_mode: &'static str,
}

impl ArmExpect {
    /// What the environment of `imgforge()` signs in as; a Reader; a User
    /// Subscription Batch account.
    pub fn env_principal() -> ArmExpect {
        ArmExpect {
            tenant: ENV_TENANT_ID.into(),
            client_id: ENV_CLIENT_ID.into(),
            secret: CANARY.into(),
            forbid_list: false,
            pool_allocation_mode: "UserSubscription",
        }
    }
}

impl ArmReplay {
    pub fn start(expect: ArmExpect) -> ArmReplay {
        ArmReplay::start_with(expect, compute::Knobs::default())
    }

    pub fn start_with(expect: ArmExpect, knobs: compute::Knobs) -> ArmReplay {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let compute_rp = std::sync::Arc::new(compute::ComputeRp::new(knobs, ARM_SUBSCRIPTION));
        // The subscription's storage accounts, as the list fixtures hold them.
        let accounts: std::sync::Arc<Vec<compute::Account>> = std::sync::Arc::new(
            [
                "storage-accounts-page-1.json",
                "storage-accounts-page-2.json",
            ]
            .iter()
            .flat_map(|f| {
                let v: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(repo().join("tests/fixtures/arm").join(f)).unwrap(),
                )
                .unwrap();
                v["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        (
                            a["name"].as_str().unwrap().to_string(),
                            a["location"].as_str().unwrap().to_string(),
                            a["id"]
                                .as_str()
                                .unwrap()
                                .split('/')
                                .nth(4)
                                .unwrap()
                                .to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
        );
        let fixture = |name: &str| {
            std::fs::read_to_string(repo().join("tests/fixtures/arm").join(name))
                .unwrap()
                .replace("{{endpoint}}", &endpoint)
                .replace("{{subscription}}", ARM_SUBSCRIPTION)
        };
        let token_doc = fixture("token.json");
        let token: String =
            serde_json::from_str::<serde_json::Value>(&token_doc).unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_string();
        let answers = std::sync::Arc::new(
            [
                "token.json",
                "invalid-client-secret.json",
                "invalid-token.json",
                "authorization-failed.json",
                "subscription-not-found.json",
                "storage-accounts-page-1.json",
                "storage-accounts-page-2.json",
                "batch-account.json",
                "resource-not-found.json",
            ]
            .map(|n| (n, fixture(n)))
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        );
        let batch_answers = std::sync::Arc::new(
            [
                "supported-images-page-1.json",
                "supported-images-page-2.json",
                "authentication-failed.json",
            ]
            .map(|n| {
                let text = std::fs::read_to_string(repo().join("tests/fixtures/batch").join(n))
                    .unwrap()
                    .replace("{{endpoint}}", &endpoint);
                (n, text)
            })
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        );
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let expect = std::sync::Arc::new(expect);
        let compute_rp_thread = compute_rp.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let (answers, recorded, expect, token) = (
                    answers.clone(),
                    recorded.clone(),
                    expect.clone(),
                    token.clone(),
                );
                let (compute_rp, accounts, endpoint, batch_answers) = (
                    compute_rp_thread.clone(),
                    accounts.clone(),
                    endpoint.clone(),
                    batch_answers.clone(),
                );
                std::thread::spawn(move || {
                    let Some((head, body)) = read_request(&mut client) else {
                        return;
                    };
                    let line = head.lines().next().unwrap_or("").to_string();
                    let body = String::from_utf8_lossy(&body).into_owned();
                    recorded.lock().unwrap().push((line.clone(), body.clone()));
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                    };
                    let form: std::collections::HashMap<String, String> = body
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), imgforge::util::text::percent_decode(v)))
                        .collect();
                    let token_path = format!("POST /{}/oauth2/v2.0/token ", expect.tenant);
                    let subscription = format!("GET /subscriptions/{ARM_SUBSCRIPTION}/");
                    let list_path = format!(
                        "GET /subscriptions/{ARM_SUBSCRIPTION}/providers/Microsoft.Storage/storageAccounts?"
                    );
                    // …/resourceGroups/{rg}/providers/Microsoft.Batch/batchAccounts/{name}?…
                    let batch_account = line
                        .strip_prefix(&subscription)
                        .and_then(|rest| rest.strip_prefix("resourceGroups/"))
                        .and_then(|rest| {
                            rest.split_once("/providers/Microsoft.Batch/batchAccounts/")
                        })
                        .map(|(rg, rest)| {
                            (
                                rg.to_string(),
                                rest.split('?').next().unwrap_or("").to_string(),
                            )
                        });
                    let authorized = header("authorization") == Some(format!("Bearer {token}"));
                    // Resource Manager's answer to an expired token (the shape
                    // of its ExpiredAuthenticationToken error).
                    if authorized
                        && line
                            .split(' ')
                            .nth(1)
                            .is_some_and(|t| t.starts_with("/subscriptions/"))
                        && compute_rp.token_expired()
                    {
                        let doc = r#"{"error":{"code":"ExpiredAuthenticationToken","message":"The access token expiry UTC time '12/3/2026 9:00:00 AM' is earlier than current UTC time '12/3/2026 9:00:05 AM'."}}"#;
                        let _ = client.write_all(
                            format!(
                                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                                doc.len()
                            )
                            .as_bytes(),
                        );
                        return;
                    }
                    let (method, target) = {
                        let mut it = line.split(' ');
                        (it.next().unwrap_or(""), it.next().unwrap_or(""))
                    };
                    // Azure Batch's data plane: the account's supported images.
                    if let Some(query) = target.strip_prefix("/supportedimages?") {
                        let batch_token = format!("{token}.batch");
                        let (status, doc) = if header("authorization")
                            != Some(format!("Bearer {batch_token}"))
                        {
                            // Batch checks the token's audience: an ARM token is refused.
                            (
                                "401 Unauthorized",
                                batch_answers["authentication-failed.json"].clone(),
                            )
                        } else if !query.split('&').any(|kv| kv == "api-version=2025-06-01") {
                            (
                                "400 Bad Request",
                                batch_answers["authentication-failed.json"]
                                    .replace("AuthenticationFailed", "InvalidQueryParameterValue"),
                            )
                        } else if query.contains("$skiptoken=page2") {
                            (
                                "200 OK",
                                batch_answers["supported-images-page-2.json"].clone(),
                            )
                        } else {
                            let next = if compute_rp.knobs.batch_link_elsewhere {
                                "https://elsewhere.example.com/supportedimages?api-version=2025-06-01&$skiptoken=page2".to_string()
                            } else {
                                format!(
                                    "{endpoint}/supportedimages?api-version=2025-06-01&$skiptoken=page2"
                                )
                            };
                            (
                                "200 OK",
                                batch_answers["supported-images-page-1.json"]
                                    .replace("{{next_link}}", &next),
                            )
                        };
                        let _ = client.write_all(
                            format!(
                                "HTTP/1.1 {status}\r\ncontent-type: application/json;odata=minimalmetadata\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                                doc.len()
                            )
                            .as_bytes(),
                        );
                        return;
                    }
                    if authorized
                        && target.starts_with(&format!("/subscriptions/{ARM_SUBSCRIPTION}/"))
                        && let Some(a) =
                            compute_rp.handle(method, target, &body, &endpoint, &accounts)
                    {
                        let mut head = format!(
                            "HTTP/1.1 {}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
                            a.status,
                            a.body.len()
                        );
                        for (k, v) in &a.headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str("\r\n");
                        let _ = client.write_all(head.as_bytes());
                        let _ = client.write_all(a.body.as_bytes());
                        return;
                    }
                    let (status, name) = if line.starts_with("POST ") {
                        let good = line.starts_with(&token_path)
                            && form.get("grant_type").map(String::as_str)
                                == Some("client_credentials")
                            && form.get("client_id") == Some(&expect.client_id)
                            && form.get("client_secret") == Some(&expect.secret);
                        let storage_scope = form.get("scope").map(String::as_str)
                            == Some("https://storage.azure.com/.default");
                        let batch_scope = form.get("scope").map(String::as_str)
                            == Some("https://batch.core.windows.net//.default");
                        if good && storage_scope {
                            ("200 OK", "storage-token")
                        } else if good && batch_scope {
                            ("200 OK", "batch-token")
                        } else if good {
                            compute_rp.token_renewed();
                            ("200 OK", "token.json")
                        } else {
                            ("401 Unauthorized", "invalid-client-secret.json")
                        }
                    } else if header("authorization") != Some(format!("Bearer {token}")) {
                        ("401 Unauthorized", "invalid-token.json")
                    } else if !line.starts_with(&subscription) {
                        ("404 Not Found", "subscription-not-found.json")
                    } else if let Some((rg, account)) = &batch_account {
                        if rg == "batch-westus2" && account == "imgbatch" {
                            ("200 OK", "batch-account.json")
                        } else {
                            ("404 Not Found", "resource-not-found.json")
                        }
                    } else if !line.starts_with(&list_path) {
                        ("404 Not Found", "resource-not-found.json")
                    } else if expect.forbid_list {
                        ("403 Forbidden", "authorization-failed.json")
                    } else if line.contains("$skipToken=") {
                        ("200 OK", "storage-accounts-page-2.json")
                    } else {
                        ("200 OK", "storage-accounts-page-1.json")
                    };
                    let (rg, account) = batch_account.unwrap_or_default();
                    let storage_token;
                    let template = if name == "storage-token" {
                        storage_token =
                            storage_token_response(&expect.tenant, &answers["token.json"]);
                        &storage_token
                    } else if name == "batch-token" {
                        storage_token =
                            answers["token.json"].replace(&token, &format!("{token}.batch"));
                        &storage_token
                    } else {
                        &answers[name]
                    };
                    let doc = template
                        .replace("{{pool_allocation_mode}}", expect.pool_allocation_mode)
                        .replace("{{resource_group}}", &rg)
                        .replace("{{name}}", &account)
                        .replace(
                            "{{requested_subscription}}",
                            line.split('/').nth(2).unwrap_or(""),
                        );
                    let _ = client.write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                            doc.len()
                        )
                        .as_bytes(),
                    );
                });
            }
        });
        ArmReplay {
            port,
            requests,
            compute: compute_rp,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The scopes asked for, in order.
    pub fn token_scopes(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(line, _)| line.starts_with("POST "))
            .filter_map(|(_, body)| {
                body.split('&')
                    .find_map(|kv| kv.strip_prefix("scope="))
                    .map(imgforge::util::text::percent_decode)
            })
            .collect()
    }

    pub fn request_lines(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(l, _)| l.clone())
            .collect()
    }
}

/// The token endpoint's answer (tests/fixtures/arm/token.json) for the Azure
/// Storage scope: an access token shaped as Entra ID issues them (a JWT with
/// audience, v1 issuer, tenant, validity), which Azurite's `--oauth basic` checks.
fn storage_token_response(tenant: &str, arm_answer: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = format!(
        "{}.{}.{}",
        b64(serde_json::json!({"typ": "JWT", "alg": "RS256"})),
        b64(serde_json::json!({
            "aud": "https://storage.azure.com",
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "tid": tenant,
            "iat": now - 300,
            "nbf": now - 300,
            "exp": now + 3600,
            "ver": "1.0"
        })),
        "bm90LXNpZ25lZA"
    );
    let mut doc: serde_json::Value = serde_json::from_str(arm_answer).unwrap();
    doc["access_token"] = jwt.into();
    doc.to_string()
}
