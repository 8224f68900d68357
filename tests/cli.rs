//! The conveniences around the pipeline, run as a user runs them: help with
//! examples everywhere, completions and manual pages for every subcommand,
//! `--version`, `init` (whose output `plan` accepts), `catalog`, `clean`,
//! `--color`/`--quiet`, and errors as JSON when JSON was asked for.

mod common;

use common::*;

/// Every subcommand path, from the real `--help` output (not from a list kept here).
fn subcommands() -> Vec<Vec<String>> {
    fn walk(prefix: &[String], out: &mut Vec<Vec<String>>) {
        let r = run(imgforge().args(prefix).arg("--help"));
        assert_eq!(r.code, 0, "{prefix:?}: {}", r.all());
        let mut in_commands = false;
        for line in r.stdout.lines() {
            if line == "Commands:" {
                in_commands = true;
                continue;
            }
            if in_commands {
                if !line.starts_with("  ") {
                    break;
                }
                // A wrapped description continues further in.
                if line.starts_with("   ") {
                    continue;
                }
                let name = line.split_whitespace().next().unwrap_or("");
                if name.is_empty() || name == "help" {
                    continue;
                }
                let mut path = prefix.to_vec();
                path.push(name.to_string());
                out.push(path.clone());
                walk(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&[], &mut out);
    out
}

#[test]
fn every_command_has_help_with_examples() {
    let all = subcommands();
    assert!(all.len() >= 20, "{all:?}");
    for path in &all {
        let r = run(imgforge().args(path).arg("--help"));
        assert_eq!(r.code, 0, "{path:?}");
        let leaf = !r.stdout.contains("\nCommands:\n");
        if leaf {
            assert!(
                r.stdout.contains("Examples:"),
                "{path:?} --help has no examples:\n{}",
                r.stdout
            );
        }
    }
    // `build --help` names the variables it reads.
    let build = run(imgforge().args(["build", "--help"]));
    for v in [
        "ARM_CLIENT_ID",
        "ARM_CLIENT_SECRET",
        "ARM_SUBSCRIPTION_ID",
        "ARM_TENANT_ID",
        "IMGFORGE_PACKER",
    ] {
        assert!(build.stdout.contains(v), "{v}");
    }
    // `upload` takes no manifest, and its help no longer says it does.
    let upload = run(imgforge().args(["upload", "--help"]));
    assert!(
        !upload
            .stdout
            .contains("default: the manifest's [replicate] region]"),
        "{}",
        upload.stdout
    );
}

#[test]
fn completions_and_manual_pages_cover_every_subcommand() {
    let all = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let r = run(imgforge().args(["completions", shell]));
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        for path in &all {
            let name = path.last().unwrap();
            assert!(
                r.stdout.contains(name.as_str()),
                "{shell} completion lacks {name}"
            );
        }
    }
    let bash = run(imgforge().args(["completions", "bash"]));
    assert!(
        bash.stdout.contains("--allow-retired"),
        "flags are completed too"
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    let r = run(imgforge().args(["man", "--out"]).arg(&dir));
    assert_eq!(r.code, 0, "{}", r.all());
    for path in std::iter::once(vec![]).chain(all) {
        let page = dir.join(format!(
            "{}.1",
            std::iter::once("imgforge".to_string())
                .chain(path.iter().cloned())
                .collect::<Vec<_>>()
                .join("-")
        ));
        let text =
            std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{}",
            page.display()
        );
        assert!(
            text.len() > 300,
            "{} is {} bytes",
            page.display(),
            text.len()
        );
    }
    let top = run(imgforge().arg("man"));
    assert!(
        top.stdout.contains(".TH imgforge 1"),
        "{}",
        &top.stdout[..top.stdout.len().min(300)]
    );
}

#[test]
fn version_names_the_commit_and_the_packer_it_would_use() {
    let r = run(imgforge().arg("--version"));
    assert_eq!(r.code, 0, "{}", r.all());
    let first = r.stdout.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&format!("imgforge {} (git ", env!("CARGO_PKG_VERSION"))),
        "{first}"
    );
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .unwrap();
    if git.status.success() {
        let hash = String::from_utf8_lossy(&git.stdout).trim().to_string();
        assert!(
            first.contains(&format!("(git {hash})")),
            "{first} vs {hash}"
        );
    }
    assert!(r.stdout.contains("packer 1."), "{}", r.stdout);
    // A missing Packer is said, not an error.
    let r = run(imgforge()
        .env("IMGFORGE_PACKER", "/nonexistent/packer")
        .arg("-V"));
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("packer: not usable"), "{}", r.stdout);
}

