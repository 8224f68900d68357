//! The boot check: boots a fixed VHD under QEMU the way Azure starts a VM
//! from it, and reports, as checks with evidence, what a Batch node needs
//! from that boot.
//!
//! The guest is provisioned as on Azure (`provision`): a CD-ROM with
//! `ovf-env.xml` (a user and an SSH key made for this check), a blank
//! resource disk, Azure's SMBIOS asset tag, and the wire server and IMDS
//! answered by loopback stand-ins (`standin`). Then: the kernel and systemd
//! reach a login prompt; cloud-init reports Ready to the wire server; the
//! check logs in with the provisioned key and looks from inside (`inside`):
//! boot settled, no failed unit (none is excused by its name), cloud-init's
//! datasource, the Azure agent, the resource disk, Docker started as Batch
//! Shipyard starts it, the catalog's in-VM checks, outbound 443, the
//! firewall's rules; and from outside: SSH answers on 22, the plan's inbound
//! ports get through the host firewall and a port the image does not open
//! gets no answer (so the firewall is really on).
//!
//! Rules:
//! - The image is never written: the disk is attached with `snapshot=on`.
//! - The guest reaches nothing but the stand-ins: user-mode networking with
//!   `restrict=on`; only forwarded loopback ports reach it.
//! - Every wait is bounded (the boot by `timeout`, each probe and SSH call by
//!   seconds).
//! - QEMU is always stopped: a guard kills it when the check ends, fails or
//!   is interrupted (Ctrl-C is polled while waiting).
//! - KVM is used when `/dev/kvm` opens and the guest writes to its console
//!   within 20 s; otherwise TCG (software), which is what these build
//!   machines have (their KVM opens, then QEMU spins with a silent console).
//! - What cannot work under QEMU is named with its reason, as a skip: the
//!   Azure agent's service (systemd starts it only on Hyper-V) and the
//!   resource disk's mount (found by a Hyper-V VMBus id).
//!
//! Probing through QEMU's user-mode network: the host side of a forwarded port
//! always accepts; the guest's answer shows in what follows. A port the guest
//! refuses (nothing listens, the firewall admits it) closes at once; a port
//! its firewall drops stays silent until the probe gives up.
//!
//! QEMU is one child whose output goes to a file: `std::process` with a
//! kill-on-drop guard is all it needs, so no process crate is added for it.

pub mod inside;
pub mod provision;
pub mod proxy;
pub mod standin;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::report::{Finding, Report};
use crate::util::Category;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{what} not found ({searched})")]
    Missing {
        what: &'static str,
        searched: String,
        package: &'static str,
    },
    #[error("{path}: cannot boot this image: {why}")]
    Image {
        path: PathBuf,
        why: String,
        hint: Option<String>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("boot check cancelled; QEMU was stopped")]
    Cancelled,
}

impl crate::util::Hint for BootError {
    fn hint(&self) -> Option<String> {
        match self {
            BootError::Missing { package, .. } => Some(format!(
                "install it: apt-get install {package} (Debian/Ubuntu)"
            )),
            BootError::Image { hint, .. } => hint.clone(),
            _ => None,
        }
    }
}

