//! What an Azure VM is given at its first boot, made for one boot check
//! (`../shared/DOMAIN.md` §7): a provisioning CD-ROM whose `ovf-env.xml`
//! names an admin user and an SSH public key made for this check, a blank
//! second disk as the resource disk, the SMBIOS identity Azure's datasource
//! looks for (the chassis asset tag and a system UUID), and a network in
//! which the wire server (168.63.129.16), IMDS (169.254.169.254) and an
//! outbound TCP 443 endpoint are reached through QEMU's user network, each
//! connection served by `imgforge boot-stand-in` (`standin`).
//!
//! Why the guest network is 160.0.0.0/4: QEMU forwards a guest connection
//! (`guestfwd`) only to an address inside its user network, and Azure's two
//! fixed addresses are both inside 160.0.0.0/4 (QEMU accepts prefixes 4 to
//! 32). The guest gets 160.0.0.15 by DHCP; `restrict=on` keeps it from
//! reaching anything else.
//!
//! The CD is an ISO 9660 image written by xorriso (the tool Packer's
//! `cd_files` also uses); the key pair by OpenSSH's ssh-keygen, whose client
//! then logs in. Neither is written here by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::BootError;

/// Azure's wire server, fixed in every VNet.
pub const WIRE_SERVER: &str = "168.63.129.16";
/// Azure's Instance Metadata Service.
pub const IMDS: &str = "169.254.169.254";
/// A host-side endpoint the guest reaches on TCP 443 (its outbound check).
pub const EGRESS: &str = "160.0.0.50";
/// The guest's user network: holds both fixed addresses (see the module doc).
pub const GUEST_NET: &str = "net=160.0.0.0/4,host=160.0.0.2,dns=160.0.0.3,dhcpstart=160.0.0.15";
/// The SMBIOS chassis asset tag of an Azure VM: cloud-init's Azure
/// datasource runs only where it reads this (`ChassisAssetTag.AZURE_CLOUD`).
pub const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";
/// The admin user the provisioning creates (the key is made per check).
pub const ADMIN_USER: &str = crate::spec::catalog::PROVISIONED_USER;
/// Size of the blank resource disk (sparse: nothing is allocated).
const RESOURCE_DISK_BYTES: u64 = 2 << 30;

/// Who the guest is: what the provisioning media and the stand-ins say of
/// it. Written as `guest.json` beside them, where each stand-in reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Guest {
    pub user: String,
    pub hostname: String,
    pub vm_id: String,
    pub container_id: String,
    pub instance_id: String,
    /// Twelve upper-case hex digits, as IMDS writes a MAC address.
    pub mac: String,
    pub public_key: String,
    pub location: String,
    pub vm_size: String,
}

