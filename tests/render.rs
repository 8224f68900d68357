//! Rendering checked by the real tools: `packer validate` on every template,
//! shellcheck on every script, and the scripts' behaviour run under stubs.

mod common;

use std::path::Path;

use common::*;

fn with_target(manifest: &Path, target: &str, dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    let name = doc["image"]["name"].as_str().unwrap().to_string();
    let local = doc
        .get("build")
        .and_then(|b| b.get("builder"))
        .and_then(|b| b.as_str())
        == Some("local");
    let build = doc
        .entry("build")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap();
    for k in [
        "storage_account",
        "capture_container",
        "managed_image_name",
        "gallery",
    ] {
        build.remove(k);
    }
    build.insert("target".into(), target.into());
    match target {
        // The local builder captures nothing in Azure.
        "vhd" if local => {}
        "vhd" => {
            build.insert("storage_account".into(), "imgforgebuild".into());
            build.insert("capture_container".into(), "images".into());
        }
        "managed_image" => {
            build.insert("managed_image_name".into(), name.clone().into());
        }
        "gallery" => {
            build.insert("managed_image_name".into(), name.clone().into());
            let gallery: toml::Table = toml::from_str(
                "name = \"g1\"\nimage_definition = \"def\"\nversion = \"1.2.3\"\nreplication_regions = [\"eastus\"]",
            )
            .unwrap();
            build.insert("gallery".into(), toml::Value::Table(gallery));
        }
        _ => unreachable!(),
    }
    // A managed image serves only its own region's Batch account.
    if target == "managed_image"
        && let Some(r) = doc.get_mut("replicate").and_then(|r| r.as_table_mut())
    {
        r.remove("region");
    }
    let path = dir.join(format!("{name}-{target}.toml"));
    write(&path, &toml::to_string(&doc).unwrap());
    path
}

#[test]
fn every_contrib_manifest_and_target_renders_validates_and_passes_shellcheck() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rendered = 0;
    for manifest in contrib_manifests() {
        for target in ["vhd", "managed_image", "gallery"] {
            let local = std::fs::read_to_string(&manifest)
                .unwrap()
                .contains("builder = \"local\"");
            if local && target != "vhd" {
                continue;
            }
            // A local manifest renders as written: its target decides
            // whether it publishes, and its settings follow from that.
            let m = if local {
                manifest.clone()
            } else {
                with_target(&manifest, target, tmp.path())
            };
            let out = tmp
                .path()
                .join(format!("out-{}", m.file_stem().unwrap().to_string_lossy()));
            let r = run(imgforge().arg("render").arg(&m).arg("-o").arg(&out));
            assert_eq!(r.code, 0, "{}: {}", m.display(), r.stderr);

            let v = packer_validate(&out);
            assert_eq!(v.code, 0, "packer validate {}:\n{}", out.display(), v.all());
            let s = shellcheck(&out);
            assert_eq!(s.code, 0, "shellcheck {}:\n{}", out.display(), s.all());
            assert_no_canary(&out);

            let packer: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("packer.json")).unwrap()).unwrap();
            let b = &packer["builders"][0];
            if local {
                // The local builder: a null builder, the three steps, the VHD handed on.
                assert_eq!(b["type"], "null");
                let steps: Vec<&str> = packer["provisioners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["script"].as_str().unwrap())
                    .collect();
                assert_eq!(
                    steps,
                    [
                        "local/10-root.sh",
                        "local/20-provision.sh",
                        "local/30-disk.sh"
                    ]
                );
                assert_eq!(packer["post-processors"][0]["type"], "artifice");
                assert!(out.join("local/20-provision.sh").is_file());
                assert!(packer.get("variables").is_none(), "no Azure credentials");
                rendered += 1;
                continue;
            }
            assert_eq!(b["type"], "azure-arm");
            assert_eq!(b["client_secret"], "{{user `client_secret`}}");
            assert_eq!(
                packer["variables"]["client_secret"],
                "{{env `ARM_CLIENT_SECRET`}}"
            );
            assert!(
                packer["sensitive-variables"]
                    .as_array()
                    .unwrap()
                    .contains(&"client_secret".into())
            );
            match target {
                "vhd" => {
                    assert_eq!(b["capture_container_name"], "images");
                    assert_eq!(b["storage_account"], "imgforgebuild");
                    assert!(b.get("managed_image_name").is_none());
                }
                "managed_image" => {
                    assert!(b["managed_image_name"].is_string());
                    assert!(b.get("capture_container_name").is_none());
                }
                _ => {
                    assert_eq!(
                        b["shared_image_gallery_destination"]["image_version"],
                        "1.2.3"
                    );
                }
            }
            let provisioners = packer["provisioners"].as_array().unwrap();
            let last = provisioners.last().unwrap().to_string();
            if b["os_type"] == "Linux" {
                assert!(
                    last.contains("waagent -force -deprovision+user && export HISTSIZE=0 && sync"),
                    "deprovisioning must be the last step: {last}"
                );
                let scripts = provisioners[0]["scripts"].as_array().unwrap();
                for s in scripts {
                    assert!(
                        out.join(s.as_str().unwrap()).is_file(),
                        "{s} listed but not rendered"
                    );
                }
            } else {
                assert!(last.contains("Sysprep.exe"), "{last}");
            }
            rendered += 1;
        }
    }
    assert!(rendered >= 18);
}

