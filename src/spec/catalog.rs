//! The single source of truth for distros and features.
//!
//! Rendering reads these tables to decide which packages, services, ports and
//! files each provisioner script handles; the offline validator reads the very
//! same tables to derive its checks. Adding a package here changes both, so the
//! scripts and the checks cannot drift apart.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Linux,
    Windows,
}

impl Os {
    /// Azure Storage throttling: one VHD serves at most this many VMs.
    pub fn vms_per_vhd(self) -> u32 {
        match self {
            Os::Linux => 40,
            Os::Windows => 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageFamily {
    Apt,
    Yum,
    Dnf,
    /// Windows has no package manager the scripts drive.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostFirewall {
    Ufw,
    Firewalld,
    /// Windows Defender Firewall; not driven by the Linux scripts.
    Windows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MarketplaceImage {
    pub publisher: &'static str,
    pub offer: &'static str,
    pub sku: &'static str,
    /// The SKU is a Generation 2 (UEFI) image: what an azure-arm build from
    /// it publishes, and what most of today's Batch VM sizes boot.
    pub gen2: bool,
    /// The image's Marketplace purchase plan, where it has one.
    pub plan: Option<PurchasePlan>,
}

/// A Marketplace image's purchase plan. A VM made from such an image (Packer's
/// build VM too) must name it, every image built from it keeps it, a gallery
/// image definition of such an image must repeat it (Learn: batch-sig-images,
/// "purchase plan identical to the base's"), and each subscription that
/// creates VMs from it must have accepted its terms once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PurchasePlan {
    pub publisher: &'static str,
    pub product: &'static str,
    pub name: &'static str,
}

impl PurchasePlan {
    /// The command that accepts the plan's terms for the current subscription.
    pub fn accept_terms(&self) -> String {
        format!(
            "az vm image terms accept --publisher {} --offer {} --plan {}",
            self.publisher, self.product, self.name
        )
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Distro {
    pub key: &'static str,
    pub os: Os,
    pub base_image: MarketplaceImage,
    /// Azure HPC image with the InfiniBand stack (OFED) preinstalled; used as the
    /// base when RDMA is asked for, and required for SR-IOV.
    pub hpc_base_image: Option<MarketplaceImage>,
    pub node_agent: &'static str,
    pub family: PackageFamily,
    pub firewall: HostFirewall,
    /// Where waagent mounts the resource disk; Batch Shipyard accepts only these.
    pub ephemeral_mount: &'static str,
    pub docker_data_root: &'static str,
    /// `ID` and `VERSION_ID` of /etc/os-release.
    pub os_release_id: &'static str,
    pub os_release_version: &'static str,
    pub ssh_service: &'static str,
    /// Path segment of NVIDIA's CUDA and container repositories for this distro.
    pub nvidia_repo: &'static str,
    /// Packages whose upgrade would break an out-of-tree kernel module.
    pub kernel_packages: &'static [&'static str],
    /// Ubuntu's codename, used in apt repository lines.
    pub codename: &'static str,
    /// Whether a primary source (the Batch team's notices or the service's
    /// `supportedimages` list) names this node agent; `plan` warns when not.
    pub node_agent_verified: bool,
    /// When Azure Batch stops (or stopped) creating pools with this node agent,
    /// from the Batch team's retirement notices.
    pub agent_end: Option<AgentEnd>,
    /// How the local builder makes this distro's base root; `None` where no
    /// local build is possible (RPM distros: no mmdebstrap; Windows).
    pub local: Option<LocalBase>,
    /// The distro's own Azure disk image, which the local builder boots and
    /// provisions (`[build.local] base_image`); `None` where there is none.
    pub azure_base: Option<AzureBase>,
}

/// Where a distro's Azure disk image comes from, for a local build from it.
/// The OS the file must report is the distro's `os_release_*`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AzureBase {
    /// Who publishes it and where a user downloads it.
    pub download: &'static str,
    /// The package archives the build VM may reach through the allow-listed
    /// proxy when the manifest names no `allow_hosts`.
    pub archive_hosts: &'static [&'static str],
    /// Whether a build from this base ran in imgforge's CI (only Debian's
    /// archive is reachable there).
    pub tested: bool,
}

/// The end of a node agent's support for new pools.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AgentEnd {
    /// YYYY-MM-DD: no new pool from this day on (existing pools may still scale).
    pub date: &'static str,
    /// Where the date comes from.
    pub source: &'static str,
}

/// A node agent's state on a given day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AgentStatus {
    Supported,
    /// Still usable for new pools, until `date`.
    Ends {
        date: &'static str,
        source: &'static str,
    },
    /// No new pools since `date`.
    Retired {
        date: &'static str,
        source: &'static str,
    },
}

impl Distro {
    /// Where this distro's Azure disk image is downloaded, in words.
    pub fn base_download(&self) -> Option<String> {
        self.azure_base
            .map(|b| b.download.replace("<codename>", self.codename))
    }

