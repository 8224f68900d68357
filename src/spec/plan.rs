//! What will be built: the manifest resolved against the catalog.
//!
//! The plan is both what `imgforge plan` prints and the whole context the
//! templates see, so what a user reads is exactly what gets rendered.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::spec::catalog::{self, AtBoot, FeatureId, MarketplaceImage, Os};
use crate::spec::manifest::{BootCheck, Builder, Glusterfs, Manifest, PackageSource, Rdma, Target};

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub image: String,
    pub manifest: String,
    pub os: Os,
    pub distro: &'static catalog::Distro,
    pub base_image: MarketplaceImage,
    /// The Batch node agent SKU id the pool must use with this image.
    pub node_agent: String,
    /// Whether Azure Batch still creates pools with that node agent, today.
    pub node_agent_status: catalog::AgentStatus,
    pub target: Target,
    pub builder: Builder,
    pub build: BuildPlan,
    /// builder = "local": how the root and the disk are made.
    pub local: Option<LocalPlan>,
    pub features: Vec<FeaturePlan>,
    pub docker: DockerPlan,
    pub gpu: Option<GpuPlan>,
    pub rdma: Option<Rdma>,
    pub extra_packages: Vec<String>,
    pub firewall: FirewallPlan,
    /// Rendered script file names in the order Packer runs them.
    pub scripts: Vec<ScriptPlan>,
    pub pool: PoolPlan,
    /// target = "managed_image" or "gallery": where and how the image is
    /// published, with the replica table.
    pub publish: Option<crate::spec::publish::PublishPlan>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildPlan {
    pub location: String,
    pub vm_size: String,
    pub resource_group: String,
    pub storage_account: Option<String>,
    pub capture_container: Option<String>,
    pub managed_image_name: Option<String>,
    pub gallery: Option<crate::spec::manifest::GallerySection>,
    /// Where Packer 1.6.6 leaves the captured VHD (the uuid is Azure's).
    pub capture_uri_pattern: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LocalPlan {
    /// The mmdebstrap root (a build from nothing); `None` for a build from a
    /// base image. Flattened: the local steps read `local.suite` and so on.
    #[serde(flatten)]
    pub root: Option<RootPlan>,
    /// The disk image booted and provisioned instead (`base_image`).
    pub base: Option<BasePlan>,
    /// Virtual size of the disk in MiB (a whole number, as Azure needs).
    pub disk_mib: u64,
    pub boot_check: BootCheck,
    /// Whether this path ran in imgforge's CI (Debian's archive is the one
    /// reachable there).
    pub tested: bool,
}

/// How the local builder makes a root from nothing with mmdebstrap.
#[derive(Debug, Clone, Serialize)]
pub struct RootPlan {
    pub suite: &'static str,
    pub mirror: String,
    pub components: Vec<String>,
    /// Empty: mmdebstrap's default keyring.
    pub keyring: &'static str,
    /// The base root's packages (what a marketplace image already has).
    pub packages: Vec<String>,
    pub kernel_headers: &'static str,
    /// Absolute directory of cached base roots.
    pub cache_dir: String,
    /// The cached root's name: SHA-256 of suite, mirror, components and packages.
    pub cache_key: String,
    /// apt source lines of the root (and of the image).
    pub sources: Vec<String>,
}

/// A build from the distro's Azure disk image: QEMU boots it under Packer,
/// provisioned as Azure provisions a VM, and the plan's scripts run over SSH.
#[derive(Debug, Clone, Serialize)]
pub struct BasePlan {
    /// Absolute path, or a URL (its query, a SAS token, never serialized).
    #[serde(serialize_with = "without_query")]
    pub source: String,
    /// How the file is packed ("xz-compressed", "a tar archive", "a disk
    /// image"); its disk format, OS and generation are read when the build
    /// starts.
    pub format: String,
    /// Its size on disk, where it is a file here.
    pub bytes: Option<u64>,
    /// `ID` and `VERSION_ID` it must report in /etc/os-release (read from the
    /// disk before it boots).
    pub os_release_id: &'static str,
    pub os_release_version: &'static str,
    /// Where a user gets one.
    pub download: String,
    /// The user the first boot provisions and Packer logs in as.
    pub admin_user: &'static str,
    /// `host:port` the build VM may reach through the build's proxy; empty:
    /// no network beyond the provisioning stand-ins.
    pub allow_hosts: Vec<String>,
}

fn without_query<S: serde::Serializer>(source: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(redact_query(source))
}

/// A URL without its query (a SAS token is a secret); a path unchanged.
pub fn redact_query(source: &str) -> &str {
    match source.find('?') {
        Some(i) if source.contains("://") => &source[..i],
        _ => source,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FeaturePlan {
    pub id: FeatureId,
    pub packages: Vec<&'static str>,
    pub services: Vec<ServicePlan>,
    pub inbound_tcp: Vec<u16>,
    /// What the feature leaves in the image (checked offline and in the VM).
    pub files: Vec<FileCheck>,
    /// In-VM checks that can run on the build VM's size.
    pub vm_checks: Vec<catalog::VmCheck>,
    /// In-VM checks skipped because the build VM lacks the hardware.
    pub vm_checks_skipped: Vec<catalog::VmCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    #[serde(flatten)]
    pub rule: catalog::FileRule,
    /// The same rule as a shell test, for the in-VM check script.
    pub test_command: String,
}

impl FileCheck {
    fn new(rule: catalog::FileRule) -> FileCheck {
        let q = crate::util::text::shell_quote;
        let test_command = rule
            .any_of
            .iter()
            .map(|p| match rule.contains {
                Some(needle) => format!("grep -qF -- {} {}", q(needle), q(p)),
                None => format!("test -e {}", q(p)),
            })
            .collect::<Vec<_>>()
            .join(" || ");
        FileCheck { rule, test_command }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicePlan {
    pub unit: &'static str,
    pub enabled_at_boot: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DockerPlan {
    pub version: Option<String>,
    pub source: PackageSource,
    pub data_root: &'static str,
    /// False because the data-root is on the ephemeral disk (see catalog).
    pub enabled_at_boot: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuPlan {
    pub driver: String,
    pub container_toolkit: bool,
    pub source: PackageSource,
    /// With source = "distro": the driver packages the script installs.
    pub distro_packages: Vec<&'static str>,
}

/// Debian's non-free NVIDIA driver: the DKMS module, nvidia-smi, the CUDA
/// driver library and the persistence daemon; not `nvidia-driver`, which pulls X.
pub const NVIDIA_DISTRO_PACKAGES: &[&str] = &[
    "nvidia-kernel-dkms",
    "nvidia-smi",
    "libcuda1",
    "nvidia-persistenced",
];

/// The distro's own Docker engine (Debian and Ubuntu: docker.io).
pub const DOCKER_DISTRO_PACKAGES: &[&str] = &["docker.io"];

#[derive(Debug, Clone, Serialize)]
pub struct FirewallPlan {
    pub kind: catalog::HostFirewall,
    pub inbound_tcp: Vec<u16>,
    pub outbound_tcp: Vec<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScriptPlan {
    /// File name under `scripts/` in the render directory.
    pub file: String,
    /// Built-in template it comes from; `None` for a user script.
    pub template: Option<&'static str>,
    /// A user script's path as the manifest gives it (`provision.scripts`),
    /// so a failure names the file the user edits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolPlan {
    pub dedicated: u32,
    pub low_priority: u32,
    pub autoscale_max: Option<u32>,
    pub max_nodes: u32,
    pub vms_per_vhd: u32,
    pub vhd_copies: u32,
    /// `[replicate] region`: the Batch account's, where the copies' accounts must be.
    pub batch_region: Option<String>,
    /// `[replicate] storage_accounts`: where VHD copies may go, in order.
    pub copy_accounts: Vec<String>,
    /// `[replicate] container` (default `images`).
    pub copy_container: String,
}

/// Copies of a VHD needed so no copy serves more VMs than Azure Storage allows.
/// Even one node needs one copy: Packer's capture path is not usable by Batch.
pub fn vhd_copies(max_nodes: u32, os: Os) -> u32 {
    max_nodes.div_ceil(os.vms_per_vhd()).max(1)
}

const DEFAULT_VM_SIZE: &str = "Standard_D2s_v3";
/// Where VHD copies go when `[replicate] container` says nothing.
pub const DEFAULT_COPY_CONTAINER: &str = "images";

/// The features a manifest enables, in catalog order (GlusterFS server
/// implies the client).
fn feature_ids(m: &Manifest) -> Vec<FeatureId> {
    let (raw, distro) = (&m.raw, m.distro);
    let mut ids = Vec::new();
    if distro.os == Os::Linux {
        ids.extend([FeatureId::Ssh, FeatureId::Docker]);
    }
    if raw.features.gpu.is_some() {
        ids.push(FeatureId::Gpu);
    }
    match raw.features.rdma {
        Some(Rdma::Nd) => ids.push(FeatureId::RdmaNd),
        Some(Rdma::Sriov) => ids.push(FeatureId::RdmaSriov),
        None => {}
    }
    if raw.features.nfs {
        ids.push(FeatureId::Nfs);
    }
    match raw.features.glusterfs {
        Some(Glusterfs::Client) => ids.push(FeatureId::GlusterfsClient),
        Some(Glusterfs::Server) => {
            ids.extend([FeatureId::GlusterfsClient, FeatureId::GlusterfsServer])
        }
        None => {}
    }
    ids
}

/// Each enabled feature as the plan resolves it: packages for the distro's
/// family, services on or off at boot, the files it must leave, and the
/// in-VM checks the build VM can run.
fn feature_plans(m: &Manifest) -> Vec<FeaturePlan> {
    let raw = &m.raw;
    let distro = m.distro;
    let family = distro.family;
    let docker_on_ephemeral = distro.docker_data_root.starts_with(distro.ephemeral_mount);
    let build_vm_size = raw
        .build
        .vm_size
        .clone()
        .unwrap_or_else(|| DEFAULT_VM_SIZE.to_string());
    let local_build = raw.build.builder == Builder::Local;
    // A local build has no GPU or InfiniBand to check against.
    let has_hardware = |id: FeatureId| match id {
        FeatureId::Gpu => !local_build && is_gpu_size(&build_vm_size),
        FeatureId::RdmaNd | FeatureId::RdmaSriov => !local_build && is_rdma_size(&build_vm_size),
        _ => true,
    };
    let docker_source = raw.features.docker.source;
    let gpu = raw.features.gpu.as_ref();
    feature_ids(m)
        .iter()
        .map(|&id| {
            let f = catalog::feature(id);
            let packages = match id {
                FeatureId::Docker if docker_source == PackageSource::Distro => {
                    DOCKER_DISTRO_PACKAGES.to_vec()
                }
                _ => f.packages.for_family(family).to_vec(),
            };
            // Without the container toolkit there is no runtime to check for.
            let files = f
                .files
                .iter()
                .filter(|r| {
                    id != FeatureId::Gpu
                        || gpu.is_none_or(|g| g.container_toolkit)
                        || !r.any_of.contains(&"/usr/bin/nvidia-container-cli")
                })
                .copied()
                .map(FileCheck::new)
                .collect();
            let vm_checks_all: Vec<catalog::VmCheck> = f
                .vm_checks
                .iter()
                .filter(|c| {
                    id != FeatureId::Gpu
                        || gpu.is_none_or(|g| g.container_toolkit)
                        || !c.command.contains("nvidia-container-cli")
                })
                .copied()
                .collect();
            FeaturePlan {
                id,
                packages,
                services: f
                    .services
                    .iter()
                    .map(|s| ServicePlan {
                        unit: s.unit.unwrap_or(distro.ssh_service),
                        enabled_at_boot: match s.at_boot {
                            AtBoot::Enabled => true,
                            AtBoot::DisabledWhenOnEphemeralDisk => !docker_on_ephemeral,
                        },
                    })
                    .collect(),
                inbound_tcp: f.inbound_tcp.to_vec(),
                files,
                vm_checks: vm_checks_all
                    .iter()
                    .filter(|c| !c.needs_hardware || has_hardware(id))
                    .copied()
                    .collect(),
                vm_checks_skipped: vm_checks_all
                    .iter()
                    .filter(|c| c.needs_hardware && !has_hardware(id))
                    .copied()
                    .collect(),
            }
        })
        .collect()
}

/// The rendered scripts in the order Packer runs them: base, one per
/// feature, firewall, packages, the user's, and the in-VM checks last.
fn script_plans(m: &Manifest, features: &[FeaturePlan]) -> Vec<ScriptPlan> {
    let raw = &m.raw;
    let distro = m.distro;
    let mut scripts = Vec::new();
    if distro.os == Os::Linux {
        let mut templates = vec![catalog::BASE_SCRIPT];
        for f in features {
            let t = catalog::feature(f.id).script;
            if !templates.contains(&t) {
                templates.push(t);
            }
        }
        templates.push(catalog::FIREWALL_SCRIPT);
        if !raw.provision.packages.is_empty() {
            templates.push(catalog::PACKAGES_SCRIPT);
        }
        templates.sort();
        scripts.extend(templates.into_iter().map(|t| ScriptPlan {
            file: script_file_name(t),
            template: Some(t),
            source: None,
        }));
        for (i, (s, shown)) in m
            .user_scripts
            .iter()
            .zip(&raw.provision.scripts)
            .enumerate()
        {
            let name = s
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            scripts.push(ScriptPlan {
                file: format!("90-user-{:02}-{name}", i + 1),
                template: None,
                source: Some(shown.display().to_string()),
            });
        }
        scripts.push(ScriptPlan {
            file: script_file_name(catalog::VM_CHECKS_SCRIPT),
            template: Some(catalog::VM_CHECKS_SCRIPT),
            source: None,
        });
    }
    scripts
}

impl Plan {
    /// A rendered script's name as a person knows it: a user script with the
    /// manifest's path for it (`90-user-01-setup.sh (site/setup.sh in the
    /// manifest)`), anything else as it is. `file` may be a path in the image.
    pub fn script_name(&self, file: &str) -> String {
        let base = file.rsplit('/').next().unwrap_or(file);
        match self.scripts.iter().find(|s| s.file == base) {
            Some(ScriptPlan {
                source: Some(src), ..
            }) => format!("{base} ({src} in the manifest)"),
            _ => file.to_string(),
        }
    }

    /// Drops the in-VM check script (`--no-vm-checks`).
    pub fn without_vm_checks(mut self) -> Plan {
        self.scripts
            .retain(|s| s.template != Some(catalog::VM_CHECKS_SCRIPT));
        self
    }

    pub fn new(m: &Manifest) -> Plan {
        let raw = &m.raw;
        let distro = m.distro;
        let mut warnings: Vec<String> = m
            .script_findings
            .iter()
            .map(|f| format!("shellcheck: {f}"))
            .collect();
        let local_build = raw.build.builder == Builder::Local;
        let docker_on_ephemeral = distro.docker_data_root.starts_with(distro.ephemeral_mount);
        let gpu = raw.features.gpu.as_ref();

        let features = feature_plans(m);

        let mut inbound: BTreeSet<u16> = catalog::required_inbound_tcp(distro.os)
            .iter()
            .copied()
            .collect();
        inbound.extend(features.iter().flat_map(|f| f.inbound_tcp.iter().copied()));
        inbound.extend(raw.firewall.inbound_tcp.iter().copied());
        let mut outbound: BTreeSet<u16> = catalog::REQUIRED_OUTBOUND_TCP.iter().copied().collect();
        outbound.extend(raw.firewall.outbound_tcp.iter().copied());

        let scripts = script_plans(m, &features);

        let vm_size = raw
            .build
            .vm_size
            .clone()
            .unwrap_or_else(|| DEFAULT_VM_SIZE.to_string());
        let base_image = match (raw.features.rdma, distro.hpc_base_image) {
            (Some(_), Some(hpc)) => hpc,
            _ => distro.base_image,
        };
        // A local build has no build VM: its size only matters when given.
        let vm_size_matters = !local_build || raw.build.vm_size.is_some();
        if vm_size_matters && raw.features.gpu.is_some() && !is_gpu_size(&vm_size) {
            warnings.push(format!(
                "features.gpu is on but build.vm_size `{vm_size}` is not an N-series (GPU) size: \
                 the driver installs, but the pool needs an N-series size to use it"
            ));
        }
        if vm_size_matters && raw.features.rdma.is_some() && !is_rdma_size(&vm_size) {
            warnings.push(format!(
                "features.rdma is on but build.vm_size `{vm_size}` is not an RDMA-capable size \
                 (H-series, or an N-series size ending in 'r')"
            ));
        }
        if raw.features.rdma == Some(Rdma::Nd) && distro.hpc_base_image.is_none() {
            warnings.push(format!(
                "{} has no Azure HPC base image: the InfiniBand userland comes from distro packages",
                distro.key
            ));
        }

        let node_agent = raw
            .image
            .node_agent
            .clone()
            .unwrap_or_else(|| distro.node_agent.to_string());
        // The override's own distro decides, when the catalog knows the id.
        let agent_distro = catalog::distro_by_agent(&node_agent).unwrap_or(distro);
        let node_agent_status = agent_distro.agent_status(&today());
        match node_agent_status {
            catalog::AgentStatus::Retired { date, source } => warnings.push(format!(
                "node agent `{node_agent}` is retired: Azure Batch creates no new pool with it since {date} \
                 ({source}); existing pools can still scale. For a pool created today build {}; \
                 `build` needs --allow-retired for this image",
                catalog::current_linux(&today())
            )),
            catalog::AgentStatus::Ends { date, source } => warnings.push(format!(
                "node agent `{node_agent}` ends on {date} ({source}): after that no new pool can use this image"
            )),
            catalog::AgentStatus::Supported => {}
        }
        if raw.image.node_agent.is_none() && !distro.node_agent_verified {
            warnings.push(format!(
                "no primary source names a Batch node agent for {} (`{}` is a placeholder): Azure Batch \
                 has no agent to run on it, so no pool can use this image; it is a local development \
                 image. For a pool build {}, or set [image] node_agent to an id your Batch account's \
                 supported images list (`imgforge skus --online`)",
                distro.key,
                distro.node_agent,
                catalog::current_linux(&today())
            ));
        }
        if let Some(g) = gpu
            && !g.container_toolkit
        {
            warnings.push(
                "features.gpu.container_toolkit is off: Batch Shipyard's node preparation refuses GPU \
                 nodes without an NVIDIA container runtime (\"nvidia container runtime not installed\")"
                    .to_string(),
            );
        }
        let local = local_build.then(|| local_plan(m, distro, &mut warnings));

        let pool = PoolPlan {
            dedicated: raw.pool.dedicated,
            low_priority: raw.pool.low_priority,
            autoscale_max: raw.pool.autoscale_max,
            max_nodes: raw.pool.max_nodes(),
            vms_per_vhd: distro.os.vms_per_vhd(),
            vhd_copies: vhd_copies(raw.pool.max_nodes(), distro.os),
            batch_region: raw.replicate.region.clone(),
            copy_accounts: raw.replicate.storage_accounts.clone(),
            copy_container: raw
                .replicate
                .container
                .clone()
                .unwrap_or_else(|| DEFAULT_COPY_CONTAINER.into()),
        };
        if !raw.build.target.makes_pools() {
            let r = catalog::NON_GALLERY_POOLS_RETIRED;
            warnings.push(format!(
                "target = \"{}\" makes no pool: Azure Batch creates custom-image pools only from \
                 Compute Gallery image versions since {} ({}). {} For a pool, set target = \"gallery\" \
                 with a [build.gallery] table",
                raw.build.target.as_str(),
                r.date,
                r.source,
                match raw.build.target {
                    Target::Vhd => "The VHD is transport to a gallery and an artefact for other tools; its copies (one per 40 Linux / 20 Windows nodes) serve only pools made before that date.",
                    _ => "A managed image is an intermediate (a gallery version can be made from it).",
                }
            ));
        }
        let classic: Vec<String> = raw
            .firewall
            .inbound_tcp
            .iter()
            .filter(|p| catalog::CLASSIC_BATCH_PORTS.contains(p))
            .map(u16::to_string)
            .collect();
        if !classic.is_empty() {
            let r = catalog::CLASSIC_MODEL_RETIRED;
            warnings.push(format!(
                "firewall.inbound_tcp opens {}, the classic node communication model's port(s), retired {} ({}): \
                 pools today use the simplified model, which needs no inbound port (outbound 443 only); \
                 they stay open as asked",
                classic.join(" and "),
                r.date,
                r.source
            ));
        }
        if raw.build.target == Target::Vhd {
            let candidates = raw.replicate.storage_accounts.len() as u32;
            if candidates > 0 && candidates < pool.vhd_copies {
                warnings.push(format!(
                    "the pool needs {} VHD copies but [replicate] lists {} storage account(s): \
                     replication will refuse to start",
                    pool.vhd_copies, candidates
                ));
            }
        }

        let b = &raw.build;
        let capture_uri_pattern = match (b.target, &b.storage_account, &b.capture_container) {
            (Target::Vhd, Some(acct), Some(container)) => Some(format!(
                "https://{acct}.blob.core.windows.net/system/Microsoft.Compute/Images/{container}/{}-osDisk.<uuid>.vhd",
                raw.image.name
            )),
            _ => None,
        };

        Plan {
            image: raw.image.name.clone(),
            manifest: m.path.display().to_string(),
            os: distro.os,
            distro,
            base_image,
            node_agent,
            node_agent_status,
            target: b.target,
            builder: b.builder,
            local,
            build: BuildPlan {
                location: b.location.clone().unwrap_or_default(),
                vm_size,
                resource_group: b.resource_group.clone().unwrap_or_default(),
                storage_account: b.storage_account.clone(),
                capture_container: b.capture_container.clone(),
                managed_image_name: b.managed_image_name.clone(),
                gallery: b.gallery.clone(),
                capture_uri_pattern,
            },
            docker: DockerPlan {
                version: raw.features.docker.version.clone(),
                source: raw.features.docker.source,
                data_root: distro.docker_data_root,
                enabled_at_boot: !docker_on_ephemeral,
            },
            gpu: raw.features.gpu.as_ref().map(|g| GpuPlan {
                driver: g.driver.clone(),
                container_toolkit: g.container_toolkit,
                source: g.source,
                distro_packages: if g.source == PackageSource::Distro {
                    NVIDIA_DISTRO_PACKAGES.to_vec()
                } else {
                    Vec::new()
                },
            }),
            rdma: raw.features.rdma,
            features,
            extra_packages: raw.provision.packages.clone(),
            firewall: FirewallPlan {
                kind: distro.firewall,
                inbound_tcp: inbound.into_iter().collect(),
                outbound_tcp: outbound.into_iter().collect(),
            },
            scripts,
            publish: crate::spec::publish::PublishPlan::new(
                raw,
                match distro.os {
                    Os::Linux => "Linux",
                    Os::Windows => "Windows",
                },
                pool.max_nodes,
                &base_image,
            ),
            pool,
            warnings,
        }
    }

    /// The human-readable form of `imgforge plan`.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let b = &self.build;
        let _ = writeln!(s, "image      {} ({})", self.image, self.manifest);
        let _ = writeln!(
            s,
            "distro     {} from {}:{}:{} (node agent `{}`)",
            self.distro.key,
            self.base_image.publisher,
            self.base_image.offer,
            self.base_image.sku,
            self.node_agent
        );
        if let (Builder::AzureArm, Some(p)) = (self.builder, self.base_image.plan) {
            let _ = writeln!(
                s,
                "           purchase plan {}/{}/{}: the build VM and every VM from this image need its terms accepted once per subscription (`{}`)",
                p.publisher,
                p.product,
                p.name,
                p.accept_terms()
            );
        }
        let target = match self.target {
            Target::Vhd if self.builder == Builder::Local => {
                format!(
                    "vhd, built on this machine into the build directory (output/{}.vhd)",
                    self.image
                )
            }
            Target::Vhd => format!(
                "vhd, captured to {}",
                b.capture_uri_pattern.as_deref().unwrap_or("?")
            ),
            Target::ManagedImage if self.builder == Builder::Local => format!(
                "managed image `{}` in resource group `{}`, from the VHD built on this machine",
                b.managed_image_name.as_deref().unwrap_or("?"),
                b.resource_group
            ),
            Target::ManagedImage => format!(
                "managed image `{}` in resource group `{}`",
                b.managed_image_name.as_deref().unwrap_or("?"),
                b.resource_group
            ),
            Target::Gallery => {
                let g = b.gallery.as_ref();
                format!(
                    "gallery `{}`, image `{}`, version {}",
                    g.map_or("?", |g| g.name.as_str()),
                    g.map_or("?", |g| g.image_definition.as_str()),
                    g.map_or("?", |g| g.version.as_str()),
                )
            }
        };
        let _ = writeln!(s, "target     {target}");
        match &self.local {
            Some(LocalPlan {
                root: Some(r),
                disk_mib,
                boot_check,
                ..
            }) => {
                let _ = writeln!(
                    s,
                    "builder    local: mmdebstrap {} from {} ({}), {} GiB sparse disk, boot check {}, root cache {}/{}.tar",
                    r.suite,
                    r.mirror,
                    r.components.join(", "),
                    disk_mib / 1024,
                    crate::util::text::name_of(boot_check),
                    r.cache_dir,
                    r.cache_key
                );
            }
            Some(LocalPlan {
                base: Some(b),
                disk_mib,
                boot_check,
                ..
            }) => {
                let size = b
                    .bytes
                    .map(|n| format!(", {:.1} MiB", n as f64 / 1048576.0))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "builder    local: QEMU boots the base image under Packer, provisioned as Azure does, the scripts run over SSH, then waagent deprovisions it; {} GiB disk, boot check {}",
                    disk_mib / 1024,
                    crate::util::text::name_of(boot_check),
                );
                let _ = writeln!(
                    s,
                    "base       {} ({}{size}); must report ID={} VERSION_ID={} (read from the disk before it boots)",
                    redact_query(&b.source),
                    b.format,
                    b.os_release_id,
                    b.os_release_version,
                );
                let reach = if b.allow_hosts.is_empty() {
                    "nothing (offline: no proxy)".to_string()
                } else {
                    b.allow_hosts.join(", ")
                };
                let _ = writeln!(
                    s,
                    "network    the build VM reaches {reach}, through the build's proxy; nothing else"
                );
            }
            Some(_) => {}
            None => {
                let _ = writeln!(
                    s,
                    "build VM   {} in {} (resource group `{}`)",
                    b.vm_size, b.location, b.resource_group
                );
            }
        }
        let features: Vec<String> = self
            .features
            .iter()
            .map(|f| match f.id {
                FeatureId::Docker => format!(
                    "docker {} (data-root {}, {} at boot)",
                    match (self.docker.source, self.docker.version.as_deref()) {
                        (crate::spec::manifest::PackageSource::Distro, _) => {
                            "from the distro's archive (docker.io)"
                        }
                        (_, Some(v)) => v,
                        (_, None) => "latest",
                    },
                    self.docker.data_root,
                    if self.docker.enabled_at_boot {
                        "enabled"
                    } else {
                        "not enabled"
                    }
                ),
                FeatureId::Gpu => {
                    let g = self.gpu.as_ref().expect("gpu feature has gpu settings");
                    format!(
                        "gpu (NVIDIA driver {}{})",
                        g.driver,
                        if g.container_toolkit {
                            ", container toolkit"
                        } else {
                            ""
                        }
                    )
                }
                other => serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
                    .replace('_', " "),
            })
            .collect();
        let _ = writeln!(s, "features   {}", features.join(", "));
        if !self.extra_packages.is_empty() {
            let _ = writeln!(s, "packages   {}", self.extra_packages.join(", "));
        }
        let ports = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            s,
            "firewall   {}: inbound tcp {}; outbound tcp {}",
            crate::util::text::name_of(&self.firewall.kind),
            ports(&self.firewall.inbound_tcp),
            ports(&self.firewall.outbound_tcp)
        );
        let scripts: Vec<&str> = self.scripts.iter().map(|s| s.file.as_str()).collect();
        let _ = writeln!(s, "scripts    {}", scripts.join(", "));
        let p = &self.pool;
        // What the pool size decides: VHD copies for image_uris; for a
        // published image, Batch reads one resource and the gallery's
        // replicas (the table below) carry the load.
        let serves = match (
            self.target,
            self.publish.as_ref().and_then(|p| p.gallery.as_ref()),
        ) {
            (Target::Vhd, _) => format!(
                "{} VHD cop{} at {} VMs per VHD (legacy: no pool is made from VHDs today)",
                p.vhd_copies,
                if p.vhd_copies == 1 { "y" } else { "ies" },
                p.vms_per_vhd
            ),
            (Target::Gallery, Some(g)) => format!(
                "gallery replicas, one per {} nodes (below)",
                g.nodes_per_replica
            ),
            (Target::Gallery, None) => "a gallery image version".to_string(),
            (Target::ManagedImage, _) => {
                "one managed image (legacy: no pool is made from managed images today)".to_string()
            }
        };
        let _ = writeln!(
            s,
            "pool       up to {} nodes (dedicated {}, low priority {}, autoscale max {}) -> {serves}",
            p.max_nodes,
            p.dedicated,
            p.low_priority,
            p.autoscale_max.map_or("-".to_string(), |m| m.to_string()),
        );
        if let Some(region) = &p.batch_region
            && self.target == Target::Vhd
        {
            let _ = writeln!(
                s,
                "copies     on accounts in {region} (looked up in Resource Manager before Packer runs)"
            );
        }
        if let Some(publish) = &self.publish {
            s.push_str(&publish.to_text());
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning    {w}");
        }
        s
    }
}

impl Plan {
    /// The Packer template this plan renders.
    pub fn packer_template(&self) -> &'static str {
        match &self.local {
            Some(LocalPlan { base: Some(_), .. }) => catalog::PACKER_TEMPLATE_LOCAL_BASE,
            _ => self.builder.packer_template(),
        }
    }

    /// A local build that boots a base image (Packer's qemu builder).
    pub fn from_base_image(&self) -> Option<&BasePlan> {
        self.local.as_ref().and_then(|l| l.base.as_ref())
    }
}

/// The local builder's settings, with the distro's defaults filled in.
fn local_plan(m: &Manifest, distro: &catalog::Distro, warnings: &mut Vec<String>) -> LocalPlan {
    let section = m.raw.build.local.clone().unwrap_or_default();
    let disk_mib = u64::from(section.disk_gib.unwrap_or(30)) * 1024;
    if let Some(source) = &section.base_image {
        let base = base_plan(m, distro, source, section.allow_hosts.as_deref());
        let tested = distro.azure_base.is_some_and(|b| b.tested);
        if !tested {
            warnings.push(format!(
                "a local build from {}'s Azure image has not run in imgforge's CI (its archives are \
                 out of reach there): this path is tested with a Debian 12 base only",
                m.distro.key
            ));
        }
        return LocalPlan {
            root: None,
            base: Some(base),
            disk_mib,
            boot_check: section.boot_check,
            tested,
        };
    }
    let base = distro
        .local
        .expect("the manifest check lets only distros with a local root through");
    let gpu_from_distro = m
        .raw
        .features
        .gpu
        .as_ref()
        .is_some_and(|g| g.source == PackageSource::Distro);
    let components = section.components.unwrap_or_else(|| {
        if gpu_from_distro {
            // The driver is in non-free, nvidia-persistenced in contrib.
            ["main", "contrib", "non-free", "non-free-firmware"]
                .map(String::from)
                .to_vec()
        } else {
            vec!["main".into()]
        }
    });
    let mirror = section
        .mirror
        .unwrap_or_else(|| base.mirror.to_string())
        .trim_end_matches('/')
        .to_string();
    let overridden = m
        .raw
        .build
        .local
        .as_ref()
        .is_some_and(|l| l.mirror.is_some());
    let comps = components.join(" ");
    let mut sources = vec![
        format!("deb {mirror} {} {comps}", base.suite),
        format!("deb {mirror} {}-updates {comps}", base.suite),
    ];
    if !overridden {
        sources.push(format!(
            "deb {} {}-security {comps}",
            base.security, base.suite
        ));
    }
    let mut packages: Vec<String> = catalog::LOCAL_BASE_PACKAGES
        .iter()
        .chain([&base.kernel, &base.agent])
        .map(|p| p.to_string())
        .collect();
    packages.sort();
    let key_input = format!(
        "imgforge-root-v1\n{}\n{}\n{}\n{}",
        base.suite,
        sources.join("\n"),
        base.keyring,
        packages.join(",")
    );
    let cache_key = crate::util::text::sha256_hex(key_input.as_bytes())[..16].to_string();
    let manifest_dir = m.path.parent().unwrap_or(std::path::Path::new("."));
    let cache_dir = match section.cache_dir {
        Some(d) if d.is_absolute() => d,
        Some(d) => manifest_dir.join(d),
        None => default_cache_dir(),
    };
    let cache_dir = std::path::absolute(&cache_dir).unwrap_or(cache_dir);
    if !base.tested {
        warnings.push(format!(
            "the local builder's {} root comes from {mirror}, which imgforge's CI cannot reach: \
             this path is untested",
            m.distro.key
        ));
    }
    LocalPlan {
        root: Some(RootPlan {
            suite: base.suite,
            mirror,
            components,
            keyring: base.keyring,
            packages,
            kernel_headers: base.kernel_headers,
            cache_dir: cache_dir.display().to_string(),
            cache_key,
            sources,
        }),
        base: None,
        disk_mib,
        boot_check: section.boot_check,
        tested: base.tested,
    }
}

/// A build from `source`, the distro's Azure disk image.
fn base_plan(
    m: &Manifest,
    distro: &catalog::Distro,
    source: &str,
    allow_hosts: Option<&[String]>,
) -> BasePlan {
    let is_url = source.starts_with("https://") || source.starts_with("http://");
    let (source, format, bytes) = if is_url {
        (
            source.to_string(),
            "a URL (fetched when the build starts)".to_string(),
            None,
        )
    } else {
        let dir = m.path.parent().unwrap_or(std::path::Path::new("."));
        let path = std::path::absolute(dir.join(source)).unwrap_or_else(|_| dir.join(source));
        let format = crate::util::diskfmt::sniff(&path).map_or_else(
            |e| format!("unreadable ({e})"),
            |f| f.describe().to_string(),
        );
        let bytes = std::fs::metadata(&path).ok().map(|md| md.len());
        (path.display().to_string(), format, bytes)
    };
    let known = distro
        .azure_base
        .expect("the manifest check lets only known bases through");
    let allow_hosts = match allow_hosts {
        Some(hosts) => hosts.iter().map(|h| with_port(h)).collect(),
        None => {
            // The archives, and the vendor repositories the features use.
            let features = &m.raw.features;
            let mut hosts: Vec<String> = known
                .archive_hosts
                .iter()
                .flat_map(|h| [format!("{h}:80"), format!("{h}:443")])
                .collect();
            if features.docker.source == PackageSource::Vendor {
                hosts.extend(catalog::DOCKER_VENDOR_HOSTS.iter().map(|h| h.to_string()));
            }
            if features
                .gpu
                .as_ref()
                .is_some_and(|g| g.source == PackageSource::Vendor)
            {
                hosts.extend(catalog::NVIDIA_VENDOR_HOSTS.iter().map(|h| h.to_string()));
            }
            hosts
        }
    };
    BasePlan {
        source,
        format,
        bytes,
        os_release_id: distro.os_release_id,
        os_release_version: distro.os_release_version,
        download: distro.base_download().unwrap_or_default(),
        admin_user: catalog::PROVISIONED_USER,
        allow_hosts,
    }
}

/// `host` as `host:80`; `host:port` unchanged.
fn with_port(h: &str) -> String {
    if h.contains(':') {
        h.to_string()
    } else {
        format!("{h}:80")
    }
}

/// Today's date, YYYY-MM-DD (UTC), for node agent lifecycles.
pub fn today() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_string()
}

/// `$XDG_CACHE_HOME/imgforge/roots`, else `~/.cache/imgforge/roots`, else
/// `.imgforge/cache/roots`.
fn default_cache_dir() -> std::path::PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| std::path::PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from(".imgforge/cache"));
    base.join("imgforge").join("roots")
}

pub fn script_file_name(template: &str) -> String {
    let file = template.rsplit('/').next().unwrap_or(template);
    file.trim_end_matches(".tera").to_string()
}

fn size_family(vm_size: &str) -> String {
    let upper = vm_size.to_ascii_uppercase();
    upper
        .trim_start_matches("STANDARD_")
        .trim_start_matches("BASIC_")
        .to_string()
}

/// N-series sizes carry GPUs (NC, ND, NV, NG, NCas_T4_v3, …).
pub fn is_gpu_size(vm_size: &str) -> bool {
    size_family(vm_size).starts_with('N')
}

/// H-series and the N-series sizes with an `r` after the core count.
pub fn is_rdma_size(vm_size: &str) -> bool {
    let s = size_family(vm_size);
    if s.starts_with('H') {
        return true;
    }
    if !s.starts_with('N') {
        return false;
    }
    let after_digits: String = s
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    after_digits.contains('R')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_follow_the_40_and_20_rules() {
        assert_eq!(vhd_copies(0, Os::Linux), 1);
        assert_eq!(vhd_copies(40, Os::Linux), 1);
        assert_eq!(vhd_copies(41, Os::Linux), 2);
        assert_eq!(vhd_copies(80, Os::Linux), 2);
        assert_eq!(vhd_copies(20, Os::Windows), 1);
        assert_eq!(vhd_copies(21, Os::Windows), 2);
    }

    #[test]
    fn vm_size_families() {
        assert!(is_gpu_size("Standard_NC6"));
        assert!(is_gpu_size("STANDARD_NC6"));
        assert!(is_gpu_size("Standard_NC4as_T4_v3"));
        assert!(!is_gpu_size("Standard_D2s_v3"));
        assert!(is_rdma_size("Standard_NC24r"));
        assert!(is_rdma_size("Standard_HB120rs_v3"));
        assert!(!is_rdma_size("Standard_NC24"));
        assert!(!is_rdma_size("Standard_NC24s_v3"));
        assert!(is_rdma_size("Standard_NC24rs_v3"));
    }
}