#[test]
fn rendering_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let m = repo().join("contrib/legacy/gpu-ubuntu1604.toml");
    for out in ["a", "b"] {
        let r = run(imgforge()
            .arg("render")
            .arg(&m)
            .arg("-o")
            .arg(tmp.path().join(out)));
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let a = files(&tmp.path().join("a"));
    let b = files(&tmp.path().join("b"));
    assert!(a.len() >= 8);
    assert_eq!(a, b);
}

#[test]
fn render_refuses_a_non_empty_directory_without_force_and_replaces_it_with() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    write(&out.join("keep.txt"), "mine");
    let m = repo().join("contrib/base-ubuntu2204.toml");
    let r = run(imgforge().arg("render").arg(&m).arg("-o").arg(&out));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );

    let r = run(imgforge()
        .arg("render")
        .arg(&m)
        .arg("-o")
        .arg(&out)
        .arg("--force"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("packer.json").is_file());
    // No staging directories left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".imgforge"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Renders a contrib manifest into `dir/out`.
fn render_contrib(manifest: &str, dir: &Path) -> std::path::PathBuf {
    let out = dir.join("out");
    let r = run(imgforge()
        .arg("render")
        .arg(repo().join(manifest))
        .arg("-o")
        .arg(&out));
    assert_eq!(r.code, 0, "{}", r.stderr);
    out
}

/// Runs a rendered script with stub commands that record their arguments, so
/// the test sees what the script would do to a real machine without doing it.
fn run_with_stubs(script: &Path, stubs: &[&str], cwd: &Path) -> (Run, String) {
    let bin = cwd.join("stub-bin");
    let log = cwd.join("calls.log");
    std::fs::create_dir_all(&bin).unwrap();
    for name in stubs {
        let path = bin.join(name);
        write(
            &path,
            &format!(
                "#!/bin/sh\nprintf '%s' {name} >> \"$STUB_LOG\"\nfor a in \"$@\"; do printf ' [%s]' \"$a\" >> \"$STUB_LOG\"; done\necho >> \"$STUB_LOG\"\n"
            ),
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let r = run(std::process::Command::new("bash")
        .arg(script)
        .current_dir(cwd)
        .env("PATH", path)
        .env("STUB_LOG", &log));
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    (r, calls)
}

#[test]
fn firewall_script_opens_the_batch_ports_and_the_manifest_extras() {
    let tmp = tempfile::tempdir().unwrap();
    let out = render_contrib("contrib/legacy/gpu-ubuntu1604.toml", tmp.path());
    let (r, calls) = run_with_stubs(
        &out.join("scripts/70-firewall.sh"),
        &["ufw", "apt-get", "grep", "sed", "systemctl"],
        tmp.path(),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    for port in ["22", "29876", "29877", "6006"] {
        assert!(
            calls.contains(&format!("ufw [allow] [in] [{port}/tcp]")),
            "inbound {port} not allowed:\n{calls}"
        );
    }
    assert!(calls.contains("ufw [allow] [out] [443/tcp]"), "{calls}");
    let deny = calls.find("[default] [deny] [incoming]").unwrap();
    // Enabled for the next boot, never in the running kernel: `ufw enable`
    // in the local builder's root would firewall the build host itself.
    assert!(
        !calls.contains("[enable]") || !calls.contains("ufw [--force]"),
        "{calls}"
    );
    assert!(!calls.contains("ufw [enable]"), "{calls}");
    let enable = calls
        .find("sed [-i] [-E] [s/^ENABLED=.*/ENABLED=yes/] [/etc/ufw/ufw.conf]")
        .unwrap_or_else(|| panic!("ufw.conf not set to ENABLED=yes:\n{calls}"));
    let at_boot = calls.find("systemctl [enable] [ufw]").unwrap();
    let last_allow = calls.rfind("ufw [allow]").unwrap();
    assert!(
        last_allow < deny && deny < enable && enable < at_boot,
        "rules must precede default-deny and enable:\n{calls}"
    );
}

#[test]
fn firewalld_script_opens_the_batch_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let out = render_contrib("contrib/legacy/managed-image-almalinux8.toml", tmp.path());
    let (r, calls) = run_with_stubs(
        &out.join("scripts/70-firewall.sh"),
        &["firewall-offline-cmd", "dnf", "systemctl"],
        tmp.path(),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    for port in ["22", "8080"] {
        assert!(
            calls.contains(&format!("[--add-port={port}/tcp]")),
            "{port}:\n{calls}"
        );
    }
    // The classic node communication ports only where a manifest lists them.
    assert!(!calls.contains("29876"), "{calls}");
    assert!(calls.contains("systemctl [enable] [firewalld]"), "{calls}");
}

#[test]
fn docker_stays_disabled_at_boot_when_its_data_root_is_ephemeral() {
    let tmp = tempfile::tempdir().unwrap();
    let out = render_contrib("contrib/legacy/gpu-ubuntu1604.toml", tmp.path());
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("imgforge-plan.json")).unwrap()).unwrap();
    assert_eq!(plan["docker"]["data_root"], "/mnt/docker");
    assert_eq!(plan["docker"]["enabled_at_boot"], false);
    let script = std::fs::read_to_string(out.join("scripts/20-docker.sh")).unwrap();
    let commands: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("systemctl"))
        .collect();
    assert!(
        commands
            .iter()
            .any(|l| l.starts_with("systemctl disable docker.service")),
        "{commands:?}"
    );
    assert!(
        !commands.iter().any(|l| l.starts_with("systemctl enable")),
        "{commands:?}"
    );
    assert!(
        !script.contains("ResourceDisk.MountPoint="),
        "scripts never set the mount point"
    );
}

#[test]
fn glob_characters_in_a_package_pin_reach_the_package_manager_literally() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m.toml");
    write(
        &m,
        &format!("{MINIMAL}\n[provision]\npackages = [\"htop=2.2*\", \"jq\"]\n"),
    );
    let out = tmp.path().join("out");
    let r = run(imgforge().arg("render").arg(&m).arg("-o").arg(&out));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // An unquoted `htop=2.2*` would expand to this file's name.
    write(&tmp.path().join("htop=2.2-evil"), "");
    let (r, calls) = run_with_stubs(
        &out.join("scripts/80-packages.sh"),
        &["apt-get"],
        tmp.path(),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(calls.contains("[htop=2.2*] [jq]"), "{calls}");
    assert!(!calls.contains("evil"), "{calls}");
}

#[test]
fn plan_json_is_the_template_context_and_holds_no_secret() {
    let r = run(imgforge()
        .args(["plan", "--json"])
        .arg(repo().join("contrib/legacy/gpu-ubuntu1604.toml")));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.all().contains(CANARY));
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(plan["distro"]["node_agent"], "batch.node.ubuntu 16.04");
    assert_eq!(plan["pool"]["max_nodes"], 60);
    assert_eq!(plan["pool"]["vhd_copies"], 2);
    let inbound: Vec<u64> = plan["firewall"]["inbound_tcp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(inbound, vec![22, 6006, 29876, 29877]);

    let text = run(imgforge()
        .arg("plan")
        .arg(repo().join("contrib/legacy/gpu-ubuntu1604.toml")));
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("2 VHD copies"), "{}", text.stdout);
    assert!(text.stdout.contains("batch.node.ubuntu 16.04"));
}

