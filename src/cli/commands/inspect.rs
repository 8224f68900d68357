//! `inspect` and `diff`: what is in an image, and what changed.

use super::*;
use crate::cli::args::{DiffArgs, InspectArgs};
use crate::inspect::{InspectError, Inspection};

fn app(e: InspectError) -> AppError {
    match e {
        InspectError::Validate(v) => AppError::Validate(v),
        other => AppError::Inspect(Box::new(other)),
    }
}

/// A local VHD, or a blob read through range requests, bounded by `timeout`
/// seconds as `validate` is.
fn inspect_image(image: &str, timeout: u64) -> Result<Inspection, AppError> {
    if crate::inspect::azure::is_resource_id(image) {
        return inspect_in_azure(image, timeout);
    }
    let is_url = image.starts_with("https://") || image.starts_with("http://");
    if !is_url {
        let path = std::path::Path::new(image);
        let disk = crate::validate::LocalDisk::open(path)?;
        return crate::inspect::inspect_disk(&path.display().to_string(), Box::new(disk))
            .map_err(app);
    }
    use crate::validate::ValidateError;
    let blob = crate::azure::storage::BlobRef::parse(image).map_err(ValidateError::from)?;
    let subject = blob.url();
    bounded(timeout, &crate::util::redact::redact(image), async {
        let storage = crate::azure::storage::Storage::for_blobs(
            std::slice::from_ref(&blob.account),
            &[&blob],
        )
        .await?;
        crate::validate::with_blob_disk(std::sync::Arc::new(storage), blob, move |disk, _, _| {
            crate::inspect::inspect_disk(&subject, disk)
        })
        .await
    })??
    .map_err(app)
}

/// A gallery image version or managed image, read through a temporary
/// managed disk (`inspect::azure`); Ctrl-C stops the reading, and the disk
/// is removed either way.
fn inspect_in_azure(image: &str, timeout: u64) -> Result<Inspection, AppError> {
    let id = crate::inspect::azure::ImageId::parse(image).ok_or_else(|| {
        AppError::refused(
            format!("`{image}` is not a gallery image version or managed image id"),
            "give /subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/galleries/G/images/D/versions/V, or …/Microsoft.Compute/images/NAME",
        )
    })?;
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _watch = crate::util::signals::SignalWatch::start(
        cancel.clone(),
        Default::default(),
        "interrupted: removing the temporary disk, then stopping",
    );
    let mut progress = |line: &str| crate::util::term::status("Inspecting", line);
    let rt = runtime()?;
    let done = rt.block_on(crate::inspect::azure::inspect_azure_image(
        &id,
        crate::inspect::azure::Options {
            timeout: std::time::Duration::from_secs(timeout),
            cancel: &cancel,
            progress: &mut progress,
        },
    ));
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(app(InspectError::Cancelled));
    }
    done.map_err(app)
}

/// An image, or a document `inspect --json` wrote (bounded read).
fn load(image: &str, timeout: u64) -> Result<Inspection, AppError> {
    if image.starts_with("https://")
        || image.starts_with("http://")
        || crate::inspect::azure::is_resource_id(image)
    {
        return inspect_image(image, timeout);
    }
    let path = std::path::Path::new(image);
    let mut head = [0u8; 1];
    let starts_json = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map(|n| n == 1 && head[0] == b'{')
        .unwrap_or(false);
    if !starts_json {
        return inspect_image(image, timeout);
    }
    let text = crate::util::fsutil::read_input_string(path).map_err(|source| AppError::Io {
        context: path.display().to_string(),
        source,
    })?;
    let doc: Inspection = serde_json::from_str(&text).map_err(|e| {
        app(InspectError::Document {
            path: path.display().to_string(),
            why: e.to_string(),
        })
    })?;
    if doc.schema != crate::inspect::SCHEMA {
        return Err(app(InspectError::Document {
            path: path.display().to_string(),
            why: format!(
                "schema {} (this imgforge reads {})",
                doc.schema,
                crate::inspect::SCHEMA
            ),
        }));
    }
    Ok(doc)
}

fn emit(text: &str, out: Option<&std::path::Path>) -> Result<(), AppError> {
    match out {
        Some(path) => {
            crate::util::fsutil::write_atomic(path, text.as_bytes()).map_err(|source| {
                AppError::Io {
                    context: path.display().to_string(),
                    source,
                }
            })?;
            crate::util::term::status("Wrote", &path.display().to_string());
            Ok(())
        }
        None => print_stdout(text),
    }
}

pub(super) fn inspect(args: InspectArgs) -> Result<i32, AppError> {
    let i = inspect_image(&args.image, args.timeout)?;
    let text = if let Some(format) = args.sbom {
        // The file or blob name without `.vhd` (and without a SAS).
        let name = args
            .image
            .split('?')
            .next()
            .and_then(|p| p.rsplit('/').next())
            .map(|n| n.trim_end_matches(".vhd").to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "image".into());
        let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let doc = crate::inspect::sbom::render(&i, format, &name, &created).map_err(|why| {
            AppError::refused(
                why,
                "an SBOM lists what the package database says; this image's was not read",
            )
        })?;
        let mut t = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
        t.push('\n');
        t
    } else if args.json {
        to_json(&i)
    } else {
        i.to_text()
    };
    emit(&text, args.out.as_deref())?;
    Ok(exit::OK)
}

pub(super) fn diff(args: DiffArgs) -> Result<i32, AppError> {
    let old = load(&args.old, args.timeout)?;
    let new = load(&args.new, args.timeout)?;
    for i in [&old, &new] {
        if !i.packages_read() {
            crate::util::term::warning(&format!(
                "{}: packages not compared: the package database was {}",
                crate::util::redact::redact(&i.subject),
                i.package_db
            ));
        }
    }
    let d = crate::inspect::diff::diff(&old, &new, &args.fail_on);
    if args.json {
        print_stdout(&to_json(&d))?;
    } else {
        print_stdout(&d.to_text())?;
    }
    Ok(if d.tripped.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}