    /// `today` is YYYY-MM-DD; ISO dates compare as strings.
    pub fn agent_status(&self, today: &str) -> AgentStatus {
        match self.agent_end {
            None => AgentStatus::Supported,
            Some(e) if today >= e.date => AgentStatus::Retired {
                date: e.date,
                source: e.source,
            },
            Some(e) => AgentStatus::Ends {
                date: e.date,
                source: e.source,
            },
        }
    }
}

/// The distro that owns a node agent id (case-insensitive), if the catalog knows it.
pub fn distro_by_agent(agent: &str) -> Option<&'static Distro> {
    DISTROS
        .iter()
        .find(|d| d.node_agent.eq_ignore_ascii_case(agent.trim()))
}

/// What to build for a pool created `today`, named in retirement warnings:
/// the Linux distros whose node agent a primary source names and Batch has
/// not retired, read from [`DISTROS`] (no hand-written copy of the dates).
pub fn current_linux(today: &str) -> String {
    // Distros sharing a node agent are named together: "almalinux-9/rocky-9
    // (batch.node.el 9)".
    let mut groups: Vec<(Vec<&str>, String)> = Vec::new();
    for d in DISTROS
        .iter()
        .filter(|d| d.os == Os::Linux && d.node_agent_verified)
    {
        let agent = match d.agent_status(today) {
            AgentStatus::Supported => d.node_agent.to_string(),
            AgentStatus::Ends { date, .. } => format!("{}, until {date}", d.node_agent),
            AgentStatus::Retired { .. } => continue,
        };
        match groups.iter_mut().find(|(_, a)| *a == agent) {
            Some((keys, _)) => keys.push(d.key),
            None => groups.push((vec![d.key], agent)),
        }
    }
    let names: Vec<String> = groups
        .iter()
        .map(|(keys, agent)| format!("{} ({agent})", keys.join("/")))
        .collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "a distro your Batch account lists (`imgforge skus --online`)".to_string(),
    }
}

/// What the local builder needs to make a distro's root with mmdebstrap: the
/// archive, its keyring, and the packages that stand in for what a
/// marketplace image already has (kernel, agent, SSH, bootloader binaries).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LocalBase {
    pub suite: &'static str,
    pub mirror: &'static str,
    /// Keyring that signs the archive; empty means mmdebstrap's default
    /// (the host's Debian keyring).
    pub keyring: &'static str,
    /// The distro's cloud kernel, as its cloud images ship it.
    pub kernel: &'static str,
    /// Kernel headers for DKMS modules (the GPU driver).
    pub kernel_headers: &'static str,
    /// The Azure Linux agent's package name.
    pub agent: &'static str,
    /// The security archive, used with the distro's default mirror.
    pub security: &'static str,
    /// Whether this archive is reachable from imgforge's CI (Debian's is;
    /// Ubuntu's is not), so the README can say what is tested.
    pub tested: bool,
}

/// Packages of every local base root besides the kernel and the agent:
/// a booting systemd system with DHCP networking, SSH, cloud-init (as Azure's
/// images provision through it) and the GRUB binaries for BIOS and UEFI.
pub const LOCAL_BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "initramfs-tools",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "openssh-server",
    "ifupdown",
    "isc-dhcp-client",
    "netbase",
    "iproute2",
    "cloud-init",
    // Azure's admin user becomes root through sudo (cloud-init grants it
    // NOPASSWD); without it the provisioned user cannot administer the node.
    "sudo",
    "e2fsprogs",
    "ca-certificates",
    // The local distros' host firewall, in the base as on Azure's images: the
    // firewall script runs without network (its own namespace), so that ufw's
    // netfilter probes reach no kernel but a throwaway namespace's.
    "ufw",
];

