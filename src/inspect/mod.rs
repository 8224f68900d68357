//! What is in an image, read from the disk without booting it: the OS
//! release, kernels, installed packages (dpkg's status database), units
//! enabled at boot, users with a login shell, sshd's ports — the facts a
//! release pipeline diffs between two builds and turns into an SBOM.
//!
//! It opens the disk exactly as the validator does (`validate::read_root`:
//! the VHD container, the partition table, ext4 or XFS) and reads only the
//! files it needs, each bounded. A package database that cannot be read
//! whole, or that is malformed, is an error naming the line: never a partial
//! package list presented as the image's. RPM's database is read where EL 9
//! keeps it (SQLite, `rpmdb`); EL 8's Berkeley DB is not (the inspection
//! says so and what it needs, and there is no SBOM).

use serde::{Deserialize, Serialize};

use crate::report::{Finding, Status};
use crate::validate::rootfs::RootFs;
use crate::validate::{Disk, ReadStats};

pub mod azure;
pub mod diff;
pub mod dpkg;
pub mod firewall;
pub mod rpmdb;
pub mod sbom;

/// The most a package database may take: Debian's with 3,000 packages is
/// about 3 MiB.
pub const MAX_PACKAGE_DB: u64 = 64 << 20;
/// The most RPM's SQLite database (and its write-ahead log) may take: it
/// holds every package's whole header (file lists, scripts), tens of MiB
/// for an EL 9 server.
pub const MAX_RPM_DB: u64 = 256 << 20;
/// The most a small text file (`/etc/passwd`, `os-release`, sshd's config) may take.
const MAX_SMALL: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{subject}: the root filesystem could not be read: {why}")]
    NoRoot {
        subject: String,
        why: String,
        /// The failing layer's own fix (the qemu-img command for a qcow2, …).
        hint: Option<String>,
    },
    #[error("{subject}: {path}: {why}")]
    PackageDb {
        subject: String,
        path: String,
        why: String,
    },
    #[error("{0}")]
    Validate(#[from] crate::validate::ValidateError),
    #[error("{path}: not an inspection document imgforge reads: {why}")]
    Document { path: String, why: String },
    #[error("interrupted")]
    Cancelled,
    /// An image in Azure (gallery version, managed image) could not be read.
    #[error("{subject}: {why}")]
    Azure {
        subject: String,
        why: String,
        hint: Option<String>,
    },
}

impl crate::util::Hint for InspectError {
    fn hint(&self) -> Option<String> {
        match self {
            InspectError::NoRoot { hint, .. } => hint.clone().or_else(|| {
                Some(
                    "`imgforge validate IMAGE --manifest M` shows each layer it read and where it stopped"
                        .into(),
                )
            }),
            InspectError::PackageDb { .. } => Some(
                "no SBOM is made from a package database read in part; rebuild the image, or check it with `dpkg --audit` in the build"
                    .into(),
            ),
            InspectError::Validate(_) => None,
            InspectError::Document { .. } => Some(
                "pass an image (VHD) or a document `imgforge inspect --json` wrote".into(),
            ),
            InspectError::Azure { hint, .. } => hint.clone(),
            InspectError::Cancelled => None,
        }
    }
}

