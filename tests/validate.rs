//! The offline validator on real disk images (sfdisk, mkfs.ext4 -d under
//! fakeroot, mkfs.xfs, qemu-img), locally and as blobs in Azurite.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MANIFEST: &str = "contrib/legacy/gpu-ubuntu1604.toml";

fn validate(image: &str, extra: &[&str]) -> (Run, serde_json::Value) {
    let r = run(imgforge()
        .env_remove("ARM_CLIENT_ID")
        .args(["validate", "--json", "--manifest"])
        .arg(repo().join(MANIFEST))
        .arg(image)
        .args(extra));
    let doc = serde_json::from_str(&r.stdout).unwrap_or(serde_json::Value::Null);
    (r, doc)
}

fn status<'a>(doc: &'a serde_json::Value, id: &str) -> &'a str {
    doc["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings: {doc}"))
        .iter()
        .find(|f| f["id"] == id)
        .and_then(|f| f["status"].as_str())
        .unwrap_or_else(|| panic!("no finding {id}: {doc:#}"))
}

fn failed(doc: &serde_json::Value) -> Vec<String> {
    doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "fail")
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

/// A good image, or one with `tweak` applied to its tree.
fn image(dir: &Path, name: &str, layout: Layout, tweak: impl FnOnce(&Path)) -> PathBuf {
    let tree = dir.join(format!("{name}-tree"));
    good_ubuntu_tree(&tree);
    tweak(&tree);
    disk_image(
        dir,
        name,
        layout,
        RootFs::Ext4 {
            tree: &tree,
            dirty_journal: false,
        },
        0,
    )
}

#[test]
fn good_images_pass_every_check_in_both_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    for layout in [Layout::Mbr, Layout::Gpt] {
        let vhd = image(tmp.path(), &format!("good-{layout:?}"), layout, |_| {});
        let (r, doc) = validate(vhd.to_str().unwrap(), &[]);
        assert_eq!(r.code, 0, "{layout:?}: {}\n{doc:#}", r.stderr);
        assert!(failed(&doc).is_empty(), "{layout:?}: {:?}", failed(&doc));
        for id in [
            "vhd.footer",
            "vhd.checksum",
            "vhd.fixed",
            "vhd.size",
            "vhd.length",
            "disk.partition-table",
            "disk.root",
            "disk.filesystem",
            "distro.os-release",
            "batch.waagent",
            "batch.resource-disk",
            "feature.ssh.boot",
            "feature.docker.boot",
            "feature.gpu.module",
            "feature.gpu.kernel-held",
            "feature.nfs.file",
            "batch.firewall",
            "batch.ssh-port",
            "hygiene.ssh-host-keys",
            "hygiene.provisioning-user",
            "hygiene.build-secrets",
        ] {
            assert_eq!(status(&doc, id), "pass", "{layout:?} {id}: {doc:#}");
        }
        let kind = if layout == Layout::Gpt { "GPT" } else { "MBR" };
        let table = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "disk.partition-table")
            .unwrap();
        assert!(
            table["message"].as_str().unwrap().starts_with(kind),
            "{table}"
        );
        // A few hundred KiB of a 64 MiB image, not the image.
        let read = doc["read"]["bytes"].as_u64().unwrap();
        assert!(read < 4 * 1024 * 1024, "read {read} bytes");
    }
}

