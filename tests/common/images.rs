//! Real disk images for the tests: trees that pass every check, sparse VHDs,
//! partition tables by sfdisk, ext4 by mkfs.ext4 -d, XFS by mkfs.xfs -p,
//! fixed VHDs by qemu-img.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A deterministic pseudo-random byte stream (xorshift64*), so fixtures differ
/// from run to run only when the seed does.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A real fixed VHD of `mib` MiB with data only where `islands` say:
/// (offset, length) pairs filled with noise; everything else stays sparse.
pub fn sparse_vhd(dir: &Path, name: &str, mib: u64, islands: &[(u64, usize)]) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let raw = dir.join(format!("{name}.raw"));
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(mib * 1024 * 1024).unwrap();
    for (i, (offset, len)) in islands.iter().enumerate() {
        f.write_all_at(&noise(i as u64 + 7, *len), *offset).unwrap();
    }
    drop(f);
    let vhd = dir.join(format!("{name}.vhd"));
    raw_to_fixed_vhd(&raw, &vhd);
    std::fs::remove_file(raw).unwrap();
    vhd
}

/// How the fixture disk is partitioned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layout {
    /// One MBR partition of type 0x83, as older Ubuntu images.
    Mbr,
    /// GPT with an EFI system partition and `cloudimg-rootfs`, as Ubuntu cloud images.
    Gpt,
}

/// The root tree of an AlmaLinux 8 image that meets every check for
/// contrib/legacy/managed-image-almalinux8.toml, its firewalld zone admitting `zone_ports`.
pub fn good_alma_tree(root: &Path, zone_ports: &[u16]) {
    let f = |p: &str, text: &str| write(&root.join(p), text);
    // As on AlmaLinux: /etc/os-release is a relative link into /usr/lib.
    f(
        "usr/lib/os-release",
        "NAME=\"AlmaLinux\"\nID=\"almalinux\"\nVERSION_ID=\"8.7\"\n",
    );
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    f(
        "etc/waagent.conf",
        "ResourceDisk.Format=y\nResourceDisk.MountPoint=/mnt/resource\n",
    );
    f("usr/sbin/sshd", "ELF");
    f("usr/lib/systemd/system/sshd.service", "[Unit]\n");
    f("usr/lib/systemd/system/firewalld.service", "[Unit]\n");
    f("usr/bin/docker", "ELF");
    f(
        "etc/docker/daemon.json",
        "{\"data-root\": \"/mnt/resource/docker\"}\n",
    );
    f("usr/sbin/mount.nfs4", "ELF");
    f("usr/sbin/mount.glusterfs", "ELF");
    let ports: String = zone_ports
        .iter()
        .map(|p| format!("  <port protocol=\"tcp\" port=\"{p}\"/>\n"))
        .collect();
    f(
        "etc/firewalld/zones/public.xml",
        &format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<zone>\n  <short>Public</short>\n  <service name=\"ssh\"/>\n{ports}</zone>\n"
        ),
    );
    std::fs::create_dir_all(root.join("home")).unwrap();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/sshd.service",
        wants.join("sshd.service"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/firewalld.service",
        wants.join("firewalld.service"),
    )
    .unwrap();
}

