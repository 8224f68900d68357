//! The offline validator: proves a VHD meets Azure Batch's and Batch
//! Shipyard's requirements without booting it, by reading the footer, the
//! partition table, the root filesystem and its files directly — from a local
//! file or from a blob through range reads, never downloading the image.
//!
//! The checks come from the same catalog that renders the provisioning
//! scripts: what a feature installs is exactly what is checked.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde::Serialize;

use crate::azure::storage::{BlobRef, Storage};
use crate::report::{Finding, Report};
use crate::spec::catalog::Os;
use crate::spec::plan::Plan;

pub mod boot;
pub(crate) mod checks;
pub(crate) mod rootfs;
pub mod vhd;

type BoxedError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("{subject}: cannot read the image: {message}")]
    Unreadable { subject: String, message: String },
    #[error("{0}")]
    Storage(#[from] crate::azure::storage::StorageError),
}

/// Positioned reads over a whole disk image, counted.
pub trait Disk {
    /// Size in bytes, footer included.
    fn size(&self) -> u64;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BoxedError>;
    fn stats(&self) -> ReadStats;
}

#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct ReadStats {
    /// Bytes fetched from the file or the storage service.
    pub bytes: u64,
    /// Read calls (local) or range GETs (remote).
    pub requests: u64,
}

pub struct LocalDisk {
    file: std::fs::File,
    len: u64,
    stats: ReadStats,
}

impl LocalDisk {
    pub fn open(path: &std::path::Path) -> Result<LocalDisk, ValidateError> {
        let unreadable = |e: std::io::Error| ValidateError::Unreadable {
            subject: path.display().to_string(),
            message: e.to_string(),
        };
        // Stat first: opening a FIFO would block, a device has no end.
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        crate::util::fsutil::check_regular(&meta).map_err(unreadable)?;
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let len = file.metadata().map_err(unreadable)?.len();
        Ok(LocalDisk {
            file,
            len,
            stats: ReadStats::default(),
        })
    }
}

impl Disk for LocalDisk {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BoxedError> {
        use std::os::unix::fs::FileExt;
        self.stats.bytes += buf.len() as u64;
        self.stats.requests += 1;
        Ok(self.file.read_exact_at(buf, offset)?)
    }

    fn stats(&self) -> ReadStats {
        self.stats
    }
}

/// A blob read through 1 MiB range GETs, cached: ext4-view reads at most 32 KiB
/// at a time, so a cache turns hundreds of tiny reads into a few requests.
pub struct RemoteDisk {
    storage: Arc<Storage>,
    blob: BlobRef,
    len: u64,
    runtime: tokio::runtime::Handle,
    cache: HashMap<u64, Rc<Vec<u8>>>,
    order: Vec<u64>,
    stats: ReadStats,
}

const CACHE_CHUNK: u64 = 1024 * 1024;
const CACHE_CHUNKS: usize = 64;

impl RemoteDisk {
    pub fn new(
        storage: Arc<Storage>,
        blob: BlobRef,
        len: u64,
        runtime: tokio::runtime::Handle,
    ) -> RemoteDisk {
        RemoteDisk {
            storage,
            blob,
            len,
            runtime,
            cache: HashMap::new(),
            order: Vec::new(),
            stats: ReadStats::default(),
        }
    }

    fn chunk(&mut self, index: u64) -> Result<Rc<Vec<u8>>, BoxedError> {
        if let Some(c) = self.cache.get(&index) {
            return Ok(c.clone());
        }
        let start = index * CACHE_CHUNK;
        let end = (start + CACHE_CHUNK).min(self.len);
        let data = self
            .runtime
            .block_on(self.storage.get_range(&self.blob, start..end))?;
        self.stats.bytes += data.len() as u64;
        self.stats.requests += 1;
        let data = Rc::new(data.to_vec());
        if self.order.len() >= CACHE_CHUNKS {
            let old = self.order.remove(0);
            self.cache.remove(&old);
        }
        self.order.push(index);
        self.cache.insert(index, data.clone());
        Ok(data)
    }
}

