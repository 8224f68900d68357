//! `imgforge promote BUILD_DIR`: the gate before a gallery version, published
//! with `exclude_from_latest = true`, enters its definition's `latest`. The
//! evidence is the build's own record — the offline validation and the
//! node's-eye boot check must have passed where they ran — and, with
//! `--fail-on`, the diff against the newest earlier build of the same image
//! (the rules of `imgforge diff`). The change itself is `publish::promote`;
//! the record then says who promoted what, when, after which checks.

use std::path::{Path, PathBuf};

use crate::inspect::diff::Rule;
use crate::pipeline::{BuildRecord, BuildStatus};

/// Why a build may not be promoted: a gate that failed (exit 1), or a
/// record that cannot be promoted at all (exit 2).
#[derive(Debug, PartialEq)]
pub enum Refusal {
    Gate { failed: Vec<String> },
    Input { message: String, hint: String },
}

/// The version to promote and the gates that passed, in words; or why not.
pub fn gates(
    record: &BuildRecord,
    dir: &Path,
    rules: &[Rule],
) -> Result<(String, Vec<String>), Refusal> {
    let input = |message: String, hint: &str| Refusal::Input {
        message,
        hint: hint.into(),
    };
    if record.status != BuildStatus::Succeeded {
        return Err(input(
            format!("{}: the build did not succeed", dir.display()),
            "promote a build that succeeded (`imgforge status` lists them)",
        ));
    }
    let Some(version) = record
        .publish
        .as_ref()
        .and_then(|p| p.gallery_image_version_id.clone())
    else {
        return Err(input(
            format!(
                "{}: the build published no gallery image version",
                dir.display()
            ),
            "promote a build whose target is \"gallery\"",
        ));
    };
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    match &record.image_validation {
        Some(v) if v.fail == 0 => passed.push(format!("validation: {} passed", v.pass)),
        Some(v) => failed.push(format!(
            "validation: {} check(s) failed ({})",
            v.fail,
            v.failed_checks.join(", ")
        )),
        None => passed.push("validation: not in the record (an azure-arm build)".into()),
    }
    match &record.boot_check {
        Some(b) if b.fail == 0 => passed.push(format!(
            "boot check: {} passed, {} skipped ({})",
            b.pass,
            b.skip,
            b.runs
                .iter()
                .map(|r| r.firmware.name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(b) => failed.push(format!(
            "boot check: {} check(s) failed ({})",
            b.fail,
            b.failed_checks.join(", ")
        )),
        None => passed.push("boot check: not in the record (not run)".into()),
    }
    if !rules.is_empty() {
        let here = read_inspection(&dir.join("inspect.json")).ok_or_else(|| {
            input(
                format!("{}: no inspect.json to apply --fail-on to", dir.display()),
                "promote a local build (it writes inspect.json), or leave out --fail-on",
            )
        })?;
        let Some((before_dir, before)) = previous_inspection(dir, &record.image) else {
            return Err(input(
                format!(
                    "{}: no earlier succeeded build of {} beside it to diff against",
                    dir.display(),
                    record.image
                ),
                "leave out --fail-on for the first build of an image",
            ));
        };
        let d = crate::inspect::diff::diff(&before, &here, rules);
        let name = before_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if d.tripped.is_empty() {
            passed.push(format!("diff since {name}: {} rule(s) passed", rules.len()));
        } else {
            failed.extend(d.tripped.iter().map(|t| format!("diff since {name}: {t}")));
        }
    }
    if failed.is_empty() {
        Ok((version, passed))
    } else {
        Err(Refusal::Gate { failed })
    }
}

fn read_inspection(path: &Path) -> Option<crate::inspect::Inspection> {
    let text = crate::util::fsutil::read_input_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The newest earlier succeeded build of `image` beside `dir`, with the
/// inspection it wrote.
pub fn previous_inspection(
    dir: &Path,
    image: &str,
) -> Option<(PathBuf, crate::inspect::Inspection)> {
    let parent = dir.parent()?;
    let here = std::fs::canonicalize(dir).ok()?;
    crate::pipeline::clean::scan(parent)
        .ok()?
        .into_iter()
        .rev()
        .filter(|b| b.image == image && b.status == "succeeded")
        .filter(|b| std::fs::canonicalize(&b.path).ok().as_ref() != Some(&here))
        .find_map(|b| {
            Some((
                b.path.clone(),
                read_inspection(&b.path.join("inspect.json"))?,
            ))
        })
}