#[test]
fn init_writes_manifests_that_plan_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog: serde_json::Value =
        serde_json::from_str(&run(imgforge().args(["catalog", "--json"])).stdout).unwrap();
    let distros: Vec<String> = catalog["distros"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_string())
        .collect();
    assert!(distros.len() >= 10, "{distros:?}");
    let mut cases: Vec<Vec<String>> = distros
        .iter()
        .map(|d| vec!["--distro".to_string(), d.clone()])
        .collect();
    for extra in [
        &["--gpu", "--nfs"][..],
        &["--target", "vhd", "--glusterfs", "server"],
        &["--target", "managed_image", "--rdma", "sriov"],
        &["--builder", "local", "--distro", "debian-12", "--gpu"],
        &[
            "--builder",
            "local",
            "--distro",
            "debian-12",
            "--target",
            "gallery",
        ],
    ] {
        cases.push(extra.iter().map(|s| s.to_string()).collect());
    }
    for (i, args) in cases.iter().enumerate() {
        let file = tmp.path().join(format!("m{i}.toml"));
        let r = run(imgforge().arg("init").arg(&file).args(args));
        assert_eq!(r.code, 0, "init {args:?}: {}", r.all());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("# A Batch image manifest written by `imgforge init`"));
        let plan = run(imgforge().arg("plan").arg(&file));
        assert_eq!(
            plan.code,
            0,
            "plan of init {args:?}:\n{text}\n{}",
            plan.all()
        );
    }
    // Every default leads to a pool Batch creates today: a gallery version,
    // local builds included (they stop before publishing with --no-publish).
    for (i, args) in cases.iter().enumerate() {
        let text = std::fs::read_to_string(tmp.path().join(format!("m{i}.toml"))).unwrap();
        let explicit = args.iter().any(|a| a == "--target");
        if !explicit {
            assert!(text.contains("target = \"gallery\""), "{args:?}:\n{text}");
        }
        assert!(!text.contains("29876"), "{args:?}:\n{text}");
    }
    // An existing file is not replaced without --force.
    let file = tmp.path().join("m0.toml");
    let r = run(imgforge().arg("init").arg(&file));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    // A combination the checks refuse is refused with their words, and nothing is written.
    let bad = tmp.path().join("bad.toml");
    let r =
        run(imgforge()
            .arg("init")
            .arg(&bad)
            .args(["--distro", "debian-12", "--rdma", "sriov"]));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("features.rdma"), "{}", r.stderr);
    assert!(!bad.exists());
    let r = run(imgforge().args(["init", "-", "--distro", "ubuntu-99.04"]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("possible values: ubuntu-16.04"),
        "{}",
        r.stderr
    );
    // --builder local alone is Debian 12 (the archive this machine reaches),
    // with Debian's docker.io, not Docker's repository; a printed manifest
    // does not suggest `plan -`.
    let r = run(imgforge().args(["init", "-", "--builder", "local"]));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("distro = \"debian-12\""), "{}", r.stdout);
    assert!(
        r.stdout.contains("docker = { source = \"distro\" }"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("plan -"), "{}", r.stdout);
    // --base-image: a local build of Ubuntu 24.04 (Batch's) from its Azure
    // image, the file as an absolute path; a missing one says where to get it.
    let base_dir = tmp.path().join("downloads");
    std::fs::create_dir_all(&base_dir).unwrap();
    let base = base_dir.join("noble-server-cloudimg-amd64-azure.vhd.tar.gz");
    let file = tmp.path().join("from-base.toml");
    let r = run(imgforge()
        .current_dir(&base_dir)
        .arg("init")
        .arg(&file)
        .args([
            "--base-image",
            "noble-server-cloudimg-amd64-azure.vhd.tar.gz",
        ]));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("build.local.base_image")
            && r.stderr.contains("cloud-images.ubuntu.com/noble/current/"),
        "{}",
        r.stderr
    );
    assert!(!file.exists());
    write(&base, "downloaded");
    let r = run(imgforge()
        .current_dir(&base_dir)
        .arg("init")
        .arg(&file)
        .args([
            "--base-image",
            "noble-server-cloudimg-amd64-azure.vhd.tar.gz",
        ]));
    assert_eq!(r.code, 0, "{}", r.all());
    let text = std::fs::read_to_string(&file).unwrap();
    for want in [
        "distro = \"ubuntu-24.04\"",
        "builder = \"local\"",
        &format!("base_image = \"{}\"", base.display()),
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    let plan = run(imgforge().arg("plan").arg(&file));
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("must report ID=ubuntu VERSION_ID=24.04"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("download.docker.com:443"),
        "{}",
        plan.stdout
    );
    let r = run(imgforge()
        .args(["init", "-", "--distro", "windows-2022", "--base-image"])
        .arg(&base));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("no Azure disk image of windows-2022"),
        "{}",
        r.stderr
    );
    // A distro mmdebstrap cannot make is built locally only from its
    // Azure disk image, and init says where that image comes from.
    let r = run(imgforge().args(["init", "-", "--distro", "rocky-9", "--builder", "local"]));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("cannot build rocky-9 from scratch")
            && r.stderr.contains(
                "give --base-image FILE (Rocky Linux's Azure image: https://dl.rockylinux.org/"
            ),
        "{}",
        r.stderr
    );
    // `--distro` completes the catalog's distros, not file names.
    let r = run(imgforge().args(["completions", "bash"]));
    assert!(
        r.stdout.contains("ubuntu-24.04") && r.stdout.contains("almalinux-9"),
        "bash completion has no distro list"
    );
}