#[test]
fn each_broken_variant_fails_its_own_check() {
    let tmp = tempfile::tempdir().unwrap();
    type Tweak = Box<dyn FnOnce(&Path)>;
    let cases: Vec<(&str, Tweak, &str)> = vec![
        (
            "docker-at-boot",
            Box::new(|t: &Path| {
                std::os::unix::fs::symlink(
                    "/lib/systemd/system/docker.service",
                    t.join("etc/systemd/system/multi-user.target.wants/docker.service"),
                )
                .unwrap()
            }),
            "feature.docker.boot",
        ),
        (
            "mount-point",
            Box::new(|t: &Path| {
                let p = t.join("etc/waagent.conf");
                let s = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("MountPoint=/mnt", "MountPoint=/mnt/scratch");
                std::fs::write(p, s).unwrap();
            }),
            "batch.resource-disk",
        ),
        (
            "ufw-deny-29876",
            Box::new(|t: &Path| {
                let p = t.join("etc/ufw/user.rules");
                let s: String = std::fs::read_to_string(&p)
                    .unwrap()
                    .lines()
                    .filter(|l| !l.contains("29876"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(p, s).unwrap();
            }),
            "batch.firewall",
        ),
        (
            "iptables-drop-without-29877",
            Box::new(|t: &Path| {
                write(&t.join("etc/ufw/ufw.conf"), "ENABLED=no\n");
                write(
                    &t.join("etc/iptables/rules.v4"),
                    "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n-A INPUT -p tcp -m tcp --dport 29876 -j ACCEPT\nCOMMIT\n",
                );
            }),
            "batch.firewall",
        ),
        (
            "no-nvidia-module",
            Box::new(|t: &Path| {
                std::fs::remove_file(t.join("lib/modules/4.15.0-1114-azure/updates/dkms/nvidia.ko"))
                    .unwrap()
            }),
            "feature.gpu.module",
        ),
        (
            "ssh-host-keys",
            Box::new(|t: &Path| {
                write(
                    &t.join("etc/ssh/ssh_host_ed25519_key"),
                    "-----BEGIN OPENSSH PRIVATE KEY-----\n",
                )
            }),
            "hygiene.ssh-host-keys",
        ),
        (
            "leftover-user",
            Box::new(|t: &Path| write(&t.join("home/packer/.bash_history"), "sudo reboot\n")),
            "hygiene.provisioning-user",
        ),
        (
            "leaked-secret",
            Box::new(|t: &Path| {
                write(
                    &t.join("etc/environment"),
                    &format!("ARM_CLIENT_SECRET={CANARY}\n"),
                )
            }),
            "hygiene.build-secrets",
        ),
        (
            // The same secret base64-encoded: found too (the validator looks
            // for every form `redact` masks).
            "leaked-secret-base64",
            Box::new(|t: &Path| {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(CANARY);
                write(
                    &t.join("etc/profile.d/azure.sh"),
                    &format!("export ARM_CLIENT_SECRET=$(echo {b64} | base64 -d)\n"),
                )
            }),
            "hygiene.build-secrets",
        ),
        (
            "wrong-distro",
            Box::new(|t: &Path| {
                write(
                    &t.join("etc/os-release"),
                    "ID=ubuntu\nVERSION_ID=\"18.04\"\n",
                )
            }),
            "distro.os-release",
        ),
    ];
    for (name, tweak, check) in cases {
        let vhd = image(tmp.path(), name, Layout::Mbr, tweak);
        let (r, doc) = validate(vhd.to_str().unwrap(), &[]);
        assert_eq!(r.code, 1, "{name}: {}", r.all());
        assert_eq!(failed(&doc), vec![check.to_string()], "{name}: {doc:#}");
        let f = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == check)
            .unwrap();
        assert!(
            f["hint"].is_string() && f["evidence"].is_string(),
            "{name}: {f}"
        );
        assert!(!r.all().contains(CANARY), "{name}: the secret was printed");
    }
}

#[test]
fn container_problems_are_reported_from_the_footer() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    good_ubuntu_tree(&tree);

    // Not a whole number of MiB.
    let odd = disk_image(
        tmp.path(),
        "odd",
        Layout::Mbr,
        RootFs::Ext4 {
            tree: &tree,
            dirty_journal: false,
        },
        1536,
    );
    let (r, doc) = validate(odd.to_str().unwrap(), &[]);
    assert_eq!(r.code, 1);
    assert_eq!(failed(&doc), vec!["vhd.size"], "{doc:#}");

    // A corrupted footer checksum (one byte of the footer's UUID flipped).
    let good = disk_image(
        tmp.path(),
        "good",
        Layout::Mbr,
        RootFs::Ext4 {
            tree: &tree,
            dirty_journal: false,
        },
        0,
    );
    let mut bytes = std::fs::read(&good).unwrap();
    let at = bytes.len() - 512 + 70;
    bytes[at] ^= 0xFF;
    let corrupt = tmp.path().join("corrupt.vhd");
    std::fs::write(&corrupt, &bytes).unwrap();
    let (r, doc) = validate(corrupt.to_str().unwrap(), &[]);
    assert_eq!(r.code, 1);
    assert_eq!(failed(&doc), vec!["vhd.checksum"], "{doc:#}");

    // A dynamic VHD: not what Azure takes, and its data is not laid out raw.
    let dynamic = tmp.path().join("dynamic.vhd");
    let q = run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "vpc",
            "-O",
            "vpc",
            "-o",
            "subformat=dynamic",
        ])
        .arg(&good)
        .arg(&dynamic));
    assert_eq!(q.code, 0, "{}", q.all());
    let (r, doc) = validate(dynamic.to_str().unwrap(), &[]);
    assert_eq!(r.code, 1);
    assert!(failed(&doc).contains(&"vhd.fixed".to_string()), "{doc:#}");
    assert_eq!(status(&doc, "disk.partition-table"), "skip");
}

#[test]
fn an_empty_xfs_root_fails_its_file_checks_never_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let vhd = disk_image(
        tmp.path(),
        "xfs",
        Layout::Mbr,
        RootFs::Xfs { tree: None },
        0,
    );
    let (r, doc) = validate(vhd.to_str().unwrap(), &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_eq!(status(&doc, "disk.filesystem"), "pass", "{doc:#}");
    // Read, and found wanting: no os-release, no agent, no sshd.
    let failed = failed(&doc);
    assert!(
        failed.contains(&"distro.os-release".to_string()),
        "{failed:?}"
    );
    assert!(
        !failed.contains(&"validate.complete".to_string()),
        "{failed:?}"
    );
}

#[test]
fn a_dirty_journal_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    good_ubuntu_tree(&tree);
    let vhd = disk_image(
        tmp.path(),
        "dirty",
        Layout::Mbr,
        RootFs::Ext4 {
            tree: &tree,
            dirty_journal: true,
        },
        0,
    );
    let (_, doc) = validate(vhd.to_str().unwrap(), &[]);
    let s = status(&doc, "disk.filesystem");
    assert!(s == "warn" || s == "fail", "{doc:#}");
    let f = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "disk.filesystem")
        .unwrap();
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("not cleanly shut down"),
        "{f}"
    );
}