impl BootError {
    /// What kind of failure this is; the CLI maps it to an exit code.
    pub fn category(&self) -> Category {
        match self {
            BootError::Missing { .. } => Category::Tool,
            BootError::Image { .. } => Category::Input,
            BootError::Io { .. } => Category::Io,
            BootError::Cancelled => Category::Cancelled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS, as an Azure Generation 1 VM.
    Bios,
    /// OVMF on a q35 machine, as an Azure Generation 2 VM.
    Uefi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

pub struct BootOptions {
    pub firmwares: Vec<Firmware>,
    /// From QEMU's start to the login prompt.
    pub timeout: Duration,
    /// Ports the image's firewall must admit (Batch's node agent ports).
    pub must_answer: Vec<u16>,
    /// A port the image does not open: it must get no answer.
    pub must_be_dropped: u16,
    /// Serial console logs go here, one per firmware.
    pub log_dir: PathBuf,
    /// What to check inside the booted node (and which units may fail for
    /// want of hardware, there and on the console).
    pub node: inside::NodeChecks,
    /// The program that serves Azure's endpoints to the guest, run by QEMU
    /// per connection as `PROGRAM boot-stand-in ROLE DIR`: the imgforge binary.
    pub stand_in: PathBuf,
    pub cancel: Arc<AtomicBool>,
}

/// How long the guest may take from the login prompt to a working SSH login
/// with the provisioned key, and then to settle.
const LOGIN_WAIT: Duration = Duration::from_secs(180);
const SETTLE_WAIT: Duration = Duration::from_secs(150);

/// The inbound ports a booted image must answer besides SSH (checked on its
/// own): those the manifest's `[firewall] inbound_tcp` opens (the classic
/// ports 29876/29877 only when listed there; Batch's simplified node
/// communication needs none). Not the features' ports: their daemons
/// (glusterd on 24007) listen without speaking first, and through QEMU's
/// user network a silent listener cannot be told from a dropped port, so the
/// offline check (`batch.firewall`) proves those rules instead.
pub fn must_answer(plan: Option<&crate::spec::plan::Plan>) -> Vec<u16> {
    let Some(plan) = plan else { return Vec::new() };
    let features: std::collections::BTreeSet<u16> = plan
        .features
        .iter()
        .flat_map(|f| f.inbound_tcp.iter().copied())
        .collect();
    plan.firewall
        .inbound_tcp
        .iter()
        .copied()
        .filter(|p| *p != 22 && !features.contains(p))
        .collect()
}

/// Units that fail at boot on a VM without the plan's hardware: the NVIDIA
/// module refuses to load without a GPU (so systemd-modules-load, "Load Kernel
/// Modules", fails), and its daemons with it. Console descriptions and unit
/// names both.
pub fn hardware_units(plan: &crate::spec::plan::Plan) -> Vec<String> {
    let mut units = Vec::new();
    if plan.gpu.is_some() {
        units.extend(["Load Kernel Modules", "systemd-modules-load", "nvidia"].map(String::from));
    }
    if plan.rdma.is_some() {
        units.extend(["rdma", "RDMA", "ibacm", "iwpmd"].map(String::from));
    }
    units
}

/// The program QEMU runs per guest connection to Azure's endpoints: this
/// very imgforge binary (`imgforge boot-stand-in ROLE DIR`).
pub fn stand_in_program() -> Result<PathBuf, BootError> {
    let exe = std::env::current_exe().map_err(|source| BootError::Io {
        context: "locating the imgforge binary for the boot check's stand-ins".into(),
        source,
    })?;
    Ok(live_path(exe))
}

/// The binary's path even after it was replaced while running (an upgrade,
/// a rebuild during a long build): Linux then names the old file
/// "PATH (deleted)", which no stand-in could be started from; the new
/// binary at PATH serves the same `boot-stand-in` protocol.
fn live_path(exe: PathBuf) -> PathBuf {
    let text = exe.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(p) if !exe.exists() && Path::new(p).is_file() => PathBuf::from(p),
        _ => exe,
    }
}

/// A port no imgforge image opens, unless `inbound` does: then the next free one.
pub fn closed_port(inbound: &[u16]) -> u16 {
    (47_001..=47_999)
        .find(|p| !inbound.contains(p))
        .unwrap_or(47_000)
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BootRun {
    pub firmware: Firmware,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Seconds from QEMU's start to the login prompt.
    pub login_after_s: Option<f64>,
    /// Seconds from QEMU's start to cloud-init's Ready report.
    #[serde(default)]
    pub provisioned_after_s: Option<f64>,
    /// Seconds from QEMU's start to the first SSH login with the provisioned key.
    #[serde(default)]
    pub ssh_after_s: Option<f64>,
    /// Seconds from QEMU's start to systemd's settled state (running or not).
    #[serde(default)]
    pub settled_after_s: Option<f64>,
    /// Seconds from QEMU's start to the end of the in-VM checks.
    #[serde(default)]
    pub checked_after_s: Option<f64>,
    /// The guest's journal of this boot, fetched over SSH.
    #[serde(default)]
    pub journal: Option<PathBuf>,
    pub failed_units: Vec<String>,
    pub serial_log: PathBuf,
    /// The console's last lines, when something failed.
    pub tail: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootCheck {
    #[serde(flatten)]
    pub report: Report,
    pub runs: Vec<BootRun>,
}

struct Qemu {
    binary: PathBuf,
    ovmf: Option<(PathBuf, PathBuf)>,
}

const OVMF_PAIRS: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
];

fn locate(firmwares: &[Firmware]) -> Result<Qemu, BootError> {
    let binary = std::env::var_os("IMGFORGE_QEMU")
        .map(PathBuf::from)
        .or_else(|| which::which("qemu-system-x86_64").ok())
        .filter(|p| p.is_file())
        .ok_or(BootError::Missing {
            what: "qemu-system-x86_64",
            searched: "IMGFORGE_QEMU, then PATH".into(),
            package: "qemu-system-x86",
        })?;
    let ovmf = if firmwares.contains(&Firmware::Uefi) {
        let pair = OVMF_PAIRS
            .iter()
            .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
            .find(|(c, v)| c.is_file() && v.is_file())
            .ok_or(BootError::Missing {
                what: "UEFI firmware (OVMF)",
                searched: OVMF_PAIRS
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<Vec<_>>()
                    .join(", "),
                package: "ovmf",
            })?;
        Some(pair)
    } else {
        None
    };
    Ok(Qemu { binary, ovmf })
}

/// Stops QEMU however the check ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, BootError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| BootError::Io {
            context: "choosing a loopback port for the boot check".into(),
            source,
        })
}

/// How long a KVM guest may stay silent before the boot is retried in software.
const KVM_SILENCE: Duration = Duration::from_secs(20);