impl Guest {
    /// The MAC as QEMU takes it (`60:45:bd:…`).
    pub fn qemu_mac(&self) -> String {
        self.mac
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Everything one boot is given, in `dir`.
pub struct Provisioning {
    pub dir: PathBuf,
    pub guest: Guest,
    pub private_key: PathBuf,
    pub iso: PathBuf,
    pub resource_disk: PathBuf,
    /// Where the stand-ins append what they were asked (`standin::Exchange`).
    pub requests: PathBuf,
}

impl Provisioning {
    /// Makes a fresh identity, key, CD and resource disk in `dir`.
    pub fn prepare(dir: &Path) -> Result<Provisioning, BootError> {
        let io = |what: &str| {
            let what = format!("{what} in {}", dir.display());
            move |source| BootError::Io {
                context: what.clone(),
                source,
            }
        };
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("cd")).map_err(io("making the provisioning directory"))?;
        let private_key = dir.join("id_ed25519");
        run_tool(
            "ssh-keygen",
            "openssh-client",
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "imgforge-boot-check",
                    "-f",
                ])
                .arg(&private_key),
        )?;
        let public_key = std::fs::read_to_string(private_key.with_extension("pub"))
            .map_err(io("reading the boot check's public key"))?
            .trim()
            .to_string();
        let id = random_hex(16).map_err(io("reading /dev/urandom"))?;
        let uuid = |salt: &str| {
            // Distinct, stable per boot: the random id with a fixed tail.
            format!(
                "{}-{}-4{}-8{}-{}{salt}",
                &id[0..8],
                &id[8..12],
                &id[13..16],
                &id[17..20],
                &id[20..28]
            )
        };
        let guest = Guest {
            user: ADMIN_USER.into(),
            hostname: format!("imgforge-{}", &id[..8]),
            vm_id: uuid("b007"),
            container_id: uuid("c0de"),
            instance_id: format!("{}._imgforge-boot", uuid("1d00")),
            // 60:45:bd is an OUI Azure's NICs carry.
            mac: format!("6045BD{}", id[26..32].to_ascii_uppercase()),
            public_key,
            location: "westus2".into(),
            vm_size: "Standard_D2s_v5".into(),
        };
        std::fs::write(dir.join("cd/ovf-env.xml"), ovf_env(&guest))
            .map_err(io("writing ovf-env.xml"))?;
        let guest_json = serde_json::to_vec_pretty(&guest).expect("plain data");
        std::fs::write(dir.join("guest.json"), guest_json).map_err(io("writing guest.json"))?;
        let iso = dir.join("provisioning.iso");
        run_tool(
            "xorriso",
            "xorriso",
            Command::new("xorriso")
                .args([
                    "-as",
                    "mkisofs",
                    "-quiet",
                    "-J",
                    "-r",
                    "-V",
                    "rd_rdfe_stable",
                    "-o",
                ])
                .arg(&iso)
                .arg(dir.join("cd")),
        )?;
        let resource_disk = dir.join("resource-disk.raw");
        std::fs::File::create(&resource_disk)
            .and_then(|f| f.set_len(RESOURCE_DISK_BYTES))
            .map_err(io("making the blank resource disk"))?;
        Ok(Provisioning {
            dir: dir.to_path_buf(),
            requests: dir.join("requests.jsonl"),
            guest,
            private_key,
            iso,
            resource_disk,
        })
    }

    /// QEMU's two `-smbios` values: the system (Microsoft's Virtual Machine,
    /// with this guest's UUID) and the chassis with Azure's asset tag.
    pub fn smbios(&self) -> [String; 2] {
        [
            format!(
                "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine,uuid={}",
                self.guest.vm_id
            ),
            format!("type=3,manufacturer=Microsoft Corporation,asset={AZURE_ASSET_TAG}"),
        ]
    }

    /// QEMU's `-netdev user,…` value: the guest network, SSH and the probed
    /// ports forwarded from loopback, and the Azure endpoints each served by
    /// `stand_in ROLE DIR` per connection; with `proxy`, also the build's
    /// allow-listed proxy (`super::proxy`).
    pub fn netdev(&self, stand_in: &Path, hostfwd: &[(u16, u16)], proxy: bool) -> String {
        let mut v = format!("user,id=n0,restrict=on,{GUEST_NET}");
        for (host, guest) in hostfwd {
            v.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        let cmd = |role: &str| {
            // QEMU splits the command as a shell would (no shell runs it);
            // a comma is doubled for QEMU's own option parser.
            format!(
                "{} boot-stand-in {role} {}",
                shell_quote(&stand_in.display().to_string()),
                shell_quote(&self.dir.display().to_string())
            )
            .replace(',', ",,")
        };
        let mut routes = vec![
            (WIRE_SERVER, 80, "wire"),
            (IMDS, 80, "imds"),
            (EGRESS, 443, "egress"),
        ];
        if proxy {
            routes.push((super::proxy::PROXY_ADDR, super::proxy::PROXY_PORT, "proxy"));
        }
        for (addr, port, role) in routes {
            v.push_str(&format!(",guestfwd=tcp:{addr}:{port}-cmd:{}", cmd(role)));
        }
        v
    }
}