#[test]
fn catalog_lists_distros_with_their_node_agents_and_features() {
    let r = run(imgforge().arg("catalog"));
    assert_eq!(r.code, 0, "{}", r.all());
    for want in [
        "ubuntu-16.04   linux    batch.node.ubuntu 16.04    retired 2021-05-21",
        "almalinux-9",
        "resf:rockylinux-x86_64:9-base (purchase plan resf/rockylinux-x86_64/9-base)",
        "glusterfs_server   60-glusterfs.sh  24007, 24008, 49152",
    ] {
        assert!(r.stdout.contains(want), "{want}:\n{}", r.stdout);
    }
}

/// A build directory as `build` leaves it, of image `image`, started
/// `hours` ago, with a sparse 64 MiB file holding 1 MiB of data.
fn fake_build(
    root: &std::path::Path,
    name: &str,
    image: &str,
    status: &str,
    hours: u64,
) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("output")).unwrap();
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(hours * 3600);
    write(
        &dir.join("build.json"),
        &serde_json::json!({
            "schema": 1, "image": image, "status": status,
            "started_at": humantime::format_rfc3339_seconds(started).to_string()
        })
        .to_string(),
    );
    let f = std::fs::File::create(dir.join("output/disk.vhd")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::io::{Seek, Write};
    let mut f = f;
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.write_all(&vec![1u8; 1 << 20]).unwrap();
    dir
}

