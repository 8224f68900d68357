//! `imgforge build`: a build directory, render, `packer validate`, `packer build`,
//! capture, and the build record (`build.json`).

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::capture::{CaptureError, Captured};
use crate::error::exit;
use crate::manifest::Manifest;
use crate::packer::{Packer, PackerError, RunEnd};
use crate::plan::Plan;
use crate::render::{PACKER_FILE, RenderError, Rendered, RenderedFile};
use crate::templates::TemplateSet;

pub const RECORD_FILE: &str = "build.json";
pub const LOG_FILE: &str = "packer.log";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Render(#[from] RenderError),
    #[error("{0}")]
    Packer(#[from] PackerError),
    #[error("packer build failed (exit status {status}); the full log is {log}{details}")]
    PackerFailed {
        status: String,
        log: PathBuf,
        details: String,
    },
    #[error("build cancelled; Packer cleaned up and exited. Record: {record}")]
    Cancelled { record: PathBuf },
    #[error("{source}\n  build record: {record}")]
    Capture {
        source: CaptureError,
        record: PathBuf,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl BuildError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BuildError::Render(RenderError::Write { .. }) | BuildError::Write { .. } => exit::IO,
            BuildError::Render(_) => exit::BAD_INPUT,
            BuildError::Packer(PackerError::Invalid { .. }) => exit::FAILED,
            BuildError::Packer(_) => exit::TOOL,
            BuildError::PackerFailed { .. } | BuildError::Capture { .. } => exit::FAILED,
            BuildError::Cancelled { .. } => exit::CANCELLED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `--dry-run`: rendered and accepted by `packer validate`.
    Validated,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Serialize)]
pub struct ManifestRef {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildRecord {
    pub schema: u32,
    pub image: String,
    pub status: Status,
    pub build_dir: String,
    pub manifest: ManifestRef,
    pub target: crate::manifest::Target,
    pub templates: Vec<RenderedFile>,
    pub packer: Packer,
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    pub artifact: Option<Captured>,
    /// The Batch Shipyard pool snippet written next to this record.
    pub snippet: Option<String>,
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

pub struct BuildOptions<'a> {
    pub dir: PathBuf,
    pub force: bool,
    pub dry_run: bool,
    pub templates: &'a TemplateSet,
    pub packer: Packer,
    /// Print every provisioner line, not only steps.
    pub verbose: bool,
}

pub fn default_build_dir(image: &str, now: SystemTime) -> PathBuf {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    PathBuf::from(".imgforge/builds").join(format!("{image}-{stamp}"))
}

pub fn run(
    manifest: &Manifest,
    plan: &Plan,
    opts: BuildOptions<'_>,
) -> Result<BuildRecord, BuildError> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let dir = opts.dir.clone();

    let rendered: Rendered =
        crate::render::render_to_dir(plan, manifest, opts.templates, &dir, opts.force)?;
    crate::term::status(
        "Rendered",
        &format!("{} files into {}", rendered.files.len(), dir.display()),
    );

    let mut warnings = plan.warnings.clone();
    if uses_azure_arm(&dir)
        && let Some(advice) = opts.packer.target_advice(plan.target)
    {
        crate::term::warning(&advice);
        warnings.push(advice);
    }

    let mut record = BuildRecord {
        schema: 1,
        image: plan.image.clone(),
        status: Status::Validated,
        build_dir: dir.display().to_string(),
        manifest: ManifestRef {
            path: manifest.path.display().to_string(),
            sha256: crate::render::sha256_hex(manifest.source.as_bytes()),
        },
        target: plan.target,
        templates: rendered.files.clone(),
        packer: opts.packer.clone(),
        started_at: humantime::format_rfc3339_seconds(started).to_string(),
        finished_at: String::new(),
        duration_s: 0.0,
        artifact: None,
        snippet: None,
        error: None,
        warnings,
    };

    let validate_clock = Instant::now();
    if let Err(e) = opts.packer.validate(&dir, PACKER_FILE) {
        record.status = Status::Failed;
        record.error = Some(e.to_string());
        finish(&mut record, started, clock, &dir)?;
        return Err(e.into());
    }
    crate::term::status(
        "Validated",
        &format!(
            "{PACKER_FILE} with Packer {} in {:.2} s",
            opts.packer.version,
            validate_clock.elapsed().as_secs_f64()
        ),
    );
    if opts.dry_run {
        finish(&mut record, started, clock, &dir)?;
        return Ok(record);
    }

    let log_path = dir.join(LOG_FILE);
    let mut log_file = std::fs::File::create(&log_path).map_err(|source| BuildError::Write {
        path: log_path.clone(),
        source,
    })?;
    let mut display = crate::progress::Display::new(opts.verbose, clock);
    crate::term::status("Building", &format!("{} with packer build", plan.image));
    let outcome = opts.packer.build(
        &dir,
        PACKER_FILE,
        &mut |line| {
            use std::io::Write;
            let _ = writeln!(log_file, "{line}");
        },
        &mut |p| display.show(p),
    )?;
    display.finish();

    match outcome.end {
        RunEnd::Cancelled => {
            record.status = Status::Cancelled;
            record.error = Some("cancelled by signal; Packer cleaned up".into());
            finish(&mut record, started, clock, &dir)?;
            Err(BuildError::Cancelled {
                record: dir.join(RECORD_FILE),
            })
        }
        RunEnd::Failed => {
            let last = outcome
                .errors
                .last()
                .cloned()
                .unwrap_or_else(|| "Packer exited non-zero".into());
            record.status = Status::Failed;
            record.error = Some(last);
            finish(&mut record, started, clock, &dir)?;
            Err(BuildError::PackerFailed {
                status: outcome
                    .exit_status
                    .map_or("killed by a signal".into(), |c| c.to_string()),
                log: log_path,
                details: failure_details(&outcome.errors),
            })
        }
        RunEnd::Succeeded => match crate::capture::capture(&outcome.artifacts, &dir) {
            Ok(captured) => {
                crate::term::status("Captured", &captured.describe());
                if let Some(image) = arm_image(&captured) {
                    let path = dir.join(crate::pool::SNIPPET_FILE);
                    let text = crate::pool::snippet(plan, &image);
                    crate::fsutil::write_atomic(&path, text.as_bytes()).map_err(|source| {
                        BuildError::Write {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    record.snippet = Some(path.display().to_string());
                }
                record.status = Status::Succeeded;
                record.artifact = Some(captured);
                finish(&mut record, started, clock, &dir)?;
                Ok(record)
            }
            Err(e) => {
                record.status = Status::Failed;
                record.error = Some(e.to_string());
                finish(&mut record, started, clock, &dir)?;
                Err(BuildError::Capture {
                    source: e,
                    record: dir.join(RECORD_FILE),
                })
            }
        },
    }
}

fn finish(
    record: &mut BuildRecord,
    started: SystemTime,
    clock: Instant,
    dir: &Path,
) -> Result<(), BuildError> {
    let elapsed = clock.elapsed();
    record.finished_at = humantime::format_rfc3339_seconds(started + elapsed).to_string();
    record.duration_s = (elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
    let path = dir.join(RECORD_FILE);
    let json = serde_json::to_string_pretty(record).expect("the record serializes");
    let json = crate::redact::redact(&json) + "\n";
    crate::fsutil::write_atomic(&path, json.as_bytes())
        .map_err(|source| BuildError::Write { path, source })
}

/// Managed and gallery images go into a pool as they are; VHDs need copies first.
fn arm_image(captured: &Captured) -> Option<crate::pool::PoolImage> {
    match captured {
        Captured::ManagedImage { id, .. } | Captured::GalleryImageVersion { id, .. } => {
            Some(crate::pool::PoolImage::ArmImageId(id.clone()))
        }
        Captured::AzureVhd { .. } | Captured::LocalVhd { .. } => None,
    }
}

fn uses_azure_arm(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(PACKER_FILE)) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    json["builders"]
        .as_array()
        .is_some_and(|b| b.iter().any(|b| b["type"] == "azure-arm"))
}

/// Packer's error lines, plainly, with a hint for the errors people hit most.
fn failure_details(errors: &[String]) -> String {
    let mut out = String::new();
    for e in errors {
        for line in e.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str("\n  ");
            out.push_str(line.trim_end());
        }
    }
    let all = errors.join("\n");
    if let Some(hint) = hint_for(&all) {
        out.push_str("\n  hint: ");
        out.push_str(hint);
    }
    out
}

pub fn hint_for(errors: &str) -> Option<&'static str> {
    const HINTS: &[(&[&str], &str)] = &[
        (
            &[
                "adal: Failed to execute the refresh request",
                "AADSTS",
                "invalid_client",
            ],
            "Azure rejected the credentials: check ARM_CLIENT_ID, ARM_CLIENT_SECRET, ARM_TENANT_ID \
             and ARM_SUBSCRIPTION_ID (the service principal's secret may have expired)",
        ),
        (
            &["OperationNotAllowed"],
            "Azure refused the operation; with target = \"vhd\" on Packer 1.6.x this is usually \
             the retired unmanaged-disk VM: use a Packer with the external Azure plugin, or \
             target = \"managed_image\" or \"gallery\"",
        ),
        (
            &["QuotaExceeded", "exceeding approved", "quota"],
            "the subscription's core quota for this VM family and region is exhausted: request an \
             increase, or choose another build.vm_size or build.location",
        ),
        (
            &["SkuNotAvailable", "is not available in location"],
            "build.vm_size is not offered in build.location for this subscription: choose another \
             size or region (`az vm list-skus -l LOCATION`)",
        ),
    ];
    HINTS
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| errors.contains(n)))
        .map(|(_, hint)| *hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_errors_get_hints() {
        assert!(
            hint_for("adal: Failed to execute the refresh request. Status: 400")
                .unwrap()
                .contains("ARM_CLIENT_SECRET")
        );
        assert!(
            hint_for("Code=\"OperationNotAllowed\"")
                .unwrap()
                .contains("unmanaged")
        );
        assert!(
            hint_for("Code=\"SkuNotAvailable\"")
                .unwrap()
                .contains("vm_size")
        );
        assert_eq!(hint_for("something else"), None);
    }

    #[test]
    fn default_build_dir_is_per_image_and_time() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let d = default_build_dir("gpu", t);
        assert!(d.starts_with(".imgforge/builds"));
        assert!(
            d.to_string_lossy().ends_with("gpu-20261118T110640Z"),
            "{}",
            d.display()
        );
    }
}
