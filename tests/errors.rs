//! Bad input: each class gives a located, actionable error, exit code 2, and
//! writes nothing.

mod common;

use common::*;

struct Case {
    what: &'static str,
    manifest: String,
    /// Substrings the error must contain (file:line:col, key, the fix).
    expect: &'static [&'static str],
}

const LOCAL: &str = r#"
[image]
name = "t1"
os = "linux"
distro = "debian-12"

[build]
builder = "local"
target = "vhd"
"#;

fn replace(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from));
    MINIMAL.replace(from, to)
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "credentials in the mirror URL",
            manifest: format!(
                "{LOCAL}\n[build.local]\nmirror = \"http://builder:hunter2pass@deb.example.org/debian\"\n"
            ),
            expect: &["build.local.mirror", "user name or password"],
        },
        Case {
            what: "unknown key",
            manifest: replace("os = \"linux\"", "os = \"linux\"\ncolour = \"blue\""),
            expect: &["m.toml:5:1", "colour", "distro"],
        },
        Case {
            what: "wrong type",
            manifest: format!("{MINIMAL}\n[pool]\ndedicated = \"ten\"\n"),
            expect: &[
                "m.toml:15:13",
                "dedicated",
                "is the text \"ten\"; write a whole number from 0 to 4294967295",
            ],
        },
        Case {
            what: "unknown distro",
            manifest: replace("ubuntu-22.04", "debian-99"),
            expect: &[
                "m.toml:5:10",
                "image.distro",
                "debian-12",
                "ubuntu-16.04",
                "almalinux-8",
            ],
        },
        Case {
            what: "os contradicts distro",
            manifest: replace("os = \"linux\"", "os = \"windows\""),
            expect: &["m.toml:4:6", "image.os", "set os = \"linux\""],
        },
        Case {
            what: "gpu on windows",
            manifest: replace("os = \"linux\"", "os = \"windows\"")
                .replace("ubuntu-22.04", "windows-2019")
                + "\n[features]\ngpu = { driver = \"470\" }\n",
            expect: &["m.toml:15:7", "features.gpu", "Windows"],
        },
        Case {
            what: "sriov without an HPC image",
            manifest: replace("ubuntu-22.04", "ubuntu-16.04") + "\n[features]\nrdma = \"sriov\"\n",
            expect: &["m.toml:15:8", "features.rdma", "centos-7"],
        },
        Case {
            what: "bad rdma value",
            manifest: format!("{MINIMAL}\n[features]\nrdma = \"roce\"\n"),
            expect: &["m.toml:15", "roce", "nd", "sriov"],
        },
        Case {
            what: "command in a package name",
            manifest: format!("{MINIMAL}\n[provision]\npackages = [\"htop\", \"x; rm -rf /\"]\n"),
            expect: &["m.toml:15:21", "provision.packages.1", "not a package name"],
        },
        Case {
            what: "command substitution in a package name",
            manifest: format!("{MINIMAL}\n[provision]\npackages = [\"$(reboot)\"]\n"),
            expect: &["provision.packages.0", "$(reboot)"],
        },
        Case {
            what: "newline in a package name",
            manifest: format!("{MINIMAL}\n[provision]\npackages = [\"jq\\nreboot\"]\n"),
            expect: &["provision.packages.0", "jq\\nreboot"],
        },
        Case {
            what: "quote in the image name",
            manifest: replace("name = \"t1\"", "name = \"t1'\""),
            expect: &["m.toml:3:8", "image.name", "lowercase"],
        },
        Case {
            what: "quote in the docker version",
            manifest: format!(
                "{MINIMAL}\n[features]\ndocker = {{ version = \"20.10\\\"; reboot\" }}\n"
            ),
            expect: &["features.docker.version", "not a package version"],
        },
        Case {
            what: "vhd target without a storage account",
            manifest: replace("storage_account = \"acct\"\n", ""),
            expect: &["build.storage_account", "target = \"vhd\""],
        },
        Case {
            what: "a field of another target",
            manifest: replace("[build]", "[build]\nmanaged_image_name = \"img\""),
            expect: &["m.toml:8:22", "build.managed_image_name", "managed_image"],
        },
        Case {
            what: "bad storage account name",
            manifest: replace("\"acct\"", "\"Acct_1\""),
            expect: &["m.toml:11:19", "build.storage_account", "3-24 lowercase"],
        },
        Case {
            what: "duplicate replication account",
            manifest: format!(
                "{MINIMAL}\n[replicate]\nstorage_accounts = [\"a1b\", \"a2b\", \"a1b\"]\n"
            ),
            expect: &["replicate.storage_accounts.2", "twice"],
        },
        Case {
            what: "replication region in its display form",
            manifest: format!(
                "{MINIMAL}\n[replicate]\nstorage_accounts = [\"a1b\"]\nregion = \"West US 2\"\n"
            ),
            expect: &["m.toml:16:10", "replicate.region", "westeurope"],
        },
        Case {
            what: "missing user script",
            manifest: format!("{MINIMAL}\n[provision]\nscripts = [\"nope.sh\"]\n"),
            expect: &[
                "provision.scripts.0",
                "not found",
                "relative to the manifest",
            ],
        },
        Case {
            what: "invalid TOML",
            manifest: replace("location = \"eastus\"", "location = eastus"),
            expect: &["m.toml:9:12", "location", "quoted"],
        },
        Case {
            what: "a publishing setting with a local VHD build",
            manifest: LOCAL.replace(
                "builder = \"local\"\ntarget = \"vhd\"",
                "builder = \"local\"\ntarget = \"vhd\"\nlocation = \"eastus\"",
            ),
            expect: &[
                "m.toml:10:12",
                "build.location",
                "for publishing",
                "target = \"managed_image\" or \"gallery\"",
            ],
        },
        Case {
            what: "a local build published without a staging account",
            manifest: LOCAL.replace(
                "builder = \"local\"\ntarget = \"vhd\"",
                "builder = \"local\"\ntarget = \"managed_image\"\nlocation = \"westus2\"\nresource_group = \"img\"\nmanaged_image_name = \"d12\"",
            ),
            expect: &["needs build.storage_account", "storage_account = "],
        },
        Case {
            what: "a Generation 2 image that the boot check never boots with UEFI",
            manifest: format!(
                "{}\n[build.local]\nboot_check = \"bios\"\n",
                LOCAL.replace(
                    "builder = \"local\"\ntarget = \"vhd\"",
                    "builder = \"local\"\ntarget = \"managed_image\"\nlocation = \"westus2\"\nresource_group = \"img\"\nstorage_account = \"imgstage\"\nmanaged_image_name = \"d12\"\nhyper_v_generation = \"V2\"",
                )
            ),
            expect: &["build.hyper_v_generation", "UEFI", "boot_check = \"uefi\""],
        },
        Case {
            what: "a managed image outside the Batch account's region",
            manifest: format!(
                "{}\n[replicate]\nregion = \"northeurope\"\n",
                LOCAL.replace(
                    "builder = \"local\"\ntarget = \"vhd\"",
                    "builder = \"local\"\ntarget = \"managed_image\"\nlocation = \"westus2\"\nresource_group = \"img\"\nstorage_account = \"imgstage\"\nmanaged_image_name = \"d12\"",
                )
            ),
            expect: &[
                "replicate.region",
                "northeurope",
                "the managed image is in westus2",
                "set build.location = \"northeurope\"",
            ],
        },
        Case {
            what: "a distro the local builder cannot make",
            manifest: LOCAL.replace("debian-12", "almalinux-8"),
            expect: &["image.distro", "cannot make almalinux-8", "debian-12"],
        },
        Case {
            what: "the NVIDIA container toolkit from Debian",
            manifest: format!(
                "{LOCAL}\n[features]\ngpu = {{ driver = \"535\", source = \"distro\" }}\n"
            ),
            expect: &[
                "features.gpu.container_toolkit",
                "not packaged by debian-12",
                "container_toolkit = false",
            ],
        },
        Case {
            what: "a distro GPU driver without the non-free component",
            manifest: format!(
                "{LOCAL}\n[build.local]\ncomponents = [\"main\"]\n\n[features]\ngpu = {{ driver = \"535\", source = \"distro\", container_toolkit = false }}\n"
            ),
            expect: &["build.local.components", "non-free"],
        },
        Case {
            what: "a base image that is not there",
            manifest: format!("{LOCAL}\n[build.local]\nbase_image = \"debian-12-azure.raw\"\n"),
            expect: &[
                "build.local.base_image",
                "no file at",
                "debian-12-azure.raw",
                "cloud.debian.org",
            ],
        },
        Case {
            what: "a base image of a distro imgforge knows no Azure disk image of",
            manifest: format!(
                "{}\n[build.local]\nbase_image = \"m.toml\"\n",
                LOCAL.replace("debian-12", "centos-7")
            ),
            expect: &["build.local.base_image", "centos-7", "ubuntu-24.04", "almalinux-9"],
        },
        Case {
            what: "a mirror beside a base image",
            manifest: format!(
                "{LOCAL}\n[build.local]\nbase_image = \"m.toml\"\nmirror = \"http://deb.debian.org/debian\"\n"
            ),
            expect: &["build.local.mirror", "mmdebstrap root", "allow_hosts"],
        },
        Case {
            what: "an allowed host with a scheme",
            manifest: format!(
                "{LOCAL}\n[build.local]\nbase_image = \"m.toml\"\nallow_hosts = [\"https://deb.debian.org\"]\n"
            ),
            expect: &["build.local.allow_hosts.0", "no scheme"],
        },
        Case {
            what: "allow_hosts without a base image",
            manifest: format!("{LOCAL}\n[build.local]\nallow_hosts = [\"deb.debian.org\"]\n"),
            expect: &["build.local.allow_hosts", "give base_image"],
        },
        Case {
            what: "a base image over plain http to another machine",
            manifest: format!(
                "{LOCAL}\n[build.local]\nbase_image = \"http://example.com/disk.vhd\"\n"
            ),
            expect: &["build.local.base_image", "https://"],
        },
        Case {
            what: "an AlmaLinux build with neither a root nor a base",
            manifest: LOCAL.replace("debian-12", "almalinux-9"),
            expect: &["image.distro", "base_image", "almalinux-9"],
        },
        Case {
            what: "a mirror with shell characters",
            manifest: format!("{LOCAL}\n[build.local]\nmirror = \"http://x/$(reboot)\"\n"),
            expect: &["build.local.mirror", "not an archive URL"],
        },
        Case {
            what: "[build.local] with the azure-arm builder",
            manifest: format!("{MINIMAL}\n[build.local]\ndisk_gib = 8\n"),
            expect: &["build.local", "builder = \"local\""],
        },
        Case {
            what: "a node agent that is not one",
            manifest: replace(
                "distro = \"ubuntu-22.04\"",
                "distro = \"ubuntu-22.04\"\nnode_agent = \"ubuntu 22.04\"",
            ),
            expect: &["image.node_agent", "not a Batch node agent SKU id"],
        },
        Case {
            what: "missing image table",
            manifest: "[build]\nlocation = \"eastus\"\n".into(),
            expect: &["m.toml", "image"],
        },
    ]
}

