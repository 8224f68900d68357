//! The host firewall an image will start with, read from its configuration
//! files (the image is never booted): which tool, whether it is enabled at
//! boot, its default inbound policy, and the TCP ports its rules admit.
//!
//! - ufw: enabled by `ENABLED=yes` in `/etc/ufw/ufw.conf`; the default
//!   policies in `/etc/default/ufw`; the rules as ufw records them in
//!   `/etc/ufw/user.rules` (`### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in`).
//! - firewalld: enabled when a `*.target.wants/firewalld.service` link exists;
//!   the ports and the ssh service of `/etc/firewalld/zones/public.xml`.
//!
//! The validator's `batch.firewall` check reads the same files against the
//! plan's ports; this is the inventory, with no plan.

use serde::{Deserialize, Serialize};

use crate::validate::checks::{key_value, ufw_allowed};
use crate::validate::rootfs::RootFs;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Firewall {
    /// `ufw`, `firewalld` or `none`.
    pub tool: String,
    pub enabled: bool,
    /// DROP, REJECT or ACCEPT (ufw); firewalld's zones drop what they do not admit.
    pub default_inbound: String,
    pub inbound_tcp: Vec<u16>,
    /// Outbound allow rules (ufw; empty where the default admits all).
    pub outbound_tcp: Vec<u16>,
}

const MAX_FILE: u64 = 1 << 20;

fn text(root: &dyn RootFs, path: &str) -> Option<String> {
    root.read_prefix(path, MAX_FILE)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The TCP ports a firewalld zone file admits (`<port protocol="tcp"
/// port="N"/>`, and 22 for `<service name="ssh"/>`).
pub fn firewalld_allowed(zone: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = zone
        .split('<')
        .filter(|t| t.starts_with("port ") && t.contains("protocol=\"tcp\""))
        .filter_map(|t| {
            let at = t.find("port=\"")? + "port=\"".len();
            t[at..].split('"').next()?.parse().ok()
        })
        .collect();
    if zone.contains("service name=\"ssh\"") {
        ports.push(22);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

pub fn read(root: &dyn RootFs) -> Firewall {
    if let Some(conf) = text(root, "/etc/ufw/ufw.conf") {
        let defaults = text(root, "/etc/default/ufw").unwrap_or_default();
        let rules = text(root, "/etc/ufw/user.rules").unwrap_or_default();
        return Firewall {
            tool: "ufw".into(),
            enabled: key_value(&conf, "ENABLED").as_deref() == Some("yes"),
            default_inbound: key_value(&defaults, "DEFAULT_INPUT_POLICY")
                .unwrap_or_else(|| "DROP".into()),
            inbound_tcp: ufw_allowed(&rules, "in"),
            outbound_tcp: ufw_allowed(&rules, "out"),
        };
    }
    if root.exists("/usr/lib/firewalld") || root.exists("/etc/firewalld") {
        let enabled = root
            .list("/etc/systemd/system")
            .iter()
            .filter(|d| d.ends_with(".wants"))
            .any(|d| root.exists(&format!("/etc/systemd/system/{d}/firewalld.service")));
        let zone = text(root, "/etc/firewalld/zones/public.xml")
            .or_else(|| text(root, "/usr/lib/firewalld/zones/public.xml"))
            .unwrap_or_default();
        return Firewall {
            tool: "firewalld".into(),
            enabled,
            default_inbound: "DROP".into(),
            inbound_tcp: firewalld_allowed(&zone),
            outbound_tcp: Vec::new(),
        };
    }
    Firewall {
        tool: "none".into(),
        enabled: false,
        default_inbound: "ACCEPT".into(),
        ..Firewall::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ufw_rules_as_ufw_records_them() {
        // As this project's images record them (70-firewall.sh, ufw 0.36).
        let rules = "### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n-A ufw-user-input -p tcp --dport 22 -j ACCEPT\n\
                     ### tuple ### allow tcp 6006 0.0.0.0/0 any 0.0.0.0/0 in\n\
                     ### tuple ### allow tcp 443 0.0.0.0/0 any 0.0.0.0/0 out\n\
                     ### tuple ### deny tcp 23 0.0.0.0/0 any 0.0.0.0/0 in\n\
                     ### tuple ### allow tcp 6000:6007 0.0.0.0/0 any 0.0.0.0/0 in\n";
        assert_eq!(ufw_allowed(rules, "in"), [22, 6006]);
        assert_eq!(ufw_allowed(rules, "out"), [443]);
    }

    #[test]
    fn firewalld_zone_ports_and_the_ssh_service() {
        let zone = r#"<?xml version="1.0" encoding="utf-8"?>
<zone><short>Public</short><service name="ssh"/><port protocol="tcp" port="24007"/><port protocol="udp" port="53"/><port port="6006" protocol="tcp"/></zone>"#;
        assert_eq!(firewalld_allowed(zone), [22, 6006, 24007]);
    }
}
