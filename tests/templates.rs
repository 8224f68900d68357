//! Template export and file-by-file overrides, and `build --dry-run`.

mod common;

use common::*;

fn render(
    manifest: &std::path::Path,
    templates: Option<&std::path::Path>,
    out: &std::path::Path,
) -> Run {
    let mut cmd = imgforge();
    cmd.arg("render").arg(manifest).arg("-o").arg(out);
    if let Some(t) = templates {
        cmd.arg("--templates").arg(t);
    }
    run(&mut cmd)
}

#[test]
fn exported_templates_render_exactly_like_the_built_ins() {
    let tmp = tempfile::tempdir().unwrap();
    let exported = tmp.path().join("my-templates");
    let r = run(imgforge().args(["templates", "export"]).arg(&exported));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let listed = run(imgforge().args(["templates", "list"]));
    let names: Vec<&str> = listed.stdout.lines().collect();
    assert!(names.contains(&"packer/azure-arm.json.tera"));
    for n in &names {
        assert!(exported.join(n).is_file(), "{n} not exported");
    }
    // Exporting over an existing export needs --force.
    let again = run(imgforge().args(["templates", "export"]).arg(&exported));
    assert_eq!(again.code, 2, "{}", again.all());

    let m = repo().join("contrib/legacy/gpu-ubuntu1604.toml");
    assert_eq!(render(&m, None, &tmp.path().join("a")).code, 0);
    let r = render(&m, Some(&exported), &tmp.path().join("b"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(files(&tmp.path().join("a")), files(&tmp.path().join("b")));
}

#[test]
fn an_override_replaces_only_its_own_file() {
    let tmp = tempfile::tempdir().unwrap();
    let overrides = tmp.path().join("t");
    write(
        &overrides.join("scripts/50-nfs.sh.tera"),
        "#!/usr/bin/env bash\n{% include \"scripts/_common.sh.tera\" %}\nstep \"site NFS setup for \"{{ image | sh }}\n",
    );
    let m = repo().join("contrib/legacy/gpu-ubuntu1604.toml");
    let r = render(&m, Some(&overrides), &tmp.path().join("out"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let nfs = std::fs::read_to_string(tmp.path().join("out/scripts/50-nfs.sh")).unwrap();
    assert!(nfs.contains("site NFS setup for \"gpu-ubuntu1604"), "{nfs}");
    let docker = std::fs::read_to_string(tmp.path().join("out/scripts/20-docker.sh")).unwrap();
    assert!(docker.contains("data-root"), "other scripts stay built-in");
    assert_eq!(shellcheck(&tmp.path().join("out")).code, 0);
}

#[test]
fn an_override_with_an_unknown_variable_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let overrides = tmp.path().join("t");
    let path = overrides.join("scripts/80-packages.sh.tera");
    write(
        &path,
        "#!/usr/bin/env bash\n# line 2\necho {{ image }}\necho {{ colour_scheme }}\n",
    );
    let m = tmp.path().join("m.toml");
    write(
        &m,
        &format!("{MINIMAL}\n[provision]\npackages = [\"jq\"]\n"),
    );
    let out = tmp.path().join("out");
    let r = render(&m, Some(&overrides), &out);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(&format!("{}:4", path.display())),
        "file:line missing:\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("colour_scheme"), "{}", r.stderr);
    assert!(r.stderr.contains("plan --json"), "{}", r.stderr);
    assert!(!out.exists());
}

#[test]
fn an_override_with_a_syntax_error_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let overrides = tmp.path().join("t");
    let path = overrides.join("packer/azure-arm.json.tera");
    write(
        &path,
        "{\n  \"a\": 1,\n  \"b\": {% if image %}2{% endiff %}\n}\n",
    );
    let r = render(
        &repo().join("contrib/base-ubuntu2204.toml"),
        Some(&overrides),
        &tmp.path().join("out"),
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(&format!("{}:3", path.display())),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("syntax"), "{}", r.stderr);
}

#[test]
fn an_override_that_renders_invalid_json_is_caught_before_packer() {
    let tmp = tempfile::tempdir().unwrap();
    let overrides = tmp.path().join("t");
    let path = overrides.join("packer/azure-arm.json.tera");
    write(&path, "{ \"builders\": [ {\"type\": \"null\"}, ] }\n");
    let r = render(
        &repo().join("contrib/base-ubuntu2204.toml"),
        Some(&overrides),
        &tmp.path().join("out"),
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(&path.display().to_string()),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("not valid JSON"), "{}", r.stderr);
}

#[test]
fn an_override_file_that_matches_no_template_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let overrides = tmp.path().join("t");
    write(&overrides.join("scripts/20-dokcer.sh.tera"), "#!/bin/sh\n");
    let r = render(
        &repo().join("contrib/base-ubuntu2204.toml"),
        Some(&overrides),
        &tmp.path().join("out"),
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("scripts/20-dokcer.sh.tera"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("scripts/20-docker.sh.tera"),
        "known names listed:\n{}",
        r.stderr
    );
}

#[test]
fn templates_cannot_read_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let overrides = tmp.path().join("t");
    write(
        &overrides.join("scripts/00-base.sh.tera"),
        "#!/bin/sh\necho {{ get_env(name=\"ARM_CLIENT_SECRET\") }}\n",
    );
    let out = tmp.path().join("out");
    let r = render(
        &repo().join("contrib/base-ubuntu2204.toml"),
        Some(&overrides),
        &out,
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("get_env is disabled"), "{}", r.stderr);
    assert!(!r.all().contains(CANARY));
    assert!(!out.exists());
}

#[test]
fn dry_run_renders_validates_with_real_packer_and_records_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("build");
    let r = run(imgforge()
        .args(["build", "--dry-run", "--json", "--out"])
        .arg(&dir)
        .arg(repo().join("contrib/legacy/gpu-ubuntu1604.toml")));
    assert_eq!(r.code, 0, "{}", r.all());
    let doc: serde_json::Value =
        serde_json::from_str(&r.stdout).expect("one JSON document on stdout");
    assert_eq!(doc["status"], "validated");
    assert_eq!(doc["packer"]["version"], "1.6.6");
    assert_eq!(doc["image"], "gpu-ubuntu1604");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    assert_eq!(record, doc);
    let packer_json = record["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["path"] == "packer.json")
        .unwrap();
    assert_eq!(packer_json["sha256"].as_str().unwrap().len(), 64);
    assert!(
        record["warnings"].to_string().contains("unmanaged disks"),
        "Packer 1.6.6 + vhd must be called out before a live build"
    );
    assert_no_canary(&dir);
    assert!(!r.all().contains(CANARY));
}

#[test]
fn dry_run_reports_packers_own_validation_error() {
    let tmp = tempfile::tempdir().unwrap();
    let overrides = tmp.path().join("t");
    let builtin = run(imgforge().args(["templates", "export"]).arg(&overrides));
    assert_eq!(builtin.code, 0);
    let path = overrides.join("packer/azure-arm.json.tera");
    let text = std::fs::read_to_string(&path).unwrap();
    // Misspell the managed image's resource group key (Packer's step on the
    // way to the gallery): Packer itself must reject the template.
    let broken = text.replace(
        "\"managed_image_resource_group_name\":",
        "\"managed_image_resource_grp\":",
    );
    assert_ne!(broken, text);
    write(&path, &broken);
    let dir = tmp.path().join("build");
    let r = run(imgforge()
        .args(["build", "--dry-run", "--out"])
        .arg(&dir)
        .arg("--templates")
        .arg(&overrides)
        .arg(repo().join("contrib/base-ubuntu2204.toml")));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("packer validate"), "{}", r.stderr);
    assert!(
        r.stderr.contains("managed_image_resource_grp"),
        "{}",
        r.stderr
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "failed");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("managed_image_resource_grp")
    );
}