fn run_tool(name: &'static str, package: &'static str, cmd: &mut Command) -> Result<(), BootError> {
    let out = cmd.output().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => BootError::Missing {
            what: name,
            searched: "PATH".into(),
            package,
        },
        _ => BootError::Io {
            context: format!("running {name}"),
            source,
        },
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(BootError::Io {
        context: format!("running {name}"),
        source: std::io::Error::other(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(2000)
                .collect::<String>()
                .trim()
        )),
    })
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A word for GLib's shell-like splitting: single-quoted.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// XML text: the five predefined entities.
pub(super) fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The provisioning document, in the shape of the one Azure attaches
/// (namespaces and elements as cloud-init's `OvfEnvXml` and WALinuxAgent's
/// `OvfEnv` read them): a Linux provisioning set with the user, the host
/// name, key-only SSH, and platform settings that ask for the guest agent.
pub fn ovf_env(g: &Guest) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" xmlns:wa="http://schemas.microsoft.com/windowsazure" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <wa:ProvisioningSection>
    <wa:Version>1.0</wa:Version>
    <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
      <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
      <HostName>{host}</HostName>
      <UserName>{user}</UserName>
      <DisableSshPasswordAuthentication>true</DisableSshPasswordAuthentication>
      <SSH>
        <PublicKeys>
          <PublicKey>
            <Fingerprint></Fingerprint>
            <Path>/home/{user}/.ssh/authorized_keys</Path>
            <Value>{key}</Value>
          </PublicKey>
        </PublicKeys>
      </SSH>
    </LinuxProvisioningConfigurationSet>
  </wa:ProvisioningSection>
  <wa:PlatformSettingsSection>
    <wa:Version>1.0</wa:Version>
    <PlatformSettings xmlns="http://schemas.microsoft.com/windowsazure" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
      <KmsServerHostname>kms.core.windows.net</KmsServerHostname>
      <ProvisionGuestAgent>true</ProvisionGuestAgent>
      <GuestAgentPackageName i:nil="true" />
      <PreprovisionedVm>false</PreprovisionedVm>
    </PlatformSettings>
  </wa:PlatformSettingsSection>
</Environment>
"#,
        host = xml_text(&g.hostname),
        user = xml_text(&g.user),
        key = xml_text(&g.public_key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn guest() -> Guest {
        Guest {
            user: "imgforge".into(),
            hostname: "imgforge-0123abcd".into(),
            vm_id: "0123abcd-4567-489a-8bcd-ef0123456789".into(),
            container_id: "0123abcd-4567-489a-8bcd-ef01234c0de".into(),
            instance_id: "0123abcd-4567-489a-8bcd-ef01234561d00._imgforge-boot".into(),
            mac: "6045BD0A0B0C".into(),
            public_key: "ssh-ed25519 AAAAC3Nza imgforge-boot-check".into(),
            location: "westus2".into(),
            vm_size: "Standard_D2s_v5".into(),
        }
    }

    #[test]
    fn the_ovf_document_carries_the_user_the_key_and_the_agent_request() {
        let mut g = guest();
        g.hostname = "a<b&c".into();
        let x = ovf_env(&g);
        assert!(x.contains("<UserName>imgforge</UserName>"), "{x}");
        assert!(x.contains("<HostName>a&lt;b&amp;c</HostName>"), "{x}");
        assert!(x.contains("<Value>ssh-ed25519 AAAAC3Nza imgforge-boot-check</Value>"));
        assert!(x.contains("<Path>/home/imgforge/.ssh/authorized_keys</Path>"));
        assert!(x.contains("<ProvisionGuestAgent>true</ProvisionGuestAgent>"));
        assert!(x.contains("<PreprovisionedVm>false</PreprovisionedVm>"));
        assert_eq!(g.qemu_mac(), "60:45:bd:0a:0b:0c");
    }

    #[test]
    fn the_netdev_forwards_azures_addresses_to_the_stand_in_and_escapes_commas() {
        let p = Provisioning {
            dir: PathBuf::from("/b/x,y"),
            guest: guest(),
            private_key: PathBuf::new(),
            iso: PathBuf::new(),
            resource_disk: PathBuf::new(),
            requests: PathBuf::new(),
        };
        let v = p.netdev(Path::new("/opt/it's/imgforge"), &[(40022, 22)], false);
        assert!(
            v.starts_with("user,id=n0,restrict=on,net=160.0.0.0/4,"),
            "{v}"
        );
        assert!(v.contains(",hostfwd=tcp:127.0.0.1:40022-:22,"), "{v}");
        assert!(
            v.contains(",guestfwd=tcp:168.63.129.16:80-cmd:'/opt/it'\\''s/imgforge' boot-stand-in wire '/b/x,,y'"),
            "{v}"
        );
        assert!(v.contains("guestfwd=tcp:169.254.169.254:80-cmd:"), "{v}");
        assert!(v.contains("guestfwd=tcp:160.0.0.50:443-cmd:"), "{v}");
        // The boot check has no proxy; a base-image build has one more route.
        assert!(!v.contains("boot-stand-in proxy"), "{v}");
        let b = p.netdev(Path::new("/i"), &[], true);
        assert!(
            b.contains(",guestfwd=tcp:160.0.0.60:3128-cmd:'/i' boot-stand-in proxy '/b/x,,y'"),
            "{b}"
        );
        assert!(!b.contains("hostfwd"), "{b}");
    }
}
