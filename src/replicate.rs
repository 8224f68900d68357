//! The replicator: copies of one page-blob VHD on distinct storage accounts,
//! moving only the valid page ranges, verified, resumable.
//!
//! One VHD serves at most 40 Linux (20 Windows) VMs, so a pool of N nodes needs
//! ceil(N / 40) copies, each on its own storage account. Packer leaves the VHD
//! at a nested path Batch cannot use, so even one node needs one copy.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::Digest as _;
use serde::Serialize;

use crate::azure::storage::{self, BlobRef, MAX_CHUNK, PAGE, Storage, StorageError};
use crate::util::Category;
use crate::util::redact::Secret;

use crate::azure::storage::MAX_GAP;

const META_SOURCE: &str = "imgforge_source_etag";
const META_LENGTH: &str = "imgforge_source_length";
const META_VERIFIED: &str = "imgforge_verified";
const META_VERIFIED_AT: &str = "imgforge_verified_at";
const META_VERIFY_MODE: &str = "imgforge_verify";

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error(
        "the pool needs {needed} VHD copies ({max_nodes} nodes at {per_vhd} VMs per VHD) but only {have} distinct storage account(s) were given: {accounts}; nothing was copied"
    )]
    NotEnoughAccounts {
        needed: u32,
        have: usize,
        max_nodes: u32,
        per_vhd: u32,
        accounts: String,
    },
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// Some destinations failed while the others were copied and verified.
    #[error(
        "{} of {} copies failed ({} verified and kept):\n{}",
        .failed.len(),
        .failed.len() + .verified,
        .verified,
        .failed.iter().map(|(account, why)| format!("  {account}: {why}")).collect::<Vec<_>>().join("\n")
    )]
    Destinations {
        /// (account, why), in destination order.
        failed: Vec<(String, String)>,
        verified: usize,
    },
    #[error(
        "the copies' storage accounts must be in {region} (the Batch account's region) and in subscription {subscription}: {}; nothing was copied",
        .problems.join("; ")
    )]
    Misplaced {
        region: String,
        subscription: String,
        problems: Vec<String>,
    },
    #[error(
        "[replicate] region / --region `{region}` is set, so the destination accounts are looked up in Resource Manager first, but {missing}"
    )]
    RegionSettings {
        region: String,
        missing: String,
        hint: String,
    },
    #[error("checking that the destination accounts are in {region}: {source}")]
    RegionCheck {
        region: String,
        source: Box<crate::azure::arm::ArmError>,
    },
    #[error(
        "{url}: the source is not a page blob (it is a {kind}); Azure Batch needs page-blob VHDs"
    )]
    NotPageBlob { url: String, kind: String },
    #[error("{url}: the source blob does not exist")]
    SourceMissing { url: String },
    #[error(
        "{url}: the service's page list claims bytes {start}..{end} of a {length}-byte blob; nothing was copied"
    )]
    PagesPastEnd {
        url: String,
        start: u64,
        end: u64,
        length: u64,
    },
    #[error(
        "{url}: verification failed: {why}; the copy is not marked complete — rerun to repair it"
    )]
    Verify { url: String, why: String },
    #[error("{path}: {message}")]
    LocalVhd { path: PathBuf, message: String },
    #[error(
        "replication interrupted; copies not yet verified stay unverified and a rerun finishes them"
    )]
    Cancelled,
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::util::Hint for ReplicateError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            ReplicateError::NotEnoughAccounts { .. } => {
                "add accounts with --to or [replicate] storage_accounts".into()
            }
            ReplicateError::Destinations { .. } => "rerun the same command: verified copies are skipped and the failed ones resume where they stopped".into(),
            ReplicateError::Misplaced { .. } => "choose accounts there ([replicate] storage_accounts or --to), or correct [replicate] region / --region".into(),
            ReplicateError::RegionSettings { hint, .. } => hint.clone(),
            ReplicateError::Storage(e) => return e.hint(),
            ReplicateError::RegionCheck { source, .. } => return source.hint(),
            _ => return None,
        })
    }
}