#[test]
fn a_blob_in_azurite_gives_the_same_report_as_the_local_file() {
    let az = Azurite::start(&["acct1"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = image(tmp.path(), "good", Layout::Gpt, |t| {
        std::fs::remove_file(t.join("lib/modules/4.15.0-1114-azure/updates/dkms/nvidia.ko"))
            .unwrap()
    });
    let url = az.url("acct1", "images", "good.vhd");
    az.oracle(&["create", &url, vhd.to_str().unwrap()]);

    let (local_run, local) = validate(vhd.to_str().unwrap(), &[]);
    let mut cmd = imgforge();
    cmd.env_remove("ARM_CLIENT_ID")
        .args(["validate", "--json", "--manifest"])
        .arg(repo().join(MANIFEST))
        .arg(&url);
    let remote_run = run(az.env(&mut cmd));
    assert_eq!(local_run.code, 1);
    assert_eq!(remote_run.code, 1, "{}", remote_run.all());
    let remote: serde_json::Value = serde_json::from_str(&remote_run.stdout).unwrap();
    let strip = |doc: &serde_json::Value| -> Vec<serde_json::Value> {
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| !f["id"].as_str().unwrap().starts_with("blob."))
            .map(|f| {
                let mut f = f.clone();
                // The footer's place names the subject.
                if f["id"].as_str().unwrap().starts_with("vhd.") {
                    f["evidence"] = serde_json::Value::Null;
                }
                f
            })
            .collect()
    };
    assert_eq!(strip(&local), strip(&remote));
    assert_eq!(status(&remote, "blob.type"), "pass");
    // Range reads through a 1 MiB cache: a handful of requests, not the image.
    let requests = remote["read"]["requests"].as_u64().unwrap();
    let bytes = remote["read"]["bytes"].as_u64().unwrap();
    assert!(requests <= 24, "{requests} range requests");
    assert!(
        bytes <= 24 * 1024 * 1024,
        "{bytes} bytes read of a 64 MiB image"
    );
}

#[test]
fn junit_and_unreadable_images() {
    let tmp = tempfile::tempdir().unwrap();
    let vhd = image(tmp.path(), "good", Layout::Mbr, |_| {});
    let junit = tmp.path().join("validate.xml");
    let (r, _) = validate(vhd.to_str().unwrap(), &["--junit", junit.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("name=\"feature.gpu.module\""), "{xml}");
    assert!(xml.contains("failures=\"0\""), "{xml}");

    let (r, _) = validate("/nonexistent/disk.vhd", &[]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("/nonexistent/disk.vhd"), "{}", r.stderr);
}

/// An AlmaLinux 8 tree for contrib/legacy/managed-image-almalinux8.toml: firewalld, not ufw.
#[test]
fn firewalld_images_are_checked_against_their_zone() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = repo().join("contrib/legacy/managed-image-almalinux8.toml");
    // AlmaLinux/RHEL roots are XFS; the same tree on ext4 gives the same report.
    for (name, ports, code, xfs) in [
        // The classic ports may be open or not: only what the plan opens
        // (22, the manifest's 8080) must be.
        ("open", &[29876u16, 29877, 8080][..], 0, false),
        ("closed", &[29876u16][..], 1, false),
        ("open-xfs", &[8080u16][..], 0, true),
        ("closed-xfs", &[29876u16][..], 1, true),
    ] {
        let tree = tmp.path().join(name);
        good_alma_tree(&tree, ports);
        let root = if xfs {
            RootFs::Xfs { tree: Some(&tree) }
        } else {
            RootFs::Ext4 {
                tree: &tree,
                dirty_journal: false,
            }
        };
        let vhd = disk_image(tmp.path(), name, Layout::Gpt, root, 0);
        let r = run(imgforge()
            .env_remove("ARM_CLIENT_ID")
            .args(["validate", "--json", "--manifest"])
            .arg(&manifest)
            .arg(&vhd));
        assert_eq!(r.code, code, "{name}: {}", r.all());
        let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let fs = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "disk.filesystem")
            .unwrap();
        assert_eq!(fs["status"], "pass", "{name}: {fs}");
        assert_eq!(
            fs["message"].as_str().unwrap().starts_with("XFS"),
            xfs,
            "{name}: {fs}"
        );
        if code == 0 {
            assert!(failed(&doc).is_empty(), "{doc:#}");
            // Read through the /etc/os-release link.
            assert_eq!(status(&doc, "distro.os-release"), "pass");
            assert_eq!(status(&doc, "feature.docker.boot"), "pass");
            assert_eq!(status(&doc, "batch.resource-disk"), "pass");
        } else {
            assert_eq!(failed(&doc), vec!["batch.firewall"], "{doc:#}");
            let fw = doc["findings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["id"] == "batch.firewall")
                .unwrap();
            assert!(fw["message"].as_str().unwrap().contains("8080"), "{fw}");
        }
    }
}

#[test]
fn windows_images_get_container_and_disk_checks_and_an_honest_skip() {
    let tmp = tempfile::tempdir().unwrap();
    let vhd = image(tmp.path(), "win", Layout::Gpt, |_| {});
    let r = run(imgforge()
        .env_remove("ARM_CLIENT_ID")
        .args(["validate", "--json", "--manifest"])
        .arg(repo().join("contrib/legacy/windows-2019.toml"))
        .arg(&vhd));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(status(&doc, "vhd.fixed"), "pass");
    assert_eq!(status(&doc, "disk.partition-table"), "pass");
    assert_eq!(status(&doc, "disk.filesystem"), "skip");
    assert!(
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| !f["id"].as_str().unwrap().starts_with("feature."))
    );
}

#[test]
fn persisted_iptables_rules_that_admit_the_plans_ports_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let vhd = image(tmp.path(), "iptables-ok", Layout::Mbr, |t: &Path| {
        write(&t.join("etc/ufw/ufw.conf"), "ENABLED=no\n");
        let mut rules = String::from("*filter\n:INPUT DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        // Batch's three and the manifest's TensorBoard port: the plan's ports,
        // which the firewall script opens (without 6006 the check names it).
        for port in [22, 29876, 29877, 6006] {
            rules.push_str(&format!(
                "-A INPUT -p tcp -m tcp --dport {port} -j ACCEPT\n"
            ));
        }
        rules.push_str("COMMIT\n");
        write(&t.join("etc/iptables/rules.v4"), &rules);
    });
    let (r, doc) = validate(vhd.to_str().unwrap(), &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(status(&doc, "batch.firewall"), "pass");
}

#[test]
fn an_image_whose_partition_table_cannot_be_read_never_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let good = image(tmp.path(), "good", Layout::Gpt, |_| {});
    let (r, _) = validate(good.to_str().unwrap(), &[]);
    assert_eq!(r.code, 0, "{}", r.all());

    // The GPT header's entry array LBA points past the end of the disk; the
    // header CRC is recomputed so only the array read fails.
    let bad = tmp.path().join("bad-array.vhd");
    std::fs::copy(&good, &bad).unwrap();
    let mut header = vec![0u8; 92];
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::open(&bad)
            .unwrap()
            .read_exact_at(&mut header, 512)
            .unwrap();
    }
    header[72..80].copy_from_slice(&(1u64 << 40).to_le_bytes());
    header[16..20].fill(0);
    let crc = crc32fast::hash(&header);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    poke(&bad, 512, &header);
    let (r, doc) = validate(bad.to_str().unwrap(), &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_eq!(status(&doc, "disk.partition-table"), "fail", "{doc:#}");

    // An MBR whose only partition runs past the end of the disk.
    let tree = tmp.path().join("t");
    good_ubuntu_tree(&tree);
    let mbr = disk_image(
        tmp.path(),
        "mbr",
        Layout::Mbr,
        RootFs::Ext4 {
            tree: &tree,
            dirty_journal: false,
        },
        0,
    );
    poke(&mbr, 446 + 12, &(1u32 << 30).to_le_bytes());
    let (r, doc) = validate(mbr.to_str().unwrap(), &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_eq!(status(&doc, "disk.partition-table"), "fail", "{doc:#}");
    let message = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "disk.partition-table")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("past the disk"), "{message}");
}

