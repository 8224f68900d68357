//! `build.json`: the build record — the journal while a build runs, its
//! result when it ends, what `--json` prints — and the one type that reads
//! it, for `--resume`, `status` and `pool snippet --from`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{BuildError, RECORD_FILE, STAGES, Stage};
use crate::packer::Packer;
use crate::packer::capture::Captured;
use crate::render::RenderedFile;
use crate::replicate::CopyOutcome;
use crate::spec::manifest::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    /// `--dry-run`: rendered and accepted by `packer validate`.
    Validated,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Done,
    Skipped,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: Stage,
    pub status: StageStatus,
    pub started_at: String,
    pub duration_s: f64,
    /// What the stage did, or why it was skipped, or its error.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestRef {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidationSummary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
    pub failed_checks: Vec<String>,
    pub bytes_read: u64,
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootRecord {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    /// Rows that cannot be tested under QEMU (the agent, the resource disk).
    #[serde(default)]
    pub skip: usize,
    pub failed_checks: Vec<String>,
    pub runs: Vec<crate::validate::boot::BootRun>,
}

impl ValidationSummary {
    pub(super) fn of(v: &crate::validate::Validation) -> ValidationSummary {
        ValidationSummary {
            pass: v.report.summary.pass,
            warn: v.report.summary.warn,
            fail: v.report.summary.fail,
            skip: v.report.summary.skip,
            failed_checks: v.report.failed_ids(),
            bytes_read: v.read.bytes,
            requests: v.read.requests,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyRecord {
    #[serde(flatten)]
    pub copy: CopyOutcome,
    pub validation: Option<ValidationSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicationSummary {
    pub source: String,
    pub source_length: u64,
    pub valid_bytes: u64,
    pub bytes_downloaded: u64,
    pub bytes_uploaded: u64,
    pub retries: u64,
}

/// The options a build ran with, so `--resume` carries on the same way
/// without the user repeating them (flags given with `--resume` add to
/// these). Paths are absolute, so a resume from another directory works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOptions {
    pub replicate: bool,
    pub validate: bool,
    pub boot_check: bool,
    pub publish: bool,
    pub vm_checks: bool,
    pub allow_retired: bool,
    /// `--templates`: the override directory.
    pub templates: Option<String>,
    pub verify: crate::replicate::VerifyMode,
    pub parallel: usize,
    pub max_requests: usize,
    pub publish_timeout_s: u64,
    /// `--blob-endpoint` as given (a template, never a credential).
    pub blob_endpoint: Option<String>,
    /// `--gallery-version`.
    #[serde(default)]
    pub gallery_version: Option<String>,
}

impl RecordedOptions {
    /// The flags that repeat these options, for a printed command line.
    pub fn flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (off, flag) in [
            (!self.replicate, "--no-replicate"),
            (!self.validate, "--no-validate"),
            (!self.boot_check, "--no-boot-check"),
            (!self.publish, "--no-publish"),
            (!self.vm_checks, "--no-vm-checks"),
            (self.allow_retired, "--allow-retired"),
        ] {
            if off {
                out.push(flag.to_string());
            }
        }
        if let Some(t) = &self.templates {
            out.push("--templates".into());
            out.push(t.clone());
        }
        if let Some(v) = &self.gallery_version {
            out.push("--gallery-version".into());
            out.push(v.clone());
        }
        out
    }
}

/// `build.json`: the journal while the build runs, the result when it ends,
/// and what `--json` prints. Its schema is documented in the README.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRecord {
    pub schema: u32,
    pub image: String,
    pub status: BuildStatus,
    pub build_dir: String,
    pub manifest: ManifestRef,
    pub target: Target,
    pub templates: Vec<RenderedFile>,
    pub packer: Packer,
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    pub stages: Vec<StageRecord>,
    pub artifact: Option<Captured>,
    /// The captured image checked offline (local VHDs).
    #[serde(default)]
    pub image_validation: Option<ValidationSummary>,
    /// The local VHD booted under QEMU.
    #[serde(default)]
    pub boot_check: Option<BootRecord>,
    /// The managed image / gallery version imgforge published.
    #[serde(default)]
    pub publish: Option<crate::publish::PublishRecord>,
    pub copies: Vec<CopyRecord>,
    pub replication: Option<ReplicationSummary>,
    /// The Batch Shipyard pool snippet written next to this record.
    pub snippet: Option<String>,
    pub failed_stage: Option<Stage>,
    pub error: Option<String>,
    pub warnings: Vec<String>,
    /// What the build ran with (absent in records of imgforge before 0.1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<RecordedOptions>,
    /// `imgforge promote`: the version put into `latest`, by whom, when,
    /// after which checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<crate::publish::Promotion>,
}

/// Why a build record names no image a pool can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPoolImage {
    /// A VHD that was not replicated: Batch cannot use Packer's capture path
    /// or a local file.
    NotReplicated,
    /// target = "managed_image" / "gallery", and the VHD was not published.
    NotPublished,
    /// The build ended before it captured an image.
    NoArtifact,
}

