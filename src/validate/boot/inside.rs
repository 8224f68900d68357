//! The checks run inside the booted node, over SSH with the key the
//! provisioning installed (`inside.sh`, as root through sudo): boot settled,
//! failed units with their journal, cloud-init's datasource, the Azure
//! agent, the resource disk, Docker started as Batch Shipyard starts it, the
//! catalog's in-VM checks per feature, outbound 443 and the firewall's rules.
//!
//! What to check comes from the plan, resolved once here (`NodeChecks`); the
//! script gets it as variable assignments before its text. What comes back
//! is guest output: read bounded (1 MiB, a deadline), and only lines of the
//! `ROW <check> <status> <message>` shape with a known check become findings.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{Finding, Status};
use crate::spec::plan::Plan;

use super::BootError;

const SCRIPT: &str = include_str!("inside.sh");
const MAX_OUTPUT: u64 = 1024 * 1024;

/// The checks the script may report; anything else in its output is ignored.
const KNOWN: &[&str] = &[
    "settled",
    "units",
    "cloud-init",
    "agent",
    "resource-disk",
    "docker",
    "glusterd",
    "outbound",
    "firewall-rules",
];

/// What the node is checked for, from the plan (or nothing, without one).
#[derive(Debug, Clone, Default)]
pub struct NodeChecks {
    /// ResourceDisk.MountPoint; empty: read from the image's waagent.conf.
    pub mount: String,
    /// Docker's data-root, when the image has Docker.
    pub docker_root: Option<String>,
    pub glusterd: bool,
    /// The catalog's in-VM checks: (feature, needs hardware, message, command).
    pub checks: Vec<(String, bool, String, String)>,
    /// Ports the host firewall must admit (22 and the plan's).
    pub inbound: Vec<u16>,
    /// Units (names, or words of systemd's console line) that fail without
    /// the plan's hardware: a warning, not a failure.
    pub hardware_units: Vec<String>,
}

impl NodeChecks {
    pub fn from_plan(plan: Option<&Plan>) -> NodeChecks {
        let Some(plan) = plan else {
            return NodeChecks {
                inbound: vec![22],
                ..NodeChecks::default()
            };
        };
        use crate::spec::catalog::FeatureId;
        let has = |id: FeatureId| plan.features.iter().any(|f| f.id == id);
        let checks = plan
            .features
            .iter()
            .flat_map(|f| {
                let name = serde_json::to_value(f.id)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                f.vm_checks
                    .iter()
                    .chain(f.vm_checks_skipped.iter())
                    .map(move |c| {
                        (
                            name.clone(),
                            c.needs_hardware,
                            c.message.to_string(),
                            c.command.to_string(),
                        )
                    })
            })
            .collect();
        let mut inbound = vec![22];
        inbound.extend(
            plan.firewall
                .inbound_tcp
                .iter()
                .copied()
                .filter(|p| *p != 22),
        );
        NodeChecks {
            mount: plan.distro.ephemeral_mount.to_string(),
            docker_root: has(FeatureId::Docker).then(|| plan.docker.data_root.to_string()),
            glusterd: has(FeatureId::GlusterfsServer),
            checks,
            inbound,
            hardware_units: super::hardware_units(plan),
        }
    }

    /// The script with its settings before it.
    pub fn script(&self, settle: Duration, egress: &str) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let checks: Vec<String> = self
            .checks
            .iter()
            .map(|(f, hw, m, c)| {
                let clean = |s: &str| s.replace(['\t', '\n'], " ");
                format!(
                    "{}\t{}\t{}\t{}",
                    clean(f),
                    u8::from(*hw),
                    clean(m),
                    clean(c)
                )
            })
            .collect();
        let join = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
        let mut s = String::from("#!/bin/sh\n");
        for (k, v) in [
            ("SETTLE_S", settle.as_secs().to_string()),
            ("MOUNT", self.mount.clone()),
            // Unit names only: the script splits on spaces.
            (
                "HARDWARE",
                self.hardware_units
                    .iter()
                    .filter(|u| !u.contains(' '))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            ("DOCKER_ROOT", self.docker_root.clone().unwrap_or_default()),
            (
                "GLUSTERD",
                if self.glusterd { "1" } else { "0" }.to_string(),
            ),
            ("INBOUND", join(&self.inbound)),
            ("EGRESS", egress.to_string()),
            ("CHECKS", checks.join("\n")),
        ] {
            s.push_str(&format!("{k}={}\n", q(&v)));
        }
        s.push_str(SCRIPT.trim_start_matches("#!/bin/sh\n"));
        s
    }
}

