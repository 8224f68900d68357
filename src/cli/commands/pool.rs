//! `pool snippet`, `pool check` and `skus`: the Batch Shipyard side.

use super::*;

pub(super) fn pool(cmd: PoolCommand) -> Result<i32, AppError> {
    match cmd {
        PoolCommand::Snippet {
            manifest,
            from,
            format,
            legacy,
            out,
        } => {
            let manifest = Manifest::load(&manifest)?;
            let plan = Plan::new(&manifest);
            let record = pipeline::BuildRecord::read(&from)?;
            let refused = |why: &str, hint: &str| pipeline::BuildError::Record {
                path: from.clone(),
                why: why.to_string(),
                hint: hint.to_string(),
            };
            if record.status != BuildStatus::Succeeded {
                return Err(refused(
                    &format!(
                        "the build did not succeed (status {}{}): its image is not one to give a pool",
                        crate::util::text::name_of(&record.status),
                        record.failed_stage.map(|s| format!(", at stage `{}`", s.name())).unwrap_or_default()
                    ),
                    "finish it (`imgforge build MANIFEST --resume DIR`), or pass a succeeded build's record",
                )
                .into());
            }
            let image = record
                .pool_image()
                .map_err(|no| refused(no.message(), no.hint()))?;
            let text = crate::pool::output::render(&plan, &image, format, legacy)
                .map_err(|r| refused(&r.message, &r.hint))?;
            if let Some(out) = out {
                crate::util::fsutil::write_atomic(&out, text.as_bytes()).map_err(|source| {
                    AppError::Io {
                        context: out.display().to_string(),
                        source,
                    }
                })?;
            }
            print_stdout(&text)?;
            Ok(exit::OK)
        }
        PoolCommand::Check {
            config,
            manifest,
            online,
            credentials,
            region,
            subscription,
            account_url,
            legacy,
            json,
            junit,
            timeout,
        } => {
            let plan = match &manifest {
                Some(m) => Some(Plan::new(&Manifest::load(m)?)),
                None => None,
            };
            let config = crate::pool::ShipyardFile::load_pool(&config)?;
            let credentials = credentials
                .as_deref()
                .map(crate::pool::credentials::ShipyardCredentials::load)
                .transpose()?;
            let mut report = crate::pool::check(&config, plan.as_ref(), online, legacy);
            if online {
                let online = crate::pool::online::Online {
                    credentials: credentials.as_ref(),
                    region,
                    subscription,
                    account_url,
                };
                let findings = bounded(
                    timeout,
                    "pool check --online",
                    crate::pool::online::check(&config, &online),
                )?;
                report.findings.extend(findings);
                report = crate::report::Report::new(report.subject, report.findings);
            }
            emit_report(&report, json, junit.as_deref(), "imgforge pool check", None)
        }
    }
}

/// Prints a check report and turns it into the exit status.
pub(super) fn emit_report(
    report: &crate::report::Report,
    json: bool,
    junit: Option<&std::path::Path>,
    suite: &str,
    json_doc: Option<&dyn erased_json::Json>,
) -> Result<i32, AppError> {
    if let Some(path) = junit {
        let junit = crate::util::redact::redact(&report.to_junit(suite));
        crate::util::fsutil::write_atomic(path, junit.as_bytes()).map_err(|source| {
            AppError::Io {
                context: path.display().to_string(),
                source,
            }
        })?;
    }
    if let Some(doc) = json_doc {
        print_stdout(&with_schema(&doc.to_json_pretty()))?;
    } else if json {
        print_stdout(&to_json(report))?;
    } else {
        use std::io::IsTerminal;
        let color = crate::util::term::color_enabled(std::io::stdout().is_terminal());
        print_stdout(&crate::util::redact::redact(&report.to_text(color)))?;
    }
    Ok(if report.failed() {
        exit::FAILED
    } else {
        exit::OK
    })
}

pub(super) fn skus(json: bool) -> Result<i32, AppError> {
    #[derive(serde::Serialize)]
    struct Sku {
        distro: &'static str,
        os: crate::spec::catalog::Os,
        node_agent: &'static str,
        vms_per_vhd: u32,
        lifecycle: crate::spec::catalog::AgentStatus,
        verified: bool,
    }
    let today = crate::spec::plan::today();
    let rows: Vec<Sku> = crate::spec::catalog::DISTROS
        .iter()
        .map(|d| Sku {
            distro: d.key,
            os: d.os,
            node_agent: d.node_agent,
            vms_per_vhd: d.os.vms_per_vhd(),
            lifecycle: d.agent_status(&today),
            verified: d.node_agent_verified,
        })
        .collect();
    if json {
        print_stdout(&to_json(&serde_json::json!({ "skus": rows })))?;
    } else {
        let mut text = format!(
            "{:<14} {:<26} {:<12} {}\n",
            "DISTRO", "NODE AGENT SKU ID", "VMS PER VHD", "NEW POOLS"
        );
        for r in &rows {
            let state = match r.lifecycle {
                crate::spec::catalog::AgentStatus::Supported if !r.verified => {
                    "no Batch agent named by any primary source (check your account's supported images)".to_string()
                }
                crate::spec::catalog::AgentStatus::Supported => "supported".to_string(),
                crate::spec::catalog::AgentStatus::Ends { date, .. } => format!("until {date}"),
                crate::spec::catalog::AgentStatus::Retired { date, .. } => {
                    format!("retired {date}")
                }
            };
            text.push_str(&format!(
                "{:<14} {:<26} {:<12} {state}\n",
                r.distro, r.node_agent, r.vms_per_vhd
            ));
        }
        print_stdout(&text)?;
    }
    Ok(exit::OK)
}

