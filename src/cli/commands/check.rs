//! `validate` and `boot-check`: the image checked offline and booted.

use super::*;

pub(super) fn validate(args: ValidateArgs) -> Result<i32, AppError> {
    use crate::validate::{ValidateError, validate_blob, validate_file};
    let manifest = Manifest::load(&args.manifest)?;
    let plan = Plan::new(&manifest);
    let is_url = args.image.starts_with("https://") || args.image.starts_with("http://");
    let validation = if is_url {
        let blob =
            crate::azure::storage::BlobRef::parse(&args.image).map_err(ValidateError::from)?;
        // One bound for the whole command: a server that drips its answers
        // byte by byte cannot stretch it past --timeout.
        bounded(
            args.timeout,
            &crate::util::redact::redact(&args.image),
            async {
                let storage = crate::azure::storage::Storage::for_blobs(
                    std::slice::from_ref(&blob.account),
                    &[&blob],
                )
                .await?;
                validate_blob(std::sync::Arc::new(storage), blob, plan).await
            },
        )??
    } else {
        validate_file(std::path::Path::new(&args.image), &plan)?
    };
    let code = emit_report(
        &validation.report,
        false,
        args.junit.as_deref(),
        "imgforge validate",
        args.json.then_some(&validation as &dyn erased_json::Json),
    )?;
    if !args.json {
        crate::util::term::status(
            "Read",
            &format!(
                "{} bytes in {} request(s)",
                validation.read.bytes, validation.read.requests
            ),
        );
    }
    Ok(code)
}

/// One guest connection to a stand-in; its failures go to stderr, which QEMU
/// joins to the guest's socket, so they are kept short.
pub(super) fn boot_stand_in(role: &str, dir: &std::path::Path) -> Result<i32, AppError> {
    use crate::validate::boot::standin;
    let Some(role) = standin::Role::parse(role) else {
        return Err(AppError::Refused {
            message: format!("boot-stand-in: unknown role `{role}`"),
            hint: Some("the roles are wire, imds and egress".into()),
        });
    };
    standin::serve_stdio(role, dir).map_err(|source| AppError::Io {
        context: format!("boot stand-in ({})", dir.display()),
        source,
    })?;
    Ok(0)
}

pub(super) fn boot_check(args: crate::cli::args::BootCheckArgs) -> Result<i32, AppError> {
    use crate::validate::boot::{BootOptions, Firmware, closed_port};
    let plan = match &args.manifest {
        Some(m) => Some(Plan::new(&Manifest::load(m)?)),
        None => None,
    };
    let inbound = match &plan {
        Some(p) => p.firewall.inbound_tcp.clone(),
        None => {
            crate::spec::catalog::required_inbound_tcp(crate::spec::catalog::Os::Linux).to_vec()
        }
    };
    let temp = match &args.logs {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("imgforge-boot-")
                .tempdir()
                .map_err(|source| AppError::Io {
                    context: "a temporary directory for the console logs".into(),
                    source,
                })?,
        ),
    };
    let log_dir = match (&args.logs, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!("a temporary directory when --logs is absent"),
    };
    // A blob is fetched (its written ranges only) into a sparse file that
    // lives as long as the check.
    let _fetched_dir;
    let mut image = args.image.clone();
    let url = args.image.to_string_lossy().into_owned();
    if url.starts_with("https://") || url.starts_with("http://") {
        use crate::validate::ValidateError;
        let blob = crate::azure::storage::BlobRef::parse(&url).map_err(ValidateError::from)?;
        _fetched_dir = tempfile::Builder::new()
            .prefix("imgforge-boot-image-")
            .tempdir()
            .map_err(|source| AppError::Io {
                context: "a temporary directory for the fetched image".into(),
                source,
            })?;
        image = _fetched_dir.path().join("image.vhd");
        crate::util::term::status("Fetching", &crate::util::redact::redact(&url));
        let dest = image.clone();
        let fetched = bounded(
            args.fetch_timeout,
            &crate::util::redact::redact(&url),
            async {
                let storage = crate::azure::storage::Storage::for_blobs(
                    std::slice::from_ref(&blob.account),
                    &[&blob],
                )
                .await?;
                crate::validate::download_sparse(&storage, &blob, &dest).await
            },
        )??;
        crate::util::term::status(
            "Fetched",
            &format!(
                "{} of {} bytes (the blob's written ranges, gaps under 64 KiB bridged) in {} request(s)",
                fetched.bytes, fetched.length, fetched.requests
            ),
        );
    }
    use std::sync::Arc;
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _signals = crate::util::signals::SignalWatch::start(
        cancel.clone(),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        "interrupted: stopping QEMU",
    );
    let firmwares = match (args.firmware.as_deref(), args.uefi) {
        (Some("uefi"), _) => vec![Firmware::Uefi],
        (Some("both"), _) | (None, true) => vec![Firmware::Bios, Firmware::Uefi],
        _ => vec![Firmware::Bios],
    };
    crate::util::term::status(
        "Booting",
        &format!(
            "{} ({}) under QEMU, up to {} s each",
            crate::util::redact::redact(&url),
            firmwares
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(" and "),
            args.timeout
        ),
    );
    let mut result = crate::validate::boot::boot_check(
        &image,
        &BootOptions {
            firmwares,
            timeout: std::time::Duration::from_secs(args.timeout),
            must_answer: crate::validate::boot::must_answer(plan.as_ref()),
            must_be_dropped: closed_port(&inbound),
            log_dir: log_dir.clone(),
            node: crate::validate::boot::inside::NodeChecks::from_plan(plan.as_ref()),
            stand_in: crate::validate::boot::stand_in_program()?,
            cancel,
        },
    )?;
    if image != args.image {
        // A fetched blob is named by its URL (without its SAS), not the temporary file.
        result.report.subject = crate::util::redact::redact(&url);
    }
    if let Some(t) = temp {
        // The report names the console logs: they stay, pass or fail
        // (--logs DIR chooses where).
        crate::util::term::status("Logs", &format!("console logs in {}", t.keep().display()));
    }
    if !args.json {
        for run in result.runs.iter().filter(|r| !r.tail.is_empty()) {
            eprintln!("last console lines ({}):", run.firmware.name());
            for l in &run.tail {
                eprintln!("    {l}");
            }
        }
    }
    emit_report(
        &result.report,
        false,
        None,
        "imgforge boot-check",
        args.json.then_some(&result as &dyn erased_json::Json),
    )
}
