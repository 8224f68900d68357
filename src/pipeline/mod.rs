//! `imgforge build`: the whole pipeline, stage by stage, with a journal.
//!
//! render → packer validate → packer build → capture → validate image and
//! boot check (local VHDs) → publish (a local VHD with target =
//! "managed_image" or "gallery") or replicate (VHD targets, uploading a local
//! VHD) → validate each copy → pool snippet. Each stage's result is
//! written to `build.json` (atomically) before the next starts, so `--resume`
//! continues from the first unfinished stage and nothing verified is redone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::packer::capture::{CaptureError, Captured};
use crate::packer::{Packer, PackerError, RunEnd};
use crate::render::templates::TemplateSet;
use crate::render::{PACKER_FILE, RenderError, RenderedFile};
use crate::replicate::ReplicateError;
use crate::spec::manifest::{Manifest, Target};
use crate::spec::plan::Plan;
use crate::util::Category;

pub const RECORD_FILE: &str = "build.json";
pub const LOG_FILE: &str = "packer.log";
const SCHEMA: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Render,
    PackerValidate,
    PackerBuild,
    Capture,
    /// The captured image itself, offline (a local VHD; Azure VHDs are
    /// validated as copies after replication).
    ValidateImage,
    /// A local build's VHD booted under QEMU.
    BootCheck,
    /// A local build's VHD uploaded and made a managed image / gallery version.
    Publish,
    Replicate,
    Validate,
    Snippet,
}

pub const STAGES: [Stage; 10] = [
    Stage::Render,
    Stage::PackerValidate,
    Stage::PackerBuild,
    Stage::Capture,
    Stage::ValidateImage,
    Stage::BootCheck,
    Stage::Publish,
    Stage::Replicate,
    Stage::Validate,
    Stage::Snippet,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Render => "render",
            Stage::PackerValidate => "packer validate",
            Stage::PackerBuild => "packer build",
            Stage::Capture => "capture",
            Stage::ValidateImage => "validate image",
            Stage::BootCheck => "boot check",
            Stage::Publish => "publish",
            Stage::Replicate => "replicate",
            Stage::Validate => "validate",
            Stage::Snippet => "snippet",
        }
    }
}

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
        /// From the builder, the last script and the room left (`packer_failure_hint`).
        hint: String,
    },
    #[error(
        "build cancelled; what was running (Packer, QEMU, a transfer) was stopped and cleaned up"
    )]
    Cancelled,
    #[error("{0}")]
    Capture(#[from] CaptureError),
    #[error("{0}")]
    Replicate(#[from] ReplicateError),
    #[error("{message}")]
    Validate {
        message: String,
        hint: Option<String>,
    },
    #[error("{0}")]
    Local(#[from] crate::packer::local::LocalError),
    /// Preparing a base image for the local builder.
    #[error("{0}")]
    Base(Box<crate::packer::base::BaseError>),
    #[error("{0}")]
    Lock(#[from] crate::util::lock::LockError),
    /// The sign-in Packer's azure-arm builder is about to make, tried first.
    #[error("signing in as ARM_CLIENT_ID before starting Packer: {0}")]
    SignIn(crate::azure::entra::TokenError),
    #[error("{dir}: a file system is mounted under it; --force would delete its files")]
    Mounted { dir: PathBuf },
    #[error("{0}")]
    Boot(#[from] crate::validate::boot::BootError),
    #[error("{0}")]
    Storage(#[from] crate::azure::storage::StorageError),
    #[error("{0}")]
    Publish(Box<crate::publish::PublishError>),
    #[error(
        "{template} reads {} from the environment and {} not set: Packer would start and fail with an unrelated authentication error; nothing was built",
        .missing.join(", "),
        if .missing.len() == 1 { "it is" } else { "they are" }
    )]
    Credentials {
        template: PathBuf,
        missing: Vec<String>,
    },
    /// A local build that is to publish, without the principal to publish with.
    #[error(
        "the manifest's target is {target}: the VHD is published once built, with a service principal, but {} {} not set; nothing was built",
        .missing.join(", "),
        if .missing.len() == 1 { "is" } else { "are" }
    )]
    PublishCredentials {
        target: &'static str,
        missing: Vec<&'static str>,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A build record that cannot be read, or does not name what was asked.
    #[error("{path}: {why}")]
    Record {
        path: PathBuf,
        why: String,
        hint: String,
    },
    #[error("{dir}: cannot resume: {why}")]
    Resume {
        dir: PathBuf,
        why: String,
        hint: String,
    },
    /// A stage failed: which one, and how to go on.
    #[error(
        "stage `{stage}` failed: {source}\n  resume with: imgforge build {} --resume {}",
        crate::util::text::shell_quote(.manifest),
        crate::util::text::shell_quote(.dir)
    )]
    Stage {
        stage: &'static str,
        manifest: String,
        dir: String,
        source: Box<BuildError>,
    },
}

impl From<crate::publish::PublishError> for BuildError {
    fn from(e: crate::publish::PublishError) -> BuildError {
        BuildError::Publish(Box::new(e))
    }
}

/// `A=… B=…`: the variables to export, for a hint.
impl From<crate::packer::base::BaseError> for BuildError {
    fn from(e: crate::packer::base::BaseError) -> BuildError {
        BuildError::Base(Box::new(e))
    }
}

