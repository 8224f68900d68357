//! What changed between two inspections, and the rules a release gate
//! applies to it: `kernel` (a kernel added or removed), `new-port` (sshd
//! listens on, or the host firewall admits, a TCP port it did not), `new-user` (a user with a login shell
//! appeared), `package-removed`, `unit-disabled` (a unit no longer started
//! at boot), `package:GLOB` (a package whose name matches changed,
//! appeared or went; `*` and `?` as in the shell) and `etc:GLOB` (a file
//! under /etc whose path matches changed, appeared or went).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::Inspection;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Changed {
    pub name: String,
    pub old: String,
    pub new: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Diff {
    pub old: String,
    pub new: String,
    pub os: Option<Changed>,
    pub packages_added: Vec<String>,
    pub packages_removed: Vec<String>,
    pub packages_changed: Vec<Changed>,
    pub kernels_added: Vec<String>,
    pub kernels_removed: Vec<String>,
    pub units_enabled: Vec<String>,
    pub units_disabled: Vec<String>,
    pub users_added: Vec<String>,
    pub users_removed: Vec<String>,
    pub ssh_ports_added: Vec<u16>,
    pub ssh_ports_removed: Vec<u16>,
    /// TCP ports the host firewall admits inbound.
    #[serde(default)]
    pub firewall_ports_added: Vec<u16>,
    #[serde(default)]
    pub firewall_ports_removed: Vec<u16>,
    /// Files under /etc (by content hash, or link target).
    #[serde(default)]
    pub etc_added: Vec<String>,
    #[serde(default)]
    pub etc_removed: Vec<String>,
    #[serde(default)]
    pub etc_changed: Vec<String>,
    /// The `--fail-on` rules that tripped, each with what tripped it.
    pub tripped: Vec<String>,
}

fn split<T: Ord + Clone>(old: &[T], new: &[T]) -> (Vec<T>, Vec<T>) {
    let o: BTreeSet<&T> = old.iter().collect();
    let n: BTreeSet<&T> = new.iter().collect();
    (
        n.difference(&o).map(|x| (*x).clone()).collect(),
        o.difference(&n).map(|x| (*x).clone()).collect(),
    )
}

/// A rule `--fail-on` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Kernel,
    NewPort,
    NewUser,
    PackageRemoved,
    UnitDisabled,
    Package(String),
    Etc(String),
}

impl std::str::FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> Result<Rule, String> {
        Ok(match s {
            "kernel" => Rule::Kernel,
            "new-port" => Rule::NewPort,
            "new-user" => Rule::NewUser,
            "package-removed" => Rule::PackageRemoved,
            "unit-disabled" => Rule::UnitDisabled,
            _ => match (s.strip_prefix("package:"), s.strip_prefix("etc:")) {
                (Some(g), _) if !g.is_empty() => Rule::Package(g.to_string()),
                (_, Some(g)) if !g.is_empty() => Rule::Etc(g.to_string()),
                _ => {
                    return Err(format!(
                        "`{s}` is not a rule: kernel, new-port, new-user, package-removed, unit-disabled, package:GLOB or etc:GLOB"
                    ));
                }
            },
        })
    }
}

