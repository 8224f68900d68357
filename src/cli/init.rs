//! `imgforge init`: a commented starter manifest for a distro and features.
//! The text is written here, key by key, so that its comments can say why;
//! it is parsed with the manifest's own checks before it is written, so an
//! impossible combination (RDMA on a distro without it) is refused with the
//! manifest's own message instead of being left for `plan` to find.

use std::fmt::Write as _;
use std::path::Path;

use crate::cli::args::InitArgs;
use crate::spec::catalog::{self, AgentStatus, Os};
use crate::spec::manifest::{Manifest, ManifestError};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("init: {message}")]
    Refused { message: String, hint: String },
    #[error("init: the manifest it would write is refused by imgforge's own checks:\n{0}")]
    Invalid(Box<ManifestError>),
}

impl crate::util::Hint for InitError {
    fn hint(&self) -> Option<String> {
        match self {
            InitError::Refused { hint, .. } => Some(hint.clone()),
            InitError::Invalid(e) => e.hint(),
        }
    }
}

/// An image name from a file name: lowercase letters, digits and '-'.
fn name_from(stem: &str) -> Option<String> {
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_string();
    (!name.is_empty() && name.len() <= 63 && name != "imgforge").then_some(name)
}

/// The manifest text for `args`, checked as `plan` would check it.
pub fn manifest_text(args: &InitArgs, path: &Path) -> Result<String, InitError> {
    let keys = || {
        catalog::DISTROS
            .iter()
            .map(|d| d.key)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let local = args.builder == "local" || args.base_image.is_some();
    // The local builder from nothing reaches Debian's archive only: its
    // natural distro; from a base image, the distro Batch runs.
    // A base image says what it is: a fixed VHD is read offline for it.
    let from_file = match (&args.distro, &args.base_image) {
        (None, Some(b)) if !b.starts_with("https://") && !b.starts_with("http://") => {
            crate::packer::base::distro_of(Path::new(b)).map(|d| d.key)
        }
        _ => None,
    };
    let key =
        args.distro
            .as_deref()
            .or(from_file)
            .unwrap_or(if local && args.base_image.is_none() {
                "debian-12"
            } else {
                "ubuntu-24.04"
            });
    let distro = catalog::DISTROS
        .iter()
        .find(|d| d.key == key)
        .ok_or_else(|| InitError::Refused {
            message: format!("`{key}` is not a distro imgforge knows"),
            hint: format!("use one of: {} (`imgforge catalog`)", keys()),
        })?;
    if args.base_image.is_some() && distro.azure_base.is_none() {
        return Err(InitError::Refused {
            message: format!("imgforge knows no Azure disk image of {}", distro.key),
            hint: format!(
                "use --distro {}",
                catalog::distro_keys_where(|d| d.azure_base.is_some()).join(" or --distro ")
            ),
        });
    }
    if local && args.base_image.is_none() && distro.local.is_none() {
        let local_ones: Vec<&str> = catalog::DISTROS
            .iter()
            .filter(|d| d.local.is_some())
            .map(|d| d.key)
            .collect();
        let from_base = distro
            .base_download()
            .map(|d| format!("give --base-image FILE ({d}), "))
            .unwrap_or_default();
        return Err(InitError::Refused {
            message: format!(
                "the local builder cannot build {} from scratch (mmdebstrap makes only Debian and Ubuntu roots)",
                distro.key
            ),
            hint: format!(
                "{from_base}use --distro {} with --builder local, or --builder azure-arm",
                local_ones.join(" or --distro ")
            ),
        });
    }
    // A gallery image version, local or not: the only custom image Batch
    // makes pools from. A local build stops before publishing with
    // `--no-publish`, so the default needs no Azure account to try.
    let target = args.target.clone().unwrap_or_else(|| "gallery".to_string());
    let name = args
        .name
        .clone()
        .or_else(|| {
            path.file_stem()
                .and_then(|s| s.to_str())
                .filter(|_| path != Path::new("-"))
                .and_then(name_from)
        })
        .or_else(|| name_from(&format!("{}-batch", distro.key.replace('.', ""))))
        .unwrap_or_else(|| "batch-image".to_string());
    let os = match distro.os {
        Os::Linux => "linux",
        Os::Windows => "windows",
    };
    let agent = match distro.agent_status(&crate::spec::plan::today()) {
        // Only what a primary source confirms is called supported.
        AgentStatus::Supported if !distro.node_agent_verified => {
            "no Batch node agent confirmed for it: a development image; set node_agent to what `imgforge skus --online` lists".to_string()
        }
        AgentStatus::Supported => "supported".to_string(),
        AgentStatus::Ends { date, .. } => format!("new pools until {date}"),
        AgentStatus::Retired { date, .. } => {
            format!("RETIRED {date}: no new pools, build needs --allow-retired")
        }
    };
    let gpu_size = args.gpu || args.rdma.is_some();

    let mut t = String::new();
    let shown = if path == Path::new("-") {
        // Printed, not written: `plan` reads a file, not standard input.
        "FILE.toml".to_string()
    } else {
        crate::util::text::shell_quote(&path.display().to_string())
    };
    let _ = writeln!(
        t,
        "# A Batch image manifest written by `imgforge init` (imgforge {}).\n\
         # See what it builds with `imgforge plan {shown}`; build it with `imgforge build`.\n\
         # The README's \"The manifest\" section describes every key.\n",
        env!("CARGO_PKG_VERSION"),
    );
    if from_file.is_some() {
        let _ = writeln!(
            t,
            "# image.distro was read from the base image's /etc/os-release"
        );
    }
    let _ = writeln!(t, "[image]");
    let _ = writeln!(t, "name = \"{name}\"");
    let _ = writeln!(t, "os = \"{os}\"");
    let _ = writeln!(
        t,
        "distro = \"{}\"                # node agent `{}` ({agent}); `imgforge catalog` lists the others\n",
        distro.key, distro.node_agent
    );
    let _ = writeln!(t, "[build]");
    if local {
        let _ = writeln!(
            t,
            "builder = \"local\"             # built on this machine ({}, QEMU boot check); no Azure VM",
            if args.base_image.is_some() {
                "the base image under Packer's qemu builder"
            } else {
                "mmdebstrap"
            }
        );
    }
    match target.as_str() {
        "gallery" => {
            let _ = writeln!(
                t,
                "target = \"gallery\"            # a Compute Gallery image version: what Batch pools name today (arm_image_id)"
            );
        }
        "managed_image" => {
            let _ = writeln!(
                t,
                "target = \"managed_image\"      # LEGACY: no Batch pool is made from a managed image since 2026-03-31; \"gallery\" makes pools"
            );
        }
        _ => {
            let _ = writeln!(
                t,
                "target = \"vhd\"                # a VHD alone: transport to a gallery, or for other tools; it makes no Batch pool (since 2026-03-31)"
            );
        }
    }
    let publishing = target != "vhd";
    if !local || publishing {
        let _ = writeln!(
            t,
            "location = \"westus2\"          # the region the image is made in (the Batch account's, usually)"
        );
        let _ = writeln!(
            t,
            "resource_group = \"imgforge-images\"   # must exist: az group create -n imgforge-images -l westus2"
        );
    }
    if !local {
        let _ = writeln!(
            t,
            "vm_size = \"{}\"   # the build VM; the pool's own size for GPU/RDMA images, so drivers can be checked",
            if args.rdma.is_some() {
                "Standard_HB120rs_v3"
            } else if gpu_size {
                "Standard_NC4as_T4_v3"
            } else {
                "Standard_D2s_v5"
            }
        );
    }
    if local && publishing {
        let _ = writeln!(
            t,
            "storage_account = \"imgforgestage\"   # the VHD is uploaded here first (same region)"
        );
    }
    if target == "managed_image" || (target == "gallery" && !local) {
        let _ = writeln!(t, "managed_image_name = \"{name}-1-0-0\"");
    }
    if target == "vhd" && !local {
        let _ = writeln!(
            t,
            "storage_account = \"imgforgebuild\"   # Packer writes the VHD here\ncapture_container = \"images\""
        );
    }
    if local {
        let _ = writeln!(
            t,
            "\n[build.local]\ndisk_gib = 30                  # sparse: about 1 GiB is allocated\nboot_check = \"both\"           # bios | uefi | both | off"
        );
    }
    if let Some(base) = &args.base_image {
        // A file as an absolute path: the manifest may be written elsewhere.
        let base = if base.starts_with("https://") || base.starts_with("http://") {
            base.clone()
        } else {
            std::path::absolute(base).map_or(base.clone(), |p| p.display().to_string())
        };
        let _ = writeln!(
            t,
            "base_image = {}   # booted under QEMU, provisioned as on Azure; {}\n# allow_hosts = []              # what the build VM may reach [default: the distro's archives and the features' vendor repositories]",
            toml::Value::String(base.clone()),
            distro.base_download().unwrap_or_default()
        );
    }
    if target == "gallery" {
        let _ = writeln!(
            t,
            "\n[build.gallery]\nname = \"imgforge_gallery\"      # must exist: az sig create -g imgforge-images -r imgforge_gallery\nimage_definition = \"{name}\"   # {}\nversion = \"1.0.0\"\nreplication_regions = [\"westus2\"]",
            if local {
                "created when absent (generalized, Generation 2, TrustedLaunchSupported)"
            } else {
                "must exist (az sig image-definition create …)"
            }
        );
    }
    let _ = writeln!(t, "\n[features]");
    if local && (args.base_image.is_none() || distro.os_release_id == "debian") {
        // The local builder's root reaches Debian's archive, not Docker's;
        // a Debian base gets Debian's docker.io as the root does.
        let _ = writeln!(
            t,
            "# SSH and Docker are always built in.\ndocker = {{ source = \"distro\" }}   # Debian's docker.io: this machine reaches Debian's archive, not Docker's"
        );
    } else {
        let _ = writeln!(
            t,
            "# SSH and Docker are always built in; docker = {{ version = \"…\" }} pins Docker."
        );
    }
    if args.gpu {
        // Debian's own non-free driver (DKMS) builds offline from its archive;
        // elsewhere NVIDIA's repository is the source.
        let (toolkit, source) = if distro.os_release_id == "debian" {
            // Debian packages no NVIDIA container toolkit.
            ("false", ", source = \"distro\"")
        } else {
            ("true", "")
        };
        let _ = writeln!(
            t,
            "gpu = {{ driver = \"535\", container_toolkit = {toolkit}{source} }}   # NVIDIA driver branch and the container toolkit"
        );
    }
    if let Some(r) = &args.rdma {
        let _ = writeln!(
            t,
            "rdma = \"{r}\"                   # nd (Network Direct) or sriov (HB/HC, NDv2 and later)"
        );
    }
    let _ = writeln!(t, "nfs = {}", args.nfs);
    if let Some(g) = &args.glusterfs {
        let _ = writeln!(t, "glusterfs = \"{g}\"");
    }
    let _ = writeln!(
        t,
        "\n[firewall]\ninbound_tcp = []               # on top of SSH (22); Batch's simplified node communication needs no inbound port\n\n[pool]\ndedicated = 10                 # the pool's peak size decides gallery replicas (one per 300 nodes)\nlow_priority = 0\n# autoscale_max = 100"
    );
    let _ = writeln!(
        t,
        "\n[replicate]\nregion = \"westus2\"             # the Batch account's region{}",
        if target == "vhd" {
            "\nstorage_accounts = [\"imgforgerep1\"]   # legacy copies: one per 40 nodes, all in that region\ncontainer = \"images\""
        } else {
            ": always one of the gallery version's target regions"
        }
    );
    Manifest::parse(path, t.clone()).map_err(|e| InitError::Invalid(Box::new(e)))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_come_from_file_names() {
        assert_eq!(
            super::name_from("GPU_Image.v2").as_deref(),
            Some("gpu-image-v2")
        );
        assert_eq!(super::name_from("imgforge"), None);
        assert_eq!(super::name_from("__"), None);
    }
}