fn exports(missing: &[impl AsRef<str>]) -> String {
    missing
        .iter()
        .map(|v| format!("{}=…", v.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

impl crate::util::Hint for BuildError {
    fn hint(&self) -> Option<String> {
        match self {
            BuildError::Render(e) => e.hint(),
            BuildError::Packer(e) => e.hint(),
            BuildError::PackerFailed { hint, .. } => Some(hint.clone()),
            BuildError::Cancelled | BuildError::Write { .. } => None,
            BuildError::Capture(e) => e.hint(),
            BuildError::Replicate(e) => e.hint(),
            BuildError::Validate { hint, .. } => hint.clone(),
            BuildError::Local(e) => e.hint(),
            BuildError::Base(e) => e.hint(),
            BuildError::Lock(e) => e.hint(),
            BuildError::SignIn(e) => e.hint(),
            BuildError::Mounted { .. } => Some(
                "unmount it first (`findmnt -R DIR` lists what is mounted), or build into another directory with --out".into(),
            ),
            BuildError::Boot(e) => e.hint(),
            BuildError::Storage(e) => e.hint(),
            BuildError::Publish(e) => e.hint(),
            BuildError::Credentials { missing, .. } => Some(format!(
                "export {} (a service principal with Contributor on the resource group: `az ad sp create-for-rbac`)",
                exports(missing)
            )),
            BuildError::PublishCredentials { missing, .. } => Some(format!(
                "pass --no-publish to keep the VHD on this machine (`imgforge publish` takes it later), or export {} (a service principal with Contributor on the resource group)",
                exports(missing)
            )),
            BuildError::Record { hint, .. } | BuildError::Resume { hint, .. } => Some(hint.clone()),
            BuildError::Stage { source, .. } => source.hint(),
        }
    }
}

impl BuildError {
    /// What kind of failure this is; the CLI maps it to an exit code.
    pub fn category(&self) -> Category {
        match self {
            BuildError::Render(RenderError::Write { .. }) | BuildError::Write { .. } => {
                Category::Io
            }
            BuildError::Lock(e) => e.category(),
            BuildError::SignIn(crate::azure::entra::TokenError::Refused(_)) => Category::Input,
            BuildError::SignIn(_) => Category::Failed,
            BuildError::Render(_)
            | BuildError::Mounted { .. }
            | BuildError::Record { .. }
            | BuildError::Resume { .. }
            | BuildError::Credentials { .. }
            | BuildError::PublishCredentials { .. } => Category::Input,
            BuildError::Packer(PackerError::Invalid { .. }) => Category::Failed,
            BuildError::Packer(_) | BuildError::Local(_) => Category::Tool,
            BuildError::Base(e) => e.category(),
            BuildError::Boot(crate::validate::boot::BootError::Cancelled) => Category::Cancelled,
            BuildError::Boot(crate::validate::boot::BootError::Missing { .. }) => Category::Tool,
            BuildError::Boot(_) => Category::Failed,
            BuildError::Replicate(e) => match e.category() {
                Category::Input => Category::Input,
                _ => Category::Failed,
            },
            BuildError::PackerFailed { .. }
            | BuildError::Capture(_)
            | BuildError::Validate { .. }
            | BuildError::Storage(_) => Category::Failed,
            BuildError::Cancelled => Category::Cancelled,
            BuildError::Publish(e) => e.category(),
            BuildError::Stage { source, .. } => source.category(),
        }
    }
}

fn failed_lines(report: &crate::report::Report) -> Vec<String> {
    report
        .failures()
        .map(|f| format!("{}: {}", f.id, f.message))
        .collect()
}

pub struct BuildOptions<'a> {
    pub dir: PathBuf,
    pub force: bool,
    pub dry_run: bool,
    pub resume: bool,
    pub templates: &'a TemplateSet,
    pub packer: Packer,
    /// Print every provisioner line, not only steps.
    pub verbose: bool,
    pub replicate: bool,
    pub validate: bool,
    /// Boot a local build's VHD under QEMU (`--no-boot-check` turns it off).
    pub boot_check: bool,
    pub blob_endpoint: String,
    pub parallel: usize,
    /// Write requests in flight across all destinations (`--max-requests`).
    pub max_requests: usize,
    /// How each copy is checked (`--verify`).
    pub verify: crate::replicate::VerifyMode,
    pub show_progress: bool,
    /// Publish a local build's VHD (`--no-publish` turns it off).
    pub publish: bool,
    /// How long each publishing operation may take.
    pub publish_timeout: Duration,
    /// The options as `build.json` keeps them for `--resume`.
    pub recorded: RecordedOptions,
}

pub fn default_build_dir(image: &str, now: SystemTime) -> PathBuf {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    PathBuf::from(".imgforge/builds").join(format!("{image}-{stamp}"))
}

fn now_string() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// What stages share while one run goes on (not persisted).
struct Run<'a> {
    manifest: &'a Manifest,
    plan: &'a Plan,
    opts: BuildOptions<'a>,
    dir: PathBuf,
    record: BuildRecord,
    artifacts: Option<Vec<crate::packer::events::RawArtifact>>,
    clock: Instant,
    /// The build directory is ours (rendered or resumed): the journal may be written.
    owned: bool,
    /// Set by SIGINT/SIGTERM. Packer gets the signal forwarded by its own runner;
    /// the other stages stop at their next safe point.
    cancel: Arc<std::sync::atomic::AtomicBool>,
    /// While Packer runs, its runner reports signals itself.
    packer_running: Arc<std::sync::atomic::AtomicBool>,
    /// `[replicate] region` was checked in this run (before Packer, so a
    /// misplaced account costs seconds, not a build).
    region_checked: bool,
    /// The one async runtime of this run, made by the first stage that needs it.
    rt: Option<std::rc::Rc<tokio::runtime::Runtime>>,
    /// The build directory's lock, held while this run goes on: a second
    /// build, `--resume` or `--force` on it, or `clean`, is refused meanwhile.
    lock: Option<crate::util::lock::DirLock>,
}

impl Run<'_> {
    /// A stage failed: recorded in the journal (and a failed local build's
    /// work cleaned up); the error to report, with how to resume.
    fn failed(
        &mut self,
        stage: Stage,
        e: BuildError,
        started_at: String,
        duration_s: f64,
        previous_duration: f64,
    ) -> BuildError {
        let cancelled = matches!(e, BuildError::Cancelled);
        self.record.stages.push(StageRecord {
            stage,
            status: if cancelled {
                StageStatus::Cancelled
            } else {
                StageStatus::Failed
            },
            started_at,
            duration_s,
            detail: Some(crate::util::with_hint(&e)),
        });
        self.record.status = if cancelled {
            BuildStatus::Cancelled
        } else {
            BuildStatus::Failed
        };
        self.record.failed_stage = Some(stage);
        self.record.error = Some(crate::util::with_hint(&e));
        if stage == Stage::PackerBuild
            && self.plan.local.is_some()
            && let Some(cleaned) = crate::packer::local::clean_work(&self.dir)
        {
            self.record
                .warnings
                .push(format!("after the failed local build: {cleaned}"));
        }
        self.record.finished_at = now_string();
        self.record.duration_s = previous_duration + seconds(self.clock.elapsed());
        if let Err(write) = self.save() {
            return write;
        }
        if !self.owned {
            // Nothing of ours is on disk: report the error itself.
            return e;
        }
        BuildError::Stage {
            stage: stage.name(),
            manifest: self.manifest.path.display().to_string(),
            dir: self.dir.display().to_string(),
            source: Box::new(e),
        }
    }

    fn rt(&mut self) -> Result<std::rc::Rc<tokio::runtime::Runtime>, BuildError> {
        if self.rt.is_none() {
            let rt = crate::util::runtime().map_err(|source| BuildError::Write {
                path: PathBuf::from("(async runtime)"),
                source,
            })?;
            self.rt = Some(std::rc::Rc::new(rt));
        }
        Ok(self.rt.clone().expect("just made"))
    }

    fn save(&self) -> Result<(), BuildError> {
        if self.owned {
            self.record.write(&self.dir)
        } else {
            Ok(())
        }
    }
}