#[test]
fn contrib_pipeline_examples_are_valid_yaml_with_real_manifests_and_flags() {
    let dir = repo().join("contrib/pipelines");
    let mut seen = 0;
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let _: serde_json::Value =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let builds: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("imgforge build "))
            .collect();
        assert!(!builds.is_empty(), "{}: no imgforge build", path.display());
        for line in builds {
            let manifest = line
                .split_whitespace()
                .skip_while(|w| *w != "build")
                .nth(1)
                .unwrap();
            assert!(
                repo().join(manifest).is_file(),
                "{}: {manifest} does not exist",
                path.display()
            );
            assert!(
                line.contains("--json"),
                "pipelines use the JSON result: {line}"
            );
        }
        // Every flag an example passes is one its subcommand accepts.
        let joined = text.replace("\\\n", " ");
        for line in joined.lines() {
            // A command line: `imgforge` first, or right after `run:`, `script:`, `- `.
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let Some(at) = tokens.iter().enumerate().position(|(i, t)| {
                *t == "imgforge" && (i == 0 || matches!(tokens[i - 1], "run:" | "script:" | "-"))
            }) else {
                continue;
            };
            let words = &tokens[at + 1..];
            let sub: Vec<&str> = match words.first() {
                Some(&"pool") => words.iter().take(2).copied().collect(),
                Some(w) => vec![*w],
                None => continue,
            };
            let help = run(imgforge().args(&sub).arg("--help"));
            assert_eq!(help.code, 0, "{sub:?}: {}", help.all());
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                assert!(
                    help.stdout.contains(flag),
                    "{}: `imgforge {}` has no {flag}",
                    path.display(),
                    sub.join(" ")
                );
            }
            checked += 1;
        }
        seen += 1;
    }
    assert_eq!(seen, 2);
    assert!(checked >= 5, "{checked} imgforge command lines checked");
}