impl ReplicateError {
    /// What kind of failure this is; the CLI maps it to an exit code.
    pub fn category(&self) -> Category {
        match self {
            ReplicateError::NotEnoughAccounts { .. } | ReplicateError::LocalVhd { .. } => {
                Category::Input
            }
            ReplicateError::Storage(StorageError::BadUrl { .. } | StorageError::Setup { .. }) => {
                Category::Input
            }
            ReplicateError::Read { .. } => Category::Input,
            ReplicateError::Misplaced { .. } | ReplicateError::RegionSettings { .. } => {
                Category::Input
            }
            ReplicateError::Cancelled => Category::Cancelled,
            _ => Category::Failed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Server-side Put Page From URL, range by range.
    PutPageFromUrl,
    /// Server-side asynchronous Copy Blob, polled.
    CopyBlob,
    /// Ranged reads through imgforge, Put Page with Content-MD5.
    ClientStream,
    /// Already a verified copy of the same source.
    AlreadyVerified,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CopyOutcome {
    /// The bare URL: no SAS; ready for image_uris.
    pub url: String,
    pub account: String,
    pub strategy: Strategy,
    pub chunks_copied: usize,
    pub chunks_total: usize,
    pub bytes_copied: u64,
    pub verified: bool,
    /// `readback` or `sample` (`already_verified` copies: how they were).
    #[serde(default)]
    pub verify: VerifyMode,
}

/// What `replicate --json` and `upload --json` print (in the schema-1
/// envelope): the copy plan, what came of it, and with a manifest each copy's
/// validation where it lies.
#[derive(Debug, Serialize)]
pub struct ReplicationDoc<'a> {
    pub plan: CopyPlan,
    pub result: &'a Replication,
    /// Absent without a manifest or with `--no-validate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<Vec<CopyCheck>>,
}

/// How many copies the pool needs and where they go.
#[derive(Debug, Clone, Serialize)]
pub struct CopyPlan {
    /// The pool's most nodes (0: no manifest said).
    pub max_nodes: u32,
    pub vms_per_vhd: u32,
    pub copies_needed: u32,
    pub accounts: Vec<String>,
    pub container: String,
    pub name: String,
}

/// One copy's remote validation, summed up.
#[derive(Debug, Clone, Serialize)]
pub struct CopyCheck {
    pub url: String,
    pub summary: crate::report::Summary,
    pub failed_checks: Vec<String>,
}

impl CopyCheck {
    pub fn of(v: &crate::validate::Validation) -> CopyCheck {
        CopyCheck {
            url: v.report.subject.clone(),
            summary: v.report.summary.clone(),
            failed_checks: v.report.failed_ids(),
        }
    }
}

/// What one copy operation did.
#[derive(Debug, Clone, Serialize)]
pub struct Replication {
    pub source: String,
    pub source_length: u64,
    pub valid_bytes: u64,
    pub copies: Vec<CopyOutcome>,
    pub bytes_downloaded: u64,
    pub bytes_uploaded: u64,
    pub requests: u64,
    pub retries: u64,
    pub duration_s: f64,
}

/// Before any byte moves: each destination account is in `region` (the Batch
/// account's) and in the `ARM_SUBSCRIPTION_ID` subscription, as Resource
/// Manager tells the `ARM_*` service principal. Returns what was checked.
pub async fn check_region(accounts: &[String], region: &str) -> Result<String, ReplicateError> {
    let settings = |missing: &str, hint: &str| ReplicateError::RegionSettings {
        region: region.to_string(),
        missing: missing.to_string(),
        hint: hint.to_string(),
    };
    let Some(subscription) = std::env::var("ARM_SUBSCRIPTION_ID")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        return Err(settings(
            "ARM_SUBSCRIPTION_ID is not set",
            "set ARM_SUBSCRIPTION_ID to the Batch account's subscription",
        ));
    };
    let Some(principal) = crate::azure::entra::ServicePrincipal::from_env() else {
        return Err(settings(
            "no service principal is set",
            "set ARM_TENANT_ID, ARM_CLIENT_ID and ARM_CLIENT_SECRET (Reader on the subscription)",
        ));
    };
    let arm_error = |source| ReplicateError::RegionCheck {
        region: region.to_string(),
        source: Box::new(source),
    };
    let mut arm =
        crate::azure::arm::Arm::connect(&crate::azure::arm::endpoint_from_env(), &principal)
            .await
            .map_err(arm_error)?;
    let listed = arm
        .storage_accounts(&subscription)
        .await
        .map_err(arm_error)?;
    let misplaced = crate::azure::arm::misplaced(&listed, &subscription, accounts, region);
    if !misplaced.is_empty() {
        return Err(ReplicateError::Misplaced {
            region: region.to_string(),
            subscription: subscription.clone(),
            problems: misplaced.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(format!(
        "{} destination account(s) in {region}, subscription {subscription}",
        accounts.len()
    ))
}

impl CopyPlan {
    /// Where the copies go, decided once for `build` and `replicate`: with a
    /// plan, the pool's copies by the seed's rule (one per 40 Linux / 20
    /// Windows nodes) over `to` or else the plan's `[replicate]` accounts;
    /// without one, a copy to each of `to`. The container is `container`,
    /// else the plan's, else `images`.
    pub fn new(
        plan: Option<&crate::spec::plan::Plan>,
        to: &[String],
        container: Option<&str>,
        name: String,
    ) -> Result<CopyPlan, ReplicateError> {
        let candidates: &[String] = match plan {
            _ if !to.is_empty() => to,
            Some(p) => &p.pool.copy_accounts,
            None => &[],
        };
        let (needed, max_nodes, per_vhd) = match plan {
            Some(p) => (p.pool.vhd_copies, p.pool.max_nodes, p.pool.vms_per_vhd),
            None => ((candidates.len() as u32).max(1), 0, 40),
        };
        Ok(CopyPlan {
            max_nodes,
            vms_per_vhd: per_vhd,
            copies_needed: needed,
            accounts: choose_accounts(needed, max_nodes, per_vhd, candidates)?,
            container: container
                .map(str::to_string)
                .or_else(|| plan.map(|p| p.pool.copy_container.clone()))
                .unwrap_or_else(|| crate::spec::plan::DEFAULT_COPY_CONTAINER.into()),
            name,
        })
    }

    /// The destination blobs, one per account (`template`: the blob endpoint).
    pub fn destinations(&self, template: &str) -> Vec<BlobRef> {
        self.accounts
            .iter()
            .map(|a| BlobRef::at(template, a, &self.container, &self.name))
            .collect()
    }
}

/// Which accounts get a copy: the first `needed` distinct candidates.
pub fn choose_accounts(
    needed: u32,
    max_nodes: u32,
    per_vhd: u32,
    candidates: &[String],
) -> Result<Vec<String>, ReplicateError> {
    let mut distinct: Vec<String> = Vec::new();
    for c in candidates {
        if !distinct.contains(c) {
            distinct.push(c.clone());
        }
    }
    if (distinct.len() as u32) < needed {
        return Err(ReplicateError::NotEnoughAccounts {
            needed,
            have: distinct.len(),
            max_nodes,
            per_vhd,
            accounts: if distinct.is_empty() {
                "(none)".into()
            } else {
                distinct.join(", ")
            },
        });
    }
    distinct.truncate(needed as usize);
    Ok(distinct)
}

/// Where the bytes come from: a blob, or a local fixed VHD (`upload`).
pub enum Source {
    Blob(BlobRef),
    File {
        path: PathBuf,
        file: Arc<std::fs::File>,
    },
}

struct SourceInfo {
    length: u64,
    identity: String,
    ranges: Vec<Range<u64>>,
    display: String,
}

impl Source {
    /// A local fixed VHD to upload: a regular file (a FIFO or a device is
    /// refused before it is opened), opened once for all its reads.
    pub fn open_file(path: &Path) -> Result<Source, ReplicateError> {
        let file = std::fs::metadata(path)
            .and_then(|m| crate::util::fsutil::check_regular(&m))
            .and_then(|_| std::fs::File::open(path))
            .map_err(|source| ReplicateError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Source::File {
            path: path.to_path_buf(),
            file: Arc::new(file),
        })
    }

    async fn info(&self, storage: &Storage) -> Result<SourceInfo, ReplicateError> {
        match self {
            Source::Blob(b) => {
                let props = storage
                    .properties(b)
                    .await?
                    .ok_or_else(|| ReplicateError::SourceMissing { url: b.url() })?;
                if props.blob_type != "PageBlob" {
                    return Err(ReplicateError::NotPageBlob {
                        url: b.url(),
                        kind: props.blob_type,
                    });
                }
                let ranges = storage.page_ranges(b).await?;
                // A page list is the service's word, not the blob's: ranges
                // past the end would become copies of bytes that do not exist
                // (0..2^63 alone is 2^41 chunks).
                if let Some(r) = ranges.iter().find(|r| r.end > props.length) {
                    return Err(ReplicateError::PagesPastEnd {
                        url: b.url(),
                        start: r.start,
                        end: r.end,
                        length: props.length,
                    });
                }
                Ok(SourceInfo {
                    length: props.length,
                    identity: props.etag.trim_matches('"').to_string(),
                    ranges,
                    display: b.url(),
                })
            }
            Source::File { path, file } => {
                let (length, ranges, identity) = scan_local_vhd(path, file)?;
                Ok(SourceInfo {
                    length,
                    identity,
                    ranges,
                    display: path.display().to_string(),
                })
            }
        }
    }

    async fn read(&self, storage: &Storage, range: Range<u64>) -> Result<Bytes, ReplicateError> {
        match self {
            Source::Blob(b) => Ok(storage.get_range(b, range).await?),
            Source::File { path, file } => {
                let file = file.clone();
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; (range.end - range.start) as usize];
                    file.read_exact_at(&mut buf, range.start)
                        .map(|_| Bytes::from(buf))
                        .map_err(|source| ReplicateError::Read { path, source })
                })
                .await
                .expect("the read task does not panic")
            }
        }
    }
}

/// Checks the footer and finds the non-zero 512-byte pages of a local VHD.
fn scan_local_vhd(
    path: &Path,
    file: &std::fs::File,
) -> Result<(u64, Vec<Range<u64>>, String), ReplicateError> {
    use std::os::unix::fs::FileExt;
    let read_err = |source| ReplicateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = file.metadata().map_err(read_err)?;
    let length = meta.len();
    let mut footer = [0u8; 512];
    if length >= 512 {
        file.read_exact_at(&mut footer, length - 512)
            .map_err(read_err)?;
    }
    let (_, problems) = crate::validate::vhd::check(&footer, length);
    if let Some(p) = problems.first() {
        return Err(ReplicateError::LocalVhd {
            path: path.to_path_buf(),
            message: format!("not a VHD Azure accepts: {p}"),
        });
    }
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut buf = vec![0u8; MAX_CHUNK as usize];
    for region in data_regions(file, length) {
        let mut offset = region.start;
        while offset < region.end {
            let n = (region.end - offset).min(MAX_CHUNK) as usize;
            file.read_exact_at(&mut buf[..n], offset)
                .map_err(read_err)?;
            for (i, page) in buf[..n].chunks(PAGE as usize).enumerate() {
                if page.iter().any(|b| *b != 0) {
                    let start = offset + (i as u64) * PAGE;
                    let end = start + page.len() as u64;
                    // Extended as found: memory grows with the runs of data,
                    // not with the pages (30 GiB of scattered pages would be
                    // 60 M ranges before coalescing).
                    match ranges.last_mut() {
                        Some(last) if last.end == start => last.end = end,
                        _ => ranges.push(start..end),
                    }
                }
            }
            offset += n as u64;
        }
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((length, ranges, format!("file-{length}-{mtime}")))
}

/// The parts of a sparse file that hold data (SEEK_DATA/SEEK_HOLE), page
/// aligned; the whole file where the filesystem cannot say.
fn data_regions(file: &std::fs::File, length: u64) -> Vec<Range<u64>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut regions = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < length {
        // SAFETY: lseek on a file descriptor we own; reads use pread, so the
        // file offset it moves is not relied on elsewhere.
        let start = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if start < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // no data after pos
            }
            return std::iter::once(0..length).collect();
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let end = if end < 0 { length as i64 } else { end };
        let s = (start as u64) / PAGE * PAGE;
        let e = ((end as u64).div_ceil(PAGE) * PAGE).min(length);
        regions.push(s..e);
        pos = end;
    }
    storage::coalesce(regions)
}