#[test]
fn clean_keeps_built_images_before_stubs_and_never_touches_a_running_build() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("builds");
    // The reported loss: three succeeded images and a newer cancelled stub;
    // `--keep 1` kept the stub and deleted the images.
    let img1 = fake_build(&root, "img-1", "img", "succeeded", 30 * 24);
    let img2 = fake_build(&root, "img-2", "img", "succeeded", 5 * 24);
    let img3 = fake_build(&root, "img-3", "img", "succeeded", 3 * 24);
    let stub = fake_build(&root, "img-4", "img", "cancelled", 2 * 24);
    let other = fake_build(&root, "other-1", "other", "succeeded", 40 * 24);
    let running = fake_build(&root, "img-5", "img", "running", 0);
    // A build whose record says failed long ago, but whose directory a live
    // process holds locked (a `--resume` under way): running.
    let resumed = fake_build(&root, "other-2", "other", "failed", 20 * 24);
    // One process holds the lock's open file and ends with it (flock(1)
    // locks fd 9, then the shell becomes `sleep`).
    let mut holder = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 9>\"$1\"; flock 9; exec sleep 60")
        .arg("sh")
        .arg(resumed.join(".lock"))
        .spawn()
        .expect("sh and flock (util-linux)");
    std::fs::create_dir_all(root.join("not-a-build")).unwrap();
    // A `--force` that was killed half way left its old directory aside.
    let leftover = root.join(".imgforge-old-x1y2z3");
    std::fs::create_dir_all(leftover.join("old/output")).unwrap();
    let ten_minutes_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(11 * 60);
    std::fs::File::open(&leftover)
        .unwrap()
        .set_modified(ten_minutes_ago)
        .unwrap();
    // Wait until the lock is held (`flock -n` then exits 99).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let held = std::process::Command::new("flock")
            .args(["-n", "-E", "99"])
            .arg(resumed.join(".lock"))
            .arg("true")
            .status()
            .unwrap();
        if held.code() == Some(99) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never taken"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let dry = run(imgforge()
        .args(["clean", "--keep", "1", "--dry-run", "--json", "--dir"])
        .arg(&root));
    assert_eq!(dry.code, 0, "{}", dry.all());
    let doc: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    let gone: Vec<String> = doc["builds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["remove"] == true)
        .map(|b| {
            b["build"]["path"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        gone,
        vec!["img-1", "img-2", ".imgforge-old-x1y2z3"],
        "{doc:#}"
    );
    // Allocated bytes, not the sparse files' length: 2 × (1 MiB + the record).
    let freed = doc["freed_bytes"].as_u64().unwrap();
    assert!((2 << 20..3 << 20).contains(&freed), "{freed}");
    assert!(img1.exists() && img2.exists(), "a dry run removes nothing");
    let why = |name: &str| {
        doc["builds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["build"]["path"].as_str().unwrap().ends_with(name))
            .map(|b| b["why"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(
        why("img-3").contains("newest succeeded builds of img"),
        "{}",
        why("img-3")
    );
    assert!(why("img-4").contains("--resume"), "{}", why("img-4"));
    assert!(
        why("other-2").contains("a build is running in it ("),
        "{}",
        why("other-2")
    );

    let r = run(imgforge()
        .args(["clean", "--older-than", "7d", "--dir"])
        .arg(&root));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!img1.exists() && !other.exists() && img2.exists() && img3.exists());
    assert!(
        resumed.exists(),
        "a locked build is never removed, whatever its age"
    );
    assert!(
        !leftover.exists(),
        "the hidden leftover is seen and removed"
    );
    assert!(r.stderr.contains("Freed"), "{}", r.stderr);

    let r = run(imgforge()
        .args(["clean", "--keep", "0", "--dir"])
        .arg(&root));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!img2.exists() && !img3.exists());
    assert!(stub.exists(), "the newest attempt stays for --resume");
    assert!(
        running.exists() && resumed.exists(),
        "running builds are kept"
    );
    assert!(r.stdout.contains("still running"), "{}", r.stdout);
    assert!(
        root.join("not-a-build").exists(),
        "only build directories are touched"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The lock died with its holder: the failed build is no longer running,
    // and as the newest attempt at `other` it stays for --resume.
    let r = run(imgforge()
        .args(["clean", "--keep", "0", "--json", "--dir"])
        .arg(&root));
    assert!(
        resumed.exists() && r.stdout.contains("newest attempt at other"),
        "{}",
        r.all()
    );

    let r = run(imgforge()
        .args(["clean", "--keep", "1", "--dir"])
        .arg(tmp.path().join("none")));
    assert_eq!(r.code, 2, "{}", r.all());
}

#[test]
fn colour_and_quiet_follow_the_flags_and_the_conventions() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    write(&bad, "[image]\nname = \"x\"\n");
    let red = "\x1b[1;31merror:";
    // Piped: no colour, whatever NO_COLOR says…
    let r = run(imgforge().env_remove("NO_COLOR").arg("plan").arg(&bad));
    assert!(!r.stderr.contains('\x1b'), "{:?}", r.stderr);
    // …unless asked: --color always, or CLICOLOR_FORCE without NO_COLOR.
    let r = run(imgforge().args(["--color", "always", "plan"]).arg(&bad));
    assert!(r.stderr.contains(red), "{:?}", r.stderr);
    let r = run(imgforge()
        .env_remove("NO_COLOR")
        .env("CLICOLOR_FORCE", "1")
        .arg("plan")
        .arg(&bad));
    assert!(r.stderr.contains(red), "{:?}", r.stderr);
    let r = run(imgforge().env("CLICOLOR_FORCE", "1").arg("plan").arg(&bad));
    assert!(!r.stderr.contains('\x1b'), "NO_COLOR wins: {:?}", r.stderr);
    let r = run(imgforge().args(["plan", "--color", "never"]).arg(&bad));
    assert!(!r.stderr.contains('\x1b'));

    // --quiet drops status lines, keeps results and errors.
    let m = tmp.path().join("m.toml");
    let loud = run(imgforge().arg("init").arg(&m));
    assert!(loud.stderr.contains("Wrote"), "{}", loud.stderr);
    let quiet = run(imgforge().args(["init", "--force", "-q"]).arg(&m));
    assert_eq!(quiet.code, 0);
    assert_eq!(quiet.stderr, "", "{}", quiet.stderr);
    let r = run(imgforge().args(["-q", "plan"]).arg(&bad));
    assert!(r.stderr.contains("error:"), "{}", r.stderr);
}

#[test]
fn with_json_an_error_is_a_json_document_too() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    write(
        &bad,
        "[image]\nname = \"x\"\nos = \"linux\"\ndistro = \"ubuntu-99.04\"\n",
    );
    let r = run(imgforge().args(["plan", "--json"]).arg(&bad));
    assert_eq!(r.code, 2, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["error"]["exit_code"], 2);
    // Each located problem, as data: the unknown distro and the missing location.
    let problems = doc["error"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{doc:#}");
    let distro = problems
        .iter()
        .find(|p| p["key"] == "image.distro")
        .unwrap();
    assert_eq!(distro["line"], 4);
    assert!(
        distro["hint"].as_str().unwrap().contains("ubuntu-24.04"),
        "{doc:#}"
    );
    assert_eq!(doc["error"]["message"], "2 problems in the manifest");
    // stderr still says it for a person.
    assert!(r.stderr.contains("error:"));
    // Without --json, stdout stays empty.
    let r = run(imgforge().arg("plan").arg(&bad));
    assert_eq!(r.stdout, "");
}

#[test]
fn every_json_document_carries_a_schema_version() {
    let tmp = tempfile::tempdir().unwrap();
    let m = repo().join("contrib/legacy/gpu-ubuntu1604.toml");
    let docs: Vec<(&str, Vec<std::ffi::OsString>)> = vec![
        (
            "plan",
            vec!["plan".into(), m.clone().into(), "--json".into()],
        ),
        (
            "render",
            vec![
                "render".into(),
                m.clone().into(),
                "-o".into(),
                tmp.path().join("r").into(),
                "--json".into(),
            ],
        ),
        ("skus", vec!["skus".into(), "--json".into()]),
        ("catalog", vec!["catalog".into(), "--json".into()]),
        (
            "clean",
            vec![
                "clean".into(),
                "--dir".into(),
                tmp.path().into(),
                "--json".into(),
            ],
        ),
        (
            "pool check",
            vec![
                "pool".into(),
                "check".into(),
                repo().join("tests/fixtures/pool/good-vhd.yaml").into(),
                "--json".into(),
            ],
        ),
    ];
    for (what, args) in docs {
        let r = run(imgforge().args(&args));
        let doc: serde_json::Value =
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{what}: {e}: {}", r.all()));
        assert_eq!(doc["schema"], 1, "{what}: {}", r.stdout);
        // The field comes first, so `head` shows it.
        assert!(
            r.stdout.starts_with("{\n  \"schema\": 1,"),
            "{what}: {}",
            &r.stdout[..60.min(r.stdout.len())]
        );
    }
}

#[test]
fn status_without_a_directory_shows_the_newest_build() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(imgforge().current_dir(tmp.path()).arg("status"));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("no build under .imgforge/builds"),
        "{}",
        r.stderr
    );
    let builds = tmp.path().join(".imgforge/builds");
    // Older than the fixture's build, whatever today is.
    fake_build(&builds, "a-old", "a", "succeeded", 20 * 365 * 24);
    let newest = fake_build(&builds, "b-new", "b", "failed", 1);
    // A whole record, as `build` writes it (the fixture's image name).
    std::fs::copy(
        repo().join("tests/fixtures/build/vhd-copies.json"),
        newest.join("build.json"),
    )
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("tests/fixtures/build/vhd-copies.json")).unwrap(),
    )
    .unwrap();
    let r = run(imgforge()
        .current_dir(tmp.path())
        .args(["status", "--json"]));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.all()));
    assert_eq!(doc["image"], fixture["image"], "{doc:#}");
    assert_eq!(doc["started_at"], fixture["started_at"], "{doc:#}");
}

#[test]
fn status_never_prints_a_records_terminal_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("tests/fixtures/build/vhd-copies.json")).unwrap(),
    )
    .unwrap();
    rec["status"] = "failed".into();
    rec["error"] = "\u{1b}]0;owned\u{7}\u{1b}[2Jboom".into();
    write(&dir.join("build.json"), &rec.to_string());
    let r = run(imgforge().arg("status").arg(&dir));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        !r.stdout.contains('\u{1b}') && !r.stdout.contains('\u{7}'),
        "{:?}",
        r.stdout
    );
    assert!(r.stdout.contains("boom"), "{}", r.stdout);
}
