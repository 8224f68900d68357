//! The local builder's host side: what must be true of this machine before
//! Packer runs the rendered steps (`templates/local/*.sh.tera`), and the
//! clean-up of a failed build's work directory.
//!
//! The steps themselves are templates, like every provisioning script, so a
//! user can override any of them; this module only refuses early what would
//! fail late (a missing tool after a four-minute root, no root privileges).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the local builder needs {missing}")]
    Tools { missing: String, packages: String },
    #[error(
        "the local builder needs root: it runs the scripts in a chroot with its own mount and PID namespaces, and writes root-owned files into the image"
    )]
    NotRoot,
}

impl crate::util::Hint for LocalError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            LocalError::Tools { packages, .. } => format!(
                "apt-get install {packages} (Debian/Ubuntu), or build with builder = \"azure-arm\""
            ),
            LocalError::NotRoot => {
                "run imgforge as root (no sudo is assumed), or build with builder = \"azure-arm\""
                    .into()
            }
        })
    }
}

/// Host tools the steps run, with the Debian package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("unshare", "util-linux"),
    ("chroot", "coreutils"),
    ("sfdisk", "fdisk"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
    ("qemu-img", "qemu-utils"),
];

/// What the boot check runs (only needed when it is on).
const BOOT_TOOLS: &[(&str, &str)] = &[("qemu-system-x86_64", "qemu-system-x86")];

/// What a build from a base image runs instead of the mmdebstrap steps:
/// QEMU under Packer, the provisioning CD and key (`packer::base`).
const BASE_TOOLS: &[(&str, &str)] = &[
    ("qemu-img", "qemu-utils"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("xorriso", "xorriso"),
    ("ssh-keygen", "openssh-client"),
];

/// Every missing tool at once, then root.
pub fn preflight(boot_check: bool, uefi: bool, from_base: bool) -> Result<(), LocalError> {
    let mut missing = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    let wanted = if from_base { BASE_TOOLS } else { TOOLS }
        .iter()
        .chain(if boot_check { BOOT_TOOLS } else { &[] });
    for (tool, package) in wanted {
        if which::which(tool).is_err() {
            missing.push(*tool);
            if !packages.contains(package) {
                packages.push(package);
            }
        }
    }
    if boot_check
        && uefi
        && !Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file()
        && !Path::new("/usr/share/OVMF/OVMF_CODE.fd").is_file()
    {
        missing.push("OVMF (UEFI firmware)");
        packages.push("ovmf");
    }
    if !missing.is_empty() {
        return Err(LocalError::Tools {
            missing: missing.join(", "),
            packages: packages.join(" "),
        });
    }
    // A build from a base image runs QEMU as any user: no chroot, no mount.
    // SAFETY: geteuid has no preconditions.
    if !from_base && unsafe { libc::geteuid() } != 0 {
        return Err(LocalError::NotRoot);
    }
    Ok(())
}

/// After a failed or cancelled local build: the unpacked root and the raw
/// disk, or the base image's copies (a GiB or more each) go; the step logs
/// and the stand-ins' record stay for reading.
pub fn clean_work(build_dir: &Path) -> Option<String> {
    let work = build_dir.join("work");
    // Only the build's own directory: a `work` that is a link (planted in
    // the build directory) is not followed into whatever it names.
    if !std::fs::symlink_metadata(&work).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    let mut removed = Vec::new();
    for name in [
        "root",
        "disk.raw",
        "tmp",
        "base-root.tar",
        // A build from a base image (`packer::base`).
        "vm",
        "base.qcow2",
        "base.vhd",
        "base.download",
        "base.partial",
        "base.unpacked0",
        "base.unpacked1",
        "base.unpacked2",
        "base.unpacked0.partial",
        "base.unpacked1.partial",
        "base.unpacked2.partial",
        // The build VM's key and CD: that VM is gone.
        "provision/id_ed25519",
        "provision/id_ed25519.pub",
        "provision/provisioning.iso",
    ] {
        let p = work.join(name);
        // A name under a subdirectory: only through a real directory.
        if let Some(dir) = Path::new(name)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            && !std::fs::symlink_metadata(work.join(dir)).is_ok_and(|m| m.is_dir())
        {
            continue;
        }
        let gone = match std::fs::symlink_metadata(&p) {
            // Never across a file system boundary (a mount left in the root).
            Ok(m) if m.is_dir() => crate::util::fsutil::remove_tree(&p).is_ok(),
            Ok(_) => std::fs::remove_file(&p).is_ok(),
            Err(_) => false,
        };
        if gone {
            removed.push(p.display().to_string());
        }
    }
    (!removed.is_empty()).then(|| format!("removed {}", removed.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_a_failed_build_follows_no_link_planted_in_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(elsewhere.join("root")).unwrap();
        std::fs::write(elsewhere.join("root/keep"), "x").unwrap();
        std::fs::write(elsewhere.join("disk.raw"), "x").unwrap();
        let build = tmp.path().join("build");
        std::fs::create_dir_all(&build).unwrap();
        // `work` itself a link: nothing is removed.
        std::os::unix::fs::symlink(&elsewhere, build.join("work")).unwrap();
        assert_eq!(clean_work(&build), None);
        assert!(elsewhere.join("root/keep").exists() && elsewhere.join("disk.raw").exists());
        // Links inside a real `work`: the links go, not what they name.
        std::fs::remove_file(build.join("work")).unwrap();
        std::fs::create_dir_all(build.join("work")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("root"), build.join("work/root")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("disk.raw"), build.join("work/disk.raw"))
            .unwrap();
        assert!(clean_work(&build).is_some());
        assert!(elsewhere.join("root/keep").exists() && elsewhere.join("disk.raw").exists());
        assert!(std::fs::symlink_metadata(build.join("work/root")).is_err());
    }

    #[test]
    fn cleaning_a_failed_base_image_build_removes_its_copies_and_key_not_its_record() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(work.join("vm")).unwrap();
        std::fs::create_dir_all(work.join("provision")).unwrap();
        for f in [
            "base.qcow2",
            "base.unpacked0.partial",
            "vm/disk.qcow2",
            "provision/id_ed25519",
            "provision/provisioning.iso",
            "provision/requests.jsonl",
            "provision/guest.json",
        ] {
            std::fs::write(work.join(f), "x").unwrap();
        }
        let said = clean_work(tmp.path()).unwrap();
        assert!(said.contains("base.qcow2"), "{said}");
        for gone in [
            "base.qcow2",
            "base.unpacked0.partial",
            "vm",
            "provision/id_ed25519",
            "provision/provisioning.iso",
        ] {
            assert!(!work.join(gone).exists(), "{gone}");
        }
        for kept in ["provision/requests.jsonl", "provision/guest.json"] {
            assert!(work.join(kept).exists(), "{kept}");
        }
        // `provision` a planted link: what it names is left alone.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("id_ed25519"), "mine").unwrap();
        std::fs::remove_dir_all(work.join("provision")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, work.join("provision")).unwrap();
        clean_work(tmp.path());
        assert!(elsewhere.join("id_ed25519").exists());
    }
}