impl InspectError {
    pub fn category(&self) -> crate::util::Category {
        use crate::util::Category;
        match self {
            InspectError::Validate(_) => Category::Io,
            InspectError::Cancelled => Category::Cancelled,
            _ => Category::Input,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub version_id: String,
    pub pretty_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// The source package (dpkg's `Source:`, else the package's own name).
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub shell: String,
}

/// What `imgforge inspect` reports about one image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inspection {
    pub schema: u32,
    pub subject: String,
    pub os: OsRelease,
    /// `dpkg`, `rpm`, or why no package database was read.
    pub package_db: String,
    pub packages: Vec<Package>,
    /// Kernel versions with modules (`/lib/modules/*`).
    pub kernels: Vec<String>,
    /// `TARGET.wants/UNIT` links under /etc/systemd/system: what starts at boot.
    pub units_enabled: Vec<String>,
    pub users_with_shell: Vec<User>,
    /// sshd's `Port` lines (sshd_config and its .d), 22 when none.
    pub ssh_ports: Vec<u16>,
    /// What a Batch image cares about, from the package list: name → version.
    pub components: std::collections::BTreeMap<String, String>,
    /// The host firewall the image starts with (from its configuration).
    #[serde(default)]
    pub firewall: firewall::Firewall,
    /// Every file under /etc: `sha256:HEX` for a regular file, `link:TARGET`
    /// for a symlink (not followed), `unread: WHY` for one past the bounds.
    #[serde(default)]
    pub etc: std::collections::BTreeMap<String, String>,
    /// Bytes and reads it took.
    #[serde(default)]
    pub read: ReadStats,
}

pub const SCHEMA: u32 = 1;

/// Components a Batch image cares about: (what, package names that are it).
const COMPONENTS: &[(&str, &[&str])] = &[
    ("docker", &["docker-ce", "docker.io", "moby-engine"]),
    ("containerd", &["containerd.io", "containerd"]),
    (
        "nvidia-driver",
        &["nvidia-driver", "cuda-drivers", "nvidia-kernel-dkms"],
    ),
    (
        "nvidia-container-toolkit",
        &["nvidia-container-toolkit", "libnvidia-container-tools"],
    ),
    ("ofed", &["mlnx-ofed-all", "rdma-core"]),
    ("nfs-client", &["nfs-common", "nfs-utils"]),
    ("glusterfs-client", &["glusterfs-client"]),
    ("glusterfs-server", &["glusterfs-server"]),
    ("azure-agent", &["waagent", "walinuxagent", "WALinuxAgent"]),
    ("cloud-init", &["cloud-init"]),
];

fn text(root: &dyn RootFs, path: &str) -> Option<String> {
    root.read_prefix(path, MAX_SMALL)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn os_release(root: &dyn RootFs) -> OsRelease {
    let t = text(root, "/etc/os-release")
        .or_else(|| text(root, "/usr/lib/os-release"))
        .unwrap_or_default();
    let field = |k: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    OsRelease {
        id: field("ID"),
        version_id: field("VERSION_ID"),
        pretty_name: field("PRETTY_NAME"),
    }
}

fn users(root: &dyn RootFs) -> Vec<User> {
    let no_login = [
        "/usr/sbin/nologin",
        "/sbin/nologin",
        "/bin/false",
        "/usr/bin/false",
        "/bin/sync",
        "",
    ];
    let mut out: Vec<User> = text(root, "/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 7 && !no_login.contains(&f[6])).then(|| User {
                name: f[0].to_string(),
                uid: f[2].parse().unwrap_or(u32::MAX),
                shell: f[6].to_string(),
            })
        })
        .collect();
    out.sort();
    out
}

fn ssh_ports(root: &dyn RootFs) -> Vec<u16> {
    let mut files = vec!["/etc/ssh/sshd_config".to_string()];
    let mut dropins: Vec<String> = root
        .list("/etc/ssh/sshd_config.d")
        .into_iter()
        .filter(|n| n.ends_with(".conf"))
        .map(|n| format!("/etc/ssh/sshd_config.d/{n}"))
        .collect();
    dropins.sort();
    files.extend(dropins);
    let mut ports: Vec<u16> = files
        .iter()
        .filter_map(|f| text(root, f))
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    match (w.next(), w.next()) {
                        (Some(k), Some(v)) if k.eq_ignore_ascii_case("port") => v.parse().ok(),
                        _ => None,
                    }
                })
                .collect::<Vec<u16>>()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        ports.push(22);
    }
    ports
}

fn kernels(root: &dyn RootFs) -> Vec<String> {
    let mut k = root.list("/lib/modules");
    if k.is_empty() {
        k = root.list("/usr/lib/modules");
    }
    k.sort();
    k
}

/// Bounds of the /etc walk: files read whole up to 4 MiB each, 20,000
/// entries, 16 directories deep; past them an entry says so (`unread: …`),
/// never a hash of part of a file.
const MAX_ETC_FILE: u64 = 4 << 20;
const MAX_ETC_ENTRIES: usize = 20_000;
const MAX_ETC_DEPTH: usize = 16;