#[test]
fn four_bytes_of_xfs_magic_after_an_mbr_are_not_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("x.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(8 * 1024 * 1024).unwrap();
    drop(f);
    let mut mbr = vec![0u8; 512];
    mbr[446 + 4] = 0x83;
    mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&4096u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    poke(&raw, 0, &mbr);
    poke(&raw, 2048 * 512, b"XFSB");
    let vhd = tmp.path().join("x.vhd");
    raw_to_fixed_vhd(&raw, &vhd);
    let (r, doc) = validate(vhd.to_str().unwrap(), &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    // The magic alone is not a filesystem: XFS is read now, and this cannot be.
    assert_eq!(failed(&doc), ["disk.filesystem"], "{doc:#}");
    let fs = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "disk.filesystem")
        .unwrap();
    assert!(
        fs["message"]
            .as_str()
            .unwrap()
            .contains("XFS filesystem cannot be read"),
        "{fs}"
    );
}

#[test]
fn a_file_claiming_a_terabyte_is_read_only_as_far_as_a_check_needs() {
    let tmp = tempfile::tempdir().unwrap();
    // A sparse 1 TiB /etc/os-release and /etc/waagent.conf: the validator
    // must neither allocate by the inode's size nor read it all.
    let vhd = image(tmp.path(), "huge", Layout::Gpt, |t| {
        for f in ["etc/os-release", "etc/waagent.conf"] {
            std::fs::File::create(t.join(f))
                .unwrap()
                .set_len(1 << 40)
                .unwrap();
        }
    });
    let (r, doc) = validate(vhd.to_str().unwrap(), &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_eq!(status(&doc, "distro.os-release"), "fail");
    let read = doc["read"]["bytes"].as_u64().unwrap();
    assert!(read < 80 * 1024 * 1024, "read {read} bytes");
}

#[test]
fn other_image_formats_get_the_exact_conversion_command_and_it_works() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    good_ubuntu_tree(&tree);
    let good = disk_image(
        tmp.path(),
        "good",
        Layout::Mbr,
        RootFs::Ext4 {
            tree: &tree,
            dirty_journal: false,
        },
        0,
    );
    for (fmt, opts, name, says) in [
        ("qcow2", "", "qcow2 image", "-f qcow2"),
        ("vmdk", "", "VMDK image", "-f vmdk"),
        ("vhdx", "", "VHDX image", "-f vhdx"),
        (
            "vpc",
            "subformat=dynamic,force_size=on",
            "dynamic (or differencing) VHD",
            "-f vpc",
        ),
        ("raw", "", "", "-f raw"),
    ] {
        let dir = tmp.path().join(format!("as-{fmt}"));
        std::fs::create_dir_all(&dir).unwrap();
        let ext = if fmt == "vpc" { "vhd" } else { fmt };
        let input = dir.join(format!("my disk.{ext}"));
        let mut cmd = Command::new("qemu-img");
        cmd.args(["convert", "-f", "vpc", "-O", fmt]);
        if !opts.is_empty() {
            cmd.args(["-o", opts]);
        }
        let q = run(cmd.arg(&good).arg(&input));
        assert_eq!(q.code, 0, "{}", q.all());

        let (r, doc) = validate(input.to_str().unwrap(), &[]);
        assert_eq!(r.code, 1, "{fmt}: {}", r.all());
        let findings = doc["findings"].as_array().unwrap();
        if !name.is_empty() {
            let format = findings
                .iter()
                .find(|f| f["id"] == "vhd.format")
                .unwrap_or_else(|| panic!("{fmt}: {doc:#}"));
            assert_eq!(
                format["message"],
                format!("the file is a {name}, not a fixed VHD"),
                "{fmt}"
            );
        }
        // The hint is one command with the user's own (quoted) file names…
        let hint = findings
            .iter()
            .find(|f| f["status"] == "fail")
            .and_then(|f| f["hint"].as_str())
            .unwrap()
            .to_string();
        let out_name = if fmt == "vpc" {
            "my disk-fixed.vhd"
        } else {
            "my disk.vhd"
        };
        let want = format!(
            "qemu-img convert {says} -O vpc -o subformat=fixed,force_size=on '{}' '{}'",
            input.display(),
            dir.join(out_name).display()
        );
        assert_eq!(hint, want, "{fmt}");
        // …and running it gives a VHD that passes.
        let ran = run(Command::new("sh").arg("-c").arg(&hint));
        assert_eq!(ran.code, 0, "{hint}: {}", ran.all());
        let (r, doc) = validate(dir.join(out_name).to_str().unwrap(), &[]);
        assert_eq!(r.code, 0, "{fmt} converted: {}", failed(&doc).join(", "));
    }
}