impl Disk for RemoteDisk {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BoxedError> {
        if offset + buf.len() as u64 > self.len {
            return Err(format!("read past the end of the blob at {offset}").into());
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let chunk = self.chunk(pos / CACHE_CHUNK)?;
            let within = (pos % CACHE_CHUNK) as usize;
            let n = (chunk.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&chunk[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn stats(&self) -> ReadStats {
        self.stats
    }
}

type SharedDisk = Rc<RefCell<Box<dyn Disk>>>;

/// A partition of the shared disk, for ext4-view and lamxfs.
struct PartitionReader {
    disk: SharedDisk,
    offset: u64,
}

impl PartitionReader {
    /// `offset` within the partition; the sum is checked, as every offset is.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BoxedError> {
        let at = self
            .offset
            .checked_add(offset)
            .ok_or("a filesystem read past 2⁶⁴ bytes")?;
        self.disk.borrow_mut().read_at(at, buf)
    }
}

impl lamxfs::BlockRead for PartitionReader {
    type Error = BoxedError;

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BoxedError> {
        PartitionReader::read_at(self, offset, buf)
    }
}

impl ext4_view::Ext4Read for PartitionReader {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), BoxedError> {
        self.read_at(start_byte, dst)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    #[serde(flatten)]
    pub report: Report,
    pub read: ReadStats,
}

#[derive(Debug, Clone)]
struct Partition {
    start: u64,
    size: u64,
    linux: bool,
    label: String,
}

const LINUX_FS_GUID: [u8; 16] = guid_bytes(
    0x0FC6_3DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);

/// The Discoverable Partitions Specification's "Linux root (x86-64)", used by
/// Debian's cloud images and imgforge's local builder.
const LINUX_ROOT_X86_64_GUID: [u8; 16] = guid_bytes(
    0x4F68_BCE3,
    0xE8CD,
    0x4DB1,
    [0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09],
);

/// GPT stores the first three GUID fields little-endian.
const fn guid_bytes(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

fn read(disk: &SharedDisk, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    disk.borrow_mut()
        .read_at(offset, &mut buf)
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

/// MBR or GPT partitions (with their CRCs checked), or an error saying why not.
fn partitions(
    disk: &SharedDisk,
    findings: &mut Vec<Finding>,
) -> Option<(Vec<Partition>, &'static str)> {
    let mbr = match read(disk, 0, 512) {
        Ok(b) => b,
        Err(e) => {
            findings.push(Finding::fail(
                "disk.partition-table",
                format!("cannot read sector 0: {e}"),
            ));
            return None;
        }
    };
    if mbr[510..512] != [0x55, 0xAA] {
        findings.push(
            Finding::fail(
                "disk.partition-table",
                "no MBR signature (0x55AA) in sector 0",
            )
            .evidence("sector 0")
            .hint("the VHD must hold a partitioned disk: MBR or GPT"),
        );
        return None;
    }
    let entries: Vec<(u8, u64, u64)> = (0..4)
        .map(|i| {
            let e = &mbr[446 + i * 16..462 + i * 16];
            let start = u32::from_le_bytes(e[8..12].try_into().expect("4")) as u64;
            let count = u32::from_le_bytes(e[12..16].try_into().expect("4")) as u64;
            (e[4], start * 512, count * 512)
        })
        .filter(|(t, _, n)| *t != 0 && *n > 0)
        .collect();
    if entries.iter().any(|(t, _, _)| *t == 0xEE) {
        return gpt(disk, findings).map(|p| (p, "GPT"));
    }
    let parts = entries
        .into_iter()
        .map(|(t, start, size)| Partition {
            start,
            size,
            linux: t == 0x83,
            label: String::new(),
        })
        .collect();
    Some((parts, "MBR"))
}

fn gpt(disk: &SharedDisk, findings: &mut Vec<Finding>) -> Option<Vec<Partition>> {
    let fail = |findings: &mut Vec<Finding>, why: &str| {
        findings.push(
            Finding::fail("disk.partition-table", format!("invalid GPT: {why}"))
                .evidence("LBA 1")
                .hint("rewrite the partition table (sgdisk -e), then rebuild the VHD"),
        );
    };
    let header = match read(disk, 512, 512) {
        Ok(h) => h,
        Err(e) => {
            fail(findings, &format!("cannot read the GPT header: {e}"));
            return None;
        }
    };
    if &header[0..8] != b"EFI PART" {
        fail(findings, "no `EFI PART` signature");
        return None;
    }
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    let header_size = u32_at(&header, 12) as usize;
    if !(92..=512).contains(&header_size) {
        fail(findings, "header size out of range");
        return None;
    }
    let mut h = header[..header_size].to_vec();
    h[16..20].fill(0);
    if crc32fast::hash(&h) != u32_at(&header, 16) {
        fail(findings, "header CRC32 mismatch");
        return None;
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80) as usize;
    let size = u32_at(&header, 84) as usize;
    if size < 128 || count > 1024 {
        fail(findings, "partition entry array out of range");
        return None;
    }
    // Bounded by the checks above: at most 1024 entries of at most 512 bytes.
    if size > 512 || !size.is_multiple_of(8) {
        fail(findings, "partition entry size out of range");
        return None;
    }
    let Some(table_at) = entries_lba.checked_mul(512) else {
        fail(findings, "partition entry array LBA out of range");
        return None;
    };
    let table = match read(disk, table_at, count * size) {
        Ok(t) => t,
        Err(e) => {
            fail(
                findings,
                &format!("cannot read the partition entry array: {e}"),
            );
            return None;
        }
    };
    if crc32fast::hash(&table) != u32_at(&header, 88) {
        fail(findings, "partition entry array CRC32 mismatch");
        return None;
    }
    let mut parts = Vec::new();
    for e in table.chunks(size) {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let first = u64_at(e, 32);
        let last = u64_at(e, 40);
        let (Some(start), Some(end)) = (
            first.checked_mul(512),
            last.checked_add(1).and_then(|l| l.checked_mul(512)),
        ) else {
            fail(findings, "a partition's LBA range overflows");
            return None;
        };
        if end <= start {
            fail(findings, "a partition ends before it starts");
            return None;
        }
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        parts.push(Partition {
            start,
            size: end - start,
            linux: e[0..16] == LINUX_FS_GUID || e[0..16] == LINUX_ROOT_X86_64_GUID,
            label: String::from_utf16_lossy(&name),
        });
    }
    Some(parts)
}

/// Partitions must lie inside the disk's payload and not overlap: otherwise the
/// checks would read some other bytes and could pass an image they never saw.
fn geometry_problem(parts: &[Partition], payload: u64) -> Option<String> {
    for p in parts {
        let end = p.start.checked_add(p.size)?;
        if end > payload {
            return Some(format!(
                "a partition at byte {} of {} bytes ends past the disk's {payload} bytes",
                p.start, p.size
            ));
        }
    }
    let mut sorted: Vec<&Partition> = parts.iter().collect();
    sorted.sort_by_key(|p| p.start);
    for w in sorted.windows(2) {
        if w[0].start + w[0].size > w[1].start {
            return Some(format!(
                "partitions at bytes {} and {} overlap",
                w[0].start, w[1].start
            ));
        }
    }
    None
}

#[derive(Debug, PartialEq, Eq)]
enum FsKind {
    Ext4 { needs_recovery: bool },
    Xfs,
    Unknown,
}

fn fs_kind(disk: &SharedDisk, start: u64) -> FsKind {
    if let Ok(head) = read(disk, start, 4)
        && &head == b"XFSB"
    {
        return FsKind::Xfs;
    }
    match read(disk, start + 1024, 1024) {
        Ok(sb) if sb[56..58] == [0x53, 0xEF] => {
            let incompat = u32::from_le_bytes(sb[0x60..0x64].try_into().expect("4"));
            FsKind::Ext4 {
                needs_recovery: incompat & 0x4 != 0,
            }
        }
        _ => FsKind::Unknown,
    }
}

/// A disk image format recognised by its magic, and its `qemu-img -f` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub name: &'static str,
    pub qemu: &'static str,
    pub ext: &'static str,
}

/// qcow2, VMDK (sparse extent or descriptor), VHDX, VDI, a dynamic or
/// differencing VHD (its header copy of the footer), or a raw disk (an MBR
/// or GPT and no footer).
pub fn detect_format(head: &[u8], footer: Option<&crate::validate::vhd::Footer>) -> Option<Format> {
    let starts = |m: &[u8]| head.starts_with(m);
    let f = |name, qemu, ext| Some(Format { name, qemu, ext });
    if starts(b"QFI\xfb") {
        f("qcow2 image", "qcow2", "qcow2")
    } else if starts(b"KDMV") || starts(b"# Disk DescriptorFile") || starts(b"COWD") {
        f("VMDK image", "vmdk", "vmdk")
    } else if starts(b"vhdxfile") {
        f("VHDX image", "vhdx", "vhdx")
    } else if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        f("VirtualBox VDI image", "vdi", "vdi")
    } else if starts(b"conectix")
        || footer.is_some_and(|ft| ft.disk_type != crate::validate::vhd::DiskType::Fixed)
    {
        f("dynamic (or differencing) VHD", "vpc", "vhd")
    } else if footer.is_none() && head.len() >= 512 && head[510..512] == [0x55, 0xaa] {
        f("raw disk", "raw", "raw")
    } else {
        None
    }
}

/// `qemu-img convert … IN OUT` for `subject` (a local path; a URL is
/// downloaded first, so it gets placeholder names).
pub(crate) fn convert_command(subject: &str, format: Option<Format>, has_footer: bool) -> String {
    // A file with a (faulty) VHD footer is read as a VHD, anything else as raw.
    let fmt = format.map_or(if has_footer { "vpc" } else { "raw" }, |f| f.qemu);
    let remote = subject.starts_with("https://") || subject.starts_with("http://");
    let (input, output) = if remote {
        (
            format!("disk.{}", format.map_or("raw", |f| f.ext)),
            "disk.vhd".to_string(),
        )
    } else {
        let p = std::path::Path::new(subject);
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk".into());
        let name = if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("vhd")) {
            format!("{stem}-fixed.vhd")
        } else {
            format!("{stem}.vhd")
        };
        (
            subject.to_string(),
            p.with_file_name(name).display().to_string(),
        )
    };
    format!(
        "{}qemu-img convert -f {fmt} -O vpc -o subformat=fixed,force_size=on {} {}",
        if remote {
            "download the blob, then: "
        } else {
            ""
        },
        crate::util::text::shell_quote(&input),
        crate::util::text::shell_quote(&output)
    )
}

/// Validates one image; `subject` names it in the report.
pub fn validate(
    subject: &str,
    disk: Box<dyn Disk>,
    blob_length: Option<(String, u64)>,
    plan: &Plan,
) -> Validation {
    let disk: SharedDisk = Rc::new(RefCell::new(disk));
    let mut f = Vec::new();
    check_disk(
        subject,
        &disk,
        blob_length,
        plan.distro.os == Os::Windows,
        Box::new(|root, f| checks::check_files(&checks::Files::new(root), plan, f)),
        &mut f,
    );
    let stats = disk.borrow().stats();
    Validation {
        report: Report::new(subject, completeness(plan, f)),
        read: stats,
    }
}

/// What is done with a root filesystem once it opens: the file checks, or
/// `inspect`'s reading.
type OnRoot<'a> = Box<dyn FnOnce(Box<dyn rootfs::RootFs>, &mut Vec<Finding>) + 'a>;

/// Opens `disk` layer by layer as `validate` does (container, partition
/// table, root partition, ext4 or XFS) and hands the root filesystem to
/// `read`. The findings say how far it got, and why not further.
pub fn read_root<T>(
    subject: &str,
    disk: Box<dyn Disk>,
    read: impl FnOnce(&dyn rootfs::RootFs) -> T,
) -> (Option<T>, Vec<Finding>, ReadStats) {
    let disk: SharedDisk = Rc::new(RefCell::new(disk));
    let mut f = Vec::new();
    let mut out = None;
    check_disk(
        subject,
        &disk,
        None,
        false,
        Box::new(|root, _| out = Some(read(root.as_ref()))),
        &mut f,
    );
    let stats = disk.borrow().stats();
    (out, f, stats)
}

/// Layer by layer, each failure ending the walk: the blob, the VHD
/// container, the partition table, the root partition, its filesystem, then
/// the file checks (`CHECKS`).
fn check_disk(
    subject: &str,
    disk: &SharedDisk,
    blob_length: Option<(String, u64)>,
    windows: bool,
    on_root: OnRoot<'_>,
    f: &mut Vec<Finding>,
) {
    let len = disk.borrow().size();

    if let Some((blob_type, length)) = &blob_length {
        f.push(if blob_type == "PageBlob" {
            Finding::pass("blob.type", "a page blob")
        } else {
            Finding::fail("blob.type", format!("a {blob_type}, not a page blob"))
                .evidence(subject)
                .hint("Azure creates disks only from page blobs: upload with `imgforge upload`")
        });
        let _ = length;
    }

    if !container(subject, disk, f) {
        return;
    }

    let Some((parts, kind)) = partitions(disk, f) else {
        return;
    };
    if let Some(problem) = geometry_problem(&parts, len.saturating_sub(512)) {
        f.push(
            Finding::fail(
                "disk.partition-table",
                format!("{kind} partition table does not fit the disk: {problem}"),
            )
            .evidence(format!("{subject}: sector 0"))
            .hint("rewrite the partition table for this disk size, then rebuild the VHD"),
        );
        return;
    }
    f.push(Finding::pass(
        "disk.partition-table",
        format!("{kind}, {} partition(s)", parts.len()),
    ));

    if windows {
        f.push(
            Finding::skip(
                "disk.filesystem",
                "a Windows image: NTFS is not read offline, so its files are not checked",
            )
            .hint("rely on the sysprep and firewall steps of the build, and on a test pool"),
        );
        return;
    }

    // The root: the labelled one, else the largest Linux partition.
    let root = parts
        .iter()
        .find(|p| p.label == "cloudimg-rootfs")
        .or_else(|| parts.iter().filter(|p| p.linux).max_by_key(|p| p.size));
    let Some(root) = root.cloned() else {
        f.push(
            Finding::fail("disk.root", "no Linux root partition (MBR type 0x83, GPT Linux filesystem, or label cloudimg-rootfs)")
                .hint("the image must contain the Linux root filesystem"),
        );
        return;
    };
    root_filesystem(disk, &root, on_root, f);
}

/// The container: a fixed VHD (its footer, and what the file is when it is
/// not one). False when the partitions cannot be read as a raw disk.
fn container(subject: &str, disk: &SharedDisk, f: &mut Vec<Finding>) -> bool {
    let len = disk.borrow().size();
    let mut footer = [0u8; 512];
    let footer_read = if len >= 512 {
        disk.borrow_mut().read_at(len - 512, &mut footer)
    } else {
        Ok(())
    };
    if let Err(e) = footer_read {
        // A read that failed is that, not an empty or short file.
        f.push(
            Finding::fail(
                "vhd.footer",
                format!("cannot read the footer at byte {}: {e}", len - 512),
            )
            .evidence(subject),
        );
        return false;
    }
    let footer_ok = len >= 512;
    let (parsed, problems) = crate::validate::vhd::check(&footer, if footer_ok { len } else { 0 });
    // What the file is when it is not a fixed VHD, from its first bytes:
    // the fix is then one exact qemu-img command with the user's own names.
    let mut head = [0u8; 512];
    let head_len = len.min(512) as usize;
    let format = if !problems.is_empty()
        && head_len > 0
        && disk.borrow_mut().read_at(0, &mut head[..head_len]).is_ok()
    {
        detect_format(&head[..head_len], parsed.as_ref())
    } else {
        None
    };
    let convert_hint = convert_command(subject, format, parsed.is_some());
    if let Some(fmt) = format
        && fmt.name != "raw disk"
    {
        f.push(
            Finding::fail(
                "vhd.format",
                format!("the file is a {}, not a fixed VHD", fmt.name),
            )
            .evidence(format!("{subject}: byte 0"))
            .hint(convert_hint.clone()),
        );
    }
    let ids = [
        ("vhd.footer", "the `conectix` footer is present"),
        ("vhd.checksum", "the footer checksum is right"),
        ("vhd.fixed", "a fixed VHD"),
        ("vhd.size", "the virtual size is a whole number of MiB"),
        ("vhd.length", "the length is the virtual size + 512"),
    ];
    let mut raw_layout = parsed.is_some();
    for (id, ok_message) in ids {
        use crate::validate::vhd::FooterProblem as P;
        let problem = problems.iter().find(|p| {
            matches!(
                (id, p),
                ("vhd.footer", P::NoCookie | P::TooShort(_))
                    | ("vhd.checksum", P::Checksum { .. })
                    | ("vhd.fixed", P::NotFixed(_))
                    | ("vhd.size", P::NotMibAligned(_))
                    | ("vhd.length", P::LengthMismatch { .. })
            )
        });
        match problem {
            Some(p) => {
                if matches!(p, P::NotFixed(_) | P::NoCookie | P::TooShort(_)) {
                    raw_layout = false;
                }
                f.push(
                    Finding::fail(id, p.to_string())
                        .evidence(format!(
                            "{subject}: footer at byte {}",
                            len.saturating_sub(512)
                        ))
                        .hint(convert_hint.clone()),
                );
            }
            None if parsed.is_some() => f.push(Finding::pass(id, ok_message)),
            None => f.push(Finding::skip(id, "no footer to check")),
        }
    }
    if !raw_layout {
        f.push(Finding::skip(
            "disk.partition-table",
            "not read: the container is not a fixed VHD",
        ));
        return false;
    }
    true
}

/// The root filesystem, ext4 or XFS, opened through the partition's own
/// reader; when it opens, the file checks run over it.
fn root_filesystem(disk: &SharedDisk, root: &Partition, on_root: OnRoot<'_>, f: &mut Vec<Finding>) {
    let at = format!("partition at byte {}", root.start);
    match fs_kind(disk, root.start) {
        FsKind::Xfs => {
            f.push(Finding::pass("disk.root", format!("root {at}")));
            let reader = PartitionReader {
                disk: disk.clone(),
                offset: root.start,
            };
            match lamxfs::Xfs::open(reader, root.size) {
                Err(e) => f.push(
                    Finding::fail(
                        "disk.filesystem",
                        format!("the XFS filesystem cannot be read: {e}"),
                    )
                    .evidence(at)
                    .hint(
                        "shut the build VM down cleanly (deprovision, then stop) before capturing",
                    ),
                ),
                Ok(fs) => {
                    f.push(Finding::pass("disk.filesystem", "XFS, readable"));
                    on_root(Box::new(rootfs::XfsRoot(RefCell::new(fs))), f);
                }
            }
        }
        FsKind::Unknown => {
            f.push(
                Finding::fail(
                    "disk.root",
                    format!("no ext4 or XFS filesystem in the root {at}"),
                )
                .evidence(at),
            );
        }
        FsKind::Ext4 { needs_recovery } => {
            f.push(Finding::pass("disk.root", format!("root {at}")));
            let reader = PartitionReader {
                disk: disk.clone(),
                offset: root.start,
            };
            match ext4_view::Ext4::load(Box::new(reader)) {
                Err(e) => {
                    let message = if needs_recovery {
                        format!(
                            "image not cleanly shut down: the ext4 journal needs recovery and cannot be replayed ({e})"
                        )
                    } else {
                        format!("the ext4 filesystem cannot be read: {e}")
                    };
                    f.push(Finding::fail("disk.filesystem", message).evidence(at).hint(
                        "shut the build VM down cleanly (deprovision, then stop) before capturing",
                    ));
                }
                Ok(fs) => {
                    f.push(if needs_recovery {
                        Finding::warn("disk.filesystem", "image not cleanly shut down: the journal was replayed in memory to read it")
                            .evidence(at)
                            .hint("shut the build VM down cleanly before capturing")
                    } else {
                        Finding::pass("disk.filesystem", "ext4, cleanly unmounted")
                    });
                    on_root(Box::new(rootfs::Ext4Root(fs)), f);
                }
            }
        }
    }
}

/// The rule that keeps the validator honest: a Linux image whose files were
/// never read has not been validated, whatever else passed. Every early return
/// above that did not already fail lands here, so no path can end in
/// "N passed, 0 failed" for an image the file checks never saw.
fn completeness(plan: &Plan, mut f: Vec<Finding>) -> Vec<Finding> {
    let files_checked = f.iter().any(|x| x.id == "distro.os-release");
    let failed = f.iter().any(|x| x.status == crate::report::Status::Fail);
    if plan.distro.os == Os::Linux && !files_checked && !failed {
        let why = f
            .iter()
            .rev()
            .find(|x| x.status == crate::report::Status::Skip)
            .map(|x| x.message.clone())
            .unwrap_or_else(|| "the root filesystem was not read".into());
        f.push(
            Finding::fail(
                "validate.complete",
                format!("not validated: the image's files were not checked ({why})"),
            )
            .hint("only an image whose root filesystem imgforge can read is validated; use the in-VM checks and a boot check for the rest"),
        );
    }
    f
}

/// Validates a local file.
pub fn validate_file(path: &std::path::Path, plan: &Plan) -> Result<Validation, ValidateError> {
    let disk = LocalDisk::open(path)?;
    Ok(validate(
        &path.display().to_string(),
        Box::new(disk),
        None,
        plan,
    ))
}

/// Validates a blob in storage through range reads.
pub async fn validate_blob(
    storage: Arc<Storage>,
    blob: BlobRef,
    plan: Plan,
) -> Result<Validation, ValidateError> {
    let subject = blob.url();
    with_blob_disk(storage, blob, move |disk, blob_type, length| {
        validate(&subject, disk, Some((blob_type, length)), &plan)
    })
    .await
}

/// What a blob's download into a sparse local file read.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Fetched {
    /// The blob's (and the file's) length.
    pub length: u64,
    /// Bytes read: the page blob's written ranges only.
    pub bytes: u64,
    pub requests: u64,
}

/// Copies a page blob's written ranges into `dest`, a sparse file of the
/// blob's length (a fixed VHD of 30 GiB with 1.4 GiB written costs 1.4 GiB
/// of reads and of disk), as the replicator reads a source: page ranges,
/// bridged over gaps under 64 KiB, then requests of at most 4 MiB. Written to a temporary name beside `dest`,
/// renamed when whole: a failure leaves no half image.
pub async fn download_sparse(
    storage: &Storage,
    blob: &BlobRef,
    dest: &std::path::Path,
) -> Result<Fetched, ValidateError> {
    use std::os::unix::fs::FileExt;
    let props = storage
        .properties(blob)
        .await?
        .ok_or_else(|| ValidateError::Unreadable {
            subject: blob.url(),
            message: "the blob does not exist".into(),
        })?;
    if props.blob_type != "PageBlob" {
        return Err(ValidateError::Unreadable {
            subject: blob.url(),
            message: format!(
                "a {} is not a disk Azure boots: a VHD is uploaded as a page blob",
                props.blob_type
            ),
        });
    }
    let ranges = storage.page_ranges(blob).await?;
    let io = |source: std::io::Error| ValidateError::Unreadable {
        subject: dest.display().to_string(),
        message: source.to_string(),
    };
    let partial = dest.with_extension("partial");
    /// Removes the half-written file however the download ends early.
    struct Partial<'a>(&'a std::path::Path, bool);
    impl Drop for Partial<'_> {
        fn drop(&mut self) {
            if !self.1 {
                let _ = std::fs::remove_file(self.0);
            }
        }
    }
    let mut guard = Partial(&partial, false);
    let file = std::fs::File::create(&partial).map_err(io)?;
    file.set_len(props.length).map_err(io)?;
    let mut fetched = Fetched {
        length: props.length,
        bytes: 0,
        requests: 1,
    };
    if let Some(r) = ranges.iter().find(|r| r.end > props.length) {
        return Err(ValidateError::Unreadable {
            subject: blob.url(),
            message: format!(
                "a written page range ({}..{}) ends past the blob's length {}",
                r.start, r.end, props.length
            ),
        });
    }
    let spans = crate::azure::storage::bridge(&ranges, crate::azure::storage::MAX_GAP);
    for range in crate::azure::storage::chunks(&spans, 4 << 20) {
        let bytes = storage.get_range(blob, range.clone()).await?;
        file.write_all_at(&bytes, range.start).map_err(io)?;
        fetched.bytes += bytes.len() as u64;
        fetched.requests += 1;
    }
    file.sync_all().map_err(io)?;
    std::fs::rename(&partial, dest).map_err(io)?;
    guard.1 = true;
    Ok(fetched)
}