fn kvm_usable() -> bool {
    std::env::var("IMGFORGE_QEMU_ACCEL").as_deref() != Ok("tcg")
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// Whether KVM runs this machine's guests: `image` (qcow2) booted under KVM
/// writes to its serial console within `KVM_SILENCE`. Where KVM opens but
/// spins silently (nested virtualization), the answer is no, as the boot
/// check decides it; `IMGFORGE_QEMU_ACCEL=tcg` says no without trying.
pub fn kvm_runs(image: &Path, scratch: &Path) -> bool {
    if !kvm_usable() {
        return false;
    }
    let log = scratch.join("kvm-probe.log");
    let _ = std::fs::remove_file(&log);
    let Ok(mut child) = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-m",
            "512",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=qcow2,if=virtio,snapshot=on",
            qemu_option_value(&image.display().to_string())
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return false;
    };
    let started = std::time::Instant::now();
    let mut runs = false;
    while started.elapsed() < KVM_SILENCE {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) > 0 {
            runs = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    runs
}

/// Boots `image` once per firmware and reports.
pub fn boot_check(image: &Path, opts: &BootOptions) -> Result<BootCheck, BootError> {
    check_image(image)?;
    let qemu = locate(&opts.firmwares)?;
    std::fs::create_dir_all(&opts.log_dir).map_err(|source| BootError::Io {
        context: opts.log_dir.display().to_string(),
        source,
    })?;
    let mut findings = Vec::new();
    let mut runs = Vec::new();
    // Once KVM has failed, the next firmware boots in software straight away.
    let mut try_kvm = kvm_usable();
    for &fw in &opts.firmwares {
        let run = boot_once(&qemu, image, fw, opts, try_kvm, &mut findings)?;
        try_kvm &= run.accel == "kvm";
        runs.push(run);
    }
    Ok(BootCheck {
        report: Report::new(image.display().to_string(), findings),
        runs,
    })
}

/// Only a fixed VHD is booted: the footer says so before QEMU is started.
fn check_image(image: &Path) -> Result<(), BootError> {
    let bad = |why: String| BootError::Image {
        path: image.to_path_buf(),
        why,
        hint: None,
    };
    let meta = std::fs::metadata(image).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let len = meta.len();
    let mut footer = [0u8; 512];
    if len >= 512 {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(image).map_err(|e| bad(e.to_string()))?;
        f.read_exact_at(&mut footer, len - 512)
            .map_err(|e| bad(e.to_string()))?;
    }
    let (parsed, problems) = crate::validate::vhd::check(&footer, len);
    if parsed.is_none()
        || problems
            .iter()
            .any(|p| matches!(p, crate::validate::vhd::FooterProblem::NotFixed(_)))
    {
        // What the file is, from its first bytes: the fix is one exact
        // qemu-img command reading it as what it is.
        let mut head = [0u8; 512];
        let n = (len.min(512)) as usize;
        let read_head = {
            use std::os::unix::fs::FileExt;
            std::fs::File::open(image).and_then(|f| f.read_exact_at(&mut head[..n], 0))
        };
        let format = match read_head {
            Ok(()) if n > 0 => crate::validate::detect_format(&head[..n], parsed.as_ref()),
            _ => None,
        };
        let what = format.map_or_else(
            || {
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            |f| format!("it is a {}", f.name),
        );
        // Not a disk image at all (a manifest, a log): no conversion helps.
        let hint = if format.is_none() && parsed.is_none() {
            "boot-check boots a disk image: pass the VHD a build wrote (output/NAME.vhd in its build directory), or convert a disk image with `qemu-img convert -O vpc -o subformat=fixed,force_size=on`".to_string()
        } else {
            crate::validate::convert_command(&image.display().to_string(), format, parsed.is_some())
        };
        return Err(BootError::Image {
            path: image.to_path_buf(),
            why: format!("not a fixed VHD ({what})"),
            hint: Some(hint),
        });
    }
    Ok(())
}

/// What the console shows of a boot, in order (`boot_phase` indexes it):
/// the line when a phase is reached, and the one while it lasts.
const PHASES: [(&str, &str); 4] = [
    ("firmware running", "still in the firmware"),
    ("boot loader started", "still in the boot loader"),
    ("kernel started", "the kernel is still starting"),
    ("systemd started", "systemd is still starting units"),
];

/// How far a boot got, from its console lines.
fn boot_phase(lines: &[String]) -> usize {
    let has = |pred: &dyn Fn(&str) -> bool| lines.iter().any(|l| pred(l));
    // GRUB greets with "Welcome to GRUB!"; systemd with "Welcome to <OS>!".
    if has(&|l| l.contains("systemd[1]:") || (l.contains("Welcome to ") && !l.contains("GRUB"))) {
        3
    } else if has(&|l| l.contains("Linux version")) {
        2
    } else if has(&|l| l.contains("GRUB") || l.contains("Booting `") || l.contains("Loading Linux"))
    {
        1
    } else {
        0
    }
}

/// A value inside a QEMU `-drive` option list: a comma ends the value
/// unless doubled (`/data/a,b.vhd` would otherwise open `/data/a` with an
/// option `b.vhd`).
fn qemu_option_value(v: &str) -> String {
    v.replace(',', ",,")
}

struct Ports {
    ssh: u16,
    answer: Vec<(u16, u16)>,
    dropped: (u16, u16),
}

struct Vm<'a> {
    qemu: &'a Qemu,
    image: &'a Path,
    fw: Firmware,
    log: &'a Path,
    vars: &'a Path,
    ports: &'a Ports,
    prov: &'a provision::Provisioning,
    stand_in: &'a Path,
}

/// Starts QEMU as Azure starts a VM from the image: the OS disk (first to
/// boot), the provisioning CD and a blank resource disk on a SCSI
/// controller, Azure's SMBIOS identity, and the stand-ins' network.
fn spawn(vm: &Vm, accel: &str) -> Result<Running, BootError> {
    let Vm {
        qemu,
        image,
        fw,
        log,
        vars,
        ports,
        prov,
        stand_in,
    } = *vm;
    let mut forwards = vec![(ports.ssh, 22)];
    forwards.extend(ports.answer.iter().copied());
    forwards.push(ports.dropped);
    let value = |p: &Path| qemu_option_value(&p.display().to_string());
    let mut cmd = Command::new(&qemu.binary);
    cmd.args([
        "-accel", accel, "-m", "1536", "-smp", "2", "-display", "none",
    ])
    .args(["-no-reboot", "-nodefaults", "-vga", "none"])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .args(["-uuid", &prov.guest.vm_id])
    .args(prov.smbios().iter().flat_map(|v| ["-smbios", v.as_str()]))
    .arg("-drive")
    .arg(format!(
        "file={},format=vpc,if=none,id=os,snapshot=on,readonly=off",
        value(image)
    ))
    .args(["-device", "virtio-blk-pci,drive=os,bootindex=0"])
    .args(["-device", "virtio-scsi-pci,id=scsi0"])
    .arg("-drive")
    .arg(format!(
        "if=none,id=cd,media=cdrom,readonly=on,file={}",
        value(&prov.iso)
    ))
    .args(["-device", "scsi-cd,drive=cd,bus=scsi0.0"])
    .arg("-drive")
    .arg(format!(
        "if=none,id=res,format=raw,file={}",
        value(&prov.resource_disk)
    ))
    .args([
        "-device",
        "scsi-hd,drive=res,bus=scsi0.0,vendor=Msft,product=Virtual Disk",
    ])
    .arg("-netdev")
    .arg(prov.netdev(stand_in, &forwards, false))
    .arg("-device")
    .arg(format!(
        "virtio-net-pci,netdev=n0,mac={}",
        prov.guest.qemu_mac()
    ));
    if fw == Firmware::Uefi {
        let (code, vars_template) = qemu.ovmf.as_ref().expect("located for UEFI");
        std::fs::copy(vars_template, vars).map_err(|source| BootError::Io {
            context: format!("copying {}", vars_template.display()),
            source,
        })?;
        cmd.args(["-machine", "q35"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                qemu_option_value(&code.display().to_string())
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                qemu_option_value(&vars.display().to_string())
            ));
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BootError::Io {
            context: format!("starting {}", qemu.binary.display()),
            source,
        })?;
    Ok(Running(child))
}

/// The console without colour codes, line by line (bounded: the last 4 MiB).
fn console(log: &Path) -> Vec<String> {
    const MAX: u64 = 4 * 1024 * 1024;
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len > MAX {
            use std::io::Seek;
            let _ = f.seek(std::io::SeekFrom::Start(len - MAX));
        }
        let _ = f.take(MAX).read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    text.lines().map(strip_ansi).collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\r' || (c.is_control() && c != '\t') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Units systemd reported as failed on the console.
pub fn failed_units(lines: &[String]) -> Vec<String> {
    let mut units: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let at = l.find("Failed to start ")?;
            let rest = l[at + "Failed to start ".len()..].trim();
            Some(rest.trim_end_matches('.').to_string())
        })
        .collect();
    units.dedup();
    units
}