#[test]
fn an_xfs_root_in_azurite_gives_the_same_report_as_the_local_file() {
    let az = Azurite::start(&["acct1"]);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = repo().join("contrib/legacy/managed-image-almalinux8.toml");
    let tree = tmp.path().join("tree");
    good_alma_tree(&tree, &[29876, 29877, 8080]);
    // A host key left behind: one failure, found through range reads too.
    write(&tree.join("etc/ssh/ssh_host_ed25519_key"), "KEY");
    let vhd = disk_image(
        tmp.path(),
        "alma",
        Layout::Gpt,
        RootFs::Xfs { tree: Some(&tree) },
        0,
    );
    let url = az.url("acct1", "images", "alma.vhd");
    az.oracle(&["create", &url, vhd.to_str().unwrap()]);
    let check = |subject: &std::ffi::OsStr| {
        let mut cmd = imgforge();
        cmd.env_remove("ARM_CLIENT_ID")
            .args(["validate", "--json", "--manifest"])
            .arg(&manifest)
            .arg(subject);
        let r = run(az.env(&mut cmd));
        assert_eq!(r.code, 1, "{}", r.all());
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()
    };
    let local = check(vhd.as_os_str());
    let remote = check(std::ffi::OsStr::new(&url));
    assert_eq!(failed(&local), ["hygiene.ssh-host-keys"], "{local:#}");
    let ids = |doc: &serde_json::Value| -> Vec<(String, String)> {
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| !f["id"].as_str().unwrap().starts_with("blob."))
            .map(|f| {
                (
                    f["id"].as_str().unwrap().into(),
                    f["status"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert_eq!(ids(&local), ids(&remote));
    // A 320 MiB image read through a 1 MiB cache: a few MiB, not the image.
    let bytes = remote["read"]["bytes"].as_u64().unwrap();
    assert!(bytes <= 24 * 1024 * 1024, "{bytes} bytes read");
}

/// `inspect` reads through the validator's layers: a real ext4 disk with a
/// dpkg database is listed; a damaged database is an error naming its line,
/// never a partial package list or SBOM; a disk with no root says how far it got.
#[test]
fn inspect_lists_what_dpkg_recorded_and_never_half_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let status = "Package: jq\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.6-2.1\n\nPackage: docker.io\nStatus: install ok installed\nArchitecture: amd64\nVersion: 20.10.24+dfsg1-1+b3\nSource: docker.io (20.10.24+dfsg1-1)\n";
    let good = image(tmp.path(), "inspect-good", Layout::Gpt, |t| {
        write(&t.join("var/lib/dpkg/status"), status);
    });
    let r = run(imgforge().args(["inspect", "--json"]).arg(&good));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["os"]["id"], "ubuntu", "{doc:#}");
    let names: Vec<&str> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["docker.io", "jq"]);
    assert_eq!(doc["components"]["docker"], "20.10.24+dfsg1-1+b3");
    let r = run(imgforge()
        .args(["inspect", "--sbom", "cyclonedx"])
        .arg(&good));
    assert_eq!(r.code, 0, "{}", r.all());
    let bom: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(bom["specVersion"], "1.5");
    assert_eq!(
        bom["components"][1]["purl"],
        "pkg:deb/ubuntu/jq@1.6-2.1?arch=amd64&distro=ubuntu-16.04"
    );

    let damaged = image(tmp.path(), "inspect-damaged", Layout::Gpt, |t| {
        write(
            &t.join("var/lib/dpkg/status"),
            &format!(
                "{status}\nPackage: half\nStatus: install ok installed\nArchitecture: amd64\n"
            ),
        );
    });
    let r = run(imgforge().args(["inspect", "--sbom", "spdx"]).arg(&damaged));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("/var/lib/dpkg/status: line 12: package half has no Version"),
        "{}",
        r.stderr
    );
    // With --json the one document on stdout is the error, not a package list.
    let r = run(imgforge().args(["inspect", "--json"]).arg(&damaged));
    assert_eq!(r.code, 2, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(doc.get("packages").is_none(), "{doc:#}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 12"),
        "{doc:#}"
    );
    let no_root = sparse_vhd(tmp.path(), "blank", 16, &[]);
    let r = run(imgforge().arg("inspect").arg(&no_root));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("the root filesystem could not be read"),
        "{}",
        r.stderr
    );
    // A disk in another format says which, with the validator's exact fix.
    let qcow = tmp.path().join("disk.qcow2");
    assert!(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow)
            .arg("64M")
            .status()
            .unwrap()
            .success()
    );
    let r = run(imgforge().arg("inspect").arg(&qcow));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("the file is a qcow2 image"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("hint: qemu-img convert -f qcow2 -O vpc"),
        "{}",
        r.stderr
    );
}