pub fn run(
    manifest: &Manifest,
    plan: &Plan,
    opts: BuildOptions<'_>,
) -> Result<BuildRecord, BuildError> {
    let dir = opts.dir.clone();
    let rendered = crate::render::render_files(plan, manifest, opts.templates)?;
    let listing: Vec<RenderedFile> = rendered
        .iter()
        .map(|(path, bytes)| RenderedFile {
            path: path.clone(),
            sha256: crate::util::text::sha256_hex(bytes),
            bytes: bytes.len(),
        })
        .collect();
    let manifest_ref = ManifestRef {
        path: manifest.path.display().to_string(),
        sha256: crate::util::text::sha256_hex(manifest.source.as_bytes()),
    };

    let resuming = opts.resume;
    // A build running in the directory is never disturbed: resuming it, or
    // replacing it with --force, waits for its lock (and is refused now).
    let lock = if resuming || (opts.force && dir.is_dir()) {
        Some(crate::util::lock::try_lock(&dir)?)
    } else {
        None
    };
    if opts.force && !resuming && dir.is_dir() && clean::has_mount_under(&dir) {
        return Err(BuildError::Mounted { dir });
    }
    let record = starting_record(&dir, plan, &opts, manifest_ref, listing)?;
    if resuming
        && record.done(Stage::Render)
        && let Some(bytes) = rendered.get(crate::render::PLAN_FILE)
    {
        // The plan as it is now (a resume after a manifest change).
        let path = dir.join(crate::render::PLAN_FILE);
        crate::util::fsutil::write_atomic(&path, bytes)
            .map_err(|source| BuildError::Write { path, source })?;
    }

    let mut run = Run {
        manifest,
        plan,
        opts,
        dir,
        record,
        artifacts: None,
        clock: Instant::now(),
        owned: resuming,
        cancel: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        packer_running: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        region_checked: false,
        rt: None,
        lock,
    };
    let _signals = crate::util::signals::SignalWatch::start(
        run.cancel.clone(),
        run.packer_running.clone(),
        "interrupted: stopping at the next safe point; `--resume` continues the build",
    );
    let previous_duration = run.record.duration_s;

    for stage in STAGES {
        if run.record.done(stage) {
            crate::util::term::status(
                "Skipping",
                &format!("{} (done in an earlier run)", stage.name()),
            );
            continue;
        }
        if run.opts.dry_run && !matches!(stage, Stage::Render | Stage::PackerValidate) {
            break;
        }
        if let Some(why) = run.skip_reason(stage) {
            run.record.stages.push(StageRecord {
                stage,
                status: StageStatus::Skipped,
                started_at: now_string(),
                duration_s: 0.0,
                detail: Some(why),
            });
            run.save()?;
            continue;
        }
        let started_at = now_string();
        let clock = Instant::now();
        let result = if run.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            Err(BuildError::Cancelled)
        } else {
            match stage {
                Stage::Render => run.render(&rendered),
                Stage::PackerValidate => run.packer_validate(),
                Stage::PackerBuild => run.packer_build(),
                Stage::Capture => run.capture(),
                Stage::ValidateImage => run.validate_image(),
                Stage::BootCheck => run.boot_check(),
                Stage::Publish => run.publish(),
                Stage::Replicate => run.replicate(),
                Stage::Validate => run.validate_copies(),
                Stage::Snippet => run.snippet(),
            }
        };
        let duration_s = seconds(clock.elapsed());
        match result {
            Ok(detail) => {
                run.record.stages.push(StageRecord {
                    stage,
                    status: StageStatus::Done,
                    started_at,
                    duration_s,
                    detail: Some(detail),
                });
                run.record.duration_s = previous_duration + seconds(run.clock.elapsed());
                run.save()?;
            }
            Err(e) => return Err(run.failed(stage, e, started_at, duration_s, previous_duration)),
        }
    }
    run.record.status = if run.opts.dry_run {
        BuildStatus::Validated
    } else {
        BuildStatus::Succeeded
    };
    run.record.finished_at = now_string();
    run.record.duration_s = previous_duration + seconds(run.clock.elapsed());
    run.save()?;
    Ok(run.record)
}

/// The record a run starts from: the earlier run's, its finished stages kept,
/// when resuming (after checking the inputs are the same); a new one
/// otherwise.
fn starting_record(
    dir: &Path,
    plan: &Plan,
    opts: &BuildOptions<'_>,
    manifest_ref: ManifestRef,
    listing: Vec<RenderedFile>,
) -> Result<BuildRecord, BuildError> {
    Ok(if opts.resume {
        let mut old = BuildRecord::load(dir)?;
        // The record is a file in the directory, not proof: a local image it
        // names must be a regular file inside this build directory, or a
        // forged record could have any file on the machine validated,
        // uploaded and published.
        if let Some(Captured::LocalVhd { path, .. }) = &old.artifact {
            let inside = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
                && match (path.canonicalize(), dir.canonicalize()) {
                    (Ok(p), Ok(d)) => p.starts_with(d),
                    _ => false,
                };
            if !inside {
                return Err(BuildError::Resume {
                    dir: dir.to_path_buf(),
                    why: format!(
                        "the record names the image {}, which is not a file inside the build directory",
                        path.display()
                    ),
                    hint: "start a new build (without --resume); a record edited by hand is not resumed".into(),
                });
            }
        }
        if let Some(what) = reconcile_inputs(dir, &mut old, &manifest_ref, &listing)? {
            crate::util::term::status("Changed", &what);
            old.warnings.push(what);
        }
        old.options = Some(opts.recorded.clone());
        old.status = BuildStatus::Running;
        old.error = None;
        old.failed_stage = None;
        old.stages
            .retain(|s| matches!(s.status, StageStatus::Done | StageStatus::Skipped));
        crate::util::term::status(
            "Resuming",
            &format!(
                "{}: {} stage(s) already done",
                dir.display(),
                old.stages
                    .iter()
                    .filter(|s| s.status == StageStatus::Done)
                    .count()
            ),
        );
        old
    } else {
        BuildRecord {
            schema: SCHEMA,
            image: plan.image.clone(),
            status: BuildStatus::Running,
            build_dir: dir.display().to_string(),
            manifest: manifest_ref,
            target: plan.target,
            templates: listing,
            packer: opts.packer.clone(),
            started_at: now_string(),
            finished_at: String::new(),
            duration_s: 0.0,
            stages: Vec::new(),
            artifact: None,
            image_validation: None,
            boot_check: None,
            publish: None,
            copies: Vec::new(),
            replication: None,
            snippet: None,
            failed_stage: None,
            error: None,
            warnings: plan.warnings.clone(),
            options: Some(opts.recorded.clone()),
            promotion: None,
        }
    })
}