enum Probe {
    /// Closed at once (the guest refused: nothing listens, the firewall admits it).
    Refused,
    /// Data arrived (the first bytes).
    Data(String),
    /// Silence until the probe gave up: dropped by a firewall.
    Silent,
    /// The forward itself failed.
    Error(String),
}

fn probe(port: u16, wait: Duration) -> Probe {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => return Probe::Error(e.to_string()),
    };
    let _ = s.set_read_timeout(Some(wait));
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Probe::Refused,
        Ok(n) => Probe::Data(String::from_utf8_lossy(&buf[..n]).trim_end().to_string()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Probe::Silent
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Probe::Refused,
        Err(e) => Probe::Error(e.to_string()),
    }
}

fn boot_once(
    qemu: &Qemu,
    image: &Path,
    fw: Firmware,
    opts: &BootOptions,
    try_kvm: bool,
    f: &mut Vec<Finding>,
) -> Result<BootRun, BootError> {
    let id = |check: &str| format!("boot.{}.{check}", fw.name());
    let log = opts.log_dir.join(format!("boot-{}.log", fw.name()));
    let vars = opts.log_dir.join("OVMF_VARS.fd");
    let prov = provision::Provisioning::prepare(&opts.log_dir.join(format!("boot-{}", fw.name())))?;
    let ports = Ports {
        ssh: free_port()?,
        answer: opts
            .must_answer
            .iter()
            .map(|&p| free_port().map(|h| (h, p)))
            .collect::<Result<_, _>>()?,
        dropped: (free_port()?, opts.must_be_dropped),
    };
    let vm_spec = Vm {
        qemu,
        image,
        fw,
        log: &log,
        vars: &vars,
        ports: &ports,
        prov: &prov,
        stand_in: &opts.stand_in,
    };
    let mut accel: &'static str = if try_kvm { "kvm" } else { "tcg" };
    let started = Instant::now();
    let _ = std::fs::remove_file(&log);
    let mut vm = spawn(&vm_spec, accel)?;
    let respawn = |accel: &str| {
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&prov.requests);
        spawn(&vm_spec, accel)
    };
    let say = |what: &str| say_phase(fw, started, what);
    let Prompt {
        login_after,
        qemu_exit,
        bare_prompt,
    } = wait_for_prompt(&mut vm, &mut accel, &respawn, &log, opts, started, &say)?;
    let mut failed = false;
    let timeout_s = opts.timeout.as_secs();
    let lines = console(&log);
    let kernel = lines.iter().any(|l| l.contains("Linux version"));
    match login_after {
        Some(s) => f.push(
            Finding::pass(
                &id("login"),
                format!("kernel and systemd reached the login prompt in {s:.0} s ({accel})"),
            )
            .evidence(log.display().to_string()),
        ),
        None => {
            failed = true;
            let why = match (&qemu_exit, kernel) {
                _ if bare_prompt => "the console printed a login prompt, but no Linux kernel and systemd started before it: not a Linux boot".to_string(),
                (Some(e), _) => format!("QEMU exited before a login prompt: {e}"),
                (None, false) => format!(
                    "no kernel started within {timeout_s} s: the firmware found no bootloader, or GRUB failed"
                ),
                (None, true) => {
                    format!("the kernel started but no login prompt came within {timeout_s} s")
                }
            };
            f.push(
                Finding::fail(&id("login"), why)
                    .evidence(log.display().to_string())
                    .hint("read the serial console log; a local build's GRUB and fstab come from templates/local/30-disk.sh.tera"),
            );
        }
    }
    let mut run = BootRun {
        firmware: fw,
        accel: accel.to_string(),
        login_after_s: login_after.map(round1),
        provisioned_after_s: None,
        ssh_after_s: None,
        settled_after_s: None,
        checked_after_s: None,
        journal: None,
        failed_units: failed_units(&lines),
        serial_log: log.clone(),
        tail: Vec::new(),
    };
    if login_after.is_some() {
        failed |= look_inside(&prov, ports.ssh, opts, started, &mut run, f)?;
        failed |= probe_ports(&ports, opts, &id, f);
    }
    drop(vm);
    let _ = std::fs::remove_file(&vars);
    let _ = std::fs::remove_file(&prov.resource_disk);
    if failed {
        run.tail = lines.iter().rev().take(30).rev().cloned().collect();
    }
    Ok(run)
}