pub const DISTROS: &[Distro] = &[
    ubuntu(
        "ubuntu-16.04",
        MarketplaceImage {
            publisher: "Canonical",
            offer: "UbuntuServer",
            sku: "16.04-LTS",
            gen2: false,
            plan: None,
        },
        None,
        "batch.node.ubuntu 16.04",
        "16.04",
        "ubuntu1604",
        "xenial",
        Some(AgentEnd {
            date: "2021-05-21",
            source: "Azure/Batch issue 106 (batch.node.ubuntu 16.04 retirement)",
        }),
    ),
    ubuntu(
        "ubuntu-18.04",
        MarketplaceImage {
            publisher: "Canonical",
            offer: "UbuntuServer",
            sku: "18.04-LTS",
            gen2: false,
            plan: None,
        },
        None,
        "batch.node.ubuntu 18.04",
        "18.04",
        "ubuntu1804",
        "bionic",
        Some(AgentEnd {
            date: "2023-05-30",
            source: "Azure/Batch issue 152 (batch.node.ubuntu 18.04 retirement)",
        }),
    ),
    ubuntu(
        "ubuntu-20.04",
        MarketplaceImage {
            publisher: "Canonical",
            offer: "0001-com-ubuntu-server-focal",
            sku: "20_04-lts",
            gen2: false,
            plan: None,
        },
        Some(MarketplaceImage {
            publisher: "microsoft-dsvm",
            offer: "ubuntu-hpc",
            sku: "2004",
            gen2: true,
            plan: None,
        }),
        "batch.node.ubuntu 20.04",
        "20.04",
        "ubuntu2004",
        "focal",
        Some(AgentEnd {
            date: "2025-04-23",
            source: "Azure/Batch issue 174 (batch.node.ubuntu 20.04 retirement)",
        }),
    ),
    ubuntu(
        "ubuntu-22.04",
        MarketplaceImage {
            publisher: "Canonical",
            offer: "0001-com-ubuntu-server-jammy",
            sku: "22_04-lts-gen2",
            gen2: true,
            plan: None,
        },
        Some(MarketplaceImage {
            publisher: "microsoft-dsvm",
            offer: "ubuntu-hpc",
            sku: "2204",
            gen2: true,
            plan: None,
        }),
        "batch.node.ubuntu 22.04",
        "22.04",
        "ubuntu2204",
        "jammy",
        Some(AgentEnd {
            date: "2027-06-30",
            source: "Azure/Batch issue 200 (batch.node.ubuntu 22.04 end of support, notice of 2026-05)",
        }),
    ),
    ubuntu(
        "ubuntu-24.04",
        MarketplaceImage {
            publisher: "Canonical",
            offer: "ubuntu-24_04-lts",
            sku: "server",
            gen2: true,
            plan: None,
        },
        Some(MarketplaceImage {
            publisher: "microsoft-dsvm",
            offer: "ubuntu-hpc",
            sku: "2404",
            gen2: true,
            plan: None,
        }),
        "batch.node.ubuntu 24.04",
        "24.04",
        "ubuntu2404",
        "noble",
        None,
    ),
    Distro {
        key: "debian-12",
        os: Os::Linux,
        base_image: MarketplaceImage {
            publisher: "Debian",
            offer: "debian-12",
            sku: "12-gen2",
            gen2: true,
            plan: None,
        },
        hpc_base_image: None,
        // No primary source names a Debian 12 node agent (DOMAIN §6): set
        // `[image] node_agent` to what `skus --online` lists for your account.
        node_agent: "batch.node.debian 12",
        family: PackageFamily::Apt,
        firewall: HostFirewall::Ufw,
        // Debian's waagent.conf ships ResourceDisk.MountPoint=/mnt/resource,
        // the non-Ubuntu path Batch Shipyard accepts.
        ephemeral_mount: "/mnt/resource",
        docker_data_root: "/mnt/resource/docker",
        os_release_id: "debian",
        os_release_version: "12",
        ssh_service: "ssh",
        nvidia_repo: "debian12",
        kernel_packages: &["linux-image-cloud-amd64", "linux-headers-cloud-amd64"],
        codename: "bookworm",
        node_agent_verified: false,
        agent_end: None,
        local: Some(LocalBase {
            suite: "bookworm",
            mirror: "http://deb.debian.org/debian",
            keyring: "",
            kernel: "linux-image-cloud-amd64",
            kernel_headers: "linux-headers-cloud-amd64",
            agent: "waagent",
            security: "http://deb.debian.org/debian-security",
            tested: true,
        }),
        azure_base: Some(AzureBase {
            download: "Debian's Azure cloud image: https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-azure-amd64.tar.xz (a disk.raw inside), or a VHD imgforge built",
            archive_hosts: &["deb.debian.org"],
            tested: true,
        }),
    },
    Distro {
        key: "centos-7",
        os: Os::Linux,
        base_image: MarketplaceImage {
            publisher: "OpenLogic",
            offer: "CentOS",
            sku: "7_9",
            gen2: false,
            plan: None,
        },
        hpc_base_image: Some(MarketplaceImage {
            publisher: "OpenLogic",
            offer: "CentOS-HPC",
            sku: "7_9",
            gen2: false,
            plan: None,
        }),
        node_agent: "batch.node.centos 7",
        family: PackageFamily::Yum,
        firewall: HostFirewall::Firewalld,
        ephemeral_mount: "/mnt/resource",
        docker_data_root: "/mnt/resource/docker",
        os_release_id: "centos",
        os_release_version: "7",
        ssh_service: "sshd",
        nvidia_repo: "rhel7",
        kernel_packages: &["kernel", "kernel-devel", "kernel-headers"],
        codename: "",
        node_agent_verified: true,
        agent_end: Some(AgentEnd {
            date: "2024-12-31",
            source: "Azure/Batch issue 180 (final reminder: no new pools after 2024-12-31)",
        }),
        local: None,
        azure_base: None,
    },
    el(
        "almalinux-8",
        "almalinux",
        "8",
        MarketplaceImage {
            publisher: "almalinux",
            offer: "almalinux-x86_64",
            sku: "8-gen2",
            gen2: true,
            plan: None,
        },
        Some(MarketplaceImage {
            publisher: "almalinux",
            offer: "almalinux-hpc",
            sku: "8_10-hpc-gen2",
            gen2: true,
            plan: None,
        }),
        Some(AzureBase {
            download: "AlmaLinux's Azure image: https://repo.almalinux.org/almalinux/8/cloud/x86_64/images/ (the file named Azure), or a VHD exported from a managed disk made from the Marketplace image",
            archive_hosts: &["repo.almalinux.org", "mirrors.almalinux.org"],
            tested: false,
        }),
    ),
    el(
        "almalinux-9",
        "almalinux",
        "9",
        MarketplaceImage {
            publisher: "almalinux",
            offer: "almalinux-x86_64",
            sku: "9-gen2",
            gen2: true,
            plan: None,
        },
        Some(MarketplaceImage {
            publisher: "almalinux",
            offer: "almalinux-hpc",
            sku: "9-hpc-gen2",
            gen2: true,
            plan: None,
        }),
        Some(AzureBase {
            download: "AlmaLinux's Azure image: https://repo.almalinux.org/almalinux/9/cloud/x86_64/images/ (the file named Azure), or a VHD exported from a managed disk made from the Marketplace image",
            archive_hosts: &["repo.almalinux.org", "mirrors.almalinux.org"],
            tested: false,
        }),
    ),
    // Red Hat's pay-as-you-go images carry no purchase plan (billing is by
    // the image's own meter); their packages come from Red Hat's update
    // infrastructure on Azure, which no machine outside Azure reaches, so
    // there is no local build from a downloaded RHEL disk.
    el(
        "rhel-8",
        "rhel",
        "8",
        MarketplaceImage {
            publisher: "RedHat",
            offer: "RHEL",
            sku: "8-lvm-gen2",
            gen2: true,
            plan: None,
        },
        None,
        None,
    ),
    el(
        "rhel-9",
        "rhel",
        "9",
        MarketplaceImage {
            publisher: "RedHat",
            offer: "RHEL",
            sku: "9-lvm-gen2",
            gen2: true,
            plan: None,
        },
        None,
        None,
    ),
    // Rocky Linux from its foundation (RESF) carries a purchase plan whose
    // name is the SKU and product the offer (`az vm image show --urn
    // resf:rockylinux-x86_64:9-base:latest --query plan`, as quoted in
    // Microsoft's Azure/ArtistAnywhere scripts and the muchos docs). 9-base is
    // Generation 2 (it boots the Gen2-only Dsv6 sizes). Rocky 8's SKU is not
    // in this table: no source we found says its generation.
    el(
        "rocky-9",
        "rocky",
        "9",
        MarketplaceImage {
            publisher: "resf",
            offer: "rockylinux-x86_64",
            sku: "9-base",
            gen2: true,
            plan: Some(PurchasePlan {
                publisher: "resf",
                product: "rockylinux-x86_64",
                name: "9-base",
            }),
        },
        None,
        Some(AzureBase {
            download: "Rocky Linux's Azure image: https://dl.rockylinux.org/pub/rocky/9/images/x86_64/ (the file named Azure; it carries no purchase plan), or a VHD exported from a managed disk made from the Marketplace image",
            archive_hosts: &["dl.rockylinux.org", "mirrors.rockylinux.org"],
            tested: false,
        }),
    ),
    windows("windows-2019", "2019-datacenter-core-g2"),
    windows("windows-2022", "2022-datacenter-core-g2"),
    windows("windows-2025", "2025-datacenter-core-g2"),
];