/// SHA-256 of every regular file under /etc; symlinks by their target.
fn etc_files(root: &dyn RootFs) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![("/etc".to_string(), 0usize)];
    while let Some((dir, depth)) = todo.pop() {
        let mut names = root.list(&dir);
        names.sort();
        for name in names {
            if out.len() >= MAX_ETC_ENTRIES {
                out.insert(
                    format!("{dir}/…"),
                    format!("unread: more than {MAX_ETC_ENTRIES} entries under /etc"),
                );
                return out;
            }
            let path = format!("{dir}/{name}");
            if let Some(target) = root.read_link(&path) {
                out.insert(path, format!("link:{target}"));
            } else if root.is_dir(&path) {
                if depth + 1 < MAX_ETC_DEPTH {
                    todo.push((path, depth + 1));
                } else {
                    out.insert(
                        path,
                        format!("unread: deeper than {MAX_ETC_DEPTH} directories"),
                    );
                }
            } else {
                let v = match root.read_prefix(&path, MAX_ETC_FILE + 1) {
                    Some(b) if b.len() as u64 > MAX_ETC_FILE => {
                        format!("unread: over {} MiB", MAX_ETC_FILE >> 20)
                    }
                    Some(b) => format!("sha256:{}", crate::util::text::sha256_hex(&b)),
                    None => "unread: not a regular file, or not readable".to_string(),
                };
                out.insert(path, v);
            }
        }
    }
    out
}

fn units_enabled(root: &dyn RootFs) -> Vec<String> {
    let base = "/etc/systemd/system";
    let mut out: Vec<String> = root
        .list(base)
        .into_iter()
        .filter(|d| d.ends_with(".wants"))
        .flat_map(|d| {
            let target = d.trim_end_matches(".wants").to_string();
            root.list(&format!("{base}/{d}"))
                .into_iter()
                .map(move |u| format!("{target}/{u}"))
        })
        .collect();
    out.sort();
    out
}

/// A package database, whole and at most `max` bytes, or why not.
fn read_db(
    subject: &str,
    root: &dyn RootFs,
    path: &str,
    max: u64,
) -> Result<Vec<u8>, InspectError> {
    let failed = |why: String| InspectError::PackageDb {
        subject: subject.into(),
        path: path.into(),
        why,
    };
    let bytes = root
        .read_prefix(path, max + 1)
        .ok_or_else(|| failed("present but not readable".into()))?;
    if bytes.len() as u64 > max {
        return Err(failed(format!(
            "longer than the {} MiB imgforge reads: not read in part",
            max >> 20
        )));
    }
    Ok(bytes)
}

/// Reads everything `Inspection` holds from a root filesystem.
pub fn inspect_root(subject: &str, root: &dyn RootFs) -> Result<Inspection, InspectError> {
    let (package_db, packages) = if root.exists(dpkg::STATUS) {
        let bytes = read_db(subject, root, dpkg::STATUS, MAX_PACKAGE_DB)?;
        let packages = dpkg::parse(&bytes).map_err(|why| InspectError::PackageDb {
            subject: subject.into(),
            path: dpkg::STATUS.into(),
            why,
        })?;
        ("dpkg".to_string(), packages)
    } else if root.exists(rpmdb::SQLITE) {
        let db = read_db(subject, root, rpmdb::SQLITE, MAX_RPM_DB)?;
        let wal = if root.exists(rpmdb::SQLITE_WAL) {
            Some(read_db(subject, root, rpmdb::SQLITE_WAL, MAX_RPM_DB)?)
        } else {
            None
        };
        let packages =
            rpmdb::parse(&db, wal.as_deref()).map_err(|why| InspectError::PackageDb {
                subject: subject.into(),
                path: rpmdb::SQLITE.into(),
                why,
            })?;
        ("rpm".to_string(), packages)
    } else if root.exists(rpmdb::BERKELEY) {
        (
            format!(
                "not read: RPM's Berkeley DB ({}, EL 8) needs libdb; convert it in the build (rpm >= 4.16: rpmdb --rebuilddb --define '_db_backend sqlite') or list packages inside the build VM",
                rpmdb::BERKELEY
            ),
            Vec::new(),
        )
    } else {
        ("none found".to_string(), Vec::new())
    };
    let components = COMPONENTS
        .iter()
        .filter_map(|(what, names)| {
            packages
                .iter()
                .find(|p| names.contains(&p.name.as_str()))
                .map(|p| (what.to_string(), p.version.clone()))
        })
        .collect();
    Ok(Inspection {
        schema: SCHEMA,
        subject: subject.to_string(),
        os: os_release(root),
        package_db,
        packages,
        kernels: kernels(root),
        units_enabled: units_enabled(root),
        users_with_shell: users(root),
        ssh_ports: ssh_ports(root),
        components,
        firewall: firewall::read(root),
        etc: etc_files(root),
        read: ReadStats::default(),
    })
}

