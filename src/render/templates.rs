//! The built-in Tera templates, embedded in the binary, and user overrides.
//!
//! A user directory overrides built-ins file by file: `my-templates/scripts/20-docker.sh.tera`
//! replaces only the Docker script. A file that matches no built-in is an error,
//! because a typo in an override name would otherwise be silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

macro_rules! builtin {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../templates/", $path)))),*]
    };
}

pub const BUILTIN: &[(&str, &str)] = builtin![
    "packer/azure-arm.json.tera",
    "packer/local.json.tera",
    "packer/local-base.json.tera",
    "local/_lib.sh.tera",
    "local/10-root.sh.tera",
    "local/20-provision.sh.tera",
    "local/30-disk.sh.tera",
    "scripts/_common.sh.tera",
    "scripts/00-base.sh.tera",
    "scripts/10-ssh.sh.tera",
    "scripts/20-docker.sh.tera",
    "scripts/30-gpu.sh.tera",
    "scripts/40-rdma.sh.tera",
    "scripts/50-nfs.sh.tera",
    "scripts/60-glusterfs.sh.tera",
    "scripts/70-firewall.sh.tera",
    "scripts/80-packages.sh.tera",
    "scripts/95-vm-checks.sh.tera",
];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{dir}: cannot read the template directory: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot read the template: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: `{name}` is not a built-in template, so it would never be used")]
    Unknown {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("{dir}: {source}")]
    Export {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir} already holds templates; choose an empty directory or pass --force")]
    ExportNotEmpty { dir: PathBuf },
    #[error("{path}: {what} never ends: {cycle}")]
    Recursion {
        path: PathBuf,
        what: &'static str,
        cycle: String,
    },
    #[error("{path}: {why}")]
    Refused {
        path: PathBuf,
        why: String,
        hint: String,
    },
}