/// A blob is inspected through range reads and gives the local file's
/// facts; `diff` takes a blob on one side and the local file on the other.
#[test]
fn a_blob_in_azurite_inspects_as_the_local_file() {
    let az = Azurite::start(&["acct1"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = image(tmp.path(), "good", Layout::Gpt, |_| {});
    let url = az.url("acct1", "images", "good.vhd");
    az.oracle(&["create", &url, vhd.to_str().unwrap()]);
    let local = run(imgforge().args(["inspect", "--json"]).arg(&vhd));
    assert_eq!(local.code, 0, "{}", local.all());
    let mut cmd = imgforge();
    cmd.env_remove("ARM_CLIENT_ID")
        .args(["inspect", "--json", &url]);
    let remote = run(az.env(&mut cmd));
    assert_eq!(remote.code, 0, "{}", remote.all());
    let facts = |text: &str| {
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("subject");
        o.remove("read");
        v
    };
    assert_eq!(facts(&local.stdout), facts(&remote.stdout));
    assert_eq!(
        facts(&remote.stdout)["packages"].as_array().unwrap().len(),
        3
    );
    let read: serde_json::Value = serde_json::from_str(&remote.stdout).unwrap();
    assert!(read["read"]["requests"].as_u64().unwrap() <= 24, "{read:#}");
    let mut cmd = imgforge();
    cmd.env_remove("ARM_CLIENT_ID")
        .args(["diff", &url])
        .arg(&vhd);
    let d = run(az.env(&mut cmd));
    assert_eq!(d.code, 0, "{}", d.all());
    assert!(d.stdout.contains("no difference"), "{}", d.stdout);
}

/// `boot-check BLOB_URL`: only the written ranges are fetched (into a sparse
/// file that lives as long as the check), the same image boots as the local
/// file would, and the report names the blob without its SAS. The fixture
/// has no boot loader, so the boot fails at once with the console.
#[test]
fn a_blob_is_fetched_sparse_and_boot_checked_as_the_local_file() {
    let az = Azurite::start(&["acct1"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = image(tmp.path(), "good", Layout::Gpt, |_| {});
    let url = az.url("acct1", "images", "good.vhd");
    az.oracle(&["create", &url, vhd.to_str().unwrap()]);
    let logs = tmp.path().join("logs");
    let mut cmd = imgforge();
    cmd.env_remove("ARM_CLIENT_ID")
        .env("IMGFORGE_QEMU_ACCEL", "tcg")
        .env("TMPDIR", tmp.path())
        .args(["boot-check", "--json", "--timeout", "15", "--logs"])
        .arg(&logs)
        .arg(&url);
    let r = run(az.env(&mut cmd));
    assert_eq!(r.code, 1, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["subject"], url.split('?').next().unwrap(), "{doc:#}");
    let login = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "boot.bios.login")
        .unwrap();
    assert!(
        login["message"]
            .as_str()
            .unwrap()
            .contains("no kernel started"),
        "{login}"
    );
    // Fetched: fewer bytes than the disk's length, all of what was written.
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("Fetched"))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    eprintln!("{line}");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let len = std::fs::metadata(&vhd).unwrap().len();
    assert_eq!(numbers[1], len, "{line}");
    assert!(numbers[0] < len / 2, "{line}");
    // The sparse copy went with the check; the provisioning files stayed.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("imgforge-boot-image-")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(logs.join("boot-bios/cd/ovf-env.xml").is_file());
}

/// Both SBOM formats pass their own validators (spdx-tools for SPDX 2.3,
/// cyclonedx-python-lib's CycloneDX 1.5 JSON schema, strict), and those
/// validators refuse a damaged copy, so a pass means something.
#[test]
fn both_sboms_pass_their_formats_validators_and_damage_does_not() {
    let venv = std::env::var("IMGFORGE_SBOM_TOOLS")
        .unwrap_or_else(|_| "/var/cache/imgforge/sbom-tools".into());
    let python = Path::new(&venv).join("bin/python");
    assert!(
        python.is_file(),
        "{} missing: run contrib/install-deps.sh (it makes the SBOM validators' environment)",
        python.display()
    );
    let validate = |kind: &str, file: &Path| {
        run(Command::new(&python)
            .arg(repo().join("tests/sbom_validate.py"))
            .arg(kind)
            .arg(file))
    };
    let tmp = tempfile::tempdir().unwrap();
    let vhd = image(tmp.path(), "good", Layout::Gpt, |_| {});
    for (kind, damage) in [
        ("spdx", ("\"SPDXRef-DOCUMENT\"", "\"not an id\"")),
        ("cyclonedx", ("\"library\"", "\"no-such-type\"")),
    ] {
        let out = tmp.path().join(format!("sbom.{kind}.json"));
        let r = run(imgforge()
            .args(["inspect", "--sbom", kind, "-o"])
            .arg(&out)
            .arg(&vhd));
        assert_eq!(r.code, 0, "{}", r.all());
        let ok = validate(kind, &out);
        assert_eq!(ok.code, 0, "{kind}: {}", ok.all());
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains(damage.0), "{kind}: {text}");
        let bad = tmp.path().join(format!("bad.{kind}.json"));
        write(&bad, &text.replacen(damage.0, damage.1, 1));
        let refused = validate(kind, &bad);
        assert_eq!(refused.code, 1, "{kind}: {}", refused.all());
    }
}

/// A build from a base image reads the base as the validator does before
/// anything boots: packed (tar.gz of a raw disk, xz of a VHD) or fetched
/// from a blob, an Ubuntu file under an AlmaLinux manifest is refused with
/// exit 2, and the unpacked and fetched copies are removed.
#[test]
fn a_base_image_is_fetched_unpacked_and_refused_for_the_wrong_distro_before_it_boots() {
    let az = Azurite::start(&["acct1"]);
    let tmp = tempfile::tempdir().unwrap();
    let vhd = image(tmp.path(), "ubuntu", Layout::Gpt, |_| {});
    // Canonical's form: a disk in a tar.gz; another: an xz-compressed VHD.
    let raw = tmp.path().join("livecd.azure.raw");
    assert!(
        Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "raw"])
            .arg(&vhd)
            .arg(&raw)
            .status()
            .unwrap()
            .success()
    );
    write(&tmp.path().join("README"), "not a disk");
    assert!(
        Command::new("tar")
            .arg("-czSf")
            .arg(tmp.path().join("base.tar.gz"))
            .arg("-C")
            .arg(tmp.path())
            .args(["livecd.azure.raw", "README"])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "xz -T1 -0 -c {} > {}/base.vhd.xz",
                vhd.display(),
                tmp.path().display()
            ))
            .status()
            .unwrap()
            .success()
    );
    let url = az.url("acct1", "images", "ubuntu.vhd");
    az.oracle(&["create", &url, vhd.to_str().unwrap()]);

    for (base, said) in [
        ("base.tar.gz".to_string(), "Unpacking"),
        ("base.vhd.xz".to_string(), "Unpacking"),
        (url.clone(), "Fetched"),
    ] {
        let m = tmp.path().join("alma.toml");
        write(
            &m,
            &format!(
                "[image]\nname = \"a\"\nos = \"linux\"\ndistro = \"almalinux-9\"\n\n[build]\nbuilder = \"local\"\ntarget = \"vhd\"\n\n[build.local]\nbase_image = {base:?}\n"
            ),
        );
        let out = tmp.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        let mut cmd = imgforge();
        cmd.env("IMGFORGE_QEMU_ACCEL", "tcg")
            .arg("build")
            .arg(&m)
            .args(["--no-replicate", "--out"])
            .arg(&out);
        let r = run(az.env(&mut cmd));
        assert_eq!(r.code, 2, "{base}: {}", r.all());
        assert!(r.stderr.contains(said), "{base}: {}", r.stderr);
        assert!(
            r.stderr.contains("is ubuntu 16.04, but the manifest's image.distro is almalinux-9 (it must report ID=almalinux VERSION_ID=9)"),
            "{base}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("repo.almalinux.org"), "{}", r.stderr);
        let left: Vec<String> = std::fs::read_dir(out.join("work"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{base}: left in work/: {left:?}");
    }
}

/// Builds RPMs with Debian's rpmbuild and records them in an SQLite rpmdb
/// with Debian's rpm (4.18, `_db_backend sqlite`, as EL 9 keeps it) under
/// `tree`; returns what `rpm -qa` itself lists: name, [epoch:]version-release, arch.
fn rpm_database(work: &Path, tree: &Path) -> Vec<(String, String, String)> {
    let top = work.join("rpmbuild");
    let spec = work.join("probe.spec");
    write(
        &spec,
        "Name: imgforge-probe\nVersion: 1.2\nRelease: 3.el9\nEpoch: 2\nSummary: probe\nLicense: MIT\n\
         %description\nprobe\n\
         %package libs\nSummary: libs\n%description libs\nlibs\n\
         %files\n%files libs\n",
    );
    let other = work.join("other.spec");
    write(
        &other,
        "Name: zz-other\nVersion: 0.9~rc1\nRelease: 1.el9\nSummary: other\nLicense: MIT\nBuildArch: noarch\n\
         %description\nother\n%files\n",
    );
    let mut rpms = Vec::new();
    for s in [&spec, &other] {
        let r = run(Command::new("rpmbuild")
            .arg("-bb")
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg(s));
        assert_eq!(r.code, 0, "rpmbuild (Debian package rpm): {}", r.all());
    }
    for dir in ["x86_64", "noarch"] {
        for e in std::fs::read_dir(top.join("RPMS").join(dir)).unwrap() {
            rpms.push(e.unwrap().path());
        }
    }
    assert_eq!(rpms.len(), 3, "{rpms:?}");
    let db = tree.join("var/lib/rpm");
    std::fs::create_dir_all(&db).unwrap();
    let rpm = |args: &[&str]| {
        let mut c = Command::new("rpm");
        c.arg("--dbpath")
            .arg(&db)
            .args(["--define", "_db_backend sqlite"])
            .args(args);
        c
    };
    assert_eq!(run(&mut rpm(&["--initdb"])).code, 0);
    let r = run(rpm(&["-i", "--justdb", "--nodeps", "--noscripts"]).args(&rpms));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(db.join("rpmdb.sqlite").is_file());
    let q = run(&mut rpm(&[
        "-qa",
        "--qf",
        "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{ARCH}\\n",
    ]));
    assert_eq!(q.code, 0, "{}", q.all());
    let mut listed: Vec<(String, String, String)> = q
        .stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].into(), f[1].into(), f[2].into())
        })
        .collect();
    listed.sort();
    listed
}