/// What the console showed until the login prompt (or the end).
struct Prompt {
    login_after: Option<f64>,
    qemu_exit: Option<String>,
    /// A login prompt without a kernel and systemd before it (a boot sector
    /// that prints "login:") is no boot.
    bare_prompt: bool,
}

/// Watches the console until the login prompt, QEMU's exit or the timeout;
/// drops KVM for TCG where KVM cannot run the guest.
fn wait_for_prompt(
    vm: &mut Running,
    accel: &mut &'static str,
    respawn: &dyn Fn(&str) -> Result<Running, BootError>,
    log: &Path,
    opts: &BootOptions,
    started: Instant,
    say: &dyn Fn(&str),
) -> Result<Prompt, BootError> {
    let mut login_after = None;
    let mut qemu_exit = None;
    let mut bare_prompt = false;
    // A line per phase as the console shows it, and one every 30 s while
    // nothing new appears: a TCG boot takes a minute or more.
    let mut phase = 0usize;
    let mut said_at = Instant::now();
    while started.elapsed() < opts.timeout {
        if opts.cancel.load(Ordering::Relaxed) {
            return Err(BootError::Cancelled);
        }
        if let Ok(Some(status)) = vm.0.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = vm.0.stderr.take() {
                let _ = e.by_ref().take(64 * 1024).read_to_string(&mut stderr);
            }
            // KVM that opens but cannot run (nested virtualization) aborts
            // QEMU early: boot again in software.
            if *accel == "kvm" && started.elapsed() < Duration::from_secs(30) {
                *accel = "tcg";
                *vm = respawn(accel)?;
                continue;
            }
            qemu_exit = Some(format!("{status}: {}", stderr.trim()));
            break;
        }
        // KVM that opens but does not run the guest (seen on nested
        // virtualization: QEMU spins, the console stays empty) is dropped
        // for TCG; GRUB writes to the console within a second or two.
        if *accel == "kvm"
            && started.elapsed() > KVM_SILENCE
            && std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) == 0
        {
            // The new QEMU replaces (and so stops) the silent one.
            *accel = "tcg";
            *vm = respawn(accel)?;
            continue;
        }
        let lines = console(log);
        if lines.iter().any(|l| l.contains(" login:")) {
            if boot_phase(&lines) == 3 && lines.iter().any(|l| l.contains("Linux version")) {
                login_after = Some(started.elapsed().as_secs_f64());
                say(&format!("login prompt ({accel})"));
            } else {
                bare_prompt = true;
            }
            break;
        }
        let reached = boot_phase(&lines);
        if reached > phase || said_at.elapsed() >= Duration::from_secs(30) {
            let what = if reached > phase {
                PHASES[reached].0.to_string()
            } else {
                format!(
                    "{} (last console line: {})",
                    PHASES[reached].1,
                    lines
                        .last()
                        .map(|l| l
                            .chars()
                            .filter(|c| !c.is_control())
                            .take(80)
                            .collect::<String>())
                        .unwrap_or_default()
                )
            };
            say(&format!("{what} ({accel})"));
            phase = phase.max(reached);
            said_at = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(Prompt {
        login_after,
        qemu_exit,
        bare_prompt,
    })
}