impl crate::util::Hint for TemplateError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            TemplateError::Unknown { known, .. } => format!(
                "overrides use the same relative path as a built-in; `imgforge templates list` shows them: {known}"
            ),
            TemplateError::Recursion { .. } => {
                "Tera would recurse until the stack overflows; break the cycle".into()
            }
            TemplateError::Refused { hint, .. } => hint.clone(),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Builtin,
    Override(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Template {
    pub source: String,
    pub origin: Origin,
}

/// The templates one render uses: the built-ins with any overrides applied.
#[derive(Debug, Clone)]
pub struct TemplateSet {
    pub templates: BTreeMap<String, Template>,
}

impl TemplateSet {
    pub fn builtin() -> TemplateSet {
        let templates = BUILTIN
            .iter()
            .map(|(name, source)| {
                (
                    (*name).to_string(),
                    Template {
                        source: (*source).to_string(),
                        origin: Origin::Builtin,
                    },
                )
            })
            .collect();
        TemplateSet { templates }
    }

    pub fn with_overrides(dir: Option<&Path>) -> Result<TemplateSet, TemplateError> {
        let mut set = TemplateSet::builtin();
        let Some(dir) = dir else { return Ok(set) };
        for path in files_under(dir)? {
            let name = path
                .strip_prefix(dir)
                .expect("walked under dir")
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let Some(slot) = set.templates.get_mut(&name) else {
                return Err(TemplateError::Unknown {
                    path,
                    name,
                    known: BUILTIN
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let source = crate::util::fsutil::read_input_string(&path).map_err(|source| {
                TemplateError::ReadFile {
                    path: path.clone(),
                    source,
                }
            })?;
            *slot = Template {
                source,
                origin: Origin::Override(path),
            };
        }
        set.check_recursion()?;
        Ok(set)
    }

    /// Includes, imports and extends that lead back to themselves, and
    /// macros that call themselves (directly or through others), are refused
    /// before Tera renders anything: Tera has no depth limit, and a stack
    /// overflow aborts the process. Macro recursion with an end condition is
    /// refused too; none of the built-ins needs it.
    fn check_recursion(&self) -> Result<(), TemplateError> {
        let path_of = |name: &str| match &self.templates[name].origin {
            Origin::Override(p) => p.clone(),
            Origin::Builtin => PathBuf::from(format!("(built-in) {name}")),
        };
        // Template → the templates it pulls in.
        let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // "template::macro" → the macros its body calls.
        let mut calls: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, t) in &self.templates {
            let refs = graph::references(&t.source);
            edges.insert(name.clone(), refs.iter().map(|(_, r)| r.clone()).collect());
            let namespaces: BTreeMap<String, String> = refs
                .iter()
                .filter_map(|(ns, r)| ns.clone().map(|ns| (ns, r.clone())))
                .collect();
            for (m, body) in graph::macros(&t.source) {
                let callees = graph::macro_calls(&body)
                    .into_iter()
                    .filter_map(|(ns, callee)| {
                        let file = if ns == "self" {
                            Some(name.clone())
                        } else {
                            namespaces.get(&ns).cloned()
                        }?;
                        Some(format!("{file}::{callee}"))
                    })
                    .collect();
                calls.insert(format!("{name}::{m}"), callees);
            }
        }
        if let Some(cycle) = graph::cycle(&edges) {
            return Err(TemplateError::Recursion {
                path: path_of(&cycle[0]),
                what: "this chain of include/import/extends",
                cycle: cycle.join(" -> "),
            });
        }
        if let Some(cycle) = graph::cycle(&calls) {
            let file = cycle[0].split("::").next().unwrap_or("").to_string();
            return Err(TemplateError::Recursion {
                path: path_of(&file),
                what: "this macro recursion",
                cycle: cycle.join(" -> "),
            });
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> &Template {
        &self.templates[name]
    }
}

/// The template references and macros Tera syntax can express, read
/// without Tera (it would recurse while parsing what it includes).
mod graph {
    use std::collections::BTreeMap;

    /// `{% include "x" %}`, `{% extends "x" %}`, `{% import "x" as ns %}`:
    /// (namespace for imports, target).
    pub fn references(source: &str) -> Vec<(Option<String>, String)> {
        let mut out = Vec::new();
        for tag in tags(source) {
            let mut words = tag.split_whitespace();
            let kw = words.next().unwrap_or("");
            if !["include", "extends", "import"].contains(&kw) {
                continue;
            }
            let rest = tag[kw.len()..].trim_start();
            let Some(target) = quoted(rest) else { continue };
            let ns = (kw == "import")
                .then(|| rest.rsplit_once(" as ").map(|(_, n)| n.trim().to_string()))
                .flatten();
            out.push((ns, target));
        }
        out
    }

    /// `{% macro NAME(…) %}BODY{% endmacro %}` → (NAME, BODY).
    pub fn macros(source: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = source;
        while let Some(i) = rest.find("{%") {
            let after = &rest[i + 2..];
            let Some(end) = after.find("%}") else { break };
            let tag = after[..end].trim().trim_matches('-').trim();
            let body_start = &after[end + 2..];
            if let Some(def) = tag.strip_prefix("macro ") {
                let name = def.split('(').next().unwrap_or("").trim().to_string();
                let body_end = body_start.find("endmacro").unwrap_or(body_start.len());
                out.push((name, body_start[..body_end].to_string()));
            }
            rest = body_start;
        }
        out
    }

    /// `ns::name(` calls in a macro body.
    pub fn macro_calls(body: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let bytes = body.as_bytes();
        let mut i = 0;
        while let Some(j) = body[i..].find("::") {
            let at = i + j;
            let ns_start = body[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |k| k + 1);
            let name_end = body[at + 2..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(body.len(), |k| at + 2 + k);
            if name_end < bytes.len() && bytes[name_end] == b'(' && ns_start < at {
                out.push((
                    body[ns_start..at].to_string(),
                    body[at + 2..name_end].to_string(),
                ));
            }
            i = at + 2;
        }
        out
    }

    fn tags(source: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut rest = source;
        while let Some(i) = rest.find("{%") {
            let after = &rest[i + 2..];
            let Some(end) = after.find("%}") else { break };
            out.push(after[..end].trim().trim_matches('-').trim());
            rest = &after[end + 2..];
        }
        out
    }

    fn quoted(s: &str) -> Option<String> {
        let q = s.chars().next().filter(|c| ['"', '\'', '`'].contains(c))?;
        let inner = &s[1..];
        inner.find(q).map(|e| inner[..e].to_string())
    }

    /// A cycle in `edges`, as the nodes along it (first node repeated last).
    pub fn cycle(edges: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
        // Iterative depth-first search: 0 unseen, 1 on the path, 2 done.
        let mut state: BTreeMap<&str, u8> = BTreeMap::new();
        for start in edges.keys() {
            if state.get(start.as_str()).copied().unwrap_or(0) != 0 {
                continue;
            }
            let mut path: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
            state.insert(start, 1);
            while let Some((node, next)) = path.last().copied() {
                let children = edges.get(node).map(Vec::as_slice).unwrap_or(&[]);
                if next < children.len() {
                    path.last_mut().expect("non-empty").1 += 1;
                    let child = children[next].as_str();
                    match state.get(child).copied().unwrap_or(0) {
                        1 => {
                            let from = path.iter().position(|(n, _)| *n == child).unwrap_or(0);
                            let mut c: Vec<String> =
                                path[from..].iter().map(|(n, _)| n.to_string()).collect();
                            c.push(child.to_string());
                            return Some(c);
                        }
                        0 if edges.contains_key(child) => {
                            state.insert(child, 1);
                            path.push((child, 0));
                        }
                        _ => {}
                    }
                } else {
                    state.insert(node, 2);
                    path.pop();
                }
            }
        }
        None
    }
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    // Symbolic links are not followed into directories (a link to a parent
    // would make this walk endless), and a linked file must stay inside the
    // directory: an override linked to /proc/self/environ would render the
    // environment's secrets into the build.
    let root = dir
        .canonicalize()
        .map_err(|source| TemplateError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| TemplateError::ReadDir {
            dir: d.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| TemplateError::ReadDir {
                dir: d.clone(),
                source,
            })?;
            let path = entry.path();
            let name = entry.file_name();
            // Editors leave swap and backup files next to what they edit.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(|source| TemplateError::ReadDir {
                dir: d.clone(),
                source,
            })?;
            if kind.is_symlink() {
                let target = path.canonicalize().ok();
                match target {
                    Some(t) if t.starts_with(&root) && t.is_file() => out.push(path),
                    Some(t) if t.is_dir() => {
                        return Err(TemplateError::Refused {
                            path,
                            why: "is a symbolic link to a directory, which is not followed".into(),
                            hint: "put the overrides themselves in the template directory".into(),
                        });
                    }
                    other => {
                        return Err(TemplateError::Refused {
                            path,
                            why: format!(
                                "is a symbolic link to {}, outside the template directory",
                                other.map_or("nothing".into(), |t| t.display().to_string())
                            ),
                            hint: "copy the file into the template directory".into(),
                        });
                    }
                }
            } else if kind.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the built-in templates to `dir`, ready to be edited and passed back
/// with `--templates`.
pub fn export(dir: &Path, force: bool) -> Result<Vec<PathBuf>, TemplateError> {
    let io = |source| TemplateError::Export {
        dir: dir.to_path_buf(),
        source,
    };
    if !force && dir.exists() && std::fs::read_dir(dir).map_err(io)?.next().is_some() {
        return Err(TemplateError::ExportNotEmpty {
            dir: dir.to_path_buf(),
        });
    }
    let mut written = Vec::new();
    for (name, source) in BUILTIN {
        let path = dir.join(name);
        crate::util::fsutil::write_atomic(&path, source.as_bytes()).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}