/// EL 9's package database is SQLite: `inspect` lists exactly what `rpm
/// -qa` lists from the same database, on a real XFS disk, with `pkg:rpm`
/// package URLs (epoch as a qualifier); a damaged header row is an error
/// naming the row, never a shorter list; EL 8's Berkeley DB is said to be
/// unread, and there is no SBOM of it.
#[test]
fn inspect_lists_what_rpm_recorded_in_el9s_sqlite_database() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    write(
        &tree.join("usr/lib/os-release"),
        "NAME=\"AlmaLinux\"\nID=\"almalinux\"\nVERSION_ID=\"9.4\"\n",
    );
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", tree.join("etc/os-release")).unwrap();
    let oracle = rpm_database(tmp.path(), &tree);
    let vhd = disk_image(
        tmp.path(),
        "el9",
        Layout::Gpt,
        RootFs::Xfs { tree: Some(&tree) },
        0,
    );
    let r = run(imgforge().args(["inspect", "--json"]).arg(&vhd));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["package_db"], "rpm", "{doc:#}");
    let mut listed: Vec<(String, String, String)> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["version"].as_str().unwrap().into(),
                p["arch"].as_str().unwrap().into(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed, oracle);
    assert!(
        listed.contains(&(
            "imgforge-probe-libs".into(),
            "2:1.2-3.el9".into(),
            "x86_64".into()
        )),
        "{listed:?}"
    );
    let libs = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "imgforge-probe-libs")
        .unwrap();
    assert_eq!(libs["source"], "imgforge-probe");
    let r = run(imgforge()
        .args(["inspect", "--sbom", "cyclonedx"])
        .arg(&vhd));
    assert_eq!(r.code, 0, "{}", r.all());
    let bom: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let purls: Vec<&str> = bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["purl"].as_str())
        .collect();
    assert!(
        purls.contains(
            &"pkg:rpm/almalinux/imgforge-probe@1.2-3.el9?arch=x86_64&epoch=2&distro=almalinux-9.4"
        ) && purls
            .contains(&"pkg:rpm/almalinux/zz-other@0.9~rc1-1.el9?arch=noarch&distro=almalinux-9.4"),
        "{purls:?}"
    );

    // Both SBOM formats of an RPM image pass their own validators.
    let python = Path::new(
        &std::env::var("IMGFORGE_SBOM_TOOLS")
            .unwrap_or_else(|_| "/var/cache/imgforge/sbom-tools".into()),
    )
    .join("bin/python");
    for kind in ["spdx", "cyclonedx"] {
        let out = tmp.path().join(format!("el9.{kind}.json"));
        let r = run(imgforge()
            .args(["inspect", "--sbom", kind, "-o"])
            .arg(&out)
            .arg(&vhd));
        assert_eq!(r.code, 0, "{}", r.all());
        let v = run(Command::new(&python)
            .arg(repo().join("tests/sbom_validate.py"))
            .arg(kind)
            .arg(&out));
        assert_eq!(v.code, 0, "{kind}: {}", v.all());
    }

    // One header row damaged (cut short) in the image's database.
    let db = tree.join("var/lib/rpm/rpmdb.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute(
        "UPDATE Packages SET blob = substr(blob, 1, 40) WHERE hnum = 2",
        [],
    )
    .unwrap();
    drop(c);
    let damaged = disk_image(
        tmp.path(),
        "el9-damaged",
        Layout::Gpt,
        RootFs::Xfs { tree: Some(&tree) },
        0,
    );
    let r = run(imgforge().args(["inspect", "--sbom", "spdx"]).arg(&damaged));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("/var/lib/rpm/rpmdb.sqlite: package row 2: 40 bytes, but its index says"),
        "{}",
        r.stderr
    );

    // EL 8: Berkeley DB.
    std::fs::remove_dir_all(tree.join("var/lib/rpm")).unwrap();
    write(&tree.join("var/lib/rpm/Packages"), "\0\0\0\0\x61\x15\x06\0");
    let el8 = disk_image(
        tmp.path(),
        "el8",
        Layout::Gpt,
        RootFs::Xfs { tree: Some(&tree) },
        0,
    );
    let r = run(imgforge().args(["inspect", "--json"]).arg(&el8));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        doc["package_db"].as_str().unwrap().contains("needs libdb"),
        "{doc:#}"
    );
    let r = run(imgforge().args(["inspect", "--sbom", "spdx"]).arg(&el8));
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("no SBOM"), "{}", r.stderr);
}