impl NoPoolImage {
    pub fn message(self) -> &'static str {
        match self {
            NoPoolImage::NotReplicated => {
                "the build produced a VHD but the record lists no replicated copies; Batch cannot use \
                 Packer's capture path (system/Microsoft.Compute/Images/…) or a local file"
            }
            NoPoolImage::NotPublished => {
                "the build produced a VHD but did not publish it (target = \"managed_image\" or \"gallery\")"
            }
            NoPoolImage::NoArtifact => {
                "the record has no artifact (the build did not capture an image)"
            }
        }
    }

    pub fn hint(self) -> &'static str {
        match self {
            NoPoolImage::NotReplicated => {
                "run `imgforge replicate` (target = \"vhd\") or `imgforge publish` (managed image / gallery) for this build first"
            }
            NoPoolImage::NotPublished => "run `imgforge publish` for this build first",
            NoPoolImage::NoArtifact => {
                "check `status` and `error` in the record (`imgforge status DIR`)"
            }
        }
    }
}

impl BuildRecord {
    /// The record of the build in `dir`.
    pub fn load(dir: &Path) -> Result<BuildRecord, BuildError> {
        BuildRecord::read(&dir.join(RECORD_FILE))
    }

    /// A build record: `build.json`, or the build directory that holds it.
    /// The one reader of the schema, for `--resume`, `status` and `pool
    /// snippet --from`.
    pub fn read(path: &Path) -> Result<BuildRecord, BuildError> {
        let path = if path.is_dir() {
            path.join(RECORD_FILE)
        } else {
            path.to_path_buf()
        };
        let err = |why: String, hint: &str| BuildError::Record {
            path: path.clone(),
            why,
            hint: hint.into(),
        };
        // A record is kilobytes (a build with a hundred copies, tens of KiB):
        // one far larger is not imgforge's, and is refused before it is read.
        const MAX_RECORD: u64 = 4 * 1024 * 1024;
        if let Ok(m) = std::fs::metadata(&path)
            && m.len() > MAX_RECORD
        {
            return Err(err(
                format!(
                    "{} bytes is more than a build record is ({} MiB at most)",
                    m.len(),
                    MAX_RECORD / (1024 * 1024)
                ),
                "pass a build.json written by `imgforge build`",
            ));
        }
        let text = crate::util::fsutil::read_input_string(&path).map_err(|e| {
            err(
                format!("cannot read the build record: {e}"),
                "pass the build directory that holds build.json, or the file itself",
            )
        })?;
        serde_json::from_str(&text).map_err(|e| {
            err(
                format!("not a build record this imgforge reads: {e}"),
                "pass a build.json written by `imgforge build` (schema 2)",
            )
        })
    }