fn md5(bytes: &[u8]) -> [u8; 16] {
    md5::Md5::digest(bytes).into()
}

/// What one destination still needs.
struct Destination {
    blob: BlobRef,
    skip: bool,
    /// Chunks the destination already has data for (a resumed copy): compared, not blindly rewritten.
    present: Vec<bool>,
    strategy: Strategy,
    chunks_copied: usize,
    bytes_copied: u64,
    verify: VerifyMode,
}

pub struct Options {
    /// Chunks in flight: the memory bound (× 4 MiB) and the requests each
    /// destination account sees at once.
    pub parallel: usize,
    /// Write requests in flight across all destinations.
    pub max_requests: usize,
    pub show_progress: bool,
    /// Try Put Page From URL and Copy Blob before streaming through imgforge.
    pub server_copy: bool,
    /// Set from a signal handler: stop at the next chunk, leaving resumable copies.
    pub cancel: Arc<AtomicBool>,
    /// How each copy is checked after it is written.
    pub verify: VerifyMode,
}

/// `--verify`: how a written copy is checked. Both compare the copy's
/// length and valid page ranges with the source's.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Every chunk is read back and its MD5 compared with the source's.
    Readback,
    /// Only a sample is read back: the first and the last chunk of every run
    /// of data, and 4 chunks picked at random. The rest rests on the service:
    /// every Put Page carries the Content-MD5 of the bytes imgforge read and
    /// every Put Page From URL their MD5 as `x-ms-source-content-md5`, which
    /// Azure checks on write. A Copy Blob copy has no such check and is
    /// always read back in full.
    #[default]
    Sample,
}