/// One finding per `ROW` line of a known check (`feature.NAME` too), its
/// evidence the indented lines after it.
pub fn parse(output: &str, id: &dyn Fn(&str) -> String) -> Vec<Finding> {
    let mut rows: Vec<(String, Status, String, Vec<String>)> = Vec::new();
    for line in output.lines().take(20_000) {
        if let Some(rest) = line.strip_prefix("ROW ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(check), Some(status), message) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let known = KNOWN.contains(&check)
                || check.strip_prefix("feature.").is_some_and(|f| {
                    !f.is_empty() && f.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
            let status = match status {
                "pass" => Status::Pass,
                "fail" => Status::Fail,
                "warn" => Status::Warn,
                "skip" => Status::Skip,
                _ => continue,
            };
            if known {
                let message: String = message.unwrap_or("").chars().take(600).collect();
                rows.push((check.to_string(), status, message, Vec::new()));
            }
        } else if let (Some(ev), Some(last)) = (line.strip_prefix("  "), rows.last_mut())
            && last.3.len() < 60
        {
            last.3.push(ev.chars().take(300).collect());
        }
    }
    rows.into_iter()
        .map(|(check, status, message, evidence)| {
            let f = Finding::new(&id(&check), status, message);
            if evidence.is_empty() {
                f
            } else {
                f.evidence(evidence.join("\n"))
            }
        })
        .collect()
}

/// How to reach the guest's sshd as the provisioned user.
pub struct Ssh {
    pub port: u16,
    pub key: PathBuf,
    pub user: String,
}

impl Ssh {
    fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-i"])
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=6",
            ])
            .arg(format!("{}@127.0.0.1", self.user))
            .arg(remote);
        c
    }

    /// Runs `remote` with `input` on its standard input; its output (bounded)
    /// and exit status, or None when it ran past `deadline` (then killed).
    pub fn run(
        &self,
        remote: &str,
        input: &str,
        deadline: Duration,
    ) -> Result<Option<(i32, String)>, BootError> {
        let mut child = self
            .command(remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => BootError::Missing {
                    what: "ssh",
                    searched: "PATH".into(),
                    package: "openssh-client",
                },
                _ => BootError::Io {
                    context: "starting ssh".into(),
                    source,
                },
            })?;
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                if let Some(p) = pipe {
                    let _ = p.take(MAX_OUTPUT).read_to_end(&mut text);
                }
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let out = read(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = read(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let started = Instant::now();
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break Some(s);
            }
            if started.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = writer.join();
        let mut text = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !stderr.trim().is_empty() {
            text.push_str(&format!("\n[stderr]\n{}", stderr.trim()));
        }
        Ok(status.map(|s| (s.code().unwrap_or(-1), text)))
    }

    /// `run`, again while ssh itself fails (exit 255: the connection was
    /// reset or refused — cloud-init restarts sshd once it has written its
    /// configuration, which can fall after the first login), for up to 90 s.
    pub fn run_reconnecting(
        &self,
        remote: &str,
        input: &str,
        deadline: Duration,
        cancel: &dyn Fn() -> bool,
    ) -> Result<Option<(i32, String)>, BootError> {
        let started = Instant::now();
        loop {
            let result = self.run(remote, input, deadline)?;
            match &result {
                Some((255, _)) if started.elapsed() < Duration::from_secs(90) => {
                    if cancel() {
                        return Err(BootError::Cancelled);
                    }
                    std::thread::sleep(Duration::from_secs(3));
                }
                _ => return Ok(result),
            }
        }
    }

    /// Waits until a login with the key works, up to `wait`: how long it
    /// took, or the last refusal.
    pub fn wait_for_login(
        &self,
        wait: Duration,
        cancel: &dyn Fn() -> bool,
    ) -> Result<Result<f64, String>, BootError> {
        let started = Instant::now();
        let mut last = String::from("no attempt");
        while started.elapsed() < wait {
            if cancel() {
                return Err(BootError::Cancelled);
            }
            match self.run("true", "", Duration::from_secs(20))? {
                Some((0, _)) => return Ok(Ok(started.elapsed().as_secs_f64())),
                Some((code, text)) => last = format!("exit {code}: {}", text.trim()),
                None => last = "ssh timed out".into(),
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        Ok(Err(last))
    }
}

/// Keeps the guest's journal of this boot beside the serial log.
pub fn save_journal(ssh: &Ssh, path: &Path) -> Result<(), BootError> {
    if let Some((0, text)) = ssh.run(
        "sudo -n journalctl -b --no-pager -o short-monotonic | tail -n 20000",
        "",
        Duration::from_secs(60),
    )? {
        std::fs::write(path, text).map_err(|source| BootError::Io {
            context: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_findings_and_unknown_or_malformed_lines_do_not() {
        let out = "noise\nROW settled pass systemd settled in 3 s: running\nROW units fail units failed: late.service\n  late.service:\n  boom\nROW nonsense pass injected\nROW agent maybe what\nROW feature.glusterfs_client pass 1 in-VM check(s) passed\nROW feature.Bad pass x\n  stray evidence\n";
        let f = parse(out, &|c| format!("boot.uefi.{c}"));
        let ids: Vec<&str> = f.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "boot.uefi.settled",
                "boot.uefi.units",
                "boot.uefi.feature.glusterfs_client"
            ]
        );
        assert_eq!(f[1].status, Status::Fail);
        assert_eq!(f[1].evidence.as_deref(), Some("late.service:\nboom"));
    }

    #[test]
    fn the_plan_decides_what_the_node_is_checked_for() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/local-debian12.toml");
        let plan = Plan::new(&crate::spec::manifest::Manifest::load(&path).unwrap());
        let n = NodeChecks::from_plan(Some(&plan));
        assert_eq!(n.mount, "/mnt/resource");
        assert_eq!(n.docker_root.as_deref(), Some(plan.docker.data_root));
        assert!(!n.glusterd);
        assert_eq!(n.inbound, vec![22]);
        let features: Vec<&str> = n.checks.iter().map(|c| c.0.as_str()).collect();
        assert!(
            features.contains(&"docker") && features.contains(&"nfs"),
            "{features:?}"
        );
        let s = n.script(Duration::from_secs(90), "160.0.0.50");
        assert!(
            s.starts_with("#!/bin/sh\nSETTLE_S='90'\nMOUNT='/mnt/resource'\n"),
            "{s}"
        );
        assert!(s.contains(
            "nfs\t0\tRequired storage cluster software to mount nfs not installed\tmount.nfs4 -V"
        ));
        assert_eq!(s.matches("#!/bin/sh").count(), 1);
        let bare = NodeChecks::from_plan(None);
        assert_eq!(
            (bare.mount.as_str(), bare.inbound.as_slice()),
            ("", &[22u16][..])
        );
    }
}