/// The root tree of an image that meets every check for
/// contrib/legacy/gpu-ubuntu1604.toml (Ubuntu 16.04, Docker, GPU, NFS, ufw).
pub fn good_ubuntu_tree(root: &Path) {
    let f = |p: &str, text: &str| write(&root.join(p), text);
    f(
        "etc/os-release",
        "NAME=\"Ubuntu\"\nVERSION=\"16.04.7 LTS (Xenial Xerus)\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"16.04\"\n",
    );
    f(
        "etc/waagent.conf",
        "Provisioning.Enabled=y\nResourceDisk.Format=y\nResourceDisk.Filesystem=ext4\nResourceDisk.MountPoint=/mnt\nOS.EnableRDMA=n\n",
    );
    f("usr/sbin/sshd", "ELF");
    f(
        "etc/ssh/sshd_config",
        "# Port 2222\nPort 22\nPermitRootLogin no\n",
    );
    f(
        "lib/systemd/system/ssh.service",
        "[Unit]\nDescription=OpenBSD Secure Shell server\n",
    );
    f(
        "lib/systemd/system/docker.service",
        "[Unit]\nDescription=Docker\n",
    );
    f("usr/bin/docker", "ELF");
    f(
        "etc/docker/daemon.json",
        "{\n  \"data-root\": \"/mnt/docker\"\n}\n",
    );
    f("etc/ufw/ufw.conf", "ENABLED=yes\nLOGLEVEL=low\n");
    f(
        "etc/default/ufw",
        "IPV6=yes\nDEFAULT_INPUT_POLICY=\"DROP\"\nDEFAULT_OUTPUT_POLICY=\"ACCEPT\"\n",
    );
    let mut rules = String::from("*filter\n");
    for port in [22, 6006, 29876, 29877] {
        rules.push_str(&format!("### tuple ### allow tcp {port} 0.0.0.0/0 any 0.0.0.0/0 in\n-A ufw-user-input -p tcp --dport {port} -j ACCEPT\n"));
    }
    rules.push_str("### tuple ### allow tcp 443 0.0.0.0/0 any 0.0.0.0/0 out\n-A ufw-user-output -p tcp --dport 443 -j ACCEPT\nCOMMIT\n");
    f("etc/ufw/user.rules", &rules);
    f(
        "etc/modprobe.d/blacklist-nouveau.conf",
        "blacklist nouveau\noptions nouveau modeset=0\n",
    );
    f("usr/bin/nvidia-smi", "ELF");
    f("usr/bin/nvidia-container-cli", "ELF");
    for k in ["4.15.0-1113-azure", "4.15.0-1114-azure"] {
        f(&format!("lib/modules/{k}/updates/dkms/nvidia.ko"), "module");
        f(
            &format!("lib/modules/{k}/kernel/drivers/net/dummy.ko"),
            "module",
        );
    }
    f(
        "var/lib/dpkg/status",
        "Package: linux-image-4.15.0-1113-azure\nStatus: hold ok installed\nArchitecture: amd64\nVersion: 4.15.0-1113.126\n\nPackage: linux-image-4.15.0-1114-azure\nStatus: hold ok installed\nArchitecture: amd64\nVersion: 4.15.0-1114.127\n\nPackage: jq\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.5+dfsg-2\n",
    );
    f("sbin/mount.nfs4", "ELF");
    std::fs::create_dir_all(root.join("home")).unwrap();
    std::fs::create_dir_all(root.join("etc/systemd/system/multi-user.target.wants")).unwrap();
    std::os::unix::fs::symlink(
        "/lib/systemd/system/ssh.service",
        root.join("etc/systemd/system/multi-user.target.wants/ssh.service"),
    )
    .unwrap();
}

/// What goes into the root partition.
pub enum RootFs<'a> {
    Ext4 {
        tree: &'a Path,
        dirty_journal: bool,
    },
    /// An XFS root, empty or filled from a tree (mkfs.xfs -p with a
    /// prototype file: owners root, modes and symlinks as in the tree).
    Xfs {
        tree: Option<&'a Path>,
    },
}

/// mkfs.xfs's prototype file for `tree` (xfsprogs' mkfs.xfs(8), "-p"): a
/// line per entry, `name mode uid gid [source|target]`, `$` closing a directory.
pub fn xfs_protofile(tree: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    fn walk(dir: &Path, out: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.push_str(&format!("{name} l--777 0 0 {}\n", target.display()));
            } else if meta.is_dir() {
                out.push_str(&format!("{name} d--{mode:03o} 0 0\n"));
                walk(&path, out);
                out.push_str("$\n");
            } else {
                out.push_str(&format!("{name} ---{mode:03o} 0 0 {}\n", path.display()));
            }
        }
    }
    let mut out = String::from("/dev/null\n0 0\nd--755 0 0\n");
    walk(tree, &mut out);
    out.push_str("$\n");
    out
}