impl VerifyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Readback => "readback",
            VerifyMode::Sample => "sample",
        }
    }
}

/// What a sampled verification reads, bounded whatever the image: the
/// first and last `EDGE` bytes of up to `MAX_EDGE_SPANS` spans of data (all
/// of them when there are few; else the first and last 8 and the rest picked
/// at random) — where an offset or range mistake shows — and `RANDOM`
/// pieces of up to 1 MiB anywhere in the data. Picked with a generator
/// seeded by `seed` (the copy's URL): the same copy gets the same sample.
/// At most 32 × 128 KiB + 4 MiB = 8 MiB per copy.
pub fn sample_pieces(spans: &[Range<u64>], seed: &str) -> Vec<Range<u64>> {
    const EDGE: u64 = 64 * 1024;
    const MAX_EDGE_SPANS: usize = 32;
    const RANDOM: usize = 4;
    const PIECE: u64 = 1024 * 1024;
    let spans: Vec<&Range<u64>> = spans.iter().filter(|r| r.end > r.start).collect();
    if spans.is_empty() {
        return Vec::new();
    }
    // xorshift64*, seeded from the URL.
    let mut x: u64 = seed.bytes().fold(0x9E37_79B9_7F4A_7C15, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    }) | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut edged = std::collections::BTreeSet::new();
    if spans.len() <= MAX_EDGE_SPANS {
        edged.extend(0..spans.len());
    } else {
        edged.extend(0..8);
        edged.extend(spans.len() - 8..spans.len());
        while edged.len() < MAX_EDGE_SPANS {
            edged.insert((next() % spans.len() as u64) as usize);
        }
    }
    let mut pieces = Vec::new();
    for &i in &edged {
        let r = spans[i];
        pieces.push(r.start..(r.start + EDGE).min(r.end));
        pieces.push(r.end.saturating_sub(EDGE).max(r.start)..r.end);
    }
    let total: u64 = spans.iter().map(|r| r.end - r.start).sum();
    for _ in 0..RANDOM {
        // A byte of the data at random, then the 1 MiB piece (page-aligned,
        // inside its span) that holds it.
        let mut at = next() % total;
        let span = spans
            .iter()
            .find(|r| {
                let len = r.end - r.start;
                if at < len {
                    true
                } else {
                    at -= len;
                    false
                }
            })
            .expect("at < total");
        let start =
            (span.start + at / PAGE * PAGE).min(span.end.saturating_sub(PIECE).max(span.start));
        pieces.push(start..(start + PIECE).min(span.end));
    }
    storage::coalesce(pieces)
}

/// What the copy and verify steps of one run share.
struct Ctx<'a> {
    storage: &'a Arc<Storage>,
    source: &'a Arc<Source>,
    info: &'a SourceInfo,
    chunks: &'a [Range<u64>],
    /// The source's ranges joined over small gaps (`storage::bridge`).
    spans: &'a [Range<u64>],
    parallel: usize,
    /// Requests in flight across all destinations.
    requests: Arc<tokio::sync::Semaphore>,
    cancel: &'a AtomicBool,
    /// Destinations that failed, by index, with why.
    failed: Arc<std::sync::Mutex<BTreeMap<usize, String>>>,
}