#[test]
fn each_class_of_bad_manifest_is_located_explained_and_writes_nothing() {
    for case in cases() {
        let tmp = tempfile::tempdir().unwrap();
        let m = tmp.path().join("m.toml");
        write(&m, &case.manifest);
        let out = tmp.path().join("out");
        for args in [
            vec!["plan".to_string()],
            vec!["render".into(), "-o".into(), out.display().to_string()],
            vec![
                "build".into(),
                "--dry-run".into(),
                "--out".into(),
                out.display().to_string(),
            ],
        ] {
            let r = run(imgforge().args(&args[..1]).arg(&m).args(&args[1..]));
            assert_eq!(
                r.code,
                2,
                "{}: {:?} exit {}\n{}",
                case.what,
                args,
                r.code,
                r.all()
            );
            assert!(r.stdout.is_empty(), "{}: stdout should be empty", case.what);
            for e in case.expect {
                assert!(
                    r.stderr.contains(e),
                    "{}: `{e}` missing from:\n{}",
                    case.what,
                    r.stderr
                );
            }
            assert_eq!(
                r.stderr.lines().filter(|l| l.starts_with("error:")).count(),
                1,
                "{}: one error line:\n{}",
                case.what,
                r.stderr
            );
            assert!(!out.exists(), "{}: {:?} wrote output", case.what, args);
            let names: Vec<String> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                names,
                vec!["m.toml".to_string()],
                "{}: left {names:?}",
                case.what
            );
        }
    }
}

