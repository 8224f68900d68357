//! Validation and inspection benchmark: 30 GiB fixed VHDs (sparse, so cheap
//! to create) with an ext4 root (Ubuntu checks; a dpkg database of 2,500
//! packages, 300 files under /etc) and an XFS root (AlmaLinux 8 checks; an
//! SQLite rpmdb of 500 packages), each holding 6,000 kernel modules,
//! validated and inspected from the local file and from Azurite through range
//! reads, the two diffed; and the peak RSS of each local run. Baselines in
//! the same run: `virt-cat` of one file and `virt-inspector` of the whole
//! image (libguestfs boots an appliance VM), when installed.
//!
//!   cargo bench --bench validate

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use common::*;

const GIB: u64 = 1024 * 1024 * 1024;

/// A sparse 30 GiB raw disk with one MBR partition (type 0x83) from 1 MiB.
fn partitioned(raw: &std::path::Path) {
    use std::io::Write as _;
    std::fs::File::create(raw)
        .unwrap()
        .set_len(30 * GIB)
        .unwrap();
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(raw)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=83\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    good_ubuntu_tree(&tree);
    // A realistic module tree: thousands of files the checks must not walk.
    for k in ["4.15.0-1113-azure", "4.15.0-1114-azure"] {
        for i in 0..3000 {
            write(
                &tree.join(format!(
                    "lib/modules/{k}/kernel/drivers/misc/group{}/mod{i}.ko",
                    i % 50
                )),
                "module",
            );
        }
    }

    // What `inspect` reads: a dpkg database of Debian's size and /etc files.
    let mut status = String::new();
    for i in 0..2500 {
        status.push_str(&format!(
            "Package: pkg{i}\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\nSource: src{}\nVersion: 1.{i}-1\nDepends: libc6 (>= 2.36)\nDescription: package {i}\n {}\n\n",
            i / 3,
            "a long description line of a Debian package, as they are. ".repeat(12)
        ));
    }
    write(&tree.join("var/lib/dpkg/status"), &status);
    for i in 0..300 {
        write(
            &tree.join(format!("etc/conf{}/file{i}.conf", i % 20)),
            &format!("setting = {i}\n").repeat(40),
        );
    }

    let t = Instant::now();
    let raw = tmp.path().join("big.raw");
    partitioned(&raw);
    let fs_size = (30 * GIB - 1024 * 1024) / 1024;
    let r = run(Command::new("fakeroot")
        .args([
            "mkfs.ext4",
            "-q",
            "-F",
            "-E",
            "offset=1048576,lazy_itable_init=1,lazy_journal_init=1",
            "-d",
        ])
        .arg(&tree)
        .arg(&raw)
        .arg(format!("{fs_size}k")));
    assert_eq!(r.code, 0, "{}", r.all());
    let vhd = tmp.path().join("big.vhd");
    raw_to_fixed_vhd(&raw, &vhd);
    std::fs::remove_file(&raw).unwrap();
    let fixture_s = t.elapsed().as_secs_f64();

    // The XFS twin: an AlmaLinux tree with the same modules, mkfs.xfs -p on
    // a sparse 30 GiB file, laid into the disk at 1 MiB with a sparse dd.
    let t = Instant::now();
    let alma = tmp.path().join("alma");
    good_alma_tree(&alma, &[29876, 29877, 8080]);
    for k in ["4.18.0-425.el8.x86_64", "4.18.0-477.el8.x86_64"] {
        for i in 0..3000 {
            write(
                &alma.join(format!(
                    "lib/modules/{k}/kernel/drivers/misc/group{}/mod{i}.ko",
                    i % 50
                )),
                "module",
            );
        }
    }
    // EL 9's SQLite rpmdb with 500 packages of 20 KiB headers (~10 MiB).
    {
        let db = alma.join("var/lib/rpm/rpmdb.sqlite");
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL);",
        )
        .unwrap();
        for i in 0..500 {
            c.execute(
                "INSERT INTO Packages (blob) VALUES (?1)",
                [rpm_header(
                    &format!("pkg{i}"),
                    "1.0",
                    &format!("{i}.el9"),
                    "x86_64",
                    20 << 10,
                )],
            )
            .unwrap();
        }
    }
    let xraw = tmp.path().join("xfs.raw");
    partitioned(&xraw);
    let xfs = tmp.path().join("root.xfs");
    std::fs::File::create(&xfs)
        .unwrap()
        .set_len(30 * GIB - 1024 * 1024)
        .unwrap();
    let proto = tmp.path().join("root.proto");
    std::fs::write(&proto, xfs_protofile(&alma)).unwrap();
    let r = run(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-p"])
        .arg(&proto)
        .arg(&xfs));
    assert_eq!(r.code, 0, "{}", r.all());
    let r = run(Command::new("dd")
        .arg(format!("if={}", xfs.display()))
        .arg(format!("of={}", xraw.display()))
        .args([
            "bs=4M",
            "conv=notrunc,sparse",
            "status=none",
            "seek=1M",
            "oflag=seek_bytes",
        ]));
    assert_eq!(r.code, 0, "{}", r.all());
    std::fs::remove_file(&xfs).unwrap();
    let xvhd = tmp.path().join("xfs.vhd");
    raw_to_fixed_vhd(&xraw, &xvhd);
    std::fs::remove_file(&xraw).unwrap();
    let xfs_fixture_s = t.elapsed().as_secs_f64();

    let manifest = repo().join("contrib/legacy/gpu-ubuntu1604.toml");
    let alma_manifest = repo().join("contrib/legacy/managed-image-almalinux8.toml");
    let validate = |cmd: &mut Command| {
        let t = Instant::now();
        let r = run(cmd);
        let wall = t.elapsed().as_secs_f64();
        assert!(r.code == 0, "{}", r.all());
        let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        (
            wall,
            doc["read"]["bytes"].as_u64().unwrap(),
            doc["read"]["requests"].as_u64().unwrap(),
            doc["summary"].clone(),
        )
    };
    let local_of = |manifest: &std::path::Path, vhd: &std::path::Path| -> Vec<_> {
        (0..5)
            .map(|_| {
                validate(
                    imgforge()
                        .env_remove("ARM_CLIENT_ID")
                        .args(["validate", "--json", "--manifest"])
                        .arg(manifest)
                        .arg(vhd),
                )
            })
            .collect()
    };
    let local = local_of(&manifest, &vhd);
    let xlocal = local_of(&alma_manifest, &xvhd);
    // Peak RSS of one local validation of each (GNU time's %M, in KiB).
    let rss = |manifest: &std::path::Path, vhd: &std::path::Path| -> u64 {
        let (r, kib) = run_measured(
            imgforge()
                .env_remove("ARM_CLIENT_ID")
                .args(["validate", "--quiet", "--manifest"])
                .arg(manifest)
                .arg(vhd),
        );
        assert_eq!(r.code, 0, "{}", r.all());
        kib
    };
    let (rss_ext4, rss_xfs) = (rss(&manifest, &vhd), rss(&alma_manifest, &xvhd));

    let az = Azurite::start(&["bench"]);
    let t = Instant::now();
    let r = run(az
        .env(&mut imgforge())
        .env_remove("ARM_CLIENT_ID")
        .args(["upload", "--json", "--to", "bench"])
        .arg(&vhd));
    assert_eq!(r.code, 0, "{}", r.all());
    let upload_s = t.elapsed().as_secs_f64();
    let uploaded: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let url = az.url("bench", "images", "big.vhd");
    let r = run(az
        .env(&mut imgforge())
        .env_remove("ARM_CLIENT_ID")
        .args(["upload", "--json", "--to", "bench"])
        .arg(&xvhd));
    assert_eq!(r.code, 0, "{}", r.all());
    let xurl = az.url("bench", "images", "xfs.vhd");
    let remote_of = |manifest: &std::path::Path, url: &str| -> Vec<_> {
        (0..5)
            .map(|_| {
                let mut cmd = imgforge();
                cmd.env_remove("ARM_CLIENT_ID")
                    .args(["validate", "--json", "--manifest"])
                    .arg(manifest)
                    .arg(url);
                validate(az.env(&mut cmd))
            })
            .collect()
    };
    let remote = remote_of(&manifest, &url);
    let xremote = remote_of(&alma_manifest, &xurl);

    // inspect: local and blob, five runs each; one diff of the two images.
    let inspect = |cmd: &mut Command| {
        let t = Instant::now();
        let r = run(cmd);
        let wall = t.elapsed().as_secs_f64();
        assert!(r.code == 0, "{}", r.all());
        let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        (
            wall,
            doc["read"]["bytes"].as_u64().unwrap(),
            doc["read"]["requests"].as_u64().unwrap(),
            serde_json::json!(format!(
                "{} packages ({})",
                doc["packages"].as_array().unwrap().len(),
                doc["package_db"].as_str().unwrap()
            )),
        )
    };
    let inspect_local = |vhd: &std::path::Path| -> Vec<_> {
        (0..5)
            .map(|_| inspect(imgforge().args(["inspect", "--json"]).arg(vhd)))
            .collect()
    };
    let inspect_remote = |url: &str| -> Vec<_> {
        (0..5)
            .map(|_| {
                let mut cmd = imgforge();
                cmd.env_remove("ARM_CLIENT_ID")
                    .args(["inspect", "--json"])
                    .arg(url);
                inspect(az.env(&mut cmd))
            })
            .collect()
    };
    let ilocal = inspect_local(&vhd);
    let iremote = inspect_remote(&url);
    let ixlocal = inspect_local(&xvhd);
    let ixremote = inspect_remote(&xurl);
    let inspect_rss = |vhd: &std::path::Path| -> u64 {
        let (r, kib) = run_measured(imgforge().args(["inspect", "--json"]).arg(vhd));
        assert_eq!(r.code, 0, "{}", r.all());
        kib
    };
    let (irss_ext4, irss_xfs) = (inspect_rss(&vhd), inspect_rss(&xvhd));
    let t = Instant::now();
    let (r, diff_kib) = run_measured(imgforge().args(["diff", "--json"]).arg(&vhd).arg(&xvhd));
    let diff_s = t.elapsed().as_secs_f64();
    assert_eq!(r.code, 0, "{}", r.all());
    let virt_inspector = which::which("virt-inspector").ok().map(|bin| {
        let t = Instant::now();
        let r = run(Command::new(bin)
            .args(["--format=vpc", "-a"])
            .arg(&vhd)
            .env("LIBGUESTFS_BACKEND", "direct"));
        (
            t.elapsed().as_secs_f64(),
            r.code,
            r.stdout.matches("<application>").count(),
            r.stderr.lines().last().unwrap_or("").to_string(),
        )
    });

    let virt_cat = which::which("virt-cat").ok().map(|bin| {
        let t = Instant::now();
        let r = run(Command::new(bin)
            .args(["--format=vpc", "-a"])
            .arg(&vhd)
            .arg("/etc/os-release")
            .env("LIBGUESTFS_BACKEND", "direct"));
        (
            t.elapsed().as_secs_f64(),
            r.code,
            r.stderr.lines().last().unwrap_or("").to_string(),
        )
    });

    let median = |v: &[(f64, u64, u64, serde_json::Value)]| {
        let mut w: Vec<f64> = v.iter().map(|x| x.0).collect();
        w.sort_by(f64::total_cmp);
        (w[w.len() / 2], v[0].1, v[0].2)
    };
    let (lw, lb, lr) = median(&local);
    let (rw, rb, rr) = median(&remote);
    let (xlw, xlb, xlr) = median(&xlocal);
    let (xrw, xrb, xrr) = median(&xremote);
    println!(
        "validation benchmark: 30 GiB fixed VHD, ext4 root with 6,000 kernel modules, contrib/legacy/gpu-ubuntu1604.toml checks"
    );
    println!(
        "setup: fixture {fixture_s:.1} s; upload to Azurite {upload_s:.1} s ({} valid bytes of {})",
        uploaded["result"]["valid_bytes"], uploaded["result"]["source_length"]
    );
    println!("summary: {}", local[0].3);
    println!(
        "{:<34} {:>10} {:>14} {:>10}",
        "method", "median s", "bytes read", "requests"
    );
    println!(
        "{:<34} {lw:>10.3} {lb:>14} {lr:>10}",
        "imgforge validate, local file"
    );
    println!(
        "{:<34} {rw:>10.3} {rb:>14} {rr:>10}",
        "imgforge validate, blob (Azurite)"
    );
    println!(
        "{:<34} {xlw:>10.3} {xlb:>14} {xlr:>10}   ({:.1}x ext4)",
        "XFS root, local file",
        xlw / lw
    );
    println!(
        "{:<34} {xrw:>10.3} {xrb:>14} {xrr:>10}   ({:.1}x ext4)",
        "XFS root, blob (Azurite)",
        xrw / rw
    );
    println!(
        "XFS fixture {xfs_fixture_s:.1} s; XFS summary: {}",
        xlocal[0].3
    );
    let kib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    println!(
        "peak RSS of one local validation: ext4 {}, XFS {}",
        kib(rss_ext4),
        kib(rss_xfs)
    );
    let (ilw, ilb, ilr) = median(&ilocal);
    let (irw, irb, irr) = median(&iremote);
    let (ixlw, ixlb, ixlr) = median(&ixlocal);
    let (ixrw, ixrb, ixrr) = median(&ixremote);
    println!("inspect: ext4 {}, XFS {}", ilocal[0].3, ixlocal[0].3);
    println!(
        "{:<34} {ilw:>10.3} {ilb:>14} {ilr:>10}",
        "imgforge inspect, local file"
    );
    println!(
        "{:<34} {irw:>10.3} {irb:>14} {irr:>10}",
        "imgforge inspect, blob (Azurite)"
    );
    println!(
        "{:<34} {ixlw:>10.3} {ixlb:>14} {ixlr:>10}",
        "inspect XFS + rpmdb, local file"
    );
    println!(
        "{:<34} {ixrw:>10.3} {ixrb:>14} {ixrr:>10}",
        "inspect XFS + rpmdb, blob (Azurite)"
    );
    println!(
        "imgforge diff of the two images: {diff_s:.3} s, peak RSS {}; peak RSS of one local inspect: ext4 {}, XFS {}",
        kib(diff_kib),
        kib(irss_ext4),
        kib(irss_xfs)
    );
    match virt_inspector {
        Some((s, 0, apps, _)) => println!(
            "{:<34} {s:>10.3}   (baseline, {apps} applications; local inspect is {:.0}x faster)",
            "virt-inspector",
            s / ilw
        ),
        Some((s, code, _, err)) => {
            println!("virt-inspector failed after {s:.1} s (exit {code}): {err}")
        }
        None => println!(
            "virt-inspector: not installed (apt-get install libguestfs-tools linux-image-amd64); no baseline this run"
        ),
    }
    match virt_cat {
        Some((s, 0, _)) => println!(
            "{:<34} {s:>10.3}   (baseline; local is {:.0}x faster)",
            "virt-cat /etc/os-release",
            s / lw
        ),
        Some((s, code, err)) => println!("virt-cat failed after {s:.1} s (exit {code}): {err}"),
        None => println!(
            "virt-cat: not installed (apt-get install libguestfs-tools linux-image-amd64); no baseline this run"
        ),
    }
}