impl Ctx<'_> {
    /// A slot for one more chunk in flight, unless the run was interrupted.
    async fn permit(
        &self,
        semaphore: &Arc<tokio::sync::Semaphore>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ReplicateError> {
        self.check_cancel()?;
        Ok(semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open"))
    }

    fn check_cancel(&self) -> Result<(), ReplicateError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(ReplicateError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// One destination made ready: its container and page blob, the chunks it
/// already holds from an earlier run of the same source, and whether it is a
/// verified copy to leave alone (a sampled copy is not taken as read back
/// in full when `verify` asks for that).
async fn prepare(
    storage: &Storage,
    blob: BlobRef,
    info: &SourceInfo,
    chunks: &[Range<u64>],
    spans: &[Range<u64>],
    verify: VerifyMode,
) -> Result<Destination, ReplicateError> {
    storage.create_container(&blob).await?;
    let existing = storage.properties(&blob).await?;
    let same_source = existing.as_ref().is_some_and(|p| {
        p.length == info.length
            && p.blob_type == "PageBlob"
            && p.metadata.get(META_SOURCE) == Some(&info.identity)
    });
    // A copy verified by sample is not taken as read back in full.
    let verified = same_source
        && existing.as_ref().is_some_and(|p| {
            p.metadata.get(META_VERIFIED).map(String::as_str) == Some("true")
                && (verify == VerifyMode::Sample
                    || p.metadata.get(META_VERIFY_MODE).map(String::as_str) != Some("sample"))
        });
    let mut present = vec![false; chunks.len()];
    if same_source {
        let have = storage.page_ranges(&blob).await?;
        for (i, c) in chunks.iter().enumerate() {
            present[i] = have.iter().any(|r| r.start <= c.start && c.end <= r.end);
        }
        if verified && storage::covers(&have, &info.ranges, spans) {
            let was_sampled = existing
                .as_ref()
                .and_then(|p| p.metadata.get(META_VERIFY_MODE))
                .is_some_and(|m| m == "sample");
            return Ok(Destination {
                blob,
                skip: true,
                present,
                strategy: Strategy::AlreadyVerified,
                chunks_copied: 0,
                bytes_copied: 0,
                verify: if was_sampled {
                    VerifyMode::Sample
                } else {
                    VerifyMode::Readback
                },
            });
        }
    } else {
        storage
            .create_page_blob(&blob, info.length, &unverified_metadata(info))
            .await?;
    }
    Ok(Destination {
        blob,
        skip: false,
        present,
        strategy: Strategy::ClientStream,
        chunks_copied: 0,
        bytes_copied: 0,
        verify,
    })
}

pub async fn replicate(
    storage: Arc<Storage>,
    source: Arc<Source>,
    destinations: Vec<BlobRef>,
    opts: Options,
) -> Result<Replication, ReplicateError> {
    let clock = Instant::now();
    let info = source.info(&storage).await?;
    let spans = storage::bridge(&info.ranges, MAX_GAP);
    let chunks = storage::chunks(&spans, MAX_CHUNK);
    let valid_bytes: u64 = info.ranges.iter().map(|r| r.end - r.start).sum();
    // What moves per copy: the valid bytes and the small gaps bridged.
    let span_bytes: u64 = spans.iter().map(|r| r.end - r.start).sum();

    let progress = indicatif::MultiProgress::new();
    if !opts.show_progress || crate::util::term::quiet() {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // Phase, bar (as wide as the terminal allows), bytes, rate, elapsed, time left.
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>24} {msg:<13} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed} eta {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");

    // Every destination must be writable before a byte moves.
    for blob in &destinations {
        storage.require_write_credentials(&blob.account)?;
    }
    // Prepare every destination before moving a byte.
    let mut dests = Vec::new();
    for blob in destinations {
        dests.push(prepare(&storage, blob, &info, &chunks, &spans, opts.verify).await?);
    }

    let bars: Vec<indicatif::ProgressBar> = dests
        .iter()
        .map(|d| {
            let bar = progress.add(indicatif::ProgressBar::new(span_bytes));
            bar.set_style(style.clone());
            bar.set_prefix(d.blob.account.clone());
            if d.skip {
                bar.set_position(span_bytes);
                bar.finish_with_message("already verified");
            } else {
                bar.set_message("copy");
            }
            bar
        })
        .collect();
    // Off a terminal the bars are not drawn: a line per destination every
    // IMGFORGE_PROGRESS_INTERVAL_MS (default 10 s) keeps a CI log informed.
    let ticker = (opts.show_progress && !crate::util::term::quiet() && !progress_visible())
        .then(|| spawn_progress_lines(&bars, span_bytes));

    let mut src_md5: Vec<Option<[u8; 16]>> = vec![None; chunks.len()];
    let work: Vec<usize> = (0..dests.len()).filter(|&i| !dests[i].skip).collect();
    let ctx = Ctx {
        storage: &storage,
        source: &source,
        info: &info,
        chunks: &chunks,
        spans: &spans,
        parallel: opts.parallel,
        requests: Arc::new(tokio::sync::Semaphore::new(opts.max_requests.max(1))),
        cancel: &opts.cancel,
        failed: Arc::new(std::sync::Mutex::new(BTreeMap::new())),
    };
    if !work.is_empty() && !chunks.is_empty() {
        let server_side = match &*source {
            Source::Blob(b) if opts.server_copy => {
                storage.read_sas_url(b, Duration::from_secs(4 * 3600))
            }
            _ => None,
        };
        let mut remaining = work.clone();
        if let Some(sas_url) = &server_side {
            remaining = server_side_copy(
                &ctx,
                sas_url.clone(),
                &mut dests,
                &remaining,
                &bars,
                &mut src_md5,
            )
            .await?;
        }
        if !remaining.is_empty() {
            stream_copy(&ctx, &mut dests, &remaining, &bars, &mut src_md5).await?;
        }
    }

    // Verify every copy that was written in this run, then mark it complete.
    let failed = ctx.failed.lock().expect("not poisoned").clone();
    for &i in work.iter().filter(|i| !failed.contains_key(i)) {
        bars[i].set_position(0);
        bars[i].reset_elapsed();
        bars[i].reset_eta();
        bars[i].set_message("verify");
        let mode = dests[i].verify;
        verify(&ctx, mode, &mut src_md5, &dests[i].blob, &bars[i]).await?;
        let mut meta = unverified_metadata(&info);
        meta.insert(META_VERIFIED.into(), "true".into());
        meta.insert(META_VERIFY_MODE.into(), mode.as_str().into());
        meta.insert(
            META_VERIFIED_AT.into(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        );
        storage.set_metadata(&dests[i].blob, &meta).await?;
        bars[i].finish_with_message("verified");
        if ticker.is_some() {
            crate::util::term::status(
                "Verified",
                &format!(
                    "{}: {} copied and {} in {:.1} s",
                    dests[i].blob.url(),
                    indicatif::HumanBytes(valid_bytes),
                    match mode {
                        VerifyMode::Readback => "read back",
                        VerifyMode::Sample => "a sample read back",
                    },
                    clock.elapsed().as_secs_f64()
                ),
            );
        }
    }
    drop(ticker);
    if !failed.is_empty() {
        return Err(ReplicateError::Destinations {
            failed: failed
                .iter()
                .map(|(&i, why)| (dests[i].blob.account.clone(), why.clone()))
                .collect(),
            verified: dests.len() - failed.len(),
        });
    }

    let c = &storage.counters;
    Ok(Replication {
        source: info.display.clone(),
        source_length: info.length,
        valid_bytes,
        copies: dests
            .iter()
            .map(|d| CopyOutcome {
                url: d.blob.url(),
                account: d.blob.account.clone(),
                strategy: d.strategy,
                chunks_copied: d.chunks_copied,
                chunks_total: chunks.len(),
                bytes_copied: d.bytes_copied,
                verified: true,
                verify: d.verify,
            })
            .collect(),
        bytes_downloaded: c.bytes_down.load(Ordering::Relaxed),
        bytes_uploaded: c.bytes_up.load(Ordering::Relaxed),
        requests: c.requests.load(Ordering::Relaxed),
        retries: c.retries.load(Ordering::Relaxed),
        duration_s: (clock.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    })
}

/// Copies the pool can use, step one: `source` to every destination, each
/// verified, signed in for the `involved` accounts. The one entry point of
/// `build`, `replicate` and `upload`.
pub async fn copy_to(
    involved: &[String],
    source: Source,
    destinations: Vec<BlobRef>,
    opts: Options,
) -> Result<Replication, ReplicateError> {
    let storage = Arc::new(Storage::new(involved).await?);
    replicate(storage, Arc::new(source), destinations, opts).await
}

/// Copies the pool can use, step two: each copy validated where it lies
/// (range reads, never a download) against the plan, as `build` and
/// `replicate --manifest` do. `None` when `cancel` was set between copies.
pub async fn validate_copies(
    copies: &[CopyOutcome],
    plan: &crate::spec::plan::Plan,
    cancel: &AtomicBool,
) -> Result<Option<Vec<crate::validate::Validation>>, crate::validate::ValidateError> {
    let accounts: Vec<String> = copies.iter().map(|c| c.account.clone()).collect();
    let storage = Arc::new(Storage::new(&accounts).await?);
    let mut out = Vec::new();
    for copy in copies {
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let blob = BlobRef::parse(&copy.url)?;
        out.push(crate::validate::validate_blob(storage.clone(), blob, plan.clone()).await?);
    }
    Ok(Some(out))
}

/// Whether the progress bars are drawn (stderr is a terminal).
fn progress_visible() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// The periodic progress lines' task; stops when dropped (also on an error).
struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every `IMGFORGE_PROGRESS_INTERVAL_MS` (default 10 000), one line per
/// unfinished destination: phase, bytes, percent, rate, elapsed, time left.
fn spawn_progress_lines(bars: &[indicatif::ProgressBar], valid: u64) -> Ticker {
    let bars = bars.to_vec();
    let every = std::env::var("IMGFORGE_PROGRESS_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(10_000)
        .max(50);
    Ticker(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(every)).await;
            for b in bars.iter().filter(|b| !b.is_finished()) {
                let total = b.length().unwrap_or(valid).max(1);
                let pos = b.position();
                let left = if pos == 0 {
                    "time left not known yet".to_string()
                } else {
                    format!("about {} s left", b.eta().as_secs())
                };
                crate::util::term::status(
                    "Progress",
                    &format!(
                        "{} {}: {}/{} ({} %), {}/s, {:.1} s elapsed, {left}",
                        b.prefix(),
                        b.message(),
                        indicatif::HumanBytes(pos),
                        indicatif::HumanBytes(total),
                        pos * 100 / total,
                        indicatif::HumanBytes(b.per_sec() as u64),
                        b.elapsed().as_secs_f64(),
                    ),
                );
            }
        }
    }))
}

fn unverified_metadata(info: &SourceInfo) -> BTreeMap<String, String> {
    BTreeMap::from([
        (META_SOURCE.to_string(), info.identity.clone()),
        (META_LENGTH.to_string(), info.length.to_string()),
        (META_VERIFIED.to_string(), "false".to_string()),
    ])
}

/// How a chunk reaches a destination.
#[derive(Clone)]
enum Write {
    /// Put Page with the bytes imgforge read and their Content-MD5, which the
    /// service checks on arrival.
    Client,
    /// Put Page From URL: the service reads the range from the source itself
    /// and checks it against `x-ms-source-content-md5`, the MD5 of the bytes
    /// imgforge read. No copy bytes are uploaded through imgforge.
    FromUrl(Arc<Secret>),
}

/// Tries the server-side strategies; returns the destinations they could not serve.
async fn server_side_copy(
    ctx: &Ctx<'_>,
    sas_url: Secret,
    dests: &mut [Destination],
    work: &[usize],
    bars: &[indicatif::ProgressBar],
    src_md5: &mut [Option<[u8; 16]>],
) -> Result<Vec<usize>, ReplicateError> {
    let (storage, chunks, info) = (ctx.storage, ctx.chunks, ctx.info);
    for &i in work {
        bars[i].set_message("server copy?");
    }
    // Put Page From URL: probe with the first chunk of the first destination.
    let first = ctx.source.read(storage, chunks[0].clone()).await?;
    let digest = md5(&first);
    drop(first);
    let probe = storage
        .put_page_from_url(
            &dests[work[0]].blob,
            chunks[0].clone(),
            &sas_url,
            Some(digest),
        )
        .await;
    if probe.is_ok() {
        src_md5[0] = Some(digest);
        let d = &mut dests[work[0]];
        d.chunks_copied += 1;
        d.bytes_copied += chunks[0].end - chunks[0].start;
        for &i in work {
            bars[i].set_message("copy");
        }
        let write = Write::FromUrl(Arc::new(sas_url));
        copy_chunks(ctx, dests, work, bars, src_md5, write, Some(work[0])).await?;
        for &i in work {
            dests[i].strategy = Strategy::PutPageFromUrl;
        }
        return Ok(Vec::new());
    }
    // Not implemented here (Azurite answers 501), or the service cannot read
    // the source: fall back to asynchronous Copy Blob, all destinations at
    // once, polled together.
    for &i in work {
        bars[i].set_message("copy blob?");
    }
    let mut remaining = Vec::new();
    let mut pending = Vec::new();
    for &i in work {
        // The same source and service give the same answer: after one refusal,
        // the rest go straight to the fallback.
        if !remaining.is_empty() {
            remaining.push(i);
            continue;
        }
        match storage
            .start_copy(&dests[i].blob, &sas_url, &unverified_metadata(info))
            .await
        {
            Ok(()) => pending.push(i),
            Err(_) => remaining.push(i),
        }
    }
    let valid: u64 = info.ranges.iter().map(|r| r.end - r.start).sum();
    while !pending.is_empty() {
        ctx.check_cancel()?;
        let mut still = Vec::new();
        for &i in &pending {
            let props = storage.properties(&dests[i].blob).await?;
            match props.as_ref().and_then(|p| p.copy_status.as_deref()) {
                Some("success") => {
                    dests[i].strategy = Strategy::CopyBlob;
                    dests[i].chunks_copied = chunks.len();
                    dests[i].bytes_copied = valid;
                    bars[i].set_position(bars[i].length().unwrap_or(valid));
                    // No range of a Copy Blob was checked against a hash
                    // imgforge computed: such a copy is always read back in full.
                    dests[i].verify = VerifyMode::Readback;
                }
                Some("pending") => still.push(i),
                _ => {
                    // A failed copy leaves an unusable blob: start that one afresh.
                    storage
                        .create_page_blob(&dests[i].blob, info.length, &unverified_metadata(info))
                        .await?;
                    dests[i].present.iter_mut().for_each(|p| *p = false);
                    remaining.push(i);
                }
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(remaining)
}

/// Reads each needed source chunk once and writes it to every destination that
/// lacks it; chunks a resumed destination already holds intact are not rewritten.
async fn stream_copy(
    ctx: &Ctx<'_>,
    dests: &mut [Destination],
    work: &[usize],
    bars: &[indicatif::ProgressBar],
    src_md5: &mut [Option<[u8; 16]>],
) -> Result<(), ReplicateError> {
    copy_chunks(ctx, dests, work, bars, src_md5, Write::Client, None).await?;
    for &i in work {
        dests[i].strategy = Strategy::ClientStream;
    }
    Ok(())
}

/// The copy loop both strategies share. Bounds, whatever the number of
/// destinations: at most `parallel` chunks (≤ 4 MiB each) are held in memory,
/// so each account sees at most `parallel` requests at once; a chunk is
/// written to its destinations concurrently, at most `max_requests` requests
/// in flight in all. A destination that fails (after the storage client's
/// retries) is left out of the later chunks and reported; the others go on.
async fn copy_chunks(
    ctx: &Ctx<'_>,
    dests: &mut [Destination],
    work: &[usize],
    bars: &[indicatif::ProgressBar],
    src_md5: &mut [Option<[u8; 16]>],
    write: Write,
    probed: Option<usize>,
) -> Result<(), ReplicateError> {
    let (storage, source, chunks, parallel) = (ctx.storage, ctx.source, ctx.chunks, ctx.parallel);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (c, chunk) in chunks.iter().enumerate() {
        let failed_now = ctx.failed.lock().expect("not poisoned").clone();
        let targets: Vec<(usize, BlobRef, bool)> = work
            .iter()
            .filter(|i| !failed_now.contains_key(i))
            .filter(|&&i| !(c == 0 && probed == Some(i)))
            .map(|&i| (i, dests[i].blob.clone(), dests[i].present[c]))
            .collect();
        if work.iter().all(|i| failed_now.contains_key(i)) {
            break;
        }
        if targets.is_empty() {
            continue;
        }
        let permit = ctx.permit(&semaphore).await?;
        let (storage, source, chunk, failed, requests, write) = (
            storage.clone(),
            source.clone(),
            chunk.clone(),
            ctx.failed.clone(),
            ctx.requests.clone(),
            write.clone(),
        );
        let bars: Vec<indicatif::ProgressBar> =
            targets.iter().map(|(i, _, _)| bars[*i].clone()).collect();
        tasks.spawn(async move {
            let _permit = permit;
            let data = source.read(&storage, chunk.clone()).await?;
            let digest = md5(&data);
            let mut writes = tokio::task::JoinSet::new();
            for ((i, blob, present), bar) in targets.into_iter().zip(bars) {
                let (storage, chunk, data, requests, write) = (
                    storage.clone(),
                    chunk.clone(),
                    data.clone(),
                    requests.clone(),
                    write.clone(),
                );
                writes.spawn(async move {
                    let _slot = requests.acquire_owned().await.expect("semaphore open");
                    let result = async {
                        let intact = present
                            && md5(&storage.get_range(&blob, chunk.clone()).await?) == digest;
                        if !intact {
                            match &write {
                                Write::Client => storage.put_page(&blob, chunk.start, data).await?,
                                Write::FromUrl(sas) => {
                                    storage
                                        .put_page_from_url(&blob, chunk.clone(), sas, Some(digest))
                                        .await?
                                }
                            }
                        }
                        Ok::<bool, StorageError>(!intact)
                    }
                    .await;
                    (i, bar, result)
                });
            }
            drop(data);
            let mut written = Vec::new();
            while let Some(joined) = writes.join_next().await {
                let (i, bar, result) = joined.expect("write tasks do not panic");
                match result {
                    Ok(wrote) => {
                        if wrote {
                            written.push(i);
                        }
                        bar.inc(chunk.end - chunk.start);
                    }
                    Err(e) => {
                        bar.abandon_with_message("failed");
                        failed
                            .lock()
                            .expect("not poisoned")
                            .entry(i)
                            .or_insert_with(|| match crate::util::Hint::hint(&e) {
                                Some(h) => format!("{e} ({h})"),
                                None => e.to_string(),
                            });
                    }
                }
            }
            Ok::<_, ReplicateError>((c, digest, written))
        });
        while tasks.len() > parallel * 2 {
            collect_one(&mut tasks, chunks, dests, src_md5).await?;
        }
    }
    while !tasks.is_empty() {
        collect_one(&mut tasks, chunks, dests, src_md5).await?;
    }
    Ok(())
}

type ChunkResult = Result<(usize, [u8; 16], Vec<usize>), ReplicateError>;

async fn collect_one(
    tasks: &mut tokio::task::JoinSet<ChunkResult>,
    chunks: &[Range<u64>],
    dests: &mut [Destination],
    src_md5: &mut [Option<[u8; 16]>],
) -> Result<(), ReplicateError> {
    let Some(joined) = tasks.join_next().await else {
        return Ok(());
    };
    let (c, digest, written) = joined.expect("copy tasks do not panic")?;
    src_md5[c] = Some(digest);
    for i in written {
        dests[i].chunks_copied += 1;
        dests[i].bytes_copied += chunks[c].end - chunks[c].start;
    }
    Ok(())
}

/// Page ranges equal the source's, and every chunk's MD5 matches.
async fn verify(
    ctx: &Ctx<'_>,
    mode: VerifyMode,
    src_md5: &mut [Option<[u8; 16]>],
    blob: &BlobRef,
    bar: &indicatif::ProgressBar,
) -> Result<(), ReplicateError> {
    let (storage, source, info, chunks, parallel) =
        (ctx.storage, ctx.source, ctx.info, ctx.chunks, ctx.parallel);
    let fail = |why: String| ReplicateError::Verify {
        url: blob.url(),
        why,
    };
    let props = storage
        .properties(blob)
        .await?
        .ok_or_else(|| fail("the copy is missing".into()))?;
    if props.length != info.length {
        return Err(fail(format!(
            "length {} differs from the source's {}",
            props.length, info.length
        )));
    }
    let ranges = storage.page_ranges(blob).await?;
    if !storage::covers(&ranges, &info.ranges, ctx.spans) {
        let bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        return Err(fail(format!(
            "valid page ranges do not match the source's ({} ranges, {bytes} bytes vs {} ranges, {} bytes)",
            ranges.len(),
            info.ranges.len(),
            info.ranges.iter().map(|r| r.end - r.start).sum::<u64>()
        )));
    }
    if mode == VerifyMode::Sample {
        return verify_sample(ctx, blob, bar).await;
    }
    bar.set_length(chunks.iter().map(|c| c.end - c.start).sum());
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (c, chunk) in chunks.iter().enumerate() {
        let permit = ctx.permit(&semaphore).await?;
        let (storage, source, blob, chunk, known, bar) = (
            storage.clone(),
            source.clone(),
            blob.clone(),
            chunk.clone(),
            src_md5[c],
            bar.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let want = match known {
                Some(d) => d,
                None => md5(&source.read(&storage, chunk.clone()).await?),
            };
            let got = md5(&storage.get_range(&blob, chunk.clone()).await?);
            bar.inc(chunk.end - chunk.start);
            Ok::<_, ReplicateError>((c, want, got))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (c, want, got) = joined.expect("verify tasks do not panic")?;
        src_md5[c] = Some(want);
        if want != got {
            let r = &chunks[c];
            return Err(fail(format!(
                "bytes {}-{} differ from the source (MD5 mismatch)",
                r.start,
                r.end - 1
            )));
        }
    }
    Ok(())
}

/// A sampled verification: each piece of `sample_pieces` read from the
/// source and from the copy, their MD5s compared.
async fn verify_sample(
    ctx: &Ctx<'_>,
    blob: &BlobRef,
    bar: &indicatif::ProgressBar,
) -> Result<(), ReplicateError> {
    let pieces = sample_pieces(ctx.spans, &blob.url());
    bar.set_length(pieces.iter().map(|r| r.end - r.start).sum());
    let semaphore = Arc::new(tokio::sync::Semaphore::new(ctx.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for piece in pieces {
        let permit = ctx.permit(&semaphore).await?;
        let (storage, source, blob, bar) = (
            ctx.storage.clone(),
            ctx.source.clone(),
            blob.clone(),
            bar.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let want = md5(&source.read(&storage, piece.clone()).await?);
            let got = md5(&storage.get_range(&blob, piece.clone()).await?);
            bar.inc(piece.end - piece.start);
            Ok::<_, ReplicateError>((piece, want == got))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (piece, same) = joined.expect("verify tasks do not panic")?;
        if !same {
            return Err(ReplicateError::Verify {
                url: blob.url(),
                why: format!(
                    "bytes {}-{} differ from the source (MD5 mismatch, sampled)",
                    piece.start,
                    piece.end - 1
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sample_reads_the_edges_of_the_data_and_a_few_pieces_bounded_whatever_the_image() {
        let mib = 1024 * 1024;
        let kib = 1024;
        // Two runs: the edges of both, and 4 pieces of 1 MiB.
        let spans = vec![0..10 * mib, 40 * mib..41 * mib];
        let pieces = super::sample_pieces(&spans, "https://a/c/x.vhd");
        for edge in [
            0..64 * kib,
            10 * mib - 64 * kib..10 * mib,
            40 * mib..40 * mib + 64 * kib,
            41 * mib - 64 * kib..41 * mib,
        ] {
            assert!(
                pieces
                    .iter()
                    .any(|p| p.start <= edge.start && edge.end <= p.end),
                "{edge:?} in {pieces:?}"
            );
        }
        assert!(
            pieces
                .iter()
                .all(|p| spans.iter().any(|s| s.start <= p.start && p.end <= s.end))
        );
        assert!(
            pieces
                .iter()
                .all(|p| p.start % 512 == 0 && p.end % 512 == 0)
        );
        // The same copy gets the same sample; another copy another one.
        assert_eq!(pieces, super::sample_pieces(&spans, "https://a/c/x.vhd"));
        // 100,000 spans of 64 KiB: still at most 32 × 128 KiB + 4 MiB.
        let many: Vec<_> = (0..100_000u64)
            .map(|i| i * mib..i * mib + 64 * kib)
            .collect();
        let pieces = super::sample_pieces(&many, "https://a/c/y.vhd");
        let bytes: u64 = pieces.iter().map(|p| p.end - p.start).sum();
        assert!(bytes <= 8 * mib, "{bytes}");
        assert!(
            pieces.first().unwrap().start == 0
                && pieces.last().unwrap().end == many.last().unwrap().end
        );
        assert!(super::sample_pieces(&[], "x").is_empty());
    }

    use super::*;

    #[test]
    fn choosing_accounts_needs_enough_distinct_ones() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            choose_accounts(2, 60, 40, &c(&["a", "b", "c"])).unwrap(),
            c(&["a", "b"])
        );
        let e = choose_accounts(2, 41, 40, &c(&["a", "a"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 2 VHD copies"), "{e}");
        assert!(e.contains("only 1 distinct"), "{e}");
    }
}