#[test]
fn windows_images_open_rdp_instead_of_ssh() {
    let r = run(imgforge()
        .args(["plan", "--json"])
        .arg(repo().join("contrib/legacy/windows-2019.toml")));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(plan["firewall"]["inbound_tcp"], serde_json::json!([3389]));
    assert_eq!(plan["pool"]["vms_per_vhd"], 20);
    assert_eq!(plan["pool"]["vhd_copies"], 3);
}

#[test]
fn in_vm_checks_run_last_before_deprovisioning_and_can_be_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let m = repo().join("contrib/legacy/gpu-ubuntu1604.toml");
    let out = tmp.path().join("with");
    assert_eq!(
        run(imgforge().arg("render").arg(&m).arg("-o").arg(&out)).code,
        0
    );
    let packer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("packer.json")).unwrap()).unwrap();
    let scripts = packer["provisioners"][0]["scripts"].as_array().unwrap();
    assert_eq!(scripts.last().unwrap(), "scripts/95-vm-checks.sh");

    let without = tmp.path().join("without");
    let r = run(imgforge()
        .arg("render")
        .arg(&m)
        .arg("--no-vm-checks")
        .arg("-o")
        .arg(&without));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!without.join("scripts/95-vm-checks.sh").exists());
    assert_eq!(packer_validate(&without).code, 0);
}