/// The look from inside: the Ready report, an SSH login with the provisioned
/// key, the in-VM checks, the journal; and, without a look from inside, the
/// console's failed units. True when a check failed.
fn look_inside(
    prov: &provision::Provisioning,
    ssh_port: u16,
    opts: &BootOptions,
    started: Instant,
    run: &mut BootRun,
    f: &mut Vec<Finding>,
) -> Result<bool, BootError> {
    let fw = run.firmware;
    let id = |check: &str| format!("boot.{}.{check}", fw.name());
    let say = |what: &str| say_phase(fw, started, what);
    let mut failed = false;
    let cancel = || opts.cancel.load(Ordering::Relaxed);
    let ssh = inside::Ssh {
        port: ssh_port,
        key: prov.private_key.clone(),
        user: prov.guest.user.clone(),
    };
    let login = ssh.wait_for_login(LOGIN_WAIT, &cancel)?;
    let epoch = std::time::SystemTime::now() - started.elapsed();
    let provisioned = provisioning_finding(prov, epoch, &id);
    run.provisioned_after_s = provisioned.1;
    if let Some(s) = provisioned.1 {
        say(&format!(
            "provisioned (cloud-init reported Ready at {s:.0} s)"
        ));
    }
    failed |= provisioned.0.status == crate::report::Status::Fail;
    f.push(provisioned.0);
    let mut inside_units = false;
    match login {
        Ok(_) => {
            run.ssh_after_s = Some(round1(started.elapsed().as_secs_f64()));
            say("logged in with the provisioned key; waiting for the boot to settle");
            // Settling first, on its own (bounded): a progress line and a
            // figure of its own; the script's own wait then returns at once.
            if let Some((_, state)) = ssh.run_reconnecting(
                &format!(
                    "timeout {} systemctl is-system-running --wait",
                    SETTLE_WAIT.as_secs()
                ),
                "",
                SETTLE_WAIT + Duration::from_secs(30),
                &cancel,
            )? {
                run.settled_after_s = Some(round1(started.elapsed().as_secs_f64()));
                say(&format!(
                    "settled ({}); running the in-VM checks",
                    last_line(&state)
                ));
            }
            let script = opts.node.script(SETTLE_WAIT, provision::EGRESS);
            match ssh.run_reconnecting(
                "sudo -n sh -s",
                &script,
                SETTLE_WAIT + Duration::from_secs(420),
                &cancel,
            )? {
                Some((255, out)) if inside::parse(&out, &id).is_empty() => {
                    failed = true;
                    f.push(Finding::fail(
                        &id("inside"),
                        format!(
                            "SSH connections with the provisioned key kept failing after the first login: {}",
                            last_line(&out)
                        ),
                    ));
                }
                Some((_, out)) => {
                    let rows = inside::parse(&out, &id);
                    if rows.is_empty() {
                        failed = true;
                        f.push(
                            Finding::fail(
                                &id("inside"),
                                format!(
                                    "the in-VM checks did not run as root: {}",
                                    last_line(&out)
                                ),
                            )
                            .hint("the provisioned admin user needs sudo without a password, as cloud-init grants it on Azure: is sudo in the image?"),
                        );
                    }
                    inside_units = rows.iter().any(|r| r.id == id("units"));
                    failed |= rows.iter().any(|r| r.status == crate::report::Status::Fail);
                    f.extend(rows);
                }
                None => {
                    failed = true;
                    f.push(Finding::fail(
                        &id("inside"),
                        "the in-VM checks ran past their deadline; QEMU was stopped",
                    ));
                }
            }
            run.checked_after_s = Some(round1(started.elapsed().as_secs_f64()));
            let journal = prov.dir.join("journal.txt");
            inside::save_journal(&ssh, &journal)?;
            if journal.exists() {
                run.journal = Some(journal);
            }
            say("in-VM checks done");
        }
        Err(why) => {
            failed = true;
            f.push(
                Finding::fail(
                    &id("ssh-login"),
                    format!("no SSH login with the provisioned key within {} s of the login prompt: {why}", LOGIN_WAIT.as_secs()),
                )
                .evidence(prov.requests.display().to_string())
                .hint("cloud-init creates the admin user and installs its key from ovf-env.xml: read cloud-init's lines in the serial console log"),
            );
        }
    }
    if !inside_units {
        // No look from inside: the console's failed units are all there is.
        let (hardware, real): (Vec<&String>, Vec<&String>) =
            run.failed_units.iter().partition(|u| {
                opts.node
                    .hardware_units
                    .iter()
                    .any(|h| u.contains(h.as_str()))
            });
        f.push(if !real.is_empty() {
            failed = true;
            Finding::fail(
                &id("units"),
                format!("units failed at boot: {}", join(&real)),
            )
            .evidence(run.serial_log.display().to_string())
        } else if !hardware.is_empty() {
            Finding::warn(
                &id("units"),
                format!(
                    "only units that need hardware this VM lacks (GPU, InfiniBand) failed: {}",
                    join(&hardware)
                ),
            )
        } else {
            Finding::pass(
                &id("units"),
                "no unit failed on the console (not seen from inside)",
            )
        });
    }
    Ok(failed)
}