/// A resume whose manifest or rendered files changed since the build
/// started: what still stands, and what runs again (said on stderr and kept
/// in the record's warnings).
/// - The same rendered files from a changed manifest: every finished stage
///   stands (its inputs did not change); the stages left read the manifest
///   as it is now — the fix of a failed `replicate` or `publish` setting.
/// - Changed rendered files before the image was built: the build restarts
///   at `render` in the same directory (its record and log kept) — the fix
///   of a failed script.
/// - Changed rendered files after the image was built: refused; the image
///   holds the old scripts, and only a new build makes one with the new.
fn reconcile_inputs(
    dir: &Path,
    old: &mut BuildRecord,
    manifest: &ManifestRef,
    listing: &[RenderedFile],
) -> Result<Option<String>, BuildError> {
    let mut changed: Vec<&str> = listing
        .iter()
        .filter(|f| {
            !old.templates
                .iter()
                .any(|o| o.path == f.path && o.sha256 == f.sha256)
        })
        .map(|f| f.path.as_str())
        .collect();
    changed.extend(
        old.templates
            .iter()
            .filter(|o| !listing.iter().any(|f| f.path == o.path))
            .map(|o| o.path.as_str()),
    );
    let manifest_changed = old.manifest.sha256 != manifest.sha256;
    // The plan file records the plan for people and tools; Packer and the
    // scripts never read it, so it changes nothing that was built.
    let plan_changed = changed.contains(&crate::render::PLAN_FILE);
    changed.retain(|f| *f != crate::render::PLAN_FILE);
    if changed.is_empty() {
        if plan_changed
            && let Some(new) = listing.iter().find(|f| f.path == crate::render::PLAN_FILE)
        {
            // Rewritten in place by `run` with the files rendered now.
            old.templates.retain(|f| f.path != crate::render::PLAN_FILE);
            old.templates.push(new.clone());
        }
        old.manifest = manifest.clone();
        return Ok(manifest_changed.then(|| {
            format!(
                "{} changed since this build started but renders the same scripts and template: the finished stages stand, the rest use the manifest as it is now",
                manifest.path
            )
        }));
    }
    let built = old
        .stages
        .iter()
        .any(|s| s.stage == Stage::PackerBuild && s.status == StageStatus::Done);
    let files = changed.join(", ");
    if built {
        return Err(BuildError::Resume {
            dir: dir.to_path_buf(),
            why: format!(
                "the image was built from the scripts as they were, and {files} render{} differently now",
                if changed.len() == 1 { "s" } else { "" }
            ),
            hint: "start a new build (without --resume) to build an image with the changed scripts"
                .into(),
        });
    }
    old.manifest = manifest.clone();
    old.stages.clear();
    old.artifact = None;
    Ok(Some(format!(
        "{files} changed since this build started, before its image was built: render, packer validate and packer build run again"
    )))
}

