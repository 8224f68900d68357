//! `publish`: a managed image or gallery version from a VHD.

use super::*;

pub(super) fn publish(args: crate::cli::args::PublishArgs) -> Result<i32, AppError> {
    use crate::publish::{Options, Source};
    let manifest = Manifest::load(&args.manifest)?;
    let plan = Plan::new(&manifest);
    let Some(publish) = plan.publish.as_ref() else {
        return Err(AppError::refused(
            format!(
                "{}: target = \"vhd\": there is nothing to publish",
                args.manifest.display()
            ),
            "set [build] target = \"managed_image\" or \"gallery\" (with location, resource_group, storage_account)",
        ));
    };
    // Named before the image is read: that may take a while, this not.
    let missing = crate::publish::missing_variables();
    if !missing.is_empty() {
        return Err(crate::publish::PublishError::Credentials(missing).into());
    }
    let is_url = args.image.starts_with("https://") || args.image.starts_with("http://");
    let source = if is_url {
        Source::Blob(crate::azure::storage::BlobRef::parse(&args.image)?)
    } else {
        let path = std::path::PathBuf::from(&args.image);
        let blob_name = args.name.clone().unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image.vhd".into())
        });
        // What Azure would accept but Batch could not boot (not generalized,
        // no agent, a GPU image without its driver) is caught here, before
        // an upload and an hour of replication.
        if !args.no_validate {
            let validation = crate::validate::validate_file(&path, &plan)?;
            if validation.report.failed() {
                let failed: Vec<String> = validation
                    .report
                    .failures()
                    .map(|f| {
                        crate::util::redact::redact(&format!("  FAIL {}: {}", f.id, f.message))
                    })
                    .collect();
                return Err(AppError::Rejected {
                    message: format!(
                        "{}: the image does not meet the manifest's checks, nothing was uploaded or published:\n{}",
                        path.display(),
                        failed.join("\n"),
                    ),
                    hint: Some(format!(
                        "fix the image (`imgforge validate {} --manifest {}` shows every check), or pass --no-validate to publish it anyway",
                        path.display(),
                        args.manifest.display()
                    )),
                });
            }
        }
        Source::File { path, blob_name }
    };
    let rt = runtime()?;
    let (cancel, _signals) = stop_on_interrupt();
    let record = rt.block_on(crate::publish::publish(
        publish,
        source,
        &Options {
            blob_endpoint: crate::azure::storage::endpoint_template(args.blob_endpoint.as_deref())?,
            parallel: args.parallel,
            show_progress: !args.json,
            cancel,
            timeout: std::time::Duration::from_secs(args.timeout),
        },
    ))?;
    if args.json {
        print_stdout(&to_json(&record))?;
    } else {
        // The manifest asked for this target: a managed image's pool is
        // written (labelled legacy) rather than refused.
        use crate::pool::output::{PoolFormat, render};
        let image = crate::pool::PoolImage::ArmImageId(record.arm_image_id.clone());
        let snippet = render(&plan, &image, PoolFormat::Shipyard, true)
            .or_else(|_| render(&plan, &image, PoolFormat::BatchJson, true));
        if let Ok(snippet) = snippet {
            print_stdout(&snippet)?;
        }
        crate::util::term::status(
            "Published",
            &format!(
                "{} in {:.1} s ({} Resource Manager requests)",
                record.arm_image_id, record.seconds, record.requests
            ),
        );
    }
    Ok(exit::OK)
}

/// `promote`: the gates from the build's record, then the version into
/// `latest`, then the record says so.
pub(super) fn promote(args: crate::cli::args::PromoteArgs) -> Result<i32, AppError> {
    use crate::pipeline::promote::{Refusal, gates};
    let dir = std::path::PathBuf::from(&args.target);
    let (version, checks, record) = if dir.is_dir() {
        let record =
            crate::pipeline::BuildRecord::read(&dir).map_err(|e| AppError::Build(Box::new(e)))?;
        match gates(&record, &dir, &args.fail_on) {
            Ok((version, checks)) => (version, checks, Some(record)),
            Err(Refusal::Input { message, hint }) => return Err(AppError::refused(message, hint)),
            Err(Refusal::Gate { failed }) => {
                return Err(AppError::Rejected {
                    message: format!(
                        "{}: not promoted, a gate failed:\n{}",
                        dir.display(),
                        failed
                            .iter()
                            .map(|f| format!("  FAIL {f}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    ),
                    hint: Some(
                        "fix the image and build it again; the version stays out of `latest`"
                            .into(),
                    ),
                });
            }
        }
    } else if args.target.starts_with("/subscriptions/") {
        if !args.fail_on.is_empty() {
            return Err(AppError::refused(
                "--fail-on needs a build directory: a version id has no inspection to diff",
                "give the build directory instead of the version id",
            ));
        }
        crate::util::term::warning(
            "a version id has no build record: promoted without checking its validation or boot check",
        );
        (
            args.target.clone(),
            vec!["none: a version id without a build record".to_string()],
            None,
        )
    } else {
        return Err(AppError::refused(
            format!(
                "`{}` is neither a build directory nor a gallery version id",
                args.target
            ),
            "give the build directory (`imgforge status` lists them) or /subscriptions/…/versions/V",
        ));
    };
    for c in &checks {
        crate::util::term::status("Checked", c);
    }
    // One promote of a build at a time, as one build per directory.
    let _lock = match &record {
        Some(_) => Some(crate::util::lock::try_lock(&dir).map_err(|e| AppError::refused_by(&e))?),
        None => None,
    };
    let rt = runtime()?;
    let (cancel, _signals) = stop_on_interrupt();
    let promotion = rt.block_on(crate::publish::promote(
        &version,
        checks,
        std::time::Duration::from_secs(args.timeout),
        &cancel,
    ))?;
    if let Some(mut record) = record {
        record.promotion = Some(promotion.clone());
        record
            .write(&dir)
            .map_err(|e| AppError::Build(Box::new(e)))?;
    }
    if args.json {
        print_stdout(&to_json(&promotion))?;
    } else {
        crate::util::term::status(
            "Promoted",
            &if promotion.changed {
                format!("{} is in `latest` now", promotion.version_id)
            } else {
                format!(
                    "{} was already in `latest`: nothing changed",
                    promotion.version_id
                )
            },
        );
    }
    Ok(exit::OK)
}