/// A progress line: the firmware, what happened, seconds since power-on.
fn say_phase(fw: Firmware, started: Instant, what: &str) {
    crate::util::term::status(
        "Booting",
        &format!(
            "{}: {what} after {} s",
            fw.name(),
            started.elapsed().as_secs()
        ),
    )
}

/// The last non-empty line of what a command printed, bounded.
fn last_line(out: &str) -> String {
    out.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .chars()
        .take(300)
        .collect()
}

fn round1(s: f64) -> f64 {
    (s * 10.0).round() / 10.0
}

/// What the guest told the wire server: cloud-init's Ready (or NotReady, with
/// why) report, and when, counted from QEMU's start (`epoch`).
fn provisioning_finding(
    prov: &provision::Provisioning,
    epoch: std::time::SystemTime,
    id: &dyn Fn(&str) -> String,
) -> (Finding, Option<f64>) {
    let ex = standin::exchanges(&prov.requests);
    let start = epoch
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let count = |role: &str| ex.iter().filter(|e| e.role == role).count();
    let asked = format!(
        "{} request(s) to IMDS, {} to the wire server",
        count("imds"),
        count("wire")
    );
    let evidence = prov.requests.display().to_string();
    let report = ex.iter().find(|e| e.state.is_some());
    match report {
        Some(e) if e.state.as_deref() == Some("Ready") => {
            let after = round1((e.at - start).max(0.0));
            (
                Finding::pass(
                    &id("provisioned"),
                    format!("the node reported Ready to the wire server {after:.0} s after power-on ({} via {asked})", if e.agent.is_empty() { "an agent" } else { e.agent.as_str() }),
                )
                .evidence(evidence),
                Some(after),
            )
        }
        Some(e) => (
            Finding::fail(
                &id("provisioned"),
                format!(
                    "the node reported {} to the wire server: {}",
                    e.state.as_deref().unwrap_or("?"),
                    e.detail.as_deref().unwrap_or("no description")
                ),
            )
            .evidence(evidence)
            .hint("Azure fails the VM's provisioning on this report: read cloud-init's lines in the serial console log"),
            None,
        ),
        None => (
            Finding::fail(
                &id("provisioned"),
                format!("the node never reported Ready to the wire server ({asked}): Azure would fail its provisioning"),
            )
            .evidence(evidence)
            .hint("cloud-init's Azure datasource reports Ready after reading ovf-env.xml and IMDS: is datasource_list [ Azure ] and is cloud-init enabled?"),
            None,
        ),
    }
}