#[test]
fn a_missing_manifest_names_the_path() {
    let r = run(imgforge().args(["plan", "/nonexistent/m.toml"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("/nonexistent/m.toml"), "{}", r.stderr);
}

#[test]
fn a_missing_packer_is_exit_3_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m.toml");
    write(&m, MINIMAL);
    let r = run(imgforge()
        .args([
            "build",
            "--dry-run",
            "--packer",
            "/nonexistent/packer",
            "--out",
        ])
        .arg(tmp.path().join("b"))
        .arg(&m));
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(r.stderr.contains("Packer not found"), "{}", r.stderr);
    assert!(r.stderr.contains("apt-get install packer"), "{}", r.stderr);

    let r = run(imgforge()
        .args(["build", "--dry-run", "--out"])
        .arg(tmp.path().join("b"))
        .arg(&m)
        .env("IMGFORGE_PACKER", "/nonexistent/from-env"));
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stderr.contains("IMGFORGE_PACKER=/nonexistent/from-env"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_command_lines_are_exit_2() {
    let r = run(imgforge().args(["render", "m.toml"]));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("--out"), "{}", r.stderr);
}

#[test]
fn a_retired_node_agent_is_named_by_plan_and_build_needs_allow_retired() {
    let manifest = repo().join("contrib/legacy/gpu-ubuntu1604.toml");
    let plan = run(imgforge().arg("plan").arg(&manifest));
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout.contains("is retired")
            && plan.stdout.contains("2021-05-21")
            && plan.stdout.contains("ubuntu-24.04"),
        "{}",
        plan.stdout
    );
    // A real build is refused before Packer runs (a missing Packer would be exit 3).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let r = run(imgforge()
        .env("IMGFORGE_PACKER", tmp.path().join("no-packer"))
        .arg("build")
        .arg(&manifest)
        .arg("--out")
        .arg(&out));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("--allow-retired"), "{}", r.stderr);
    assert!(!out.exists(), "nothing written");
    // With the flag it goes on (here to the missing Packer: exit 3).
    let r = run(imgforge()
        .env("IMGFORGE_PACKER", tmp.path().join("no-packer"))
        .arg("build")
        .arg(&manifest)
        .arg("--allow-retired")
        .arg("--out")
        .arg(&out));
    assert_eq!(r.code, 3, "{}", r.all());
    // A dry run creates nothing in Azure and needs no flag.
    let r = run(imgforge()
        .arg("build")
        .arg(&manifest)
        .arg("--dry-run")
        .arg("--out")
        .arg(tmp.path().join("dry")));
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn every_problem_of_a_manifest_is_reported_in_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    // Type errors in four sections: serde alone would stop at the first.
    let typed = tmp.path().join("typed.toml");
    write(
        &typed,
        "[image]\nname = \"x\"\nos = \"linux\"\ndistro = \"ubuntu-24.04\"\n\n[build]\nlocation = \"westus2\"\n\n[features]\nnfs = \"yes\"\n\n[firewall]\ninbound_tcp = [70000]\n\n[pool]\ndedicated = \"10\"\nlow_priority = -3\n",
    );
    let r = run(imgforge().arg("plan").arg(&typed));
    assert_eq!(r.code, 2, "{}", r.all());
    for want in [
        "typed.toml:10:7: features.nfs: is the text \"yes\"; write true or false (without quotes)",
        "typed.toml:13:16: firewall.inbound_tcp: is 70000; write a whole number from 0 to 65535",
        "typed.toml:16:13: pool.dedicated: is the text \"10\"; write a whole number from 0 to 4294967295",
        "typed.toml:17:16: pool.low_priority: is -3; write a whole number from 0 to 4294967295",
        "4 problems in",
    ] {
        assert!(r.stderr.contains(want), "{want}:\n{}", r.stderr);
    }
    // Rule violations in several sections, in file order, each with its fix.
    let rules = tmp.path().join("rules.toml");
    write(
        &rules,
        "[image]\nname = \"Bad Name\"\nos = \"linux\"\ndistro = \"ubuntu-24.04\"\n\n[build]\nlocation = \"westus2\"\n\n[firewall]\ninbound_tcp = [22]\n\n[provision]\npackages = [\"htop; rm -rf /\"]\n",
    );
    let r = run(imgforge().arg("plan").arg(&rules));
    assert_eq!(r.code, 2, "{}", r.all());
    let located: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(located.len(), 3, "{}", r.stderr);
    assert!(
        located[0].contains("rules.toml:2:8: image.name"),
        "{}",
        r.stderr
    );
    assert!(
        located[1].contains("rules.toml:6:1: build: target = \"gallery\" (the default: Azure Batch makes custom-image pools only from Compute Gallery image versions) needs build.resource_group"),
        "{}",
        r.stderr
    );
    assert!(
        located[2].contains("rules.toml:13:13: provision.packages.0"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.matches("hint:").count(), 3, "{}", r.stderr);
    assert!(r.stderr.contains("3 problems in"), "{}", r.stderr);
}