/// Windows Server (Server Core, Generation 2): Batch's one Windows node agent.
const fn windows(key: &'static str, sku: &'static str) -> Distro {
    Distro {
        key,
        os: Os::Windows,
        base_image: MarketplaceImage {
            publisher: "MicrosoftWindowsServer",
            offer: "WindowsServer",
            sku,
            gen2: true,
            plan: None,
        },
        hpc_base_image: None,
        node_agent: "batch.node.windows amd64",
        family: PackageFamily::None,
        firewall: HostFirewall::Windows,
        ephemeral_mount: "D:\\",
        docker_data_root: "",
        os_release_id: "",
        os_release_version: "",
        ssh_service: "",
        nvidia_repo: "",
        kernel_packages: &[],
        codename: "",
        node_agent_verified: true,
        agent_end: None,
        local: None,
        azure_base: None,
    }
}

/// An Enterprise Linux distro (RHEL and its rebuilds): Batch's
/// `batch.node.el` agent, dnf, firewalld, XFS roots.
const fn el(
    key: &'static str,
    os_release_id: &'static str,
    version: &'static str,
    base_image: MarketplaceImage,
    hpc_base_image: Option<MarketplaceImage>,
    azure_base: Option<AzureBase>,
) -> Distro {
    let (node_agent, nvidia_repo) = match version.as_bytes() {
        b"8" => ("batch.node.el 8", "rhel8"),
        _ => ("batch.node.el 9", "rhel9"),
    };
    Distro {
        key,
        os: Os::Linux,
        base_image,
        hpc_base_image,
        node_agent,
        family: PackageFamily::Dnf,
        firewall: HostFirewall::Firewalld,
        ephemeral_mount: "/mnt/resource",
        docker_data_root: "/mnt/resource/docker",
        os_release_id,
        os_release_version: version,
        ssh_service: "sshd",
        nvidia_repo,
        kernel_packages: &["kernel", "kernel-core", "kernel-modules", "kernel-devel"],
        codename: "",
        node_agent_verified: true,
        agent_end: None,
        local: None,
        azure_base,
    }
}