/// The probes from outside: SSH's banner, the plan's inbound ports, a port
/// that must be dropped. True when one failed.
fn probe_ports(
    ports: &Ports,
    opts: &BootOptions,
    id: &dyn Fn(&str) -> String,
    f: &mut Vec<Finding>,
) -> bool {
    let mut failed = false;
    let mut ssh_answered = false;
    match probe(ports.ssh, Duration::from_secs(15)) {
        Probe::Data(banner) if banner.starts_with("SSH-") => {
            ssh_answered = true;
            f.push(Finding::pass(
                &id("ssh"),
                format!("port 22 answers: {banner}"),
            ));
        }
        other => {
            failed = true;
            f.push(
                Finding::fail(&id("ssh"), format!("port 22 gave no SSH banner: {}", describe(&other)))
                    .hint("Azure Batch reaches nodes over SSH on 22: is ssh.service enabled and are host keys made at first boot?"),
            );
        }
    }
    let mut blocked = Vec::new();
    for (host, guest) in &ports.answer {
        match probe(*host, Duration::from_secs(3)) {
            Probe::Refused | Probe::Data(_) => {}
            other => blocked.push(format!("{guest} ({})", describe(&other))),
        }
    }
    f.push(if opts.must_answer.is_empty() {
        Finding::pass(
            &id("inbound-ports"),
            "the image opens no inbound port besides SSH (Batch's simplified node communication needs none)",
        )
    } else if blocked.is_empty() {
        Finding::pass(
            &id("inbound-ports"),
            format!(
                "TCP {} answered (refused where nothing listens yet: the firewall admits them)",
                opts.must_answer.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
            ),
        )
    } else {
        failed = true;
        Finding::fail(
            &id("inbound-ports"),
            format!("the host firewall does not admit {}", blocked.join(", ")),
        )
        .hint("the plan opens these ports (the features' and [firewall] inbound_tcp): the image's firewall rules do not admit them")
    });
    let (host, guest) = ports.dropped;
    // Silence proves a firewall only where the guest answered elsewhere: on
    // SSH, and on every port it opens.
    let answered = blocked.is_empty() && ssh_answered;
    f.push(match probe(host, Duration::from_secs(3)) {
        Probe::Silent if !answered => {
            failed = true;
            Finding::fail(
                &id("firewall"),
                format!("TCP {guest} got no answer, but neither did the ports the image opens: the guest's network is not up, so the firewall cannot be told"),
            )
        }
        Probe::Silent => Finding::pass(
            &id("firewall"),
            format!("the host firewall is active: TCP {guest}, which the image does not open, got no answer"),
        ),
        other => {
            failed = true;
            Finding::fail(
                &id("firewall"),
                format!("TCP {guest}, which the image does not open, {}: the host firewall is not active", describe(&other)),
            )
            .hint("ufw.conf needs ENABLED=yes and ufw.service enabled (firewalld: enabled at boot)")
        }
    });
    failed
}

fn describe(p: &Probe) -> String {
    match p {
        Probe::Refused => "was refused".into(),
        Probe::Data(d) => format!("answered `{d}`"),
        Probe::Silent => "got no answer".into(),
        Probe::Error(e) => format!("could not be probed ({e})"),
    }
}

fn join(units: &[&String]) -> String {
    units
        .iter()
        .map(|u| u.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_binary_replaced_while_running_is_found_at_its_path() {
        use super::*;
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("imgforge");
        std::fs::write(&live, "new").unwrap();
        let deleted = PathBuf::from(format!("{} (deleted)", live.display()));
        assert_eq!(live_path(deleted.clone()), live);
        std::fs::remove_file(&live).unwrap();
        assert_eq!(
            live_path(deleted.clone()),
            deleted,
            "nothing at the path: as it was"
        );
        assert_eq!(live_path(live.clone()), live);
    }

    #[test]
    fn a_comma_in_a_path_stays_in_the_qemu_option_value() {
        assert_eq!(qemu_option_value("/data/a,b.vhd"), "/data/a,,b.vhd");
        assert_eq!(qemu_option_value("/plain.vhd"), "/plain.vhd");
    }

    #[test]
    fn boot_phases_follow_the_console() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(boot_phase(&l(&["SeaBIOS (version 1.16)"])), 0);
        assert_eq!(boot_phase(&l(&["Booting `debian-12 (x)'"])), 1);
        assert_eq!(boot_phase(&l(&["Welcome to GRUB!"])), 1);
        assert_eq!(boot_phase(&l(&["[    0.000000] Linux version 6.1.0"])), 2);
        assert_eq!(
            boot_phase(&l(&["Welcome to Debian GNU/Linux 12 (bookworm)!"])),
            3
        );
    }

    use super::*;

    #[test]
    fn failed_units_come_from_systemd_console_lines() {
        let log = [
            "\x1b[0;1;31mFAILED\x1b[0m] Failed to start \x1b[0;1;39mcloud-conf…ettings specified in cloud-config.",
            "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.",
            "[FAILED] Failed to start glusterd.service - GlusterFS, a clustered file-system server.",
        ];
        let lines: Vec<String> = log.iter().map(|l| strip_ansi(l)).collect();
        let units = failed_units(&lines);
        // No unit is excused by its name: cloud-config is a failure like any.
        assert_eq!(units.len(), 2, "{units:?}");
        assert!(units[0].starts_with("cloud-conf"), "{}", units[0]);
        assert!(units[1].starts_with("glusterd.service"));
    }

    #[test]
    fn the_dropped_probe_avoids_the_images_own_ports() {
        assert_eq!(closed_port(&[22, 29876]), 47_001);
        // What the manifest opens, not SSH, not the features' listening daemons.
        let plan = |rel: &str| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
            crate::spec::plan::Plan::new(&crate::spec::manifest::Manifest::load(&path).unwrap())
        };
        let full = plan("tests/fixtures/local/full.toml");
        assert!(
            full.firewall.inbound_tcp.contains(&24007),
            "{:?}",
            full.firewall
        );
        assert_eq!(must_answer(Some(&full)), vec![6006]);
        assert_eq!(
            must_answer(Some(&plan("contrib/legacy/gpu-ubuntu1604.toml"))),
            vec![6006, 29876, 29877]
        );
        assert!(must_answer(Some(&plan("contrib/local-debian12.toml"))).is_empty());
        assert!(must_answer(None).is_empty());
        assert_eq!(closed_port(&[47_001, 47_002]), 47_003);
    }
}
