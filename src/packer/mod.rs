//! Finding Packer, reading its version, and `packer validate`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::spec::manifest::Target;

#[derive(Debug, thiserror::Error)]
pub enum PackerError {
    #[error("Packer not found: {searched}")]
    NotFound { searched: String },
    #[error("{path}: cannot run Packer: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: could not read Packer's version from `packer -machine-readable version`: {output}"
    )]
    Version { path: PathBuf, output: String },
    #[error("Packer {version} is too old: imgforge needs {minimum} or newer")]
    TooOld { version: String, minimum: String },
    #[error("`packer validate` rejected {template}:\n{output}")]
    Invalid { template: PathBuf, output: String },
}

impl crate::util::Hint for PackerError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            PackerError::NotFound { .. } => "install it (`apt-get install packer` on Debian, or https://developer.hashicorp.com/packer/install), or point --packer / IMGFORGE_PACKER at the binary".into(),
            PackerError::TooOld { .. } => "install a newer Packer and pass it with --packer".into(),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Packer {
    pub path: PathBuf,
    pub version: String,
}

/// 1.5 is the first release whose azure-arm builder takes
/// `shared_image_gallery_destination` and `sensitive-variables` the way the
/// built-in template uses them.
const MINIMUM: (u32, u32, u32) = (1, 5, 0);

impl Packer {
    /// `--packer`, then `IMGFORGE_PACKER`, then `packer` on PATH.
    pub fn locate(explicit: Option<&Path>) -> Result<Packer, PackerError> {
        let from_env = std::env::var_os("IMGFORGE_PACKER").filter(|v| !v.is_empty());
        let (path, searched) = if let Some(p) = explicit {
            (Some(p.to_path_buf()), format!("--packer {}", p.display()))
        } else if let Some(p) = from_env {
            let p = PathBuf::from(p);
            let searched = format!("IMGFORGE_PACKER={}", p.display());
            (Some(p), searched)
        } else {
            (which::which("packer").ok(), "`packer` on PATH".to_string())
        };
        let Some(path) = path.filter(|p| p.is_file()) else {
            return Err(PackerError::NotFound { searched });
        };
        let output = Command::new(&path)
            .args(["-machine-readable", "version"])
            .output()
            .map_err(|source| PackerError::Spawn {
                path: path.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = parse_version(&text).ok_or_else(|| PackerError::Version {
            path: path.clone(),
            output: text.trim().chars().take(300).collect(),
        })?;
        let packer = Packer { path, version };
        if packer.version_tuple() < MINIMUM {
            return Err(PackerError::TooOld {
                version: packer.version.clone(),
                minimum: format!("{}.{}.{}", MINIMUM.0, MINIMUM.1, MINIMUM.2),
            });
        }
        Ok(packer)
    }

    pub fn version_tuple(&self) -> (u32, u32, u32) {
        let mut parts = self
            .version
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse().unwrap_or(0));
        (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        )
    }

    /// What a live build with this Packer and target will run into, said before
    /// an hour is spent on it.
    pub fn target_advice(&self, target: Target) -> Option<String> {
        // The azure-arm builder bundled up to 1.6.x creates the build VM on
        // unmanaged disks in VHD mode; Azure no longer creates such VMs.
        if target == Target::Vhd && self.version_tuple() < (1, 7, 0) {
            Some(format!(
                "Packer {} builds VHDs on unmanaged disks, which Azure has retired for new VMs: \
                 a live `vhd` build will fail at VM creation. Use a Packer with the external \
                 Azure plugin (it captures through a managed disk), or target = \"managed_image\" \
                 or \"gallery\".",
                self.version
            ))
        } else {
            None
        }
    }

    /// Runs `packer validate` from the template's directory, since Packer
    /// resolves relative script paths against the current directory.
    /// `packer validate` with the variables `unset` removed from Packer's
    /// environment (a dry run without credentials: azure-arm then validates
    /// as it would for a Managed Identity, which needs none).
    pub fn validate_without(
        &self,
        dir: &Path,
        template: &str,
        unset: &[String],
    ) -> Result<(), PackerError> {
        let mut cmd = Command::new(&self.path);
        for v in unset {
            cmd.env_remove(v);
        }
        let output = cmd
            .arg("validate")
            .arg(template)
            .current_dir(dir)
            .env("CHECKPOINT_DISABLE", "1")
            .output()
            .map_err(|source| PackerError::Spawn {
                path: self.path.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Err(PackerError::Invalid {
            template: dir.join(template),
            output: crate::util::redact::redact(text.trim()),
        })
    }
}

fn parse_version(machine_readable: &str) -> Option<String> {
    machine_readable.lines().find_map(|line| {
        let mut fields = line.split(',');
        let (_ts, _target, kind, value) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        (kind == "version").then(|| value.trim().trim_start_matches('v').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_machine_readable_version_line() {
        let out = "1606900000,,version,1.6.6\n1606900000,,version-prelease,\n1606900000,,version-commit,\n";
        assert_eq!(parse_version(out).as_deref(), Some("1.6.6"));
        assert_eq!(parse_version("garbage"), None);
    }
}

/// How a `packer build` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunEnd {
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug)]
pub struct RunOutcome {
    pub end: RunEnd,
    pub exit_status: Option<i32>,
    /// `ui,error` texts, in order.
    pub errors: Vec<String>,
    pub artifacts: Vec<crate::packer::events::RawArtifact>,
}

/// What the runner reports while Packer works.
pub enum Progress<'a> {
    Event(&'a crate::packer::events::Event),
    /// Packer wrote something that is not a machine-readable line (stderr).
    Raw(&'a str),
    /// The first signal: forwarded to Packer, now waiting for its cleanup.
    Cancelling,
    /// Another signal while waiting.
    StillCancelling,
}

enum Incoming {
    Stdout(String),
    Stderr(String),
    StreamClosed,
    Signal,
}

impl Packer {
    /// Runs `packer build -machine-readable` in `dir`, in its own process group.
    ///
    /// SIGINT and SIGTERM sent to imgforge are forwarded to Packer's group as
    /// SIGINT (Packer re-executes itself, so signalling its PID alone is
    /// ignored); imgforge then waits for Packer's own cleanup so no Azure VM
    /// is left running. Every line is passed to `log` (already redacted) and,
    /// parsed, to `progress`.
    pub fn build(
        &self,
        dir: &Path,
        template: &str,
        env: &[(String, String)],
        log: &mut dyn FnMut(&str),
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<RunOutcome, PackerError> {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        use std::process::Stdio;
        use std::sync::mpsc;

        let (tx, rx) = mpsc::channel::<Incoming>();
        let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])
            .map_err(|source| PackerError::Spawn {
                path: self.path.clone(),
                source,
            })?;
        let signal_handle = signals.handle();
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    if tx.send(Incoming::Signal).is_err() {
                        break;
                    }
                }
            });
        }

        let mut child = Command::new(&self.path)
            .args(["build", "-machine-readable", "-color=false", template])
            .current_dir(dir)
            .env("CHECKPOINT_DISABLE", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| PackerError::Spawn {
                path: self.path.clone(),
                source,
            })?;
        let pgid = child.id() as libc::pid_t;

        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let readers = [
            {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in std::io::BufReader::new(stdout)
                        .lines()
                        .map_while(Result::ok)
                    {
                        let _ = tx.send(Incoming::Stdout(line));
                    }
                    let _ = tx.send(Incoming::StreamClosed);
                })
            },
            {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in std::io::BufReader::new(stderr)
                        .lines()
                        .map_while(Result::ok)
                    {
                        let _ = tx.send(Incoming::Stderr(line));
                    }
                    let _ = tx.send(Incoming::StreamClosed);
                })
            },
        ];
        drop(tx);

        let mut open_streams = 2;
        let mut cancelled = false;
        let mut errors = Vec::new();
        let mut collector = crate::packer::events::ArtifactCollector::default();
        while open_streams > 0 {
            let Ok(msg) = rx.recv() else { break };
            match msg {
                Incoming::Stdout(line) => {
                    let line = crate::util::redact::redact(&line);
                    log(&line);
                    match crate::packer::events::parse_line(&line) {
                        Some(event) => {
                            if let crate::packer::events::Event::Ui {
                                level: crate::packer::events::UiLevel::Error,
                                text,
                            } = &event
                            {
                                errors.push(text.clone());
                            }
                            collector.observe(&event);
                            progress(Progress::Event(&event));
                        }
                        None => progress(Progress::Raw(&line)),
                    }
                }
                Incoming::Stderr(line) => {
                    let line = crate::util::redact::redact(&line);
                    log(&line);
                    progress(Progress::Raw(&line));
                }
                Incoming::StreamClosed => open_streams -= 1,
                Incoming::Signal => {
                    // SAFETY: killpg only sends a signal to the group we created.
                    unsafe {
                        libc::killpg(pgid, libc::SIGINT);
                    }
                    if cancelled {
                        progress(Progress::StillCancelling);
                    } else {
                        cancelled = true;
                        progress(Progress::Cancelling);
                    }
                }
            }
        }
        let status = child.wait().map_err(|source| PackerError::Spawn {
            path: self.path.clone(),
            source,
        })?;
        for r in readers {
            let _ = r.join();
        }
        reap_group(pgid);
        signal_handle.close();

        let end = if cancelled {
            RunEnd::Cancelled
        } else if status.success() {
            RunEnd::Succeeded
        } else {
            RunEnd::Failed
        };
        Ok(RunOutcome {
            end,
            exit_status: status.code(),
            errors,
            artifacts: collector.into_artifacts(),
        })
    }
}

