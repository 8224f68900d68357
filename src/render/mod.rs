//! Plan + templates → a directory holding `packer.json` and `scripts/*.sh`.
//!
//! Rendering is deterministic (same manifest and templates → byte-identical
//! files) and atomic (a staging directory renamed into place).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::util::text::{sha256_hex, shell_quote};
use serde::Serialize;

use crate::render::templates::{Origin, TemplateSet};
use crate::spec::manifest::Manifest;
use crate::spec::plan::Plan;

pub const PACKER_FILE: &str = "packer.json";
pub const PLAN_FILE: &str = "imgforge-plan.json";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{location}: {message}")]
    Template {
        location: String,
        message: String,
        hint: String,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot read user script: {source}")]
    UserScript {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    OutputExists(String),
}

impl crate::util::Hint for RenderError {
    fn hint(&self) -> Option<String> {
        match self {
            RenderError::Template { hint, .. } => Some(hint.clone()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RenderedFile {
    /// Relative to the render directory, with '/' separators.
    pub path: String,
    pub sha256: String,
    pub bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rendered {
    pub dir: PathBuf,
    pub files: Vec<RenderedFile>,
}

/// Renders every file in memory; nothing touches the disk.
pub fn render_files(
    plan: &Plan,
    manifest: &Manifest,
    set: &TemplateSet,
) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    let tera = engine(set)?;
    let mut context =
        tera::Context::from_serialize(plan).expect("the plan serializes to an object");
    let by_id: BTreeMap<String, &crate::spec::plan::FeaturePlan> = plan
        .features
        .iter()
        .map(|f| {
            let id = serde_json::to_value(f.id).expect("ids serialize");
            (id.as_str().unwrap_or_default().to_string(), f)
        })
        .collect();
    context.insert("features_by_id", &by_id);

    let mut files = BTreeMap::new();
    let mut user_scripts = manifest.user_scripts.iter();
    for script in &plan.scripts {
        let bytes = match script.template {
            Some(name) => {
                context.insert("script", &script.file);
                render_one(&tera, set, name, &context)?.into_bytes()
            }
            None => {
                let path = user_scripts.next().expect("one user script per plan entry");
                crate::util::fsutil::read_input(path).map_err(|source| RenderError::UserScript {
                    path: path.clone(),
                    source,
                })?
            }
        };
        files.insert(format!("scripts/{}", script.file), bytes);
    }
    context.remove("script");

    if plan.local.as_ref().is_some_and(|l| l.root.is_some()) {
        for step in crate::spec::catalog::LOCAL_STEPS {
            let text = render_one(&tera, set, step, &context)?;
            files.insert(
                format!("local/{}", crate::spec::plan::script_file_name(step)),
                text.into_bytes(),
            );
        }
        let names: Vec<String> = crate::spec::catalog::LOCAL_STEPS
            .iter()
            .map(|t| crate::spec::plan::script_file_name(t))
            .collect();
        context.insert("local_steps", &names);
    }
    let packer_template = plan.packer_template();
    let packer = render_one(&tera, set, packer_template, &context)?;
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&packer) {
        return Err(RenderError::Template {
            location: location(set, packer_template, None),
            message: format!(
                "the rendered Packer template is not valid JSON: {e} (line {} of the output)",
                e.line()
            ),
            hint: "check commas and quoting; pass values through `| json_encode()`".into(),
        });
    }
    files.insert(PACKER_FILE.to_string(), packer.into_bytes());

    let mut plan_json = serde_json::to_vec_pretty(plan).expect("the plan serializes");
    plan_json.push(b'\n');
    files.insert(PLAN_FILE.to_string(), plan_json);
    // The safety net under every template and user script: no rendered file
    // may carry a secret of this environment, in any of its encodings (a user
    // script named /proc/self/environ, an override that spells a key out).
    for (path, bytes) in &files {
        if crate::util::redact::contains_secret(&String::from_utf8_lossy(bytes)) {
            return Err(RenderError::Template {
                location: path.clone(),
                message: "the rendered file would contain a secret of this environment (ARM_CLIENT_SECRET, a storage key, or its encoded form)".into(),
                hint: "secrets reach Packer through its {{env}} variables, never through templates or user scripts; check what this file includes".into(),
            });
        }
    }
    Ok(files)
}

/// Renders into `out`, replacing it only when `force` is set.
pub fn render_to_dir(
    plan: &Plan,
    manifest: &Manifest,
    set: &TemplateSet,
    out: &Path,
    force: bool,
) -> Result<Rendered, RenderError> {
    let files = render_files(plan, manifest, set)?;
    write_dir(&files, out, force)
}

pub fn write_dir(
    files: &BTreeMap<String, Vec<u8>>,
    out: &Path,
    force: bool,
) -> Result<Rendered, RenderError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RenderError::Write { path, source }
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(write_err(&parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".imgforge-render-")
        .tempdir_in(&parent)
        .map_err(write_err(&parent))?;
    let mut listing = Vec::new();
    for (rel, bytes) in files {
        let path = staging.path().join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        }
        std::fs::write(&path, bytes).map_err(write_err(&path))?;
        listing.push(rendered_file(&path, rel, bytes)?);
    }
    let staged = staging.keep();
    if let Err(e) = crate::util::fsutil::install_dir(&staged, out, force) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
            RenderError::OutputExists(e.to_string())
        } else {
            RenderError::Write {
                path: out.to_path_buf(),
                source: e,
            }
        });
    }
    Ok(Rendered {
        dir: out.to_path_buf(),
        files: listing,
    })
}