#[test]
fn in_vm_checks_fail_the_build_with_shipyards_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let out = render_contrib("contrib/legacy/gpu-ubuntu1604.toml", tmp.path());
    // This machine has no NVIDIA driver: the GPU checks must fail, and say so as
    // Batch Shipyard's node preparation would. Services are stubbed so nothing starts.
    let (r, calls) = run_with_stubs(
        &out.join("scripts/95-vm-checks.sh"),
        &["systemctl", "docker"],
        tmp.path(),
    );
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("FAIL  No Nvidia drivers detected!"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("in-VM check(s) failed"), "{}", r.stderr);
    assert!(r.stdout.contains("ok    docker version"), "{}", r.stdout);
    assert!(calls.contains("systemctl [start] [docker]"), "{calls}");
    assert!(
        calls.contains("systemctl [stop] [docker] [docker.socket]"),
        "{calls}"
    );
}

#[test]
fn hardware_checks_are_skipped_on_a_build_vm_without_the_hardware() {
    let r = run(imgforge()
        .args(["plan", "--json"])
        .arg(repo().join("contrib/legacy/glusterfs-ubuntu1804.toml")));
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        plan["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["vm_checks_skipped"].as_array().unwrap().is_empty())
    );
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m.toml");
    write(
        &m,
        &format!("{MINIMAL}\n[features]\ngpu = {{ driver = \"470\" }}\n"),
    );
    let r = run(imgforge().args(["plan", "--json"]).arg(&m));
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let gpu = plan["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "gpu")
        .unwrap();
    let skipped: Vec<&str> = gpu["vm_checks_skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    assert!(skipped.contains(&"nvidia-smi"), "{gpu}");
}

#[test]
fn a_published_image_is_sized_by_gallery_replicas_not_vhd_copies() {
    let text = run(imgforge()
        .arg("plan")
        .arg(repo().join("contrib/gpu-ubuntu2404.toml")));
    assert_eq!(text.code, 0, "{}", text.stderr);
    let pool = text
        .stdout
        .lines()
        .find(|l| l.starts_with("pool "))
        .unwrap_or_default();
    assert!(
        pool.contains("up to 600 nodes") && pool.contains("gallery replicas, one per 300 nodes"),
        "{pool}"
    );
    // Batch's rule, the arithmetic shown, and the Batch account's region
    // added to the target regions although the manifest lists it only in [replicate].
    let row = |region: &str| {
        text.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(region))
            .unwrap_or_default()
            .to_string()
    };
    for region in ["eastus", "westus2"] {
        let r = row(region);
        assert!(
            r.contains(" 2  Standard_LRS  ceil(600 nodes / 300 per replica) = 2"),
            "{region}: {r}\n{}",
            text.stdout
        );
    }
    assert!(
        row("westus2").contains("(the Batch account's region)"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("security type trusted_launch_supported"),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains("VHD cop"), "{}", text.stdout);
}

/// A build from a base image renders Packer's qemu builder running the very
/// scripts the azure-arm builder runs, Packer accepts it, and `plan` says
/// what the base must be and what the build VM may reach.
#[test]
fn a_base_image_build_renders_the_qemu_builder_with_the_azure_arm_scripts() {
    for (distro, id, reach) in [
        (
            "ubuntu-24.04",
            "ID=ubuntu VERSION_ID=24.04",
            "azure.archive.ubuntu.com:80",
        ),
        (
            "almalinux-9",
            "ID=almalinux VERSION_ID=9",
            "repo.almalinux.org:443",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join("base.vhd.tar.gz"), "not really");
        let arm = tmp.path().join("arm.toml");
        let head = format!(
            "[image]\nname = \"b\"\nos = \"linux\"\ndistro = \"{distro}\"\n\n[features]\nnfs = true\n\n[provision]\npackages = [\"jq\"]\n"
        );
        write(
            &arm,
            &format!(
                "{head}\n[build]\ntarget = \"vhd\"\nlocation = \"westus2\"\nresource_group = \"rg\"\nstorage_account = \"imgforgebuild\"\ncapture_container = \"images\"\n"
            ),
        );
        let local = tmp.path().join("local.toml");
        write(
            &local,
            &format!(
                "{head}\n[build]\nbuilder = \"local\"\ntarget = \"vhd\"\n\n[build.local]\nbase_image = \"base.vhd.tar.gz\"\n"
            ),
        );
        let plan = run(imgforge().arg("plan").arg(&local));
        assert_eq!(plan.code, 0, "{}", plan.all());
        for want in [
            id,
            reach,
            "QEMU boots the base image under Packer",
            "has not run in imgforge's CI",
        ] {
            assert!(
                plan.stdout.contains(want),
                "{distro}: {want} not in\n{}",
                plan.stdout
            );
        }
        let scripts = |m: &Path, out: &Path| {
            let r = run(imgforge().arg("render").arg(m).arg("-o").arg(out));
            assert_eq!(r.code, 0, "{}", r.all());
            let v = packer_validate(out);
            assert_eq!(v.code, 0, "{distro}: {}", v.all());
            let doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("packer.json")).unwrap()).unwrap();
            let b = doc["builders"][0].clone();
            let list = doc["provisioners"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["scripts"].is_array())
                .map(|p| p["scripts"].clone())
                .unwrap();
            (b, list)
        };
        let (arm_builder, arm_scripts) = scripts(&arm, &tmp.path().join("arm"));
        let (qemu, qemu_scripts) = scripts(&local, &tmp.path().join("local"));
        assert_eq!(arm_builder["type"], "azure-arm");
        assert_eq!(qemu["type"], "qemu");
        assert_eq!(qemu["disk_image"], true);
        assert_eq!(qemu["ssh_username"], "imgforge");
        assert_eq!(
            qemu_scripts, arm_scripts,
            "{distro}: the same scripts in the same order"
        );
        assert!(
            !tmp.path().join("local/local").exists(),
            "no mmdebstrap steps"
        );
        // The rendered scripts are byte for byte the azure-arm ones.
        for s in qemu_scripts.as_array().unwrap() {
            let s = s.as_str().unwrap();
            assert_eq!(
                std::fs::read(tmp.path().join("local").join(s)).unwrap(),
                std::fs::read(tmp.path().join("arm").join(s)).unwrap(),
                "{s}"
            );
        }
        // Offline: no proxy is set up at all.
        let offline = tmp.path().join("offline.toml");
        write(
            &offline,
            &std::fs::read_to_string(&local)
                .unwrap()
                .replace("base_image = ", "allow_hosts = []\nbase_image = "),
        );
        let out = tmp.path().join("off");
        assert_eq!(
            run(imgforge().arg("render").arg(&offline).arg("-o").arg(&out)).code,
            0
        );
        let text = std::fs::read_to_string(out.join("packer.json")).unwrap();
        assert!(
            !text.contains("99imgforge-build-proxy\";") && !text.contains("https_proxy="),
            "{text}"
        );
        assert!(text.contains("offline provisioning"), "{text}");
    }
}