impl Run<'_> {
    fn skip_reason(&self, stage: Stage) -> Option<String> {
        let is_vhd = matches!(
            self.record.artifact,
            Some(Captured::AzureVhd { .. }) | Some(Captured::LocalVhd { .. })
        );
        let local_vhd = matches!(self.record.artifact, Some(Captured::LocalVhd { .. }));
        let in_azure = self.azure_image().is_some();
        match stage {
            Stage::ValidateImage if !local_vhd && !in_azure => Some(
                "not a local VHD: an Azure VHD is validated as copies, after replication".into(),
            ),
            Stage::ValidateImage if !self.opts.validate => Some("--no-validate".into()),
            Stage::BootCheck if !local_vhd || self.plan.local.is_none() => {
                Some("boot-checked only for builder = \"local\"".into())
            }
            Stage::BootCheck if !self.opts.boot_check => Some("--no-boot-check".into()),
            Stage::BootCheck
                if self
                    .plan
                    .local
                    .as_ref()
                    .is_some_and(|l| l.boot_check == crate::spec::manifest::BootCheck::Off) =>
            {
                Some("[build.local] boot_check = \"off\"".into())
            }
            Stage::Publish if !local_vhd || self.plan.publish.is_none() => {
                Some(if self.plan.target == Target::Vhd {
                    "target = \"vhd\": the VHD is replicated, not published".into()
                } else {
                    "Packer's azure-arm builder published the image".into()
                })
            }
            Stage::Publish if !self.opts.publish => Some("--no-publish".into()),
            Stage::Replicate if self.plan.target != Target::Vhd => Some(format!(
                "target = \"{}\": Azure replicates a published image itself",
                self.plan.target.as_str()
            )),
            Stage::Replicate if !self.opts.replicate => Some("--no-replicate".into()),
            Stage::Replicate if !is_vhd => Some(
                "the image is not a VHD: Azure serves managed and gallery images itself".into(),
            ),
            Stage::Validate if !self.opts.validate => Some("--no-validate".into()),
            Stage::Validate if self.record.copies.is_empty() => {
                Some("no copies to validate".into())
            }
            _ => None,
        }
    }

    fn render(
        &mut self,
        files: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<String, BuildError> {
        let rendered = if self.opts.resume {
            // A resume that renders again (its scripts changed before the
            // image was built): the files in place, the record and lock kept.
            let r = crate::render::refresh_dir(files, &self.dir, &self.record.templates)?;
            self.record.templates = r.files.clone();
            r
        } else {
            let r = crate::render::write_dir(files, &self.dir, self.opts.force)?;
            // The directory is new (any old one, and its lock, went with
            // --force): lock it before the first word of the journal.
            self.lock = Some(crate::util::lock::try_lock(&self.dir)?);
            r
        };
        // The directory exists now: record the journal there from here on.
        self.owned = true;
        self.save()?;
        if uses_azure_arm(&self.dir)
            && let Some(advice) = self.opts.packer.target_advice(self.plan.target)
        {
            crate::util::term::warning(&advice);
            self.record.warnings.push(advice);
        }
        let msg = format!("{} files into {}", rendered.files.len(), self.dir.display());
        crate::util::term::status("Rendered", &msg);
        Ok(msg)
    }

    fn packer_validate(&mut self) -> Result<String, BuildError> {
        // Packer reads its credentials from the environment where the
        // template says so; an unset one surfaces as an unrelated Managed
        // Identity error minutes later. Every missing one is named now.
        let mut unset = Vec::new();
        if self.plan.local.is_none() {
            let template = self.dir.join(PACKER_FILE);
            let text = std::fs::read_to_string(&template).unwrap_or_default();
            let wanted = crate::packer::env_references(&text);
            let missing: Vec<String> = wanted
                .iter()
                .filter(|v| std::env::var(v).map_or(true, |x| x.is_empty()))
                .cloned()
                .collect();
            if !missing.is_empty() {
                let e = BuildError::Credentials { template, missing };
                if !self.opts.dry_run {
                    return Err(e);
                }
                // A dry run needs none: Packer validates the template with
                // none of them set (as for a Managed Identity), and the
                // warning says what a real build will need.
                let note = format!("{e} (a dry run goes on: a real build needs them)");
                crate::util::term::warning(&note);
                self.record.warnings.push(note);
                unset = wanted;
            }
        }
        let clock = Instant::now();
        self.opts
            .packer
            .validate_without(&self.dir, PACKER_FILE, &unset)?;
        let msg = format!(
            "{PACKER_FILE} accepted by Packer {} in {:.2} s",
            self.opts.packer.version,
            clock.elapsed().as_secs_f64()
        );
        crate::util::term::status("Validated", &msg);
        Ok(msg)
    }

    /// The copies' accounts, as the replicate stage will choose them.
    /// Where this build's copies go (`[replicate]`, through the plan).
    fn copy_plan(&self) -> Result<crate::replicate::CopyPlan, BuildError> {
        let dir_name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.plan.image.clone());
        Ok(crate::replicate::CopyPlan::new(
            Some(self.plan),
            &[],
            None,
            format!("{dir_name}.vhd"),
        )?)
    }

    /// `[replicate] region`: every destination account is there, asked of
    /// Resource Manager once per run.
    fn check_region(&mut self) -> Result<(), BuildError> {
        let Some(region) = &self.plan.pool.batch_region else {
            return Ok(());
        };
        if self.region_checked || !self.opts.replicate {
            return Ok(());
        }
        let accounts = self.copy_plan()?.accounts;
        let checked = self
            .rt()?
            .block_on(crate::replicate::check_region(&accounts, region))?;
        crate::util::term::status("Checked", &checked);
        self.region_checked = true;
        Ok(())
    }

    fn packer_build(&mut self) -> Result<String, BuildError> {
        // Publishing signs in after the build: name every missing variable
        // now, not after the build's minutes.
        if self.plan.local.is_some() && self.plan.publish.is_some() && self.opts.publish {
            let missing = crate::publish::missing_variables();
            if !missing.is_empty() {
                return Err(BuildError::PublishCredentials {
                    target: match self.plan.target {
                        Target::Gallery => "a Compute Gallery image version",
                        _ => "a managed image",
                    },
                    missing,
                });
            }
        }
        if let Some(local) = &self.plan.local {
            let boot =
                self.opts.boot_check && local.boot_check != crate::spec::manifest::BootCheck::Off;
            let uefi = matches!(
                local.boot_check,
                crate::spec::manifest::BootCheck::Uefi | crate::spec::manifest::BootCheck::Both
            );
            crate::packer::local::preflight(boot, uefi, local.base.is_some())?;
        }
        let mut packer_env = Vec::new();
        let mut prepared_note = None;
        if let Some(base) = self.plan.from_base_image() {
            let stand_in = crate::validate::boot::stand_in_program()?;
            let prepared = crate::packer::base::prepare(self.plan, base, &self.dir, &stand_in)?;
            crate::util::term::status("Prepared", &prepared.summary);
            packer_env = prepared.env;
            prepared_note = Some(prepared.summary);
        }
        if self.plan.target == crate::spec::manifest::Target::Vhd {
            self.check_region()?;
        }
        if self.plan.local.is_none() && uses_azure_arm(&self.dir) {
            self.sign_in()?;
            self.prepare_gallery()?;
        }
        let log_path = self.dir.join(LOG_FILE);
        let mut log_file = create_no_follow(&log_path).map_err(|source| BuildError::Write {
            path: log_path.clone(),
            source,
        })?;
        let mut display = crate::packer::progress::Display::new(
            self.opts.verbose,
            Instant::now(),
            uses_azure_arm(&self.dir),
        );
        crate::util::term::status(
            "Building",
            &format!("{} with packer build", self.plan.image),
        );
        self.packer_running
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let outcome = self.opts.packer.build(
            &self.dir,
            PACKER_FILE,
            &packer_env,
            &mut |line| {
                use std::io::Write;
                let _ = writeln!(log_file, "{line}");
            },
            &mut |p| display.show(p),
        );
        self.packer_running
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let outcome = outcome?;
        display.finish();
        match outcome.end {
            RunEnd::Cancelled => Err(BuildError::Cancelled),
            RunEnd::Failed => Err(BuildError::PackerFailed {
                status: outcome
                    .exit_status
                    .map_or("killed by a signal".into(), |c| c.to_string()),
                log: log_path,
                details: failure_details(&outcome.errors)
                    + &display.failure_context().unwrap_or_default(),
                hint: packer_failure_hint(
                    !uses_azure_arm(&self.dir),
                    display
                        .failed_script()
                        .map(|f| self.plan.script_name(f))
                        .as_deref(),
                    crate::util::fsutil::free_bytes(&self.dir),
                ),
            }),
            RunEnd::Succeeded => {
                if self.plan.from_base_image().is_some() {
                    crate::packer::base::after_build(&self.dir);
                }
                let n = outcome.artifacts.len();
                self.artifacts = Some(outcome.artifacts);
                Ok(match prepared_note {
                    Some(base) => {
                        format!("packer build succeeded with {n} artifact(s); base {base}")
                    }
                    None => format!("packer build succeeded with {n} artifact(s)"),
                })
            }
        }
    }

    /// Signs the ARM_* principal in, as Packer's azure-arm builder is about
    /// to: a network or credentials problem is then known by its kind (no
    /// answer, a refusal) with its own hint, seconds in, instead of inferred
    /// from the words of Packer's error.
    fn sign_in(&mut self) -> Result<(), BuildError> {
        let Some(principal) = crate::azure::entra::ServicePrincipal::from_env() else {
            return Err(BuildError::Credentials {
                template: self.dir.join(PACKER_FILE),
                missing: crate::publish::missing_variables()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            });
        };
        let endpoint = crate::azure::arm::endpoint_from_env();
        let scope = format!("{}/.default", endpoint.trim_end_matches('/'));
        let http = crate::azure::http::client_builder(Duration::from_secs(30))
            .build()
            .expect("the HTTP client builds");
        self.rt()?
            .block_on(crate::azure::entra::token_or_why(&http, &principal, &scope))
            .map_err(BuildError::SignIn)?;
        crate::util::term::status(
            "Signed in",
            &format!("as {} (the principal Packer uses)", principal.client_id),
        );
        Ok(())
    }

    /// An azure-arm build into a gallery: the image definition Packer
    /// publishes into is made (or checked against the image: generation,
    /// security type, the base's purchase plan) before the build's minutes.
    fn prepare_gallery(&mut self) -> Result<(), BuildError> {
        let Some(publish) = self.plan.publish.as_ref().filter(|p| p.gallery.is_some()) else {
            return Ok(());
        };
        let opts = crate::publish::Options {
            blob_endpoint: self.opts.blob_endpoint.clone(),
            parallel: self.opts.parallel,
            show_progress: self.opts.show_progress,
            cancel: self.cancel.clone(),
            timeout: self.opts.publish_timeout,
        };
        let done = self
            .rt()?
            .block_on(crate::publish::prepare_gallery(publish, &opts))?;
        crate::util::term::status("Prepared", &done);
        Ok(())
    }

    fn capture(&mut self) -> Result<String, BuildError> {
        // After a resume the artifacts come from the kept machine-readable log.
        let artifacts = match self.artifacts.take() {
            Some(a) => a,
            None => {
                let log = std::fs::read_to_string(self.dir.join(LOG_FILE)).unwrap_or_default();
                let mut c = crate::packer::events::ArtifactCollector::default();
                for line in log.lines() {
                    if let Some(e) = crate::packer::events::parse_line(line) {
                        c.observe(&e);
                    }
                }
                c.into_artifacts()
            }
        };
        let captured = crate::packer::capture::capture(&artifacts, &self.dir)?;
        let msg = captured.describe();
        crate::util::term::status("Captured", &msg);
        self.record.artifact = Some(captured);
        Ok(msg)
    }

    fn local_image(&self) -> PathBuf {
        match &self.record.artifact {
            Some(Captured::LocalVhd { path, .. }) => path.clone(),
            _ => unreachable!("skip_reason lets only local VHDs through"),
        }
    }

    /// The gallery version or managed image an azure-arm build made.
    fn azure_image(&self) -> Option<crate::inspect::azure::ImageId> {
        let id = match &self.record.artifact {
            Some(Captured::GalleryImageVersion { id, .. })
            | Some(Captured::ManagedImage { id, .. }) => id,
            _ => return None,
        };
        crate::inspect::azure::ImageId::parse(id)
    }

    /// An azure-arm build's image, read where it lies (through a temporary
    /// managed disk): `inspect.json`, the SBOM and the diff, as a local
    /// build's. The offline checks stay with local VHDs and replicated copies.
    fn inspect_in_azure(
        &mut self,
        image: &crate::inspect::azure::ImageId,
    ) -> Result<String, BuildError> {
        let cancel = self.cancel.clone();
        let mut progress = |line: &str| crate::util::term::status("Inspecting", line);
        let timeout = self.opts.publish_timeout;
        let i = self
            .rt()?
            .block_on(crate::inspect::azure::inspect_azure_image(
                image,
                crate::inspect::azure::Options {
                    timeout,
                    cancel: &cancel,
                    progress: &mut progress,
                },
            ))
            .map_err(|e| {
                if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return BuildError::Cancelled;
                }
                use crate::util::Hint as _;
                BuildError::Validate {
                    hint: Some(e.hint().map_or_else(
                        || "`imgforge inspect IMAGE_ID` reads it the same way; --no-validate skips this stage".to_string(),
                        |h| format!("{h}; --no-validate skips this stage"),
                    )),
                    message: e.to_string(),
                }
            })?;
        let said = self.write_inspection(&i)?;
        crate::util::term::status("Inspected", &said);
        Ok(format!(
            "{}: {said} (read through a temporary disk, removed)",
            image.id
        ))
    }

    fn validate_image(&mut self) -> Result<String, BuildError> {
        if let Some(image) = self.azure_image() {
            return self.inspect_in_azure(&image);
        }
        let path = self.local_image();
        let v =
            crate::validate::validate_file(&path, self.plan).map_err(|e| BuildError::Validate {
                message: e.to_string(),
                hint: None,
            })?;
        self.record.image_validation = Some(ValidationSummary::of(&v));
        if v.report.failed() {
            return Err(BuildError::Validate {
                message: format!(
                    "{} failed validation:\n  {}",
                    path.display(),
                    failed_lines(&v.report).join("\n  "),
                ),
                hint: Some(format!(
                    "`imgforge validate {} --manifest {}` shows every check",
                    path.display(),
                    self.manifest.path.display()
                )),
            });
        }
        let msg = format!(
            "{}: {} passed, {} warnings, {} skipped ({} bytes read)",
            path.display(),
            v.report.summary.pass,
            v.report.summary.warn,
            v.report.summary.skip,
            v.read.bytes
        );
        crate::util::term::status("Validated", &msg);
        let inspected = self.inspect_image(&path)?;
        crate::util::term::status("Inspected", &inspected);
        Ok(format!("{msg}; {inspected}"))
    }

    /// What is in the image (`inspect.json`), its SBOM (`sbom.spdx.json`) and,
    /// when an earlier succeeded build of the same image left its
    /// `inspect.json`, what changed since (`diff.json`).
    fn inspect_image(&mut self, path: &Path) -> Result<String, BuildError> {
        let fail = |e: String| BuildError::Validate {
            message: e,
            hint: Some("`imgforge inspect VHD` reads the image the same way".into()),
        };
        let disk = crate::validate::LocalDisk::open(path).map_err(|e| fail(e.to_string()))?;
        let i = crate::inspect::inspect_disk(&path.display().to_string(), Box::new(disk))
            .map_err(|e| fail(e.to_string()))?;
        self.write_inspection(&i)
    }

    /// Writes `inspect.json`, `sbom.spdx.json` and (against the previous
    /// build's) `diff.json`; returns the line `status` shows.
    fn write_inspection(&mut self, i: &crate::inspect::Inspection) -> Result<String, BuildError> {
        let write = |name: &str, value: &serde_json::Value| -> Result<(), BuildError> {
            let file = self.dir.join(name);
            let mut text = serde_json::to_string_pretty(value).expect("a JSON value serializes");
            text.push('\n');
            crate::util::fsutil::write_atomic(&file, text.as_bytes())
                .map_err(|source| BuildError::Write { path: file, source })
        };
        write(
            "inspect.json",
            &serde_json::to_value(i).expect("an inspection serializes"),
        )?;
        let mut said = format!(
            "{} packages, kernel {}",
            i.packages.len(),
            i.kernels.join(", ")
        );
        if let Ok(sbom) = crate::inspect::sbom::render(
            i,
            crate::inspect::sbom::SbomFormat::Spdx,
            &self.plan.image,
            &now_string(),
        ) {
            write("sbom.spdx.json", &sbom)?;
            said.push_str(", sbom.spdx.json");
        }
        if let Some((dir, before)) = self.previous_inspection() {
            let d = crate::inspect::diff::diff(&before, i, &[]);
            write(
                "diff.json",
                &serde_json::to_value(&d).expect("a diff serializes"),
            )?;
            said.push_str(&format!(
                "; since {}: {} package(s) added, {} removed, {} changed{}",
                dir.file_name().unwrap_or_default().to_string_lossy(),
                d.packages_added.len(),
                d.packages_removed.len(),
                d.packages_changed.len(),
                if d.kernels_added.is_empty() {
                    String::new()
                } else {
                    format!(", kernel {}", d.kernels_added.join(", "))
                }
            ));
        }
        Ok(said)
    }

    /// The newest earlier succeeded build of this image beside this one, with
    /// the inspection it wrote.
    fn previous_inspection(&self) -> Option<(PathBuf, crate::inspect::Inspection)> {
        promote::previous_inspection(&self.dir, &self.plan.image)
    }

    fn boot_check(&mut self) -> Result<String, BuildError> {
        use crate::spec::manifest::BootCheck;
        use crate::validate::boot::{BootOptions, Firmware, closed_port};
        let path = self.local_image();
        let firmwares = match self.plan.local.as_ref().map(|l| l.boot_check) {
            Some(BootCheck::Bios) => vec![Firmware::Bios],
            Some(BootCheck::Uefi) => vec![Firmware::Uefi],
            _ => vec![Firmware::Bios, Firmware::Uefi],
        };
        crate::util::term::status(
            "Booting",
            &format!(
                "{} under QEMU ({})",
                path.display(),
                firmwares
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        );
        let result = crate::validate::boot::boot_check(
            &path,
            &BootOptions {
                firmwares,
                timeout: Duration::from_secs(300),
                must_answer: crate::validate::boot::must_answer(Some(self.plan)),
                must_be_dropped: closed_port(&self.plan.firewall.inbound_tcp),
                log_dir: self.dir.clone(),
                node: crate::validate::boot::inside::NodeChecks::from_plan(Some(self.plan)),
                stand_in: crate::validate::boot::stand_in_program()?,
                cancel: self.cancel.clone(),
            },
        )
        .map_err(|e| match e {
            crate::validate::boot::BootError::Cancelled => BuildError::Cancelled,
            other => other.into(),
        })?;
        let r = &result.report;
        // Every row with its evidence, beside the serial logs.
        let report_path = self.dir.join("boot-check.json");
        crate::util::fsutil::write_atomic(
            &report_path,
            serde_json::to_string_pretty(&result)
                .expect("plain data")
                .as_bytes(),
        )
        .map_err(|source| BuildError::Write {
            path: report_path.clone(),
            source,
        })?;
        self.record.boot_check = Some(BootRecord {
            pass: r.summary.pass,
            warn: r.summary.warn,
            fail: r.summary.fail,
            skip: r.summary.skip,
            failed_checks: r.failed_ids(),
            runs: result.runs.clone(),
        });
        let times: Vec<String> = result
            .runs
            .iter()
            .map(|run| {
                let mut t = format!(
                    "{} {}",
                    run.firmware.name(),
                    run.login_after_s
                        .map_or("no login".to_string(), |s| format!("login {s:.0} s"))
                );
                if let Some(s) = run.provisioned_after_s {
                    t.push_str(&format!(", Ready {s:.0} s"));
                }
                if let Some(s) = run.checked_after_s {
                    t.push_str(&format!(", checked {s:.0} s"));
                }
                t.push_str(&format!(" ({})", run.accel));
                t
            })
            .collect();
        if r.failed() {
            let mut tail = String::new();
            for run in result.runs.iter().filter(|run| !run.tail.is_empty()) {
                tail.push_str(&format!(
                    "\n  last console lines ({}, {}):",
                    run.firmware.name(),
                    run.serial_log.display()
                ));
                for l in &run.tail {
                    tail.push_str("\n    ");
                    tail.push_str(l);
                }
            }
            return Err(BuildError::Validate {
                message: format!(
                    "the boot check failed ({}):\n  {}{tail}",
                    times.join(", "),
                    failed_lines(r).join("\n  ")
                ),
                hint: None,
            });
        }
        let warned: Vec<String> = r
            .findings
            .iter()
            .filter(|f| f.status == crate::report::Status::Warn)
            .map(|f| format!("{}: {}", f.id, f.message))
            .collect();
        let msg = format!(
            "{} checks passed, {} warned, {} skipped (not testable under QEMU): {}",
            r.summary.pass,
            r.summary.warn,
            r.summary.skip,
            times.join("; ")
        );
        crate::util::term::status("Booted", &msg);
        for w in &warned {
            crate::util::term::warning(&format!("boot check: {w}"));
        }
        Ok(msg)
    }

    fn publish(&mut self) -> Result<String, BuildError> {
        use crate::publish::{Options, PublishError, Source};
        let plan = self.plan.publish.as_ref().expect("skip_reason checked");
        let path = self.local_image();
        let dir_name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.plan.image.clone());
        let rt = self.rt()?;
        let record = rt
            .block_on(crate::publish::publish(
                plan,
                Source::File {
                    path,
                    blob_name: format!("{dir_name}.vhd"),
                },
                &Options {
                    blob_endpoint: self.opts.blob_endpoint.clone(),
                    parallel: self.opts.parallel,
                    show_progress: self.opts.show_progress,
                    cancel: self.cancel.clone(),
                    timeout: self.opts.publish_timeout,
                },
            ))
            .map_err(|e| match e {
                PublishError::Cancelled => BuildError::Cancelled,
                PublishError::Arm(a)
                    if matches!(*a, crate::azure::arm::ArmError::Cancelled { .. }) =>
                {
                    BuildError::Cancelled
                }
                other => other.into(),
            })?;
        let regions: Vec<String> = record
            .regions
            .iter()
            .map(|r| format!("{} ×{} {}", r.region, r.replicas, r.state))
            .collect();
        let msg = format!(
            "{} (Hyper-V {}){}",
            record.arm_image_id,
            record.hyper_v_generation,
            if regions.is_empty() {
                String::new()
            } else {
                format!(", replicas: {}", regions.join(", "))
            }
        );
        crate::util::term::status("Published", &msg);
        self.record.publish = Some(record);
        Ok(msg)
    }

    fn replicate(&mut self) -> Result<String, BuildError> {
        use crate::azure::storage::BlobRef;
        use crate::replicate::{Options, Source};
        self.check_region()?;
        let copy_plan = self.copy_plan()?;
        let accounts = copy_plan.accounts.clone();
        let destinations = copy_plan.destinations(&self.opts.blob_endpoint);
        let rt = self.rt()?;
        let mut involved = accounts.clone();
        let source = match self.record.artifact.as_ref().expect("skip_reason checked") {
            Captured::LocalVhd { path, .. } => Source::open_file(path)?,
            Captured::AzureVhd {
                os_disk_uri,
                read_only_sas_url,
                ..
            } => {
                let mut blob = BlobRef::parse(os_disk_uri)?;
                let sas = read_only_sas_url.expose();
                if let Some((_, query)) = sas.split_once('?')
                    && !query.contains(crate::util::redact::MASK)
                {
                    blob.sas = Some(crate::util::redact::Secret::new(query.to_string()));
                }
                if blob.sas.is_none() && !involved.contains(&blob.account) {
                    involved.push(blob.account.clone());
                }
                Source::Blob(blob)
            }
            _ => unreachable!("skip_reason lets only VHDs through"),
        };
        let opts = Options {
            parallel: self.opts.parallel,
            max_requests: self.opts.max_requests,
            show_progress: self.opts.show_progress,
            server_copy: true,
            cancel: self.cancel.clone(),
            verify: self.opts.verify,
        };
        let report = rt
            .block_on(crate::replicate::copy_to(
                &involved,
                source,
                destinations,
                opts,
            ))
            .map_err(|e| match e {
                ReplicateError::Cancelled => BuildError::Cancelled,
                other => other.into(),
            })?;
        self.record.copies = report
            .copies
            .iter()
            .map(|c| CopyRecord {
                copy: c.clone(),
                validation: None,
            })
            .collect();
        self.record.replication = Some(ReplicationSummary {
            source: report.source.clone(),
            source_length: report.source_length,
            valid_bytes: report.valid_bytes,
            bytes_downloaded: report.bytes_downloaded,
            bytes_uploaded: report.bytes_uploaded,
            retries: report.retries,
        });
        let msg = format!(
            "{} verified cop{} ({} valid bytes of {}) on {}",
            report.copies.len(),
            if report.copies.len() == 1 { "y" } else { "ies" },
            report.valid_bytes,
            report.source_length,
            accounts.join(", ")
        );
        crate::util::term::status("Replicated", &msg);
        Ok(msg)
    }

    fn validate_copies(&mut self) -> Result<String, BuildError> {
        let rt = self.rt()?;
        let copies: Vec<_> = self.record.copies.iter().map(|c| c.copy.clone()).collect();
        let results = rt
            .block_on(crate::replicate::validate_copies(
                &copies,
                self.plan,
                &self.cancel,
            ))
            .map_err(|e| BuildError::Validate {
                message: e.to_string(),
                hint: None,
            })?
            .ok_or(BuildError::Cancelled)?;
        let mut failures = Vec::new();
        for (copy, v) in self.record.copies.iter_mut().zip(&results) {
            let failed = failed_lines(&v.report);
            if !failed.is_empty() {
                failures.push(format!("{}: {}", copy.copy.url, failed.join("; ")));
            }
            copy.validation = Some(ValidationSummary::of(v));
        }
        if !failures.is_empty() {
            return Err(BuildError::Validate {
                message: format!(
                    "{} cop{} failed validation:\n  {}",
                    failures.len(),
                    if failures.len() == 1 { "y" } else { "ies" },
                    failures.join("\n  ")
                ),
                hint: Some("`imgforge validate URL --manifest M` shows every check".into()),
            });
        }
        let msg = format!(
            "{} cop{} passed every check",
            results.len(),
            if results.len() == 1 { "y" } else { "ies" }
        );
        crate::util::term::status("Checked", &msg);
        Ok(msg)
    }

    fn snippet(&mut self) -> Result<String, BuildError> {
        let image = match self.record.pool_image() {
            Ok(image) => image,
            Err(NoPoolImage::NotPublished) => {
                return Ok("no snippet: the VHD was not published (--no-publish)".into());
            }
            Err(_) => return Ok("no snippet: the VHD was not replicated (--no-replicate)".into()),
        };
        use crate::pool::output::{PoolFormat, render};
        // Batch Shipyard's form (when it can say the pool) and Batch's own.
        let mut wrote = Vec::new();
        for (format, file) in [
            (PoolFormat::Shipyard, crate::pool::SNIPPET_FILE),
            (PoolFormat::BatchJson, crate::pool::BATCH_POOL_FILE),
        ] {
            let text = match render(self.plan, &image, format, false) {
                Ok(text) => text,
                Err(r) if wrote.is_empty() && format == PoolFormat::BatchJson => {
                    return Ok(format!("no pool output: {} ({})", r.message, r.hint));
                }
                Err(_) => continue,
            };
            let path = self.dir.join(file);
            crate::util::fsutil::write_atomic(&path, text.as_bytes()).map_err(|source| {
                BuildError::Write {
                    path: path.clone(),
                    source,
                }
            })?;
            if format == PoolFormat::Shipyard {
                self.record.snippet = Some(path.display().to_string());
            }
            wrote.push(path.display().to_string());
        }
        Ok(format!("wrote {}", wrote.join(" and ")))
    }
}