/// Packer's plugins share its process group; any still alive after Packer
/// itself exited get a short grace period, then SIGKILL.
fn reap_group(pgid: libc::pid_t) {
    // SAFETY: signal 0 only probes whether the group still has members.
    let alive = || unsafe { libc::killpg(pgid, 0) } == 0;
    for _ in 0..50 {
        if !alive() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: the group is the one created for Packer.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// The environment variables a Packer JSON template reads with
/// `{{env `NAME`}}`, in order of first use.
pub fn env_references(template: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find("{{env `") {
        rest = &rest[i + "{{env `".len()..];
        let Some(end) = rest.find('`') else { break };
        let name = &rest[..end];
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !out.iter().any(|n| n == name)
        {
            out.push(name.to_string());
        }
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod env_tests {
    #[test]
    fn env_references_are_read_from_the_template() {
        let t = r#"{"variables": {"client_id": "{{env `ARM_CLIENT_ID`}}", "s": "{{env `ARM_CLIENT_SECRET`}}",
            "again": "{{env `ARM_CLIENT_ID`}}", "odd": "{{env `A B`}}", "cut": "{{env `X"}"#;
        assert_eq!(
            super::env_references(t),
            vec!["ARM_CLIENT_ID".to_string(), "ARM_CLIENT_SECRET".to_string()]
        );
    }
}

// Running Packer and what it leaves: its event stream (`events`), progress
// and failure context (`progress`), the captured VHD (`capture`), the local
// builder's root filesystem (`local`). The boot check is validation: it
// lives beside the validator (`crate::validate::boot`).
pub mod base;
pub mod capture;
pub mod events;
pub mod local;
pub mod progress;
