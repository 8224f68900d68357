//! `replicate` and `upload`: copies the pool can use.

use super::*;

pub(super) fn print_replication(
    report: &crate::replicate::Replication,
    json: bool,
    plan: crate::replicate::CopyPlan,
    validation: Option<Vec<crate::replicate::CopyCheck>>,
) -> Result<(), AppError> {
    if json {
        let doc = crate::replicate::ReplicationDoc {
            plan,
            result: report,
            validation,
        };
        print_stdout(&to_json(&doc))?;
        return Ok(());
    }
    let mut text = String::new();
    for c in &report.copies {
        text.push_str(&c.url);
        text.push('\n');
    }
    print_stdout(&text)?;
    let moved = report.bytes_downloaded + report.bytes_uploaded;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    crate::util::term::status(
        "Replicated",
        &format!(
            "{} verified cop{} of {} ({:.1} MiB valid of {:.1} MiB) in {:.1} s; {:.1} MiB through imgforge, {:.1} MiB/s, {} retries",
            report.copies.len(),
            if report.copies.len() == 1 { "y" } else { "ies" },
            report.source,
            mib(report.valid_bytes),
            mib(report.source_length),
            report.duration_s,
            mib(moved),
            mib(moved) / report.duration_s.max(0.001),
            report.retries
        ),
    );
    Ok(())
}