/// Inspects a disk image (a local fixed VHD or a blob through range reads).
pub fn inspect_disk(subject: &str, disk: Box<dyn Disk>) -> Result<Inspection, InspectError> {
    let (result, findings, stats) =
        crate::validate::read_root(subject, disk, |root| inspect_root(subject, root));
    match result {
        Some(r) => r.map(|mut i| {
            i.read = stats;
            i
        }),
        None => {
            // The first failure says what the file is (a qcow2, no VHD
            // footer, no partition table); else where the walk stopped.
            let stop: Option<&Finding> = findings
                .iter()
                .find(|f| f.status == Status::Fail)
                .or_else(|| findings.iter().rev().find(|f| f.status == Status::Skip));
            Err(InspectError::NoRoot {
                subject: subject.into(),
                why: stop
                    .map(|f| format!("{} ({})", f.message, f.id))
                    .unwrap_or_else(|| "no Linux root filesystem".into()),
                hint: stop.and_then(|f| f.hint.clone()),
            })
        }
    }
}

impl Inspection {
    /// Whether the package list is the image's whole list (its database was read).
    pub fn packages_read(&self) -> bool {
        matches!(self.package_db.as_str(), "dpkg" | "rpm")
    }

    /// The lines `imgforge inspect` prints.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "image       {}", self.subject);
        let _ = writeln!(
            s,
            "os          {} ({} {})",
            self.os.pretty_name, self.os.id, self.os.version_id
        );
        let _ = writeln!(s, "kernels     {}", self.kernels.join(", "));
        let _ = writeln!(
            s,
            "packages    {} ({})",
            self.packages.len(),
            self.package_db
        );
        for (what, version) in &self.components {
            let _ = writeln!(s, "  {what:<24} {version}");
        }
        let _ = writeln!(s, "at boot     {} unit(s)", self.units_enabled.len());
        let fw = &self.firewall;
        let ports = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            s,
            "firewall    {}{}, default inbound {}, admits inbound TCP {}{}",
            fw.tool,
            if fw.enabled {
                " (enabled at boot)"
            } else {
                " (not enabled)"
            },
            fw.default_inbound,
            if fw.inbound_tcp.is_empty() {
                "-".to_string()
            } else {
                ports(&fw.inbound_tcp)
            },
            if fw.outbound_tcp.is_empty() {
                String::new()
            } else {
                format!(", outbound TCP {}", ports(&fw.outbound_tcp))
            }
        );
        let count = |p: &str| self.etc.values().filter(|v| v.starts_with(p)).count();
        let _ = writeln!(
            s,
            "/etc        {} file(s) hashed (SHA-256), {} link(s), {} unread",
            count("sha256:"),
            count("link:"),
            count("unread:")
        );
        let _ = writeln!(
            s,
            "users       {}",
            self.users_with_shell
                .iter()
                .map(|u| format!("{} ({})", u.name, u.shell))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "sshd        port {}",
            self.ssh_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "read        {} bytes in {} read(s)",
            self.read.bytes, self.read.requests
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::rootfs::DirRoot;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, t) in files {
            let path = dir.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        }
        dir
    }

    #[test]
    fn a_root_is_read_into_facts() {
        let dir = tree(&[
            (
                "/etc/os-release",
                "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
            ),
            (
                "/etc/passwd",
                "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\nops:x:1000:1000::/home/ops:/bin/sh\n",
            ),
            ("/etc/ssh/sshd_config", "Port 22\n# Port 2222\n"),
            ("/etc/ssh/sshd_config.d/50-extra.conf", "Port 2200\n"),
            ("/lib/modules/6.1.0-28-cloud-amd64/modules.dep", ""),
            (
                "/etc/systemd/system/multi-user.target.wants/ssh.service",
                "",
            ),
            (
                dpkg::STATUS,
                "Package: docker.io\nStatus: install ok installed\nArchitecture: amd64\nVersion: 20.10.24+dfsg1-1+b3\nSource: docker.io (20.10.24+dfsg1-1)\n\nPackage: jq\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.6-2.1\n",
            ),
        ]);
        let root = DirRoot(dir.path().to_path_buf());
        let i = inspect_root("t", &root).unwrap();
        assert_eq!(i.os.id, "debian");
        assert_eq!(i.os.version_id, "12");
        assert_eq!(i.kernels, ["6.1.0-28-cloud-amd64"]);
        assert_eq!(
            i.packages.len(),
            1,
            "only installed packages: {:?}",
            i.packages
        );
        assert_eq!(i.packages[0].source, "docker.io");
        assert_eq!(i.components["docker"], "20.10.24+dfsg1-1+b3");
        assert_eq!(i.ssh_ports, [22, 2200]);
        assert_eq!(i.units_enabled, ["multi-user.target/ssh.service"]);
        let names: Vec<&str> = i.users_with_shell.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["ops", "root"]);
        assert_eq!(i.package_db, "dpkg");
    }

    #[test]
    fn every_file_under_etc_is_hashed_links_by_target_big_ones_said_unread() {
        let dir = tree(&[
            ("/etc/hostname", "node\n"),
            ("/etc/ssh/sshd_config", "Port 22\n"),
            ("/usr/bin/big", "not read"),
        ]);
        let etc = dir.path().join("etc");
        std::os::unix::fs::symlink("/usr/bin/big", etc.join("alternative")).unwrap();
        std::os::unix::fs::symlink("/etc", etc.join("loop")).unwrap();
        std::fs::write(etc.join("huge"), vec![b'x'; (MAX_ETC_FILE + 1) as usize]).unwrap();
        std::fs::create_dir_all(etc.join("empty.d")).unwrap();
        let root = DirRoot(dir.path().to_path_buf());
        let i = inspect_root("t", &root).unwrap();
        assert_eq!(
            i.etc["/etc/hostname"],
            format!("sha256:{}", crate::util::text::sha256_hex(b"node\n"))
        );
        assert!(i.etc["/etc/ssh/sshd_config"].starts_with("sha256:"));
        assert_eq!(i.etc["/etc/alternative"], "link:/usr/bin/big");
        assert_eq!(i.etc["/etc/loop"], "link:/etc");
        assert_eq!(i.etc["/etc/huge"], "unread: over 4 MiB");
        assert!(!i.etc.contains_key("/etc/empty.d"));
        assert!(!i.etc.keys().any(|k| k.starts_with("/usr")));
    }

    #[test]
    fn a_malformed_or_missing_package_database_is_said_never_half_read() {
        let dir = tree(&[(
            dpkg::STATUS,
            "Package: a\nStatus: install ok installed\nArchitecture: amd64\n\n",
        )]);
        let e = inspect_root("t", &DirRoot(dir.path().to_path_buf())).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        // A damaged SQLite file is an error naming it, not an empty list.
        let dir = tree(&[(rpmdb::SQLITE, "SQLite format 3\0")]);
        let e = inspect_root("t", &DirRoot(dir.path().to_path_buf())).unwrap_err();
        assert!(
            e.to_string()
                .contains("/var/lib/rpm/rpmdb.sqlite: not RPM's SQLite database"),
            "{e}"
        );
        // EL 8's Berkeley DB: said, with what it needs; no package list.
        let dir = tree(&[(rpmdb::BERKELEY, "\0\0\0\0\x61\x15\x06\0")]);
        let i = inspect_root("t", &DirRoot(dir.path().to_path_buf())).unwrap();
        assert!(
            i.package_db.starts_with("not read") && i.package_db.contains("needs libdb"),
            "{}",
            i.package_db
        );
        assert!(i.packages.is_empty() && !i.packages_read());
    }
}
