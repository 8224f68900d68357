//! The checks of an image's files: one table (`CHECKS`) of rules over the
//! plan, each reading the root through `Files` (a bounded view of a
//! `RootFs`). The disk layer in `mod.rs` finds and opens the root; these
//! rules only read files, so each has a unit test over a directory.

use super::rootfs::RootFs;
use crate::report::Finding;
use crate::spec::catalog::{Os, PackageFamily};
use crate::spec::plan::Plan;

/// The image's root as the checks read it: bounded reads through a `RootFs`.
pub(super) struct Files {
    fs: Box<dyn RootFs>,
    /// Files longer than a check may read: each becomes a failed
    /// `read.whole` finding, so a check that judged a cut file (or took it
    /// for missing) never lets the image pass.
    cut: std::cell::RefCell<Vec<(String, u64)>>,
}

/// Every file read is bounded by what a check needs, never by the size the
/// image's inode claims (a hostile inode may claim 2⁴⁰ bytes): configuration
/// files up to 32 MiB (dpkg's status file is a few MiB on a GPU image), the
/// secret search 1 MiB of each file.
const MAX_TEXT: u64 = 32 * 1024 * 1024;
const MAX_SECRET_SCAN: u64 = 1024 * 1024;

impl Files {
    pub(super) fn new(fs: Box<dyn RootFs>) -> Files {
        Files {
            fs,
            cut: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// A whole configuration file, or `None` when it is missing or longer
    /// than `MAX_TEXT` — then it is also noted as cut (`cut_findings`): a
    /// setting past the bound (waagent reads the whole file) is never seen,
    /// so nothing that read the file may pass.
    fn text(&self, path: &str) -> Option<String> {
        let t = self.text_prefix(path, MAX_TEXT + 1)?;
        if t.len() as u64 > MAX_TEXT {
            let mut cut = self.cut.borrow_mut();
            if !cut.iter().any(|(p, _)| p == path) {
                cut.push((path.to_string(), MAX_TEXT));
            }
            return None;
        }
        Some(t)
    }

    /// Whether `path` was too long to read whole (a `text` of it was `None`
    /// for that reason, not because it is missing).
    fn was_cut(&self, path: &str) -> bool {
        self.cut.borrow().iter().any(|(p, _)| p == path)
    }

    /// A failed finding per file read only in part.
    pub(super) fn cut_findings(&self) -> Vec<Finding> {
        self.cut
            .borrow()
            .iter()
            .map(|(path, limit)| {
                Finding::fail(
                    "read.whole",
                    format!(
                        "{path} is longer than the {} MiB a check reads: not read whole, so it could not be checked",
                        limit / (1024 * 1024)
                    ),
                )
                .evidence(format!("{path}: more than {limit} bytes"))
                .hint("a configuration file this large is not one the image's tools wrote: look at how it was made")
            })
            .collect()
    }

    /// The first `limit` bytes (or fewer): for searches that say they
    /// look at a file's start only.
    fn text_prefix(&self, path: &str, limit: u64) -> Option<String> {
        let bytes = self.fs.read_prefix(path, limit)?;
        // Valid UTF-8 (nearly always) is taken as it is, not copied: a 32 MiB
        // read stays 32 MiB.
        Some(
            String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        )
    }

    fn exists(&self, path: &str) -> bool {
        self.fs.exists(path)
    }

    fn list(&self, dir: &str) -> Vec<String> {
        self.fs.list(dir)
    }

    /// Enabled at boot: a symlink in a `*.target.wants` directory systemd reads.
    fn unit_enabled(&self, unit: &str) -> Option<String> {
        let unit = if unit.contains('.') {
            unit.to_string()
        } else {
            format!("{unit}.service")
        };
        for dir in [
            "/etc/systemd/system/multi-user.target.wants",
            "/etc/systemd/system/sockets.target.wants",
        ] {
            let path = format!("{dir}/{unit}");
            if self.exists(&path) {
                return Some(path);
            }
        }
        None
    }
}

pub(crate) fn key_value(text: &str, key: &str) -> Option<String> {
    text.lines().rev().find_map(|l| {
        let l = l.trim();
        if l.starts_with('#') {
            return None;
        }
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// One check of the root's files: the findings it reports (by id prefix, for
/// the reader), when it applies to the plan, and the rule itself. Every rule
/// reads the image through `Files` and decides from the plan, never from the
/// catalog again: what the plan says was built is what is checked.
struct Check {
    /// Read by the test that every finding belongs to a row.
    #[cfg_attr(not(test), allow(dead_code))]
    ids: &'static str,
    applies: fn(&Plan) -> bool,
    run: fn(&Files, &Plan, &mut Vec<Finding>),
}

/// Every check of the image's files, in report order. A new check is a row
/// here, a function below, and a unit test over a directory (`tests` below).
const CHECKS: &[Check] = &[
    Check {
        ids: "distro.os-release",
        applies: |_| true,
        run: distro,
    },
    Check {
        ids: "batch.waagent, batch.resource-disk",
        applies: |_| true,
        run: waagent,
    },
    Check {
        ids: "feature.NAME.file*, feature.NAME.boot",
        applies: |_| true,
        run: features,
    },
    Check {
        ids: "batch.ssh-port",
        applies: |p| p.distro.os == Os::Linux,
        run: ssh_port,
    },
    Check {
        ids: "batch.firewall",
        applies: |p| p.distro.os == Os::Linux,
        run: firewall,
    },
    Check {
        ids: "feature.gpu.module",
        applies: |p| p.gpu.is_some(),
        run: gpu_modules,
    },
    Check {
        ids: "feature.gpu.kernel-held",
        applies: |p| p.gpu.is_some(),
        run: kernel_held,
    },
    Check {
        ids: "hygiene.*",
        applies: |_| true,
        run: hygiene,
    },
    // Last: the files the rows above could not read whole (reported only
    // when there are any).
    Check {
        ids: "read.whole",
        applies: |_| true,
        run: |files, _, f| f.extend(files.cut_findings()),
    },
];

pub(super) fn check_files(files: &Files, plan: &Plan, f: &mut Vec<Finding>) {
    for check in CHECKS.iter().filter(|c| (c.applies)(plan)) {
        (check.run)(files, plan, f);
    }
}

/// Whether os-release's `ID` and `VERSION_ID` are the distro's (a point
/// release counts: AlmaLinux 9.4 is almalinux-9).
pub(crate) fn os_matches(d: &crate::spec::catalog::Distro, id: &str, version: &str) -> bool {
    id == d.os_release_id
        && (version == d.os_release_version
            || version.split('.').next() == Some(d.os_release_version))
}

fn distro(files: &Files, plan: &Plan, f: &mut Vec<Finding>) {
    let d = plan.distro;
    match files.text("/etc/os-release") {
        None if files.was_cut("/etc/os-release") => f.push(
            Finding::fail(
                "distro.os-release",
                "/etc/os-release could not be read whole: the distro is unknown",
            )
            .evidence("/etc/os-release"),
        ),
        None => f.push(
            Finding::fail("distro.os-release", "/etc/os-release is missing")
                .evidence("/etc/os-release"),
        ),
        Some(text) => {
            let id = key_value(&text, "ID").unwrap_or_default();
            let version = key_value(&text, "VERSION_ID").unwrap_or_default();
            f.push(if os_matches(d, &id, &version) {
                Finding::pass(
                    "distro.os-release",
                    format!("{id} {version}, as the manifest says ({})", d.key),
                )
            } else {
                Finding::fail(
                    "distro.os-release",
                    format!("the image is {id} {version}, the manifest says {}", d.key),
                )
                .evidence("/etc/os-release")
                .hint(format!(
                    "build from the {} base image, or fix image.distro",
                    d.key
                ))
            });
        }
    }
}

/// The Azure agent and the resource disk.
fn waagent(files: &Files, plan: &Plan, f: &mut Vec<Finding>) {
    let d = plan.distro;
    match files.text("/etc/waagent.conf") {
        None if files.was_cut("/etc/waagent.conf") => f.push(
            Finding::fail(
                "batch.waagent",
                "/etc/waagent.conf could not be read whole: its settings (ResourceDisk.MountPoint) are unknown",
            )
            .evidence("/etc/waagent.conf"),
        ),
        None => f.push(
            Finding::fail(
                "batch.waagent",
                "/etc/waagent.conf is missing: the Azure Linux agent is not installed",
            )
            .evidence("/etc/waagent.conf")
            .hint("install walinuxagent (apt) or WALinuxAgent (yum/dnf)"),
        ),
        Some(conf) => {
            f.push(
                Finding::pass("batch.waagent", "the Azure Linux agent is configured")
                    .evidence("/etc/waagent.conf"),
            );
            let line = conf
                .lines()
                .position(|l| l.trim_start().starts_with("ResourceDisk.MountPoint"))
                .map(|i| format!("/etc/waagent.conf:{}", i + 1))
                .unwrap_or_else(|| "/etc/waagent.conf".into());
            let mount = key_value(&conf, "ResourceDisk.MountPoint");
            f.push(match mount.as_deref() {
                Some(m) if m == d.ephemeral_mount => Finding::pass(
                    "batch.resource-disk",
                    format!("ResourceDisk.MountPoint={m}"),
                )
                .evidence(line),
                other => Finding::fail(
                    "batch.resource-disk",
                    format!(
                        "ResourceDisk.MountPoint is {}, Batch needs {}",
                        other.unwrap_or("unset"),
                        d.ephemeral_mount
                    ),
                )
                .evidence(line)
                .hint(format!(
                    "leave ResourceDisk.MountPoint={} (the distro default)",
                    d.ephemeral_mount
                )),
            });
        }
    }
}

/// Every enabled feature: the files it leaves and the services it enables (or
/// leaves off) at boot, as the plan resolved them.
fn features(files: &Files, plan: &Plan, f: &mut Vec<Finding>) {
    let d = plan.distro;
    for feature in &plan.features {
        let name = serde_json::to_value(feature.id)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
            .replace('_', "-");
        // The plan's rules, not the catalog's: the plan drops what the
        // manifest turned off (the container runtime without the toolkit).
        for (i, check) in feature.files.iter().enumerate() {
            let rule = &check.rule;
            let id = format!(
                "feature.{name}.file{}",
                if feature.files.len() > 1 {
                    format!("-{}", i + 1)
                } else {
                    String::new()
                }
            );
            let found = rule.any_of.iter().find(|p| files.exists(p));
            let finding = match (found, rule.contains) {
                (None, _) => Finding::fail(&id, rule.missing_message)
                    .evidence(rule.any_of.join(" or "))
                    .hint(format!(
                        "the {name} provisioning step did not leave {}",
                        rule.any_of[0]
                    )),
                (Some(p), None) => Finding::pass(&id, format!("{p} present")).evidence(*p),
                (Some(p), Some(needle)) => match files.text(p) {
                    Some(t) if t.contains(needle) => {
                        Finding::pass(&id, format!("{p} has `{needle}`")).evidence(*p)
                    }
                    _ => Finding::fail(&id, rule.missing_message)
                        .evidence(*p)
                        .hint(format!("{p} must contain `{needle}`")),
                },
            };
            f.push(finding);
        }
        for service in &feature.services {
            let unit = service.unit;
            let id = format!("feature.{name}.boot");
            let enabled = files.unit_enabled(unit);
            let want = service.enabled_at_boot;
            f.push(match (want, enabled) {
                (true, Some(p)) => Finding::pass(&id, format!("{unit} is enabled at boot")).evidence(p),
                (true, None) => Finding::fail(&id, format!("{unit} is not enabled at boot"))
                    .evidence("/etc/systemd/system/multi-user.target.wants")
                    .hint(format!("systemctl enable {unit}")),
                (false, None) => Finding::pass(
                    &id,
                    format!("{unit} is not enabled at boot: its data is on the ephemeral disk, Batch Shipyard starts it"),
                ),
                (false, Some(p)) => Finding::fail(
                    &id,
                    format!("{unit} is enabled at boot although its data-root is on the ephemeral disk ({})", plan.docker.data_root),
                )
                .evidence(p)
                .hint(format!("systemctl disable {unit}: Batch Shipyard starts it once {} is mounted", d.ephemeral_mount)),
            });
        }
    }
}

fn ssh_port(files: &Files, _plan: &Plan, f: &mut Vec<Finding>) {
    let Some(conf) = files.text("/etc/ssh/sshd_config") else {
        f.push(Finding::pass(
            "batch.ssh-port",
            "sshd_config absent: sshd listens on 22 by default",
        ));
        return;
    };
    let ports: Vec<(usize, String)> = conf
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let mut w = l.split_whitespace();
            (w.next() == Some("Port")).then(|| (i + 1, w.next().unwrap_or("").to_string()))
        })
        .collect();
    f.push(match ports.iter().find(|(_, p)| p != "22") {
        None => Finding::pass("batch.ssh-port", "sshd listens on 22"),
        Some((line, p)) => Finding::fail("batch.ssh-port", format!("sshd listens on {p}, not 22"))
            .evidence(format!("/etc/ssh/sshd_config:{line}"))
            .hint("Azure Batch reaches nodes over SSH on 22"),
    });
}

/// The first host firewall the image enables must admit every port the plan
/// opens (Batch's, the features', the manifest's — as the firewall script
/// renders them); none enabled passes.
fn firewall(files: &Files, plan: &Plan, f: &mut Vec<Finding>) {
    let inbound = &plan.firewall.inbound_tcp;
    let outbound = &plan.firewall.outbound_tcp;
    f.push(
        ufw(files, inbound, outbound)
            .or_else(|| firewalld(files, inbound))
            .or_else(|| iptables(files, inbound))
            .unwrap_or_else(|| {
                Finding::pass(
                    "batch.firewall",
                    "no host firewall is enabled: nothing blocks the Batch ports",
                )
            }),
    );
}

/// The TCP ports ufw's recorded rules allow in direction `dir` (`in`, `out`).
pub(crate) fn ufw_allowed(rules: &str, dir: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = rules
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 10
                && w[..3] == ["###", "tuple", "###"]
                && w[3] == "allow"
                && (w[4] == "tcp" || w[4] == "any")
                && w.last() == Some(&dir))
            .then(|| w[5].parse::<u16>().ok())
            .flatten()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// ufw, when `ufw.conf` enables it: its default policies and the allow
/// rules in `user.rules`.
fn ufw(files: &Files, inbound: &[u16], outbound: &[u16]) -> Option<Finding> {
    let id = "batch.firewall";
    if let Some(conf) = files.text("/etc/ufw/ufw.conf")
        && key_value(&conf, "ENABLED").as_deref() == Some("yes")
    {
        let defaults = files.text("/etc/default/ufw").unwrap_or_default();
        let input = key_value(&defaults, "DEFAULT_INPUT_POLICY").unwrap_or_else(|| "DROP".into());
        let output =
            key_value(&defaults, "DEFAULT_OUTPUT_POLICY").unwrap_or_else(|| "ACCEPT".into());
        let rules = files.text("/etc/ufw/user.rules").unwrap_or_default();
        // ### tuple ### allow tcp 29876 0.0.0.0/0 any 0.0.0.0/0 in
        let allowed = |port: u16, dir: &str| ufw_allowed(&rules, dir).contains(&port);
        let blocked_in: Vec<u16> = if input == "ACCEPT" {
            Vec::new()
        } else {
            inbound
                .iter()
                .copied()
                .filter(|p| !allowed(*p, "in"))
                .collect()
        };
        let blocked_out: Vec<u16> = if output == "ACCEPT" {
            Vec::new()
        } else {
            outbound
                .iter()
                .copied()
                .filter(|p| !allowed(*p, "out"))
                .collect()
        };
        Some(if blocked_in.is_empty() && blocked_out.is_empty() {
            Finding::pass(
                id,
                format!("ufw is enabled and allows inbound {inbound:?} and outbound {outbound:?}"),
            )
            .evidence("/etc/ufw/user.rules")
        } else {
            let mut what = Vec::new();
            if !blocked_in.is_empty() {
                what.push(format!("inbound TCP {blocked_in:?} (default {input})"));
            }
            if !blocked_out.is_empty() {
                what.push(format!("outbound TCP {blocked_out:?} (default {output})"));
            }
            let mut fix: Vec<String> = blocked_in
                .iter()
                .map(|p| format!("ufw allow in {p}/tcp"))
                .collect();
            fix.extend(blocked_out.iter().map(|p| format!("ufw allow out {p}/tcp")));
            Finding::fail(id, format!("ufw blocks {}", what.join(" and ")))
                .evidence("/etc/ufw/user.rules")
                .hint(fix.join("; "))
        })
    } else {
        None
    }
}

/// firewalld, when enabled at boot: the ports its public zone opens.
fn firewalld(files: &Files, inbound: &[u16]) -> Option<Finding> {
    let id = "batch.firewall";
    if files.unit_enabled("firewalld").is_some() {
        let zone = files
            .text("/etc/firewalld/zones/public.xml")
            .unwrap_or_default();
        let open = |port: u16| {
            zone.contains(&format!("port=\"{port}\""))
                || (port == 22 && zone.contains("service name=\"ssh\""))
        };
        let blocked: Vec<u16> = inbound.iter().copied().filter(|p| !open(*p)).collect();
        Some(if blocked.is_empty() {
            Finding::pass(
                id,
                format!("firewalld is enabled and its public zone allows inbound {inbound:?}"),
            )
            .evidence("/etc/firewalld/zones/public.xml")
        } else {
            Finding::fail(id, format!("firewalld blocks inbound TCP {blocked:?}"))
                .evidence("/etc/firewalld/zones/public.xml")
                .hint(
                    blocked
                        .iter()
                        .map(|p| format!("firewall-offline-cmd --add-port={p}/tcp"))
                        .collect::<Vec<_>>()
                        .join("; "),
                )
        })
    } else {
        None
    }
}

/// Persisted iptables rules (Debian's iptables-persistent, RHEL's
/// iptables-services): a dropping INPUT policy and its ACCEPT rules.
fn iptables(files: &Files, inbound: &[u16]) -> Option<Finding> {
    let id = "batch.firewall";
    let list = |ports: &[u16]| {
        ports
            .iter()
            .map(|p| format!("{p}/tcp"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if let Some(rules) = files
        .text("/etc/iptables/rules.v4")
        .or_else(|| files.text("/etc/sysconfig/iptables"))
    {
        let drops = rules
            .lines()
            .any(|l| l.starts_with(":INPUT DROP") || l.starts_with(":INPUT REJECT"));
        let open = |port: u16| {
            rules.lines().any(|l| {
                l.contains("-A INPUT")
                    && l.contains(&format!("--dport {port}"))
                    && l.contains("ACCEPT")
            })
        };
        let blocked: Vec<u16> = if drops {
            inbound.iter().copied().filter(|p| !open(*p)).collect()
        } else {
            Vec::new()
        };
        Some(if blocked.is_empty() {
            Finding::pass(
                id,
                format!("persisted iptables rules admit inbound {inbound:?}"),
            )
        } else {
            Finding::fail(id, format!("iptables drops inbound TCP {blocked:?}"))
                .evidence("/etc/iptables/rules.v4")
                .hint(format!(
                    "add -A INPUT -p tcp --dport PORT -j ACCEPT for {}",
                    list(&blocked)
                ))
        })
    } else {
        None
    }
}

/// NVIDIA modules are looked up where DKMS and the packages put them, never by
/// walking /lib/modules (thousands of files, 60× the bytes read).
fn gpu_modules(files: &Files, _plan: &Plan, f: &mut Vec<Finding>) {
    let kernels = files.list("/lib/modules");
    if kernels.is_empty() {
        f.push(
            Finding::fail("feature.gpu.module", "no kernel in /lib/modules")
                .evidence("/lib/modules"),
        );
        return;
    }
    let dirs = ["updates/dkms", "updates", "extra", "kernel/drivers/video"];
    // Debian's DKMS package names the module nvidia-current (its alternatives
    // system picks the driver branch); NVIDIA's and Ubuntu's call it nvidia.
    let names = [
        "nvidia.ko",
        "nvidia.ko.xz",
        "nvidia.ko.zst",
        "nvidia-current.ko",
        "nvidia-current.ko.xz",
        "nvidia-current.ko.zst",
    ];
    let missing: Vec<&String> = kernels
        .iter()
        .filter(|k| {
            !dirs.iter().any(|d| {
                names
                    .iter()
                    .any(|n| files.exists(&format!("/lib/modules/{k}/{d}/{n}")))
            })
        })
        .collect();
    f.push(if missing.is_empty() {
        Finding::pass(
            "feature.gpu.module",
            format!(
                "an NVIDIA kernel module for each of {} kernel(s)",
                kernels.len()
            ),
        )
    } else {
        Finding::fail(
            "feature.gpu.module",
            format!(
                "No Nvidia drivers detected! no nvidia.ko for kernel(s) {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .evidence(format!(
            "/lib/modules/{}/{{{}}}",
            missing[0],
            dirs.join(",")
        ))
        .hint("build the driver with DKMS for every installed kernel, and hold the kernel packages")
    });
}

fn kernel_held(files: &Files, plan: &Plan, f: &mut Vec<Finding>) {
    let id = "feature.gpu.kernel-held";
    match plan.distro.family {
        PackageFamily::Apt => {
            let status = files.text("/var/lib/dpkg/status").unwrap_or_default();
            let mut installed_kernels = Vec::new();
            let mut held = Vec::new();
            for stanza in status.split("\n\n") {
                let pkg = stanza
                    .lines()
                    .find_map(|l| l.strip_prefix("Package: "))
                    .unwrap_or("");
                let st = stanza
                    .lines()
                    .find_map(|l| l.strip_prefix("Status: "))
                    .unwrap_or("");
                if pkg.starts_with("linux-image-") && st.ends_with("installed") {
                    installed_kernels.push(pkg.to_string());
                    if st.starts_with("hold") {
                        held.push(pkg.to_string());
                    }
                }
            }
            f.push(if !installed_kernels.is_empty() && held.len() == installed_kernels.len() {
                Finding::pass(id, format!("kernel packages held: {}", held.join(", ")))
            } else {
                let loose: Vec<&String> = installed_kernels.iter().filter(|k| !held.contains(k)).collect();
                Finding::fail(id, format!("kernel packages not held: {loose:?}"))
                    .evidence("/var/lib/dpkg/status")
                    .hint("apt-mark hold the kernel packages: an unattended kernel upgrade breaks the NVIDIA driver")
            });
        }
        PackageFamily::Yum | PackageFamily::Dnf => {
            let conf_path = if plan.distro.family == PackageFamily::Yum {
                "/etc/yum.conf"
            } else {
                "/etc/dnf/dnf.conf"
            };
            let conf = files.text(conf_path).unwrap_or_default();
            f.push(
                if conf
                    .lines()
                    .any(|l| l.starts_with("exclude=") && l.contains("kernel"))
                {
                    Finding::pass(id, "kernel packages excluded from updates").evidence(conf_path)
                } else {
                    Finding::fail(id, "kernel packages are not excluded from updates")
                        .evidence(conf_path)
                        .hint("add exclude=kernel* so an update cannot break the NVIDIA driver")
                },
            );
        }
        PackageFamily::None => {}
    }
}

fn hygiene(files: &Files, _plan: &Plan, f: &mut Vec<Finding>) {
    let keys: Vec<String> = files
        .list("/etc/ssh")
        .into_iter()
        .filter(|n| n.starts_with("ssh_host_") && n.ends_with("_key"))
        .collect();
    f.push(if keys.is_empty() {
        Finding::pass(
            "hygiene.ssh-host-keys",
            "no SSH host keys: each node makes its own",
        )
    } else {
        Finding::fail(
            "hygiene.ssh-host-keys",
            format!("SSH host keys left in the image: {}", keys.join(", ")),
        )
        .evidence("/etc/ssh")
        .hint("deprovision with `waagent -force -deprovision+user` as the last step")
    });
    let mut histories = Vec::new();
    if files.exists("/root/.bash_history") {
        histories.push("/root/.bash_history".to_string());
    }
    // Any home fails the check; the first few are named and searched for a
    // history, the rest counted (20,000 homes searched one by one took 216 s).
    const HOMES_NAMED: usize = 10;
    let mut homes = files.list("/home");
    homes.sort();
    for h in homes.iter().take(HOMES_NAMED) {
        if files.exists(&format!("/home/{h}/.bash_history")) {
            histories.push(format!("/home/{h}/.bash_history"));
        }
    }
    f.push(if histories.is_empty() && homes.is_empty() {
        Finding::pass("hygiene.provisioning-user", "no user home or shell history left")
    } else {
        let more = (homes.len() > HOMES_NAMED)
            .then(|| format!("and {} more in /home", homes.len() - HOMES_NAMED));
        Finding::fail(
            "hygiene.provisioning-user",
            format!(
                "left behind: {}",
                homes
                    .iter()
                    .take(HOMES_NAMED)
                    .map(|h| format!("/home/{h}"))
                    .chain(histories)
                    .chain(more)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .evidence("/home")
        .hint("waagent -force -deprovision+user removes the provisioning user; export HISTSIZE=0 before it")
    });
    // A policy-rc.d left from provisioning keeps every package's service from
    // ever starting on the node (invoke-rc.d asks it first).
    f.push(if files.exists("/usr/sbin/policy-rc.d") {
        Finding::fail(
            "hygiene.policy-rc",
            "/usr/sbin/policy-rc.d is left in the image: services installed later will not start",
        )
        .evidence("/usr/sbin/policy-rc.d")
        .hint("remove it as the last provisioning step (the local builder does)")
    } else {
        Finding::pass("hygiene.policy-rc", "no policy-rc.d left from provisioning")
    });
    // The build's secrets must not be anywhere a provisioner could have written them.
    // The variables `redact` masks; found in any form it masks (as written,
    // URL-encoded, base64, JSON-escaped).
    let secrets = crate::util::redact::environment_secrets();
    if secrets.is_empty() {
        f.push(Finding::skip(
            "hygiene.build-secrets",
            "no build secret in this environment to look for",
        ));
        return;
    }
    let mut places = vec![
        "/etc/environment".to_string(),
        "/root/.bash_history".to_string(),
        "/var/log/cloud-init-output.log".to_string(),
        // Where credentials for registries and archives are written.
        "/root/.docker/config.json".to_string(),
        "/etc/apt/auth.conf".to_string(),
    ];
    places.extend(
        files
            .list("/etc/apt/auth.conf.d")
            .into_iter()
            .map(|n| format!("/etc/apt/auth.conf.d/{n}")),
    );
    places.extend(
        files
            .list("/etc/profile.d")
            .into_iter()
            .map(|n| format!("/etc/profile.d/{n}")),
    );
    places.extend(files.list("/tmp").into_iter().map(|n| format!("/tmp/{n}")));
    let mut partly = Vec::new();
    let leaked: Vec<String> = places
        .into_iter()
        .filter(|p| {
            let Some(t) = files.text_prefix(p, MAX_SECRET_SCAN + 1) else {
                return false;
            };
            if t.len() as u64 > MAX_SECRET_SCAN {
                partly.push(p.clone());
            }
            crate::util::redact::contains_secret(&t)
        })
        .collect();
    f.push(if leaked.is_empty() && !partly.is_empty() {
        // Not a pass: what was not read may hold one.
        Finding::warn(
            "hygiene.build-secrets",
            format!(
                "no build secret in what was searched, but {} file(s) were searched in their first {} MiB only: {}",
                partly.len(),
                MAX_SECRET_SCAN / (1024 * 1024),
                partly.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
        )
        .evidence(partly[0].clone())
        .hint("large files in /tmp or /etc/profile.d are not left by provisioning as a rule: remove them before capture")
    } else if leaked.is_empty() {
        Finding::pass(
            "hygiene.build-secrets",
            "no build secret found in the places provisioning writes to",
        )
    } else {
        Finding::fail(
            "hygiene.build-secrets",
            format!("a build secret is in {}", leaked.join(", ")),
        )
        .evidence(leaked[0].clone())
        .hint("never write ARM_*/storage secrets into the image; rotate the leaked secret")
    });
}

#[cfg(test)]
mod tests {
    //! The file checks over a plain directory (`rootfs::DirRoot`): each rule
    //! without building an image. The real-image tests in tests/validate.rs
    //! cover the disk layer and the readers.
    use super::*;

    fn root(files: &[(&str, &str)]) -> (tempfile::TempDir, Files) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let fs = Files::new(Box::new(super::super::rootfs::DirRoot(
            dir.path().to_path_buf(),
        )));
        (dir, fs)
    }

    /// A contrib manifest's plan: the plan a rule is checked against.
    fn plan(manifest: &str) -> Plan {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib")
            .join(manifest);
        let m = crate::spec::manifest::Manifest::load(&path).unwrap();
        Plan::new(&m)
    }

    /// The findings of one rule over a directory holding `files`.
    fn run(
        rule: fn(&Files, &Plan, &mut Vec<Finding>),
        plan: &Plan,
        files: &[(&str, &str)],
    ) -> Vec<Finding> {
        let (_dir, fs) = root(files);
        let mut f = Vec::new();
        rule(&fs, plan, &mut f);
        f
    }

    #[test]
    fn a_file_too_long_to_read_whole_never_lets_a_check_pass() {
        let p = plan("local-debian12.toml");
        // A setting past the bound, where waagent would still read it.
        let (dir, fs) = root(&[("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n")]);
        let conf = dir.path().join("etc/waagent.conf");
        let file = std::fs::File::create(&conf).unwrap();
        file.set_len(MAX_TEXT + 10).unwrap();
        use std::io::Write as _;
        let mut file = file;
        use std::io::Seek as _;
        file.seek(std::io::SeekFrom::End(0)).unwrap();
        file.write_all(b"\nResourceDisk.MountPoint=/mnt\n").unwrap();
        let mut f = Vec::new();
        check_files(&fs, &p, &mut f);
        assert_eq!(status_of(&f, "batch.waagent"), crate::report::Status::Fail);
        assert_eq!(status_of(&f, "read.whole"), crate::report::Status::Fail);
        let whole = f.iter().find(|x| x.id == "read.whole").unwrap();
        assert!(whole.message.contains("/etc/waagent.conf"), "{whole:?}");
        // A file that fits is read and judged as before: no read.whole.
        let (_d2, fs2) = root(&[("etc/waagent.conf", "ResourceDisk.MountPoint=/mnt\n")]);
        let mut f2 = Vec::new();
        waagent(&fs2, &p, &mut f2);
        assert!(fs2.cut_findings().is_empty());
    }

    fn status_of(f: &[Finding], id: &str) -> crate::report::Status {
        f.iter()
            .find(|x| x.id == id)
            .unwrap_or_else(|| panic!("{id} in {f:?}"))
            .status
    }

    #[test]
    fn sshd_must_listen_on_22() {
        use crate::report::Status;
        for (conf, want) in [
            (None, Status::Pass),
            (Some("Port 22\n"), Status::Pass),
            (Some("# Port 2222\n"), Status::Pass),
            (Some("Port 2222\n"), Status::Fail),
        ] {
            let files: Vec<(&str, &str)> = conf
                .map(|c| ("etc/ssh/sshd_config", c))
                .into_iter()
                .collect();
            let (_dir, fs) = root(&files);
            let mut f = Vec::new();
            ssh_port(&fs, &plan("base-ubuntu2204.toml"), &mut f);
            assert_eq!(status_of(&f, "batch.ssh-port"), want, "{conf:?}: {f:?}");
        }
    }

    #[test]
    fn hygiene_names_host_keys_homes_and_a_policy_rc_left_behind() {
        use crate::report::Status;
        let (_dir, clean) = root(&[("etc/ssh/sshd_config", "")]);
        let mut f = Vec::new();
        hygiene(&clean, &plan("base-ubuntu2204.toml"), &mut f);
        for id in [
            "hygiene.ssh-host-keys",
            "hygiene.provisioning-user",
            "hygiene.policy-rc",
        ] {
            assert_eq!(status_of(&f, id), Status::Pass, "{id}: {f:?}");
        }
        let (_dir, dirty) = root(&[
            ("etc/ssh/ssh_host_rsa_key", "KEY"),
            ("home/azureuser/.bash_history", "ls"),
            ("usr/sbin/policy-rc.d", "exit 101"),
        ]);
        let mut f = Vec::new();
        hygiene(&dirty, &plan("base-ubuntu2204.toml"), &mut f);
        for id in [
            "hygiene.ssh-host-keys",
            "hygiene.provisioning-user",
            "hygiene.policy-rc",
        ] {
            assert_eq!(status_of(&f, id), Status::Fail, "{id}: {f:?}");
        }
        let keys = f.iter().find(|x| x.id == "hygiene.ssh-host-keys").unwrap();
        assert!(keys.message.contains("ssh_host_rsa_key"), "{keys:?}");
    }

    /// `feature.NAME.file*` matches `feature.gpu.file-2`: NAME one word, `*` any tail.
    fn matches(pattern: &str, id: &str) -> bool {
        let (p, i): (Vec<&str>, Vec<&str>) =
            (pattern.split('.').collect(), id.split('.').collect());
        p.len() == i.len()
            && p.iter().zip(&i).all(|(p, i)| {
                *p == "NAME"
                    || *p == "*"
                    || p == i
                    || p.strip_suffix('*').is_some_and(|s| i.starts_with(s))
            })
    }

    #[test]
    fn the_table_runs_what_the_plan_needs_and_every_finding_belongs_to_a_row() {
        for (manifest, want, not) in [
            (
                "legacy/gpu-ubuntu1604.toml",
                &[
                    "feature.gpu.module",
                    "feature.gpu.kernel-held",
                    "batch.firewall",
                ][..],
                &[][..],
            ),
            (
                "base-ubuntu2204.toml",
                &["batch.ssh-port", "batch.firewall"][..],
                &["feature.gpu.module"][..],
            ),
            (
                "legacy/windows-2019.toml",
                &[][..],
                &["batch.ssh-port", "batch.firewall", "feature.gpu.module"][..],
            ),
        ] {
            let plan = plan(manifest);
            let (_dir, fs) = root(&[]);
            let mut f = Vec::new();
            check_files(&fs, &plan, &mut f);
            let ids: Vec<&str> = f.iter().map(|x| x.id.as_str()).collect();
            for id in want {
                assert!(ids.contains(id), "{manifest}: {id} in {ids:?}");
            }
            for id in not {
                assert!(!ids.contains(id), "{manifest}: {id} not in {ids:?}");
            }
            for id in &ids {
                assert!(
                    CHECKS
                        .iter()
                        .any(|c| c.ids.split(", ").any(|p| matches(p, id))),
                    "{manifest}: {id} belongs to no row of CHECKS"
                );
            }
        }
    }

    #[test]
    fn the_distro_is_the_manifests() {
        use crate::report::Status;
        let plan = plan("base-ubuntu2204.toml");
        for (text, want) in [
            ("ID=ubuntu\nVERSION_ID=\"22.04\"\n", Status::Pass),
            ("ID=debian\nVERSION_ID=\"12\"\n", Status::Fail),
            ("ID=ubuntu\nVERSION_ID=\"20.04\"\n", Status::Fail),
        ] {
            let f = run(distro, &plan, &[("etc/os-release", text)]);
            assert_eq!(status_of(&f, "distro.os-release"), want, "{text:?}: {f:?}");
        }
        let f = run(distro, &plan, &[]);
        assert_eq!(status_of(&f, "distro.os-release"), Status::Fail, "{f:?}");
    }

    #[test]
    fn the_resource_disk_is_where_batch_mounts_it() {
        use crate::report::Status;
        let plan = plan("base-ubuntu2204.toml");
        let right = format!(
            "ResourceDisk.Format=y\nResourceDisk.MountPoint={}\n",
            plan.distro.ephemeral_mount
        );
        let f = run(waagent, &plan, &[("etc/waagent.conf", &right)]);
        assert_eq!(status_of(&f, "batch.waagent"), Status::Pass, "{f:?}");
        assert_eq!(status_of(&f, "batch.resource-disk"), Status::Pass, "{f:?}");
        let f = run(
            waagent,
            &plan,
            &[("etc/waagent.conf", "ResourceDisk.MountPoint=/data\n")],
        );
        assert_eq!(status_of(&f, "batch.resource-disk"), Status::Fail, "{f:?}");
        let wrong = f.iter().find(|x| x.id == "batch.resource-disk").unwrap();
        assert_eq!(
            wrong.evidence.as_deref(),
            Some("/etc/waagent.conf:1"),
            "{wrong:?}"
        );
        let f = run(waagent, &plan, &[]);
        assert_eq!(status_of(&f, "batch.waagent"), Status::Fail, "{f:?}");
    }

    #[test]
    fn services_are_enabled_or_left_off_as_the_plan_says() {
        use crate::report::Status;
        let plan = plan("legacy/gpu-ubuntu1604.toml");
        let services: Vec<&crate::spec::plan::ServicePlan> =
            plan.features.iter().flat_map(|f| &f.services).collect();
        assert!(services.iter().any(|s| s.enabled_at_boot), "{services:?}");
        assert!(
            services.iter().any(|s| !s.enabled_at_boot),
            "docker stays off: {services:?}"
        );
        let wants = |s: &crate::spec::plan::ServicePlan| {
            let unit = if s.unit.contains('.') {
                s.unit.to_string()
            } else {
                format!("{}.service", s.unit)
            };
            format!("etc/systemd/system/multi-user.target.wants/{unit}")
        };
        let boot = |f: &[Finding]| -> Vec<(String, Status)> {
            f.iter()
                .filter(|x| x.id.ends_with(".boot"))
                .map(|x| (x.message.clone(), x.status))
                .collect()
        };
        // As planned: every boot finding passes.
        let planned: Vec<(String, &str)> = services
            .iter()
            .filter(|s| s.enabled_at_boot)
            .map(|s| (wants(s), ""))
            .collect();
        let planned: Vec<(&str, &str)> = planned.iter().map(|(p, t)| (p.as_str(), *t)).collect();
        let f = run(features, &plan, &planned);
        let got = boot(&f);
        assert_eq!(got.len(), services.len(), "{got:?}");
        assert!(got.iter().all(|(_, s)| *s == Status::Pass), "{got:?}");
        // Everything enabled: exactly the services the plan leaves off fail.
        let all: Vec<String> = services.iter().map(|s| wants(s)).collect();
        let all: Vec<(&str, &str)> = all.iter().map(|p| (p.as_str(), "")).collect();
        let f = run(features, &plan, &all);
        let failed = boot(&f)
            .into_iter()
            .filter(|(_, s)| *s == Status::Fail)
            .count();
        assert_eq!(
            failed,
            services.iter().filter(|s| !s.enabled_at_boot).count(),
            "{f:?}"
        );
    }

    #[test]
    fn the_firewall_must_admit_every_port_the_plan_opens() {
        use crate::report::Status;
        let plan = plan("legacy/glusterfs-ubuntu1804.toml");
        assert!(
            plan.firewall.inbound_tcp.contains(&24007),
            "{:?}",
            plan.firewall
        );
        let rules = |ports: &[u16]| -> String {
            ports
                .iter()
                .map(|p| format!("### tuple ### allow tcp {p} 0.0.0.0/0 any 0.0.0.0/0 in\n"))
                .collect()
        };
        let batch_only = rules(&[22, 29876, 29877]);
        let all = rules(&plan.firewall.inbound_tcp);
        for (user_rules, want) in [(&batch_only, Status::Fail), (&all, Status::Pass)] {
            let f = run(
                firewall,
                &plan,
                &[
                    ("etc/ufw/ufw.conf", "ENABLED=yes\n"),
                    (
                        "etc/default/ufw",
                        "DEFAULT_INPUT_POLICY=\"DROP\"\nDEFAULT_OUTPUT_POLICY=\"ACCEPT\"\n",
                    ),
                    ("etc/ufw/user.rules", user_rules),
                ],
            );
            assert_eq!(status_of(&f, "batch.firewall"), want, "{f:?}");
            if want == Status::Fail {
                let x = &f[0];
                assert!(x.message.contains("24007"), "{x:?}");
                assert!(
                    x.hint
                        .as_deref()
                        .unwrap_or("")
                        .contains("ufw allow in 24007/tcp"),
                    "{x:?}"
                );
                assert!(!x.message.contains("29876"), "{x:?}");
            }
        }
        // Outbound: a deny-by-default policy must allow the plan's outbound ports.
        let f = run(
            firewall,
            &plan,
            &[
                ("etc/ufw/ufw.conf", "ENABLED=yes\n"),
                (
                    "etc/default/ufw",
                    "DEFAULT_INPUT_POLICY=\"ACCEPT\"\nDEFAULT_OUTPUT_POLICY=\"DROP\"\n",
                ),
            ],
        );
        assert_eq!(status_of(&f, "batch.firewall"), Status::Fail, "{f:?}");
        assert!(f[0].message.contains("outbound TCP [443]"), "{f:?}");
        // firewalld and persisted iptables rules, the same ports.
        let zone = "<zone><port protocol=\"tcp\" port=\"29876\"/><port protocol=\"tcp\" port=\"29877\"/><service name=\"ssh\"/></zone>";
        let f = run(
            firewall,
            &plan,
            &[
                (
                    "etc/systemd/system/multi-user.target.wants/firewalld.service",
                    "",
                ),
                ("etc/firewalld/zones/public.xml", zone),
            ],
        );
        assert_eq!(status_of(&f, "batch.firewall"), Status::Fail, "{f:?}");
        assert!(f[0].message.contains("24007"), "{f:?}");
        let f = run(
            firewall,
            &plan,
            &[(
                "etc/iptables/rules.v4",
                ":INPUT DROP [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\n",
            )],
        );
        assert_eq!(status_of(&f, "batch.firewall"), Status::Fail, "{f:?}");
        let f = run(firewall, &plan, &[]);
        assert_eq!(
            status_of(&f, "batch.firewall"),
            Status::Pass,
            "no firewall: {f:?}"
        );
    }

    #[test]
    fn every_kernel_needs_an_nvidia_module_and_a_hold() {
        use crate::report::Status;
        let plan = plan("legacy/gpu-ubuntu1604.toml");
        let one = [("lib/modules/4.15.0-1/updates/dkms/nvidia.ko", "")];
        assert_eq!(
            status_of(&run(gpu_modules, &plan, &one), "feature.gpu.module"),
            Status::Pass
        );
        let two = [
            ("lib/modules/4.15.0-1/updates/dkms/nvidia.ko", ""),
            ("lib/modules/4.15.0-2/kernel/fs/ext4.ko", ""),
        ];
        let f = run(gpu_modules, &plan, &two);
        assert_eq!(status_of(&f, "feature.gpu.module"), Status::Fail, "{f:?}");
        assert!(
            f[0].message.contains("4.15.0-2") && !f[0].message.contains("4.15.0-1,"),
            "{f:?}"
        );
        let held = "Package: linux-image-4.15.0-1\nStatus: hold ok installed\n\nPackage: bash\nStatus: install ok installed\n";
        let loose = "Package: linux-image-4.15.0-1\nStatus: install ok installed\n";
        let f = run(kernel_held, &plan, &[("var/lib/dpkg/status", held)]);
        assert_eq!(
            status_of(&f, "feature.gpu.kernel-held"),
            Status::Pass,
            "{f:?}"
        );
        let f = run(kernel_held, &plan, &[("var/lib/dpkg/status", loose)]);
        assert_eq!(
            status_of(&f, "feature.gpu.kernel-held"),
            Status::Fail,
            "{f:?}"
        );
    }

    #[test]
    fn a_directory_root_keeps_links_inside_it() {
        let (dir, fs) = root(&[("usr/lib/os-release", "ID=almalinux\n")]);
        std::os::unix::fs::symlink("../usr/lib/os-release", dir.path().join("etc-os")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", dir.path().join("etc/os-release"))
            .unwrap();
        // An absolute link means the image's /etc/passwd, never the host's.
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/escape")).unwrap();
        assert_eq!(
            fs.text("/etc/os-release").as_deref(),
            Some("ID=almalinux\n")
        );
        assert!(fs.exists("/etc/escape"), "the link itself exists");
        assert_eq!(fs.text("/etc/escape"), None);
        assert_eq!(
            fs.text_prefix("/usr/lib/os-release", 3).as_deref(),
            Some("ID=")
        );
    }
}