#[allow(clippy::too_many_arguments)]
const fn ubuntu(
    key: &'static str,
    base_image: MarketplaceImage,
    hpc_base_image: Option<MarketplaceImage>,
    node_agent: &'static str,
    version: &'static str,
    nvidia_repo: &'static str,
    codename: &'static str,
    agent_end: Option<AgentEnd>,
) -> Distro {
    Distro {
        key,
        os: Os::Linux,
        base_image,
        hpc_base_image,
        node_agent,
        family: PackageFamily::Apt,
        firewall: HostFirewall::Ufw,
        ephemeral_mount: "/mnt",
        docker_data_root: "/mnt/docker",
        os_release_id: "ubuntu",
        os_release_version: version,
        ssh_service: "ssh",
        nvidia_repo,
        kernel_packages: &[
            "linux-image-azure",
            "linux-headers-azure",
            "linux-azure",
            "linux-image-generic",
            "linux-headers-generic",
        ],
        codename,
        node_agent_verified: true,
        agent_end,
        local: Some(LocalBase {
            suite: codename,
            mirror: "http://archive.ubuntu.com/ubuntu",
            keyring: "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
            kernel: "linux-image-azure",
            kernel_headers: "linux-headers-azure",
            agent: "walinuxagent",
            security: "http://security.ubuntu.com/ubuntu",
            tested: false,
        }),
        azure_base: Some(AzureBase {
            download: "Canonical's Azure cloud image: https://cloud-images.ubuntu.com/<codename>/current/<codename>-server-cloudimg-amd64-azure.vhd.tar.gz (a VHD inside)",
            archive_hosts: &[
                "azure.archive.ubuntu.com",
                "archive.ubuntu.com",
                "security.ubuntu.com",
            ],
            tested: false,
        }),
    }
}

pub fn distro(key: &str) -> Option<&'static Distro> {
    DISTROS.iter().find(|d| d.key == key)
}

/// The keys of the distros that have `what`, for "use one of: …" hints.
pub fn distro_keys_where(what: impl Fn(&Distro) -> bool) -> Vec<&'static str> {
    DISTROS.iter().filter(|d| what(d)).map(|d| d.key).collect()
}

pub fn distro_keys() -> Vec<&'static str> {
    DISTROS.iter().map(|d| d.key).collect()
}

/// Inbound TCP ports every image opens: SSH (RDP on Windows), what users
/// and Batch Shipyard reach nodes with. Batch's simplified node communication
/// model needs no inbound port; the classic model's 29876/29877 (retired,
/// [`CLASSIC_BATCH_PORTS`]) are opened only when a manifest lists them.
pub fn required_inbound_tcp(os: Os) -> &'static [u16] {
    match os {
        Os::Linux => &[22],
        Os::Windows => &[3389],
    }
}

/// The classic node communication model's inbound ports (Batch's node agent
/// was reached on them until the model's retirement).
pub const CLASSIC_BATCH_PORTS: &[u16] = &[29876, 29877];

/// When the classic node communication model was retired, and where that is said.
pub const CLASSIC_MODEL_RETIRED: Retirement = Retirement {
    date: "2026-03-31",
    source: "Learn: simplified-compute-node-communication (classic model retired 2026-03-31)",
};

/// A dated end of something Azure Batch accepted, with its source.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Retirement {
    pub date: &'static str,
    pub source: &'static str,
}

/// Pools from VHD blobs (`image_uris`, `osDisk.imageUris`) and from managed
/// images: Batch makes custom-image pools only from Compute Gallery image
/// versions since this date.
pub const NON_GALLERY_POOLS_RETIRED: Retirement = Retirement {
    date: "2026-03-31",
    source: "Learn: batch-custom-image-pools-to-azure-compute-gallery-migration-guide (\"all custom image sources other than Azure Compute Gallery will be retired\")",
};
/// Replicas of one gallery image version in one region: Azure's limit.
pub const MAX_REPLICAS: u32 = 100;