/// `skus --online`: the Batch account's own list, node agent by node agent,
/// held against imgforge's catalog.
pub(super) fn skus_online(
    json: bool,
    credentials: Option<&std::path::Path>,
    account_url: Option<&str>,
    timeout: u64,
) -> Result<i32, AppError> {
    let credentials = credentials
        .map(crate::pool::credentials::ShipyardCredentials::load)
        .transpose()?;
    let access = crate::pool::online::batch_access(credentials.as_ref(), account_url)
        .map_err(|(message, hint)| AppError::refused(message, hint))?;
    let images = bounded(
        timeout,
        "skus --online",
        crate::azure::batch::supported_images(&access.url, &access.principal, &access.resource),
    )??;
    let today = crate::spec::plan::today();
    let agents = crate::azure::batch::agents(&images, &today);
    #[derive(serde::Serialize)]
    struct Agent<'a> {
        #[serde(flatten)]
        support: &'a crate::azure::batch::AgentSupport,
        /// The catalog's distros with this node agent.
        distros: Vec<&'static str>,
    }
    #[derive(serde::Serialize)]
    struct NotListed {
        distro: &'static str,
        node_agent: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        account_url: &'a str,
        today: &'a str,
        node_agents: Vec<Agent<'a>>,
        /// Catalog distros whose node agent this account does not list.
        not_listed: Vec<NotListed>,
        images: &'a [crate::azure::batch::SupportedImage],
    }
    let doc = Doc {
        account_url: &access.url,
        today: &today,
        node_agents: agents
            .iter()
            .map(|a| Agent {
                support: a,
                distros: crate::spec::catalog::DISTROS
                    .iter()
                    .filter(|d| d.node_agent.eq_ignore_ascii_case(&a.node_agent))
                    .map(|d| d.key)
                    .collect(),
            })
            .collect(),
        not_listed: crate::spec::catalog::DISTROS
            .iter()
            .filter(|d| crate::azure::batch::find(&agents, d.node_agent).is_none())
            .map(|d| NotListed {
                distro: d.key,
                node_agent: d.node_agent,
            })
            .collect(),
        images: &images,
    };
    if json {
        print_stdout(&to_json(&doc))?;
        return Ok(exit::OK);
    }
    let mut text = format!(
        "Batch account {} (from {}): {} image(s), {} node agent(s)\n\n{:<28} {:<8} {:<7} {:<22} {}\n",
        access.url,
        access.url_from,
        images.len(),
        agents.len(),
        "NODE AGENT SKU ID",
        "OS",
        "IMAGES",
        "NEW POOLS",
        "IMGFORGE DISTRO"
    );
    for a in &doc.node_agents {
        let state = match (a.support.status, &a.support.end_of_life) {
            ("retired", Some(d)) => format!("retired {d}"),
            ("ends", Some(d)) => format!("until {d}"),
            _ => "supported".to_string(),
        };
        text.push_str(&format!(
            "{:<28} {:<8} {:<7} {:<22} {}\n",
            a.support.node_agent,
            a.support.os_type,
            a.support.images,
            state,
            if a.distros.is_empty() {
                "-".to_string()
            } else {
                a.distros.join(", ")
            }
        ));
    }
    text.push_str(&format!(
        "\n{:<28} {:<52} {:<11} {}\n",
        "NODE AGENT SKU ID", "IMAGE (publisher/offer/sku)", "VERIFIED", "END OF LIFE"
    ));
    for i in &images {
        text.push_str(&format!(
            "{:<28} {:<52} {:<11} {}\n",
            i.node_agent,
            format!("{}/{}/{}", i.publisher, i.offer, i.sku),
            i.verification,
            i.end_of_life.as_deref().unwrap_or("-")
        ));
    }
    if !doc.not_listed.is_empty() {
        let names: Vec<String> = doc
            .not_listed
            .iter()
            .map(|n| format!("{} ({})", n.node_agent, n.distro))
            .collect();
        text.push_str(&format!(
            "\nnot listed by this account (Batch creates no pool with them here): {}\n",
            names.join(", ")
        ));
    }
    print_stdout(&crate::util::redact::redact(&text))?;
    Ok(exit::OK)
}