#[test]
fn a_huge_rejected_value_is_named_not_echoed_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let huge = "x".repeat(1_000_000);
    let m = tmp.path().join("m.toml");
    write(
        &m,
        &format!(
            "[image]\nname = \"x\"\nos = \"linux\"\ndistro = \"{huge}\"\n\n[build]\ntarget = \"vhd\"\nlocation = \"{huge}\"\nresource_group = \"rg\"\nstorage_account = \"imgforgebuild\"\ncapture_container = \"images\"\n"
        ),
    );
    let r = run(imgforge().arg("plan").arg(&m));
    assert_eq!(r.code, 2, "{}", &r.stderr[..r.stderr.len().min(500)]);
    // Both problems, each value cut with its length said; not a megabyte of x.
    assert!(r.stderr.len() < 2000, "{} bytes of error", r.stderr.len());
    assert!(r.stderr.contains("image.distro"), "{}", r.stderr);
    assert!(r.stderr.contains("build.location"), "{}", r.stderr);
    assert!(r.stderr.contains("(1000000 characters)"), "{}", r.stderr);
}

/// A hint is a field of the error, written once: the last line on a terminal
/// (`  hint: …`), `error.hint` in JSON, never inside `error.message`.
#[test]
fn a_hint_is_written_once_on_a_terminal_and_is_its_own_json_field() {
    // Through two layers: a stage's failure wrapping the credentials check.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let mut cmd = imgforge();
    for v in [
        "ARM_CLIENT_ID",
        "ARM_CLIENT_SECRET",
        "ARM_SUBSCRIPTION_ID",
        "ARM_TENANT_ID",
    ] {
        cmd.env_remove(v);
    }
    // (A dry run needs no credentials: it warns and goes on. A real build stops.)
    let r = run(cmd
        .args(["build", "--allow-retired", "--out"])
        .arg(&out)
        .arg(repo().join("contrib/legacy/gpu-ubuntu1604.toml")));
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(r.stderr.matches("hint:").count(), 1, "{}", r.stderr);
    let last = r.stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("  hint: export ARM_CLIENT_ID=…"),
        "{}",
        r.stderr
    );
    let error = r
        .stderr
        .find("error: stage `packer validate` failed")
        .expect("the message");
    let resume = r
        .stderr
        .find("  resume with: imgforge build")
        .expect("how to go on");
    assert!(
        error < resume && resume < r.stderr.find("  hint:").unwrap(),
        "{}",
        r.stderr
    );
    // The record keeps the error as a person reads it, hint included.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("build.json")).unwrap()).unwrap();
    let hint = last.trim_start();
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .ends_with(&format!("\n  {hint}")),
        "{record:#}"
    );

    // A --json caller gets the hint as a field.
    let r = run(imgforge()
        .args([
            "replicate",
            "--json",
            "--source",
            "https://src.blob.core.windows.net/c/x.vhd",
            "--to",
            "rep1",
        ])
        .arg(repo().join("contrib/legacy/gpu-ubuntu1604.toml")));
    assert_eq!(r.code, 2, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    let message = doc["error"]["message"].as_str().unwrap();
    let hint = doc["error"]["hint"].as_str().unwrap_or_default();
    assert!(message.contains("the pool needs 2 VHD copies"), "{doc:#}");
    assert!(
        !message.contains("hint"),
        "the hint is not in the message: {doc:#}"
    );
    assert!(hint.starts_with("add accounts with --to"), "{doc:#}");
    assert_eq!(r.stderr.matches("hint:").count(), 1, "{}", r.stderr);
}