/// Outbound TCP ports every node needs (Azure Storage over HTTPS).
pub const REQUIRED_OUTBOUND_TCP: &[u16] = &[443];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureId {
    Ssh,
    Docker,
    Gpu,
    RdmaNd,
    RdmaSriov,
    Nfs,
    GlusterfsClient,
    GlusterfsServer,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerFamily {
    pub apt: &'static [&'static str],
    pub yum: &'static [&'static str],
    pub dnf: &'static [&'static str],
}

impl PerFamily {
    pub fn for_family(&self, family: PackageFamily) -> &'static [&'static str] {
        match family {
            PackageFamily::Apt => self.apt,
            PackageFamily::Yum => self.yum,
            PackageFamily::Dnf => self.dnf,
            PackageFamily::None => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AtBoot {
    Enabled,
    /// Disabled when its data lives on the ephemeral disk, which is not mounted
    /// yet at boot; Batch Shipyard starts it after the disk is up.
    DisabledWhenOnEphemeralDisk,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServiceRule {
    /// `None` means the distro's SSH service name (ssh or sshd).
    pub unit: Option<&'static str>,
    pub at_boot: AtBoot,
}

/// Something the feature must leave in the image; the offline validator checks it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FileRule {
    /// Any one of these paths must exist (distros put binaries in different places).
    pub any_of: &'static [&'static str],
    /// When set, the file must contain this text.
    pub contains: Option<&'static str>,
    /// Wording mirrors Batch Shipyard's node preparation messages.
    pub missing_message: &'static str,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Feature {
    pub id: FeatureId,
    /// Template rendered for this feature, relative to `templates/`.
    pub script: &'static str,
    pub packages: PerFamily,
    pub services: &'static [ServiceRule],
    pub inbound_tcp: &'static [u16],
    pub files: &'static [FileRule],
    /// Commands the in-VM check script runs on the build VM, before deprovisioning.
    pub vm_checks: &'static [VmCheck],
}

/// A command that must succeed on the build VM; mirrors Batch Shipyard's node
/// preparation checks and their messages.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VmCheck {
    pub command: &'static str,
    pub message: &'static str,
    /// Only meaningful on a VM size with the hardware (GPU, InfiniBand).
    pub needs_hardware: bool,
    /// Needs a booted system (a running daemon): skipped, never passed, when
    /// the scripts run in a root (the local builder).
    pub needs_boot: bool,
}