/// A new, empty file at `path`; a link there (planted in the build
/// directory) is replaced, never written through.
fn create_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(path)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
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

/// Packer's error lines, plainly, each once: Packer ends a failed build by
/// repeating each builder's error under "Some builds didn't complete
/// successfully" (`--> BUILDER: MESSAGE`), which adds nothing to the
/// `Build 'BUILDER' errored after T: MESSAGE` line before it.
fn failure_details(errors: &[String]) -> String {
    let mut out = String::new();
    let mut said: Vec<String> = Vec::new();
    for e in errors {
        for line in e
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
        {
            if line.contains("Some builds didn't complete successfully") {
                continue;
            }
            let message = line
                .trim_start()
                .strip_prefix("--> ")
                .and_then(|r| r.split_once(": ").map(|(_, m)| m))
                .or_else(|| {
                    line.split_once(" errored after ")
                        .and_then(|(_, r)| r.split_once(": ").map(|(_, m)| m))
                });
            if let Some(m) = message {
                if said.iter().any(|s| s == m) {
                    continue;
                }
                said.push(m.to_string());
            }
            out.push_str("\n  ");
            out.push_str(line);
        }
    }
    out
}

/// What to do after `packer build` failed, from what is known of the
/// failure — the builder, the script that ran last, the room left on the
/// build directory's file system — never from words in Packer's output (a
/// kernel file named `quota` once sent a full disk to "request a quota
/// increase").
fn packer_failure_hint(local: bool, script: Option<&str>, free: Option<u64>) -> String {
    const LOW: u64 = 1 << 30;
    match (local, free, script) {
        (true, Some(free), _) if free < LOW => format!(
            "the build directory's file system has {} free; a local build needs a few GiB (the root, then the VHD's allocated data): free space, or build elsewhere with --out",
            indicatif::HumanBytes(free)
        ),
        (_, _, Some(script)) => format!(
            "{script} failed (its last lines are above): fix it — a user script of the manifest, or a template (`imgforge templates export` shows the built-in one) — then run the resume command, which rebuilds from `render`"
        ),
        (true, _, None) => "Packer stopped before a provisioner script ran: the lines above are its own, and packer.log has the whole stream".into(),
        (false, _, None) => "the lines above are Azure's answer as Packer relayed it (its `Code=` value names the cause: credentials, quota, a size or region); packer.log has the whole stream".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packer_failures_hint_follows_what_is_known_not_what_was_printed() {
        let low = Some(200 << 20);
        let roomy = Some(50 << 30);
        assert!(packer_failure_hint(true, Some("20-docker.sh"), low).contains("200.00 MiB free"));
        let h = packer_failure_hint(true, Some("20-docker.sh"), roomy);
        assert!(
            h.contains("20-docker.sh failed") && h.contains("resume"),
            "{h}"
        );
        // An Azure build's free space on this machine is not the cause.
        assert!(packer_failure_hint(false, None, low).contains("Azure's answer"));
        assert!(packer_failure_hint(true, None, None).contains("before a provisioner script"));
    }

    #[test]
    fn packers_recap_of_an_error_is_not_shown_twice() {
        let errors = vec![
            "==> null: oops".to_string(),
            "Build 'null' errored after 9 milliseconds: Script exited with non-zero exit status: 3.".to_string(),
            "==> Some builds didn't complete successfully and had errors:\n--> null: Script exited with non-zero exit status: 3.".to_string(),
        ];
        let d = failure_details(&errors);
        assert_eq!(d.matches("non-zero exit status: 3").count(), 1, "{d}");
        assert!(
            d.contains("==> null: oops") && !d.contains("Some builds"),
            "{d}"
        );
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

pub mod clean;
pub mod promote;
mod record;

pub use record::{
    BootRecord, BuildRecord, BuildStatus, CopyRecord, ManifestRef, NoPoolImage, RecordedOptions,
    ReplicationSummary, StageRecord, StageStatus, ValidationSummary, status_text,
};