/// Rewrites the rendered files of an existing build directory in place (a
/// resume whose templates changed before the image was built): each file
/// written atomically, and files of `old` that no longer render removed.
/// Everything else in the directory (its record, its lock, logs) stays.
pub fn refresh_dir(
    files: &BTreeMap<String, Vec<u8>>,
    dir: &Path,
    old: &[RenderedFile],
) -> Result<Rendered, RenderError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RenderError::Write { path, source }
    };
    let mut listing = Vec::new();
    for (rel, bytes) in files {
        let path = dir.join(rel);
        crate::util::fsutil::write_atomic(&path, bytes).map_err(write_err(&path))?;
        listing.push(rendered_file(&path, rel, bytes)?);
    }
    for gone in old.iter().filter(|o| !files.contains_key(&o.path)) {
        let path = dir.join(&gone.path);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RenderError::Write { path, source: e });
            }
            _ => {}
        }
    }
    Ok(Rendered {
        dir: dir.to_path_buf(),
        files: listing,
    })
}

/// A rendered file written at `path`: scripts made executable, and its
/// entry in the listing.
fn rendered_file(path: &Path, rel: &str, bytes: &[u8]) -> Result<RenderedFile, RenderError> {
    if rel.ends_with(".sh") || rel.starts_with("scripts/") {
        set_executable(path).map_err(|source| RenderError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(RenderedFile {
        path: rel.to_string(),
        sha256: sha256_hex(bytes),
        bytes: bytes.len(),
    })
}

#[cfg(unix)]
fn set_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> std::io::Result<()> {
    Ok(())
}

fn engine(set: &TemplateSet) -> Result<tera::Tera, RenderError> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    tera.register_filter("sh", shell_quote_filter);
    // Templates must not read the environment: that is where the secrets are.
    tera.register_function(
        "get_env",
        |_: &std::collections::HashMap<String, tera::Value>| {
            Err(tera::Error::msg(
                "get_env is disabled in imgforge templates so secrets cannot reach rendered files; \
             let Packer read the environment with {{env `NAME`}} instead",
            ))
        },
    );
    for (name, t) in &set.templates {
        if let Err(e) = tera.add_raw_template(name, &t.source) {
            return Err(template_error(set, name, &e));
        }
    }
    Ok(tera)
}

fn render_one(
    tera: &tera::Tera,
    set: &TemplateSet,
    name: &str,
    context: &tera::Context,
) -> Result<String, RenderError> {
    tera.render(name, context)
        .map_err(|e| template_error(set, name, &e))
}

fn location(set: &TemplateSet, name: &str, line: Option<usize>) -> String {
    let file = match &set.get(name).origin {
        Origin::Builtin => format!("templates/{name} (built-in)"),
        Origin::Override(path) => path.display().to_string(),
    };
    match line {
        Some(l) => format!("{file}:{l}"),
        None => file,
    }
}

/// Turns Tera's error chain into one message with the template and line.
fn template_error(set: &TemplateSet, name: &str, e: &tera::Error) -> RenderError {
    let mut chain = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let full = chain.join("\n");

    // Errors inside an included template belong to that template.
    let mut culprit = name.to_string();
    for candidate in set.templates.keys() {
        if candidate != name && full.contains(&format!("'{candidate}'")) {
            culprit = candidate.clone();
        }
    }

    // Parse errors carry " --> LINE:COL".
    let parse_line = full
        .split("--> ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.trim().parse::<usize>().ok());

    let missing_var = full
        .split("Variable `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string);

    let (line, message, hint) = if let Some(var) = missing_var {
        let source = &set.get(&culprit).source;
        let line = find_use(source, &var);
        (
            line,
            format!("unknown variable `{var}`"),
            "`imgforge plan --json` shows every variable templates can use".to_string(),
        )
    } else if parse_line.is_some() {
        let detail = chain
            .iter()
            .find(|m| m.contains("-->"))
            .map(|m| {
                m.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::trim_end)
                    .collect::<Vec<_>>()
                    .join("\n    ")
            })
            .unwrap_or_else(|| full.clone());
        (
            parse_line,
            format!("template syntax error\n    {detail}"),
            "see https://keats.github.io/tera/docs/ for the template syntax".to_string(),
        )
    } else {
        (
            None,
            chain.last().cloned().unwrap_or(full),
            "check the template against the built-in one (`imgforge templates export`)".to_string(),
        )
    };
    RenderError::Template {
        location: location(set, &culprit, line),
        message,
        hint,
    }
}

/// First line using `var` inside a `{{ }}` or `{% %}` tag.
fn find_use(source: &str, var: &str) -> Option<usize> {
    source
        .lines()
        .position(|l| {
            let in_tag = l.contains("{{") || l.contains("{%");
            in_tag
                && l.match_indices(var).any(|(i, _)| {
                    let before = l[..i].chars().next_back();
                    let after = l[i + var.len()..].chars().next();
                    let ident =
                        |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                    !ident(before) && !ident(after)
                })
        })
        .map(|i| i + 1)
}

fn shell_quote_filter(
    value: &tera::Value,
    _: &std::collections::HashMap<String, tera::Value>,
) -> tera::Result<tera::Value> {
    let text = match value {
        tera::Value::String(s) => s.clone(),
        tera::Value::Number(n) => n.to_string(),
        tera::Value::Bool(b) => b.to_string(),
        other => {
            return Err(tera::Error::msg(format!(
                "the `sh` filter quotes strings and numbers, not {other}"
            )));
        }
    };
    Ok(tera::Value::String(shell_quote(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_words_and_neutralises_the_rest() {
        assert_eq!(shell_quote("nfs-common"), "nfs-common");
        assert_eq!(shell_quote("x; rm -rf /"), "'x; rm -rf /'");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
    }

    #[test]
    fn find_use_matches_whole_identifiers_in_tags_only() {
        let src = "# colour\n{{ colours }}\n{% if colour %}x{% endif %}\n";
        assert_eq!(find_use(src, "colour"), Some(3));
    }
}

pub mod templates;
