//! The boot check: boots a fixed VHD under QEMU and reports, as checks with
//! evidence, what a Batch node needs from a boot — the kernel and systemd
//! reach a login prompt, no unit failed, SSH answers on 22, the Batch node
//! agent's ports get through the host firewall and a port the image does not
//! open gets no answer (so the firewall is really on).
//!
//! Rules:
//! - The image is never written: the disk is attached with `snapshot=on`.
//! - The guest reaches nothing: user-mode networking with `restrict=on`; only
//!   the forwarded loopback ports reach it, and it reaches no one.
//! - Every wait is bounded (the boot by `timeout`, each probe by seconds).
//! - QEMU is always stopped: a guard kills it when the check ends, fails or
//!   is interrupted (Ctrl-C is polled while waiting).
//! - KVM is used when `/dev/kvm` opens and the guest writes to its console
//!   within 20 s; otherwise TCG (software), which is what these build
//!   machines have (their KVM opens, then QEMU spins with a silent console).
//!
//! Probing through QEMU's user-mode network: the host side of a forwarded port
//! always accepts; the guest's answer shows in what follows. A port the guest
//! refuses (nothing listens, the firewall admits it) closes at once; a port
//! its firewall drops stays silent until the probe gives up.
//!
//! QEMU is one child whose output goes to a file: `std::process` with a
//! kill-on-drop guard is all it needs, so no process crate is added for it.

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
    /// Units (substrings of systemd's console line) that fail without hardware
    /// the QEMU guest lacks: a warning, not a failure.
    pub needs_hardware: Vec<String>,
    pub cancel: Arc<AtomicBool>,
}

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
/// Modules", fails), and its daemons with it.
pub fn hardware_units(plan: &crate::spec::plan::Plan) -> Vec<String> {
    let mut units = Vec::new();
    if plan.gpu.is_some() {
        units.extend(["Load Kernel Modules", "nvidia"].map(String::from));
    }
    if plan.rdma.is_some() {
        units.extend(["rdma", "RDMA"].map(String::from));
    }
    units
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

fn spawn(
    qemu: &Qemu,
    image: &Path,
    fw: Firmware,
    accel: &str,
    log: &Path,
    vars: &Path,
    ports: &Ports,
) -> Result<Running, BootError> {
    let mut forwards = format!("hostfwd=tcp:127.0.0.1:{}-:22", ports.ssh);
    for (host, guest) in ports.answer.iter().chain(std::iter::once(&ports.dropped)) {
        forwards.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    let mut cmd = Command::new(&qemu.binary);
    cmd.args([
        "-accel", accel, "-m", "1536", "-smp", "2", "-display", "none",
    ])
    .args(["-no-reboot", "-nodefaults", "-vga", "none"])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .arg("-drive")
    .arg(format!(
        "file={},format=vpc,if=virtio,snapshot=on,readonly=off",
        qemu_option_value(&image.display().to_string())
    ))
    .arg("-nic")
    .arg(format!("user,model=virtio-net-pci,restrict=on,{forwards}"));
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

/// Units that fail off Azure by design: cloud-init and the Azure agent need
/// Azure's metadata service (IMDS, the wire server), which no local boot has.
fn needs_azure(unit: &str) -> bool {
    let u = unit.to_ascii_lowercase();
    u.starts_with("cloud-")
        || u.contains("cloud-init")
        || u.contains("walinuxagent")
        || u.contains("azure")
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
    let ports = Ports {
        ssh: free_port()?,
        answer: opts
            .must_answer
            .iter()
            .map(|&p| free_port().map(|h| (h, p)))
            .collect::<Result<_, _>>()?,
        dropped: (free_port()?, opts.must_be_dropped),
    };
    let mut accel = if try_kvm { "kvm" } else { "tcg" };
    let started = Instant::now();
    let _ = std::fs::remove_file(&log);
    let mut vm = spawn(qemu, image, fw, accel, &log, &vars, &ports)?;
    let mut login_after = None;
    let mut qemu_exit = None;
    // A login prompt without a kernel and systemd before it (a boot sector
    // that prints "login:") is no boot.
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
            if accel == "kvm" && started.elapsed() < Duration::from_secs(30) {
                accel = "tcg";
                vm = spawn(qemu, image, fw, accel, &log, &vars, &ports)?;
                continue;
            }
            qemu_exit = Some(format!("{status}: {}", stderr.trim()));
            break;
        }
        // KVM that opens but does not run the guest (seen on nested
        // virtualization: QEMU spins, the console stays empty) is dropped
        // for TCG; GRUB writes to the console within a second or two.
        if accel == "kvm"
            && started.elapsed() > KVM_SILENCE
            && std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) == 0
        {
            drop(vm);
            accel = "tcg";
            let _ = std::fs::remove_file(&log);
            vm = spawn(qemu, image, fw, accel, &log, &vars, &ports)?;
            continue;
        }
        let lines = console(&log);
        if lines.iter().any(|l| l.contains(" login:")) {
            if boot_phase(&lines) == 3 && lines.iter().any(|l| l.contains("Linux version")) {
                login_after = Some(started.elapsed().as_secs_f64());
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
            crate::util::term::status(
                "Booting",
                &format!(
                    "{}: {what} after {} s ({accel})",
                    fw.name(),
                    started.elapsed().as_secs()
                ),
            );
            phase = phase.max(reached);
            said_at = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let lines = console(&log);
    let kernel = lines.iter().any(|l| l.contains("Linux version"));
    let mut failed = false;
    let timeout_s = opts.timeout.as_secs();
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
    let units = failed_units(&lines);
    let (hardware, rest): (Vec<&String>, Vec<&String>) = units
        .iter()
        .partition(|u| opts.needs_hardware.iter().any(|h| u.contains(h.as_str())));
    let (azure_only, real): (Vec<&String>, Vec<&String>) =
        rest.into_iter().partition(|u| needs_azure(u));
    if login_after.is_some() {
        f.push(if !real.is_empty() {
            failed = true;
            Finding::fail(
                &id("units"),
                format!("units failed at boot: {}", join(&real)),
            )
            .evidence(log.display().to_string())
        } else if !azure_only.is_empty() || !hardware.is_empty() {
            let mut why = Vec::new();
            if !azure_only.is_empty() {
                why.push(format!(
                    "need Azure's metadata service: {}",
                    join(&azure_only)
                ));
            }
            if !hardware.is_empty() {
                why.push(format!(
                    "need hardware this VM lacks (GPU, InfiniBand): {}",
                    join(&hardware)
                ));
            }
            Finding::warn(
                &id("units"),
                format!("only units that {} failed", why.join("; units that ")),
            )
            .hint("expected under QEMU; on an Azure VM of the right size they start")
        } else {
            Finding::pass(&id("units"), "no unit failed at boot")
        });
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
                    opts.must_answer
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
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
        // Silence on the dropped port means something only where the guest
        // answered elsewhere: on SSH, and on every port it opens.
        let answered = blocked.is_empty() && ssh_answered;
        f.push(match probe(host, Duration::from_secs(3)) {
            // Silence proves a firewall only where the guest answers at all.
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
    }
    drop(vm);
    let _ = std::fs::remove_file(&vars);
    let tail = if failed {
        lines.iter().rev().take(30).rev().cloned().collect()
    } else {
        Vec::new()
    };
    Ok(BootRun {
        firmware: fw,
        accel: accel.to_string(),
        login_after_s: login_after.map(|s| (s * 10.0).round() / 10.0),
        failed_units: units,
        serial_log: log,
        tail,
    })
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
        assert_eq!(units.len(), 2, "{units:?}");
        assert!(needs_azure(&units[0]), "{}", units[0]);
        assert!(!needs_azure(&units[1]));
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