pub const FEATURES: &[Feature] = &[
    Feature {
        id: FeatureId::Ssh,
        script: "scripts/10-ssh.sh.tera",
        packages: PerFamily {
            apt: &["openssh-server"],
            yum: &["openssh-server"],
            dnf: &["openssh-server"],
        },
        services: &[ServiceRule {
            unit: None,
            at_boot: AtBoot::Enabled,
        }],
        inbound_tcp: &[22],
        files: &[FileRule {
            any_of: &["/usr/sbin/sshd"],
            contains: None,
            missing_message: "SSH server not installed",
        }],
        vm_checks: &[VmCheck {
            // sshd wants its privilege separation directory, which ssh.service
            // makes at start: make it first, so the check also runs in a root.
            command: "install -d -m 0755 /run/sshd && sshd -t",
            message: "SSH server configuration is invalid",
            needs_hardware: false,
            needs_boot: false,
        }],
    },
    Feature {
        id: FeatureId::Docker,
        script: "scripts/20-docker.sh.tera",
        packages: PerFamily {
            apt: &["docker-ce", "docker-ce-cli", "containerd.io"],
            yum: &["docker-ce", "docker-ce-cli", "containerd.io"],
            dnf: &["docker-ce", "docker-ce-cli", "containerd.io"],
        },
        services: &[ServiceRule {
            unit: Some("docker"),
            at_boot: AtBoot::DisabledWhenOnEphemeralDisk,
        }],
        inbound_tcp: &[],
        files: &[
            FileRule {
                any_of: &["/usr/bin/docker"],
                contains: None,
                missing_message: "Docker not installed",
            },
            FileRule {
                any_of: &["/etc/docker/daemon.json"],
                contains: Some("data-root"),
                missing_message: "Docker data-root not configured on the ephemeral disk",
            },
        ],
        vm_checks: &[VmCheck {
            command: "docker version",
            message: "Docker not installed",
            needs_hardware: false,
            needs_boot: true,
        }],
    },
    Feature {
        id: FeatureId::Gpu,
        script: "scripts/30-gpu.sh.tera",
        // The driver and toolkit packages carry the version from the manifest and
        // are named in the script; these are the build prerequisites.
        packages: PerFamily {
            apt: &["build-essential", "dkms"],
            yum: &["gcc", "make", "dkms", "kernel-devel"],
            dnf: &["gcc", "make", "dkms", "kernel-devel"],
        },
        services: &[],
        inbound_tcp: &[],
        files: &[
            FileRule {
                any_of: &["/etc/modprobe.d/blacklist-nouveau.conf"],
                contains: Some("blacklist nouveau"),
                missing_message: "nouveau is not blacklisted",
            },
            FileRule {
                any_of: &["/usr/bin/nvidia-smi"],
                contains: None,
                missing_message: "No Nvidia drivers detected!",
            },
            FileRule {
                any_of: &["/usr/bin/nvidia-container-cli", "/usr/bin/nvidia-docker"],
                contains: None,
                missing_message: "nvidia container runtime not installed",
            },
        ],
        vm_checks: &[
            VmCheck {
                command: "nvidia-smi",
                message: "No Nvidia drivers detected!",
                needs_hardware: true,
                needs_boot: false,
            },
            VmCheck {
                command: "lsmod | grep -q '^nvidia '",
                message: "No Nvidia drivers detected!",
                needs_hardware: true,
                needs_boot: false,
            },
            VmCheck {
                command: "command -v nvidia-container-cli",
                message: "nvidia container runtime not installed",
                needs_hardware: false,
                needs_boot: false,
            },
        ],
    },
    Feature {
        id: FeatureId::RdmaNd,
        script: "scripts/40-rdma.sh.tera",
        packages: PerFamily {
            apt: &["rdma-core", "ibverbs-utils", "infiniband-diags"],
            yum: &["rdma-core", "libibverbs-utils"],
            dnf: &["rdma-core", "libibverbs-utils"],
        },
        services: &[],
        inbound_tcp: &[],
        files: &[FileRule {
            any_of: &["/etc/waagent.conf"],
            contains: Some("OS.EnableRDMA=y"),
            missing_message: "RDMA is not enabled in waagent.conf (OS.EnableRDMA=y)",
        }],
        vm_checks: &[VmCheck {
            command: "test -e /dev/infiniband/uverbs0",
            message: "RDMA device /dev/infiniband/uverbs0 not present",
            needs_hardware: true,
            needs_boot: false,
        }],
    },
    Feature {
        id: FeatureId::RdmaSriov,
        script: "scripts/40-rdma.sh.tera",
        packages: PerFamily {
            apt: &["rdma-core", "ibverbs-utils", "infiniband-diags"],
            yum: &["rdma-core", "libibverbs-utils", "infiniband-diags"],
            dnf: &["rdma-core", "libibverbs-utils", "infiniband-diags"],
        },
        services: &[],
        inbound_tcp: &[],
        files: &[FileRule {
            any_of: &["/usr/bin/ofed_info"],
            contains: None,
            missing_message: "Mellanox OFED not installed (SR-IOV InfiniBand needs an HPC base image)",
        }],
        vm_checks: &[
            VmCheck {
                command: "ofed_info -s",
                message: "Mellanox OFED not installed",
                needs_hardware: false,
                needs_boot: false,
            },
            VmCheck {
                command: "test -e /dev/infiniband/uverbs0",
                message: "RDMA device /dev/infiniband/uverbs0 not present",
                needs_hardware: true,
                needs_boot: false,
            },
        ],
    },
    Feature {
        id: FeatureId::Nfs,
        script: "scripts/50-nfs.sh.tera",
        packages: PerFamily {
            apt: &["nfs-common"],
            yum: &["nfs-utils"],
            dnf: &["nfs-utils"],
        },
        services: &[],
        inbound_tcp: &[],
        files: &[FileRule {
            any_of: &["/sbin/mount.nfs4", "/usr/sbin/mount.nfs4"],
            contains: None,
            missing_message: "Required storage cluster software to mount nfs not installed",
        }],
        vm_checks: &[VmCheck {
            command: "mount.nfs4 -V",
            message: "Required storage cluster software to mount nfs not installed",
            needs_hardware: false,
            needs_boot: false,
        }],
    },
    Feature {
        id: FeatureId::GlusterfsClient,
        script: "scripts/60-glusterfs.sh.tera",
        packages: PerFamily {
            apt: &["glusterfs-client"],
            yum: &["glusterfs-fuse"],
            dnf: &["glusterfs-fuse"],
        },
        services: &[],
        inbound_tcp: &[],
        files: &[FileRule {
            any_of: &["/sbin/mount.glusterfs", "/usr/sbin/mount.glusterfs"],
            contains: None,
            missing_message: "Required storage cluster software to mount glusterfs not installed",
        }],
        vm_checks: &[VmCheck {
            command: "glusterfs -V",
            message: "Required storage cluster software to mount glusterfs not installed",
            needs_hardware: false,
            needs_boot: false,
        }],
    },
    Feature {
        id: FeatureId::GlusterfsServer,
        script: "scripts/60-glusterfs.sh.tera",
        packages: PerFamily {
            apt: &["glusterfs-server"],
            yum: &["glusterfs-server"],
            dnf: &["glusterfs-server"],
        },
        services: &[ServiceRule {
            unit: Some("glusterd"),
            at_boot: AtBoot::Enabled,
        }],
        // glusterd management and the first brick ports.
        inbound_tcp: &[24007, 24008, 49152],
        files: &[FileRule {
            any_of: &["/usr/sbin/glusterd"],
            contains: None,
            missing_message: "GlusterFS server (glusterd) not installed",
        }],
        vm_checks: &[VmCheck {
            command: "gluster --version",
            message: "GlusterFS server (gluster) not installed",
            needs_hardware: false,
            needs_boot: false,
        }],
    },
];