    /// The image a pool uses after this build: the published image's id, the
    /// managed image or gallery version Packer made, or the VHD copies —
    /// the same answer for the build's own snippet and `pool snippet --from`.
    pub fn pool_image(&self) -> Result<crate::pool::PoolImage, NoPoolImage> {
        use crate::pool::PoolImage;
        if let Some(p) = self.publish.as_ref().filter(|p| !p.arm_image_id.is_empty()) {
            return Ok(PoolImage::ArmImageId(p.arm_image_id.clone()));
        }
        match &self.artifact {
            Some(Captured::ManagedImage { id, .. } | Captured::GalleryImageVersion { id, .. }) => {
                Ok(PoolImage::ArmImageId(id.clone()))
            }
            _ if !self.copies.is_empty() => Ok(PoolImage::Vhds(
                self.copies.iter().map(|c| c.copy.url.clone()).collect(),
            )),
            Some(_) if self.target != Target::Vhd => Err(NoPoolImage::NotPublished),
            Some(_) => Err(NoPoolImage::NotReplicated),
            None => Err(NoPoolImage::NoArtifact),
        }
    }

    pub(super) fn done(&self, stage: Stage) -> bool {
        self.stages.iter().any(|s| {
            s.stage == stage && matches!(s.status, StageStatus::Done | StageStatus::Skipped)
        })
    }

    pub fn write(&self, dir: &Path) -> Result<(), BuildError> {
        let path = dir.join(RECORD_FILE);
        let json = serde_json::to_string_pretty(self).expect("the record serializes");
        let json = crate::util::redact::redact(&json) + "\n";
        crate::util::fsutil::write_atomic(&path, json.as_bytes())
            .map_err(|source| BuildError::Write { path, source })
    }
}

/// The stage table `imgforge status` prints.
pub fn status_text(record: &BuildRecord) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let status = crate::util::text::name_of(&record.status);
    let _ = writeln!(s, "{} ({status}) in {}", record.image, record.build_dir);
    for stage in STAGES {
        match record.stages.iter().rev().find(|r| r.stage == stage) {
            Some(r) => {
                let detail = r
                    .detail
                    .as_deref()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("");
                let _ = writeln!(
                    s,
                    "  {:<16} {:<9} {:>8.1} s  {detail}",
                    stage.name(),
                    crate::util::text::name_of(&r.status),
                    r.duration_s
                );
            }
            None => {
                let _ = writeln!(s, "  {:<16} {:<9}", stage.name(), "pending");
            }
        }
    }
    if let Some(a) = &record.artifact {
        let _ = writeln!(s, "artifact  {}", a.describe());
    }
    if let Some(v) = &record.image_validation {
        let _ = writeln!(
            s,
            "image     {} passed, {} warned, {} failed, {} skipped (offline)",
            v.pass, v.warn, v.fail, v.skip
        );
    }
    if let Some(b) = &record.boot_check {
        let runs: Vec<String> = b
            .runs
            .iter()
            .map(|r| match r.login_after_s {
                Some(t) => format!("{} login in {t:.0} s ({})", r.firmware.name(), r.accel),
                None => format!("{} no login", r.firmware.name()),
            })
            .collect();
        let _ = writeln!(
            s,
            "boot      {} passed, {} warned, {} failed: {}",
            b.pass,
            b.warn,
            b.fail,
            runs.join(", ")
        );
    }
    for c in &record.copies {
        let v = c
            .validation
            .as_ref()
            .map(|v| format!("{} passed, {} warned, {} failed", v.pass, v.warn, v.fail))
            .unwrap_or_else(|| "not validated".into());
        let _ = writeln!(s, "copy      {} ({v})", c.copy.url);
    }
    if let Some(p) = &record.snippet {
        let _ = writeln!(s, "snippet   {p}");
    }
    if let Some(e) = &record.error {
        let _ = writeln!(s, "error     {}", e.lines().next().unwrap_or(""));
        if record.status != BuildStatus::Succeeded {
            let _ = writeln!(
                s,
                "resume    imgforge build {} --resume {}",
                crate::util::text::shell_quote(&record.manifest.path),
                crate::util::text::shell_quote(&record.build_dir)
            );
        }
    }
    if let Some(o) = &record.options {
        let flags = o.flags();
        if !flags.is_empty() {
            let quoted: Vec<String> = flags
                .iter()
                .map(|f| crate::util::text::shell_quote(f))
                .collect();
            let _ = writeln!(
                s,
                "options   {} (a resume uses them again)",
                quoted.join(" ")
            );
        }
    }
    // A record is a file anyone with the directory could have written: its
    // text reaches the terminal without escape sequences or other controls.
    s.chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}