/// A real disk image: partition table by sfdisk, filesystem by mkfs (under
/// fakeroot, so files belong to root), fixed VHD by qemu-img. `extra_bytes`
/// makes the virtual size deliberately not a whole number of MiB.
pub fn disk_image(
    dir: &Path,
    name: &str,
    layout: Layout,
    root: RootFs<'_>,
    extra_bytes: u64,
) -> PathBuf {
    const MIB: u64 = 1024 * 1024;
    let (root_mib, total_mib) = match root {
        RootFs::Ext4 { .. } => (48, 64),
        RootFs::Xfs { .. } => (304, 320),
    };
    let raw = dir.join(format!("{name}.raw"));
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(total_mib * MIB + extra_bytes).unwrap();
    drop(f);
    let (script, root_start) = match layout {
        Layout::Mbr => (
            format!(
                "label: dos\nstart=2048, size={}, type=83\n",
                root_mib * 2048
            ),
            2048u64,
        ),
        Layout::Gpt => (
            format!(
                "label: gpt\nstart=2048, size=16384, type=U, name=UEFI\nstart=18432, size={}, type=L, name=cloudimg-rootfs\n",
                root_mib * 2048
            ),
            18432u64,
        ),
    };
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("--quiet")
        .arg(&raw)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().expect("sfdisk (package fdisk)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");

    let fs = dir.join(format!("{name}.fs"));
    match root {
        RootFs::Ext4 {
            tree,
            dirty_journal,
        } => {
            let r = run(Command::new("fakeroot")
                .args(["mkfs.ext4", "-q", "-F", "-L", "cloudimg-rootfs", "-d"])
                .arg(tree)
                .arg(&fs)
                .arg(format!("{root_mib}M")));
            assert_eq!(r.code, 0, "mkfs.ext4: {}", r.all());
            if dirty_journal {
                let r = run(Command::new("debugfs")
                    .args(["-w", "-R", "feature needs_recovery"])
                    .arg(&fs));
                assert_eq!(r.code, 0, "debugfs: {}", r.all());
            }
        }
        RootFs::Xfs { tree } => {
            std::fs::File::create(&fs)
                .unwrap()
                .set_len(root_mib * MIB)
                .unwrap();
            let mut mkfs = Command::new("mkfs.xfs");
            mkfs.args(["-q", "-f"]);
            if let Some(tree) = tree {
                let proto = dir.join(format!("{name}.proto"));
                std::fs::write(&proto, xfs_protofile(tree)).unwrap();
                mkfs.arg("-p").arg(proto);
            }
            let r = run(mkfs.arg(&fs));
            assert_eq!(r.code, 0, "mkfs.xfs (package xfsprogs): {}", r.all());
        }
    }
    let r = run(Command::new("dd")
        .arg(format!("if={}", fs.display()))
        .arg(format!("of={}", raw.display()))
        .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
        .arg(format!("seek={}", root_start * 512 / MIB)));
    assert_eq!(r.code, 0, "dd: {}", r.all());
    std::fs::remove_file(&fs).unwrap();
    let vhd = dir.join(format!("{name}.vhd"));
    raw_to_fixed_vhd(&raw, &vhd);
    std::fs::remove_file(&raw).unwrap();
    vhd
}

/// `qemu-img convert` to a fixed VHD with the size kept exact (force_size=on),
/// as Azure needs.
pub fn raw_to_fixed_vhd(raw: &Path, vhd: &Path) {
    let r = run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed,force_size=on",
        ])
        .arg(raw)
        .arg(vhd));
    assert_eq!(r.code, 0, "qemu-img: {}", r.all());
}

/// Writes `bytes` at `offset` of the file at `path` (a damaged fixture).
pub fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// An RPM header blob as rpm's headerExport lays one out in the database:
/// NAME, VERSION, RELEASE, ARCH strings, then `filler` bytes of a file list
/// (tag 1117, BASENAMES) standing for the rest of a real header.
pub fn rpm_header(name: &str, version: &str, release: &str, arch: &str, filler: usize) -> Vec<u8> {
    let strings = [
        (1000u32, name),
        (1001, version),
        (1002, release),
        (1022, arch),
    ];
    let mut index = Vec::new();
    let mut data = Vec::new();
    let entry = |tag: u32, bytes: &[u8], index: &mut Vec<u8>, data: &mut Vec<u8>| {
        index.extend(tag.to_be_bytes());
        index.extend(if tag == 1117 { 8u32 } else { 6 }.to_be_bytes());
        index.extend((data.len() as u32).to_be_bytes());
        index.extend(1u32.to_be_bytes());
        data.extend(bytes);
        data.push(0);
    };
    for (tag, text) in strings {
        entry(tag, text.as_bytes(), &mut index, &mut data);
    }
    if filler > 0 {
        entry(1117, &vec![b'f'; filler], &mut index, &mut data);
    }
    let mut out = Vec::new();
    out.extend(((index.len() / 16) as u32).to_be_bytes());
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(index);
    out.extend(data);
    out
}