/// `*` any run, `?` one character.
fn glob(pattern: &str, name: &str) -> bool {
    fn m(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => m(&p[1..], n) || (!n.is_empty() && m(p, &n[1..])),
            (Some('?'), Some(_)) => m(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    m(&p, &n)
}

pub fn diff(old: &Inspection, new: &Inspection, rules: &[Rule]) -> Diff {
    let key = |i: &Inspection| -> BTreeMap<String, String> {
        i.packages
            .iter()
            .map(|p| (format!("{}:{}", p.name, p.arch), p.version.clone()))
            .collect()
    };
    let (o, n) = (key(old), key(new));
    let mut d = Diff {
        old: old.subject.clone(),
        new: new.subject.clone(),
        ..Diff::default()
    };
    for (k, v) in &n {
        match o.get(k) {
            None => d.packages_added.push(format!("{k} {v}")),
            Some(ov) if ov != v => d.packages_changed.push(Changed {
                name: k.clone(),
                old: ov.clone(),
                new: v.clone(),
            }),
            _ => {}
        }
    }
    for (k, v) in &o {
        if !n.contains_key(k) {
            d.packages_removed.push(format!("{k} {v}"));
        }
    }
    if old.os != new.os {
        d.os = Some(Changed {
            name: "os".into(),
            old: format!("{} {}", old.os.id, old.os.version_id),
            new: format!("{} {}", new.os.id, new.os.version_id),
        });
    }
    (d.kernels_added, d.kernels_removed) = split(&old.kernels, &new.kernels);
    (d.units_enabled, d.units_disabled) = split(&old.units_enabled, &new.units_enabled);
    let names = |i: &Inspection| -> Vec<String> {
        i.users_with_shell.iter().map(|u| u.name.clone()).collect()
    };
    (d.users_added, d.users_removed) = split(&names(old), &names(new));
    (d.ssh_ports_added, d.ssh_ports_removed) = split(&old.ssh_ports, &new.ssh_ports);
    (d.firewall_ports_added, d.firewall_ports_removed) =
        split(&old.firewall.inbound_tcp, &new.firewall.inbound_tcp);
    for (path, hash) in &new.etc {
        match old.etc.get(path) {
            None => d.etc_added.push(path.clone()),
            Some(h) if h != hash => d.etc_changed.push(path.clone()),
            _ => {}
        }
    }
    d.etc_removed = old
        .etc
        .keys()
        .filter(|p| !new.etc.contains_key(*p))
        .cloned()
        .collect();

    for rule in rules {
        let hit: Vec<String> = match rule {
            Rule::Kernel => d
                .kernels_added
                .iter()
                .map(|k| format!("kernel {k} added"))
                .chain(
                    d.kernels_removed
                        .iter()
                        .map(|k| format!("kernel {k} removed")),
                )
                .collect(),
            Rule::NewPort => d
                .ssh_ports_added
                .iter()
                .map(|p| format!("sshd port {p} added"))
                .chain(
                    d.firewall_ports_added
                        .iter()
                        .map(|p| format!("firewall admits inbound TCP {p}")),
                )
                .collect(),
            Rule::NewUser => d
                .users_added
                .iter()
                .map(|u| format!("user {u} with a login shell added"))
                .collect(),
            Rule::PackageRemoved => d
                .packages_removed
                .iter()
                .map(|p| format!("package {p} removed"))
                .collect(),
            Rule::UnitDisabled => d
                .units_disabled
                .iter()
                .map(|u| format!("unit {u} no longer enabled"))
                .collect(),
            Rule::Package(g) => {
                let matches = |k: &str| glob(g, k.split(':').next().unwrap_or(k));
                d.packages_added
                    .iter()
                    .filter(|p| matches(p))
                    .map(|p| format!("package {p} added"))
                    .chain(
                        d.packages_removed
                            .iter()
                            .filter(|p| matches(p))
                            .map(|p| format!("package {p} removed")),
                    )
                    .chain(
                        d.packages_changed
                            .iter()
                            .filter(|c| matches(&c.name))
                            .map(|c| format!("package {} {} -> {}", c.name, c.old, c.new)),
                    )
                    .collect()
            }
            Rule::Etc(g) => [
                (&d.etc_added, "added"),
                (&d.etc_removed, "removed"),
                (&d.etc_changed, "changed"),
            ]
            .into_iter()
            .flat_map(|(list, what)| {
                list.iter()
                    .filter(|p| glob(g, p))
                    .map(move |p| format!("{p} {what}"))
            })
            .collect(),
        };
        d.tripped.extend(hit);
    }
    d
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.os.is_none()
            && self.packages_added.is_empty()
            && self.packages_removed.is_empty()
            && self.packages_changed.is_empty()
            && self.kernels_added.is_empty()
            && self.kernels_removed.is_empty()
            && self.units_enabled.is_empty()
            && self.units_disabled.is_empty()
            && self.users_added.is_empty()
            && self.users_removed.is_empty()
            && self.ssh_ports_added.is_empty()
            && self.ssh_ports_removed.is_empty()
            && self.firewall_ports_added.is_empty()
            && self.firewall_ports_removed.is_empty()
            && self.etc_added.is_empty()
            && self.etc_removed.is_empty()
            && self.etc_changed.is_empty()
    }

    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "--- {}\n+++ {}", self.old, self.new);
        if let Some(os) = &self.os {
            let _ = writeln!(s, "os        {} -> {}", os.old, os.new);
        }
        for p in &self.packages_added {
            let _ = writeln!(s, "+ package {p}");
        }
        for p in &self.packages_removed {
            let _ = writeln!(s, "- package {p}");
        }
        for c in &self.packages_changed {
            let _ = writeln!(s, "~ package {} {} -> {}", c.name, c.old, c.new);
        }
        for (sign, list, what) in [
            ("+", &self.kernels_added, "kernel"),
            ("-", &self.kernels_removed, "kernel"),
            ("+", &self.units_enabled, "at boot"),
            ("-", &self.units_disabled, "at boot"),
            ("+", &self.users_added, "user"),
            ("-", &self.users_removed, "user"),
            ("+", &self.etc_added, "file"),
            ("-", &self.etc_removed, "file"),
            ("~", &self.etc_changed, "file"),
        ] {
            for x in list {
                let _ = writeln!(s, "{sign} {what} {x}");
            }
        }
        for p in &self.ssh_ports_added {
            let _ = writeln!(s, "+ sshd port {p}");
        }
        for p in &self.ssh_ports_removed {
            let _ = writeln!(s, "- sshd port {p}");
        }
        for p in &self.firewall_ports_added {
            let _ = writeln!(s, "+ firewall inbound TCP {p}");
        }
        for p in &self.firewall_ports_removed {
            let _ = writeln!(s, "- firewall inbound TCP {p}");
        }
        if self.is_empty() {
            let _ = writeln!(s, "no difference");
        }
        for t in &self.tripped {
            let _ = writeln!(s, "FAIL {t}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_rules() {
        assert!(glob("nvidia-*", "nvidia-driver"));
        assert!(glob("linux-image-?.*", "linux-image-6.1"));
        assert!(!glob("nvidia-*", "libnvidia"));
        assert_eq!(
            "package:nvidia-*".parse(),
            Ok(Rule::Package("nvidia-*".into()))
        );
        assert!("package:".parse::<Rule>().is_err());
        assert!(
            "ports"
                .parse::<Rule>()
                .unwrap_err()
                .contains("kernel, new-port")
        );
        assert_eq!("etc:/etc/ssh/*".parse(), Ok(Rule::Etc("/etc/ssh/*".into())));
    }

    #[test]
    fn etc_files_added_removed_and_changed_trip_their_rule() {
        let doc = |etc: &[(&str, &str)]| -> Inspection {
            serde_json::from_value(serde_json::json!({
                "schema": 1, "subject": "x",
                "os": {"id": "debian", "version_id": "12", "pretty_name": ""},
                "package_db": "dpkg", "packages": [], "kernels": [], "units_enabled": [],
                "users_with_shell": [], "ssh_ports": [22], "components": {},
                "etc": etc.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
            }))
            .unwrap()
        };
        let old = doc(&[
            ("/etc/ssh/sshd_config", "sha256:aa"),
            ("/etc/motd", "sha256:bb"),
            ("/etc/gone", "sha256:cc"),
        ]);
        let new = doc(&[
            ("/etc/ssh/sshd_config", "sha256:ab"),
            ("/etc/motd", "sha256:bb"),
            ("/etc/ssh/sshd_config.d/50-x.conf", "sha256:dd"),
        ]);
        let d = diff(&old, &new, &[Rule::Etc("/etc/ssh/*".into())]);
        assert_eq!(d.etc_changed, ["/etc/ssh/sshd_config"]);
        assert_eq!(d.etc_added, ["/etc/ssh/sshd_config.d/50-x.conf"]);
        assert_eq!(d.etc_removed, ["/etc/gone"]);
        assert_eq!(
            d.tripped,
            [
                "/etc/ssh/sshd_config.d/50-x.conf added",
                "/etc/ssh/sshd_config changed"
            ]
        );
        assert!(d.to_text().contains("~ file /etc/ssh/sshd_config"));
        // A document written before /etc was inspected reads as no files.
        assert!(diff(&old, &old, &[]).is_empty());
        // A port the firewall newly admits trips new-port, as a new sshd port does.
        let mut opened = new.clone();
        opened.firewall.inbound_tcp = vec![22, 6006];
        let mut before = new.clone();
        before.firewall.inbound_tcp = vec![22];
        let d = diff(&before, &opened, &[Rule::NewPort]);
        assert_eq!(d.firewall_ports_added, [6006]);
        assert_eq!(d.tripped, ["firewall admits inbound TCP 6006"]);
        assert!(d.to_text().contains("+ firewall inbound TCP 6006"));
    }
}