pub(super) fn replicate(args: ReplicateArgs) -> Result<i32, AppError> {
    use crate::azure::storage::BlobRef;
    use crate::replicate::{self, Source};
    let manifest = args.manifest.as_deref().map(Manifest::load).transpose()?;
    let plan = manifest.as_ref().map(Plan::new);
    let source = BlobRef::parse(&args.source).map_err(crate::replicate::ReplicateError::from)?;
    let name = args.name.clone().unwrap_or_else(|| {
        source
            .blob
            .rsplit('/')
            .next()
            .unwrap_or(&source.blob)
            .to_string()
    });
    let copy_plan =
        replicate::CopyPlan::new(plan.as_ref(), &args.to, args.container.as_deref(), name)?;
    let accounts = copy_plan.accounts.clone();
    let template = crate::azure::storage::endpoint_template(args.storage.blob_endpoint.as_deref())?;
    let destinations = copy_plan.destinations(&template);
    // A source with its own SAS needs no credentials for its account.
    let mut involved = accounts.clone();
    if source.sas.is_none() && !involved.contains(&source.account) {
        involved.push(source.account.clone());
    }
    let rt = runtime()?;
    let region = args
        .storage
        .region
        .clone()
        .or_else(|| plan.as_ref().and_then(|p| p.pool.batch_region.clone()));
    check_region(&rt, &accounts, region.as_deref(), args.storage.json)?;
    let (cancel, _signals) = stop_on_interrupt();
    let timed_out = stop_after(&cancel, args.storage.timeout);
    let report = rt
        .block_on(replicate::copy_to(
            &involved,
            Source::Blob(source),
            destinations,
            replicate::Options {
                parallel: args.storage.parallel,
                max_requests: args.storage.max_requests,
                show_progress: !args.storage.json,
                server_copy: !args.no_server_copy,
                cancel: cancel.clone(),
                verify: args.storage.verify,
            },
        ))
        .map_err(|e| timed_out_or(e, &timed_out, args.storage.timeout))?;
    // With a manifest, each copy is also checked remotely, as `build` does.
    let checks = match (&plan, args.no_validate) {
        (Some(plan), false) => {
            let results = rt.block_on(replicate::validate_copies(&report.copies, plan, &cancel))?;
            // Copies are verified; only their validation was cut short.
            Some(results.ok_or_else(|| {
                timed_out_or(
                    replicate::ReplicateError::Cancelled,
                    &timed_out,
                    args.storage.timeout,
                )
            })?)
        }
        _ => None,
    };
    let validation = checks
        .as_ref()
        .map(|v| v.iter().map(replicate::CopyCheck::of).collect());
    print_replication(&report, args.storage.json, copy_plan, validation)?;
    let failed: Vec<&crate::validate::Validation> = checks
        .iter()
        .flatten()
        .filter(|v| v.report.failed())
        .collect();
    if let Some(checks) = &checks
        && !args.storage.json
    {
        crate::util::term::status(
            "Checked",
            &format!(
                "{} cop{}: {} failed validation",
                checks.len(),
                if checks.len() == 1 { "y" } else { "ies" },
                failed.len()
            ),
        );
    }
    for v in &failed {
        crate::util::term::error(&format!(
            "{} failed validation: {}",
            v.report.subject,
            v.report
                .failures()
                .map(|f| format!("{} ({})", f.id, f.message))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(if failed.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// With a region, the destination accounts must be there before a byte moves.
pub(super) fn check_region(
    rt: &tokio::runtime::Runtime,
    accounts: &[String],
    region: Option<&str>,
    quiet: bool,
) -> Result<(), AppError> {
    if let Some(region) = region {
        let checked = rt.block_on(crate::replicate::check_region(accounts, region))?;
        if !quiet {
            crate::util::term::status("Checked", &checked);
        }
    }
    Ok(())
}

pub(super) fn upload(args: UploadArgs) -> Result<i32, AppError> {
    use crate::azure::storage::BlobRef;
    use crate::replicate::{self, Source};
    let source = Source::open_file(&args.file)?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image.vhd".into())
    });
    let template = crate::azure::storage::endpoint_template(args.storage.blob_endpoint.as_deref())?;
    let dest = BlobRef::at(&template, &args.to, &args.container, &name);
    let rt = runtime()?;
    check_region(
        &rt,
        std::slice::from_ref(&args.to),
        args.storage.region.as_deref(),
        args.storage.json,
    )?;
    let (cancel, _signals) = stop_on_interrupt();
    let timed_out = stop_after(&cancel, args.storage.timeout);
    let report = rt
        .block_on(replicate::copy_to(
            std::slice::from_ref(&args.to),
            source,
            vec![dest],
            replicate::Options {
                parallel: args.storage.parallel,
                max_requests: args.storage.max_requests,
                show_progress: !args.storage.json,
                server_copy: false,
                cancel,
                verify: args.storage.verify,
            },
        ))
        .map_err(|e| timed_out_or(e, &timed_out, args.storage.timeout))?;
    let copy_plan = replicate::CopyPlan {
        max_nodes: 0,
        vms_per_vhd: crate::spec::catalog::Os::Linux.vms_per_vhd(),
        copies_needed: 1,
        accounts: vec![args.to.clone()],
        container: args.container.clone(),
        name,
    };
    print_replication(&report, args.storage.json, copy_plan, None)?;
    Ok(exit::OK)
}

/// `--timeout`: after `seconds`, the copy stops at its next safe point (the
/// same flag Ctrl-C sets); the returned flag says the time ran out.
fn stop_after(
    cancel: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    seconds: u64,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::Ordering;
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (cancel, flag) = (cancel.clone(), timed_out.clone());
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(seconds));
        flag.store(true, Ordering::Relaxed);
        cancel.store(true, Ordering::Relaxed);
    });
    timed_out
}

/// A stop that came from `--timeout`, not Ctrl-C, is a failure (exit 1)
/// that says so; anything else is as it was.
fn timed_out_or(
    e: crate::replicate::ReplicateError,
    timed_out: &std::sync::atomic::AtomicBool,
    seconds: u64,
) -> AppError {
    if matches!(e, crate::replicate::ReplicateError::Cancelled)
        && timed_out.load(std::sync::atomic::Ordering::Relaxed)
    {
        AppError::Rejected {
            message: format!(
                "stopped after --timeout {seconds} s at a safe point; the copies made so far are kept"
            ),
            hint: Some(
                "rerun the same command to finish them (raise --timeout for a long copy)".into(),
            ),
        }
    } else {
        e.into()
    }
}