/// An image in Azure (what an azure-arm build publishes) is inspected
/// through a temporary managed disk: made from the gallery version in its
/// resource group, read through the SAS `beginGetAccess` hands out (here a
/// read-only SAS of an Azurite blob holding the disk's bytes), then access
/// is revoked and the disk deleted — also when the reading fails.
#[test]
fn an_image_in_a_gallery_is_inspected_through_a_temporary_disk_that_is_removed() {
    let az = Azurite::start(&["mdimport"]);
    let tmp = tempfile::tempdir().unwrap();
    let status =
        "Package: jq\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.6-2.1\n";
    let vhd = image(tmp.path(), "in-azure", Layout::Gpt, |t| {
        write(&t.join("var/lib/dpkg/status"), status);
    });
    let url = az.url("mdimport", "disks", "abcd");
    az.oracle(&["create", &url, vhd.to_str().unwrap()]);
    let sas = az.oracle(&["sas", &url]);
    let version = format!(
        "/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/images-westus2/providers/Microsoft.Compute/galleries/imgforge_gallery/images/jq/versions/1.0.0"
    );
    let start = |sas: &str| {
        let arm = ArmReplay::start_with(
            ArmExpect::env_principal(),
            compute::Knobs {
                disk_sas: sas.to_string(),
                polls: 1,
                ..compute::Knobs::default()
            },
        );
        arm.compute.insert(
            &version,
            serde_json::json!({"location": "westus2", "properties": {}}),
        );
        arm
    };
    let inspect = |arm: &ArmReplay, id: &str, extra: &[&str]| {
        // No storage key: the disk is read through its SAS alone.
        run(imgforge()
            .env("AZURE_AUTHORITY_HOST", arm.endpoint())
            .env("IMGFORGE_ARM_ENDPOINT", arm.endpoint())
            .env("ARM_SUBSCRIPTION_ID", ARM_SUBSCRIPTION)
            .arg("inspect")
            .args(extra)
            .arg(id))
    };
    let disk_calls = |arm: &ArmReplay| -> Vec<String> {
        arm.request_lines()
            .into_iter()
            .filter(|l| l.contains("/disks/"))
            .map(|l| {
                let (method, rest) = l.split_once(' ').unwrap();
                let path = rest.split('?').next().unwrap();
                format!("{method} {}", path.rsplit("/disks/").next().unwrap())
            })
            .filter(|l| !l.starts_with("GET"))
            .collect()
    };

    let arm = start(&sas);
    let r = inspect(&arm, &version, &["--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["subject"], version.as_str());
    assert_eq!(doc["packages"][0]["name"], "jq", "{doc:#}");
    let local = run(imgforge().args(["inspect", "--json"]).arg(&vhd));
    let local: serde_json::Value = serde_json::from_str(&local.stdout).unwrap();
    assert_eq!(doc["packages"], local["packages"]);
    assert_eq!(doc["etc"], local["etc"]);
    let calls = disk_calls(&arm);
    let disk = calls[0].trim_start_matches("PUT ").to_string();
    assert!(disk.starts_with("imgforge-inspect-"), "{calls:?}");
    assert_eq!(
        calls,
        [
            format!("PUT {disk}"),
            format!("POST {disk}/beginGetAccess"),
            format!("POST {disk}/endGetAccess"),
            format!("DELETE {disk}"),
        ]
    );
    let disk_id = format!(
        "/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/images-westus2/providers/Microsoft.Compute/disks/{disk}"
    );
    assert!(arm.compute.resource(&disk_id).is_none(), "the disk is left");
    assert!(!r.all().contains(CANARY));
    assert!(!r.all().contains("sig="), "the disk's SAS was printed");

    // The disk's SAS leads nowhere (the reading fails): the disk still goes.
    let arm = start(&format!("{}-gone?{}", url, sas.split_once('?').unwrap().1));
    let r = inspect(&arm, &version, &["--sbom", "spdx"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let calls = disk_calls(&arm);
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls[3].starts_with("DELETE "), "{calls:?}");

    // No such version: nothing is made.
    let arm = start(&sas);
    let r = inspect(&arm, &version.replace("1.0.0", "9.9.9"), &[]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("the image does not exist"),
        "{}",
        r.stderr
    );
    assert!(disk_calls(&arm).is_empty());
    // Not an image id.
    let r = inspect(
        &arm,
        &format!(
            "/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/disks/x"
        ),
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("is not a gallery image version or managed image id"),
        "{}",
        r.stderr
    );
}