/// The page blob at `url` (a SAS in its query, or the environment's
/// credentials) fetched sparsely to `dest`, as `download_sparse` does.
pub async fn fetch_blob(url: &str, dest: &std::path::Path) -> Result<Fetched, ValidateError> {
    let blob = BlobRef::parse(url)?;
    let storage = Storage::for_blobs(std::slice::from_ref(&blob.account), &[&blob]).await?;
    download_sparse(&storage, &blob, dest).await
}

/// Runs `read` over a blob as a disk read through range requests (its type
/// and length given too), on one blocking thread: ext4-view's handle is !Send.
pub async fn with_blob_disk<T: Send + 'static>(
    storage: Arc<Storage>,
    blob: BlobRef,
    read: impl FnOnce(Box<dyn Disk>, String, u64) -> T + Send + 'static,
) -> Result<T, ValidateError> {
    let props = storage
        .properties(&blob)
        .await?
        .ok_or_else(|| ValidateError::Unreadable {
            subject: blob.url(),
            message: "the blob does not exist".into(),
        })?;
    let handle = tokio::runtime::Handle::current();
    let length = props.length;
    let blob_type = props.blob_type.clone();
    Ok(tokio::task::spawn_blocking(move || {
        let disk = RemoteDisk::new(storage, blob, length, handle);
        read(Box::new(disk), blob_type, length)
    })
    .await
    .expect("the reading thread does not panic"))
}
