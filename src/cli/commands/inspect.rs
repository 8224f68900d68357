//! `inspect` and `diff`: what is in an image, and what changed.

use super::*;
use crate::cli::args::{DiffArgs, InspectArgs};
use crate::inspect::{InspectError, Inspection};

fn app(e: InspectError) -> AppError {
    match e {
        InspectError::Validate(v) => AppError::Validate(v),
        other => AppError::refused_by(&other),
    }
}

fn inspect_image(path: &std::path::Path) -> Result<Inspection, AppError> {
    let disk = crate::validate::LocalDisk::open(path)?;
    crate::inspect::inspect_disk(&path.display().to_string(), Box::new(disk)).map_err(app)
}

/// An image, or a document `inspect --json` wrote (bounded read).
fn load(path: &std::path::Path) -> Result<Inspection, AppError> {
    let mut head = [0u8; 1];
    let starts_json = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map(|n| n == 1 && head[0] == b'{')
        .unwrap_or(false);
    if !starts_json {
        return inspect_image(path);
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
    let i = inspect_image(&args.image)?;
    let text = if let Some(format) = args.sbom {
        let name = args
            .image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
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
    let old = load(&args.old)?;
    let new = load(&args.new)?;
    for (i, path) in [(&old, &args.old), (&new, &args.new)] {
        if i.package_db != "dpkg" {
            crate::util::term::warning(&format!(
                "{}: packages not compared: the package database was {}",
                path.display(),
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