pub fn feature(id: FeatureId) -> &'static Feature {
    FEATURES
        .iter()
        .find(|f| f.id == id)
        .expect("every FeatureId has a catalog entry")
}

/// Where the vendor repositories the scripts use live (`download.docker.com`
/// in 20-docker, NVIDIA's in 30-gpu): a build VM booted from a base image may
/// reach them through its proxy when the feature comes from the vendor.
pub const DOCKER_VENDOR_HOSTS: &[&str] = &["download.docker.com:443"];
pub const NVIDIA_VENDOR_HOSTS: &[&str] =
    &["developer.download.nvidia.com:443", "nvidia.github.io:443"];

/// The admin user an Azure-style first boot creates (`ovf-env.xml`), both in
/// the boot check and in a build from a base image, where Packer logs in as
/// it; `waagent -deprovision+user` removes it again.
pub const PROVISIONED_USER: &str = "imgforge";

/// Scripts rendered for every Linux image, whatever its features.
pub const BASE_SCRIPT: &str = "scripts/00-base.sh.tera";
pub const FIREWALL_SCRIPT: &str = "scripts/70-firewall.sh.tera";
pub const PACKAGES_SCRIPT: &str = "scripts/80-packages.sh.tera";
pub const VM_CHECKS_SCRIPT: &str = "scripts/95-vm-checks.sh.tera";
pub const PACKER_TEMPLATE: &str = "packer/azure-arm.json.tera";
pub const PACKER_TEMPLATE_LOCAL: &str = "packer/local.json.tera";
/// The local builder from a base image: Packer's qemu builder.
pub const PACKER_TEMPLATE_LOCAL_BASE: &str = "packer/local-base.json.tera";
/// The local builder's steps, in order: root, provisioning, disk.
pub const LOCAL_STEPS: &[&str] = &[
    "local/10-root.sh.tera",
    "local/20-provision.sh.tera",
    "local/30-disk.sh.tera",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_id_is_in_the_catalog_once() {
        let ids = [
            FeatureId::Ssh,
            FeatureId::Docker,
            FeatureId::Gpu,
            FeatureId::RdmaNd,
            FeatureId::RdmaSriov,
            FeatureId::Nfs,
            FeatureId::GlusterfsClient,
            FeatureId::GlusterfsServer,
        ];
        for id in ids {
            assert_eq!(FEATURES.iter().filter(|f| f.id == id).count(), 1, "{id:?}");
        }
    }

    #[test]
    fn todays_bases_are_generation_2_and_the_advice_comes_from_the_dates() {
        // Every distro whose agent makes new pools builds from a Gen2 base
        // (the HPC ones too): what Batch's current sizes boot.
        for d in DISTROS {
            if d.agent_status("2026-12-03") == AgentStatus::Supported && d.node_agent_verified {
                assert!(d.base_image.gen2, "{}", d.key);
                assert!(d.hpc_base_image.is_none_or(|h| h.gen2), "{}", d.key);
            }
        }
        // The deprecated AlmaLinux 8 HPC SKU is gone.
        assert!(
            !DISTROS
                .iter()
                .any(|d| d.hpc_base_image.is_some_and(|h| h.sku == "8_7-hpc"))
        );
        let today = current_linux("2026-12-03");
        assert_eq!(
            today,
            "ubuntu-22.04 (batch.node.ubuntu 22.04, until 2027-06-30), ubuntu-24.04 (batch.node.ubuntu 24.04), almalinux-8/rhel-8 (batch.node.el 8) or almalinux-9/rhel-9/rocky-9 (batch.node.el 9)"
        );
        // After 22.04's end it drops out by itself; Debian (no agent) never appears.
        let later = current_linux("2027-07-01");
        assert!(
            !later.contains("22.04") && later.contains("ubuntu-24.04"),
            "{later}"
        );
        assert!(!today.contains("debian"));
    }

    #[test]
    fn linux_distros_mount_the_ephemeral_disk_where_shipyard_expects() {
        for d in DISTROS.iter().filter(|d| d.os == Os::Linux) {
            let expected = if d.os_release_id == "ubuntu" {
                "/mnt"
            } else {
                "/mnt/resource"
            };
            assert_eq!(d.ephemeral_mount, expected, "{}", d.key);
            assert!(
                d.docker_data_root.starts_with(d.ephemeral_mount),
                "{}",
                d.key
            );
            assert!(d.node_agent.starts_with("batch.node."), "{}", d.key);
        }
    }

    #[test]
    fn every_feature_leaves_something_the_validator_can_check() {
        for f in FEATURES {
            assert!(!f.files.is_empty(), "{:?} has no file rule", f.id);
        }
    }
}
