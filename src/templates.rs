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
        &[$(($path, include_str!(concat!("../templates/", $path)))),*]
    };
}

pub const BUILTIN: &[(&str, &str)] = builtin![
    "packer/azure-arm.json.tera",
    "packer/local.json.tera",
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
    #[error(
        "{path}: `{name}` is not a built-in template, so it would never be used\n  hint: overrides use the same relative path as a built-in; `imgforge templates list` shows them: {known}"
    )]
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
            let source = crate::fsutil::read_input_string(&path).map_err(|source| {
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
        Ok(set)
    }

    pub fn get(&self, name: &str) -> &Template {
        &self.templates[name]
    }
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
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
            if path.is_dir() {
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
        crate::fsutil::write_atomic(&path, source.as_bytes()).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}