#[test]
fn a_user_script_bash_cannot_parse_is_refused_at_plan_by_its_manifest_path() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("site")).unwrap();
    write(
        &tmp.path().join("site/setup.sh"),
        "#!/bin/bash\nset -e\necho setting up\nif [ -d /opt ]; then\n  echo opt\nfi fi\necho done\n",
    );
    let m = tmp.path().join("m.toml");
    write(
        &m,
        &format!("{MINIMAL}\n[provision]\nscripts = [\"site/setup.sh\"]\n"),
    );
    for cmd in ["plan", "build"] {
        let mut c = imgforge();
        c.arg(cmd).arg(&m);
        if cmd == "build" {
            c.arg("--dry-run").arg("--out").arg(tmp.path().join("out"));
        }
        let r = run(&mut c);
        assert_eq!(r.code, 2, "{cmd}: {}", r.all());
        assert!(
            r.stderr.contains("provision.scripts.0")
                && r.stderr.contains("user script `site/setup.sh` is not valid shell: site/setup.sh: line 6: syntax error"),
            "{cmd}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("bash -n"), "{}", r.stderr);
        assert!(!tmp.path().join("out").exists());
    }
    // A script that parses: shellcheck's warnings become plan warnings, named
    // by the manifest's path and the line.
    write(
        &tmp.path().join("site/setup.sh"),
        "#!/bin/bash\nset -e\ncd /opt/app\nrm -rf \"$STAGE\"/*\n",
    );
    let r = run(imgforge().arg("plan").arg(&m));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("shellcheck: site/setup.sh:4:8: warning:")
            && r.stdout.contains("[SC2115]"),
        "{}",
        r.stdout
    );
}
