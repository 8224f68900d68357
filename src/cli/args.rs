//! Command-line definitions. Parsing only; the work happens in the stage modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Examples:
  imgforge plan contrib/gpu-ubuntu2404.toml             what will be built
  imgforge build contrib/gpu-ubuntu2404.toml --dry-run  plan, render and `packer validate`
  imgforge build contrib/gpu-ubuntu2404.toml --json     the whole pipeline, one JSON result
  imgforge build M.toml --resume .imgforge/builds/<dir> continue after a failure or Ctrl-C
  imgforge status .imgforge/builds/<dir>                what happened, stage by stage
  imgforge validate disk.vhd --manifest M.toml          check an image without booting it
  imgforge pool check pool.yaml --manifest M.toml       check a Batch Shipyard pool config
  imgforge templates export my-templates/               built-in templates, to customize

Exit codes:
  0    success (validate, pool check: no check failed)
  1    the work ran and failed (a check, packer validate or build, a copy, a validation)
  2    bad usage or bad input (command line, manifest, template override, unreadable image)
  3    a required tool is missing or unusable (Packer not found or too old)
  4    an I/O error (cannot write the output)
  130  cancelled (Ctrl-C or SIGTERM), after Packer cleaned up

Azure credentials: Packer reads ARM_CLIENT_ID, ARM_CLIENT_SECRET, ARM_SUBSCRIPTION_ID and
ARM_TENANT_ID; storage uses IMGFORGE_STORAGE_KEY_<ACCOUNT>, a SAS in the URL, or the same
service principal. Secrets never appear in rendered files, logs or output. NO_COLOR=1 turns
colour off.";

/// Build Azure Batch custom VM images from a feature manifest with HashiCorp Packer.
///
/// imgforge reads a TOML manifest (distro, GPU, RDMA, NFS, GlusterFS, firewall,
/// packages, pool size), renders a Packer template and provisioner scripts from
/// built-in Tera templates, runs Packer, copies the VHD to as many storage accounts
/// as the pool needs, checks every copy without booting it, and prints the Batch
/// Shipyard pool snippet that uses them.
#[derive(Debug, Parser)]
#[command(
    name = "imgforge",
    version,
    disable_version_flag = true,
    arg_required_else_help = true,
    after_help = AFTER_HELP,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Print the version, the git commit it was built from, and the Packer it finds.
    #[arg(short = 'V', long)]
    pub version: bool,
    /// Colour: auto (a terminal, without NO_COLOR; CLICOLOR_FORCE=1 forces it), always, never.
    #[arg(long, value_enum, default_value_t = crate::util::term::ColorChoice::Auto, global = true)]
    pub color: crate::util::term::ColorChoice,
    /// No progress bars or status lines on stderr; errors and warnings still show.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Cli {
    /// Whether the command asked for JSON on stdout (errors then come as JSON too).
    pub fn wants_json(&self) -> bool {
        match &self.command {
            Some(Command::Plan(a)) => a.json,
            Some(Command::Render(a)) => a.json,
            Some(Command::Build(a)) => a.json,
            Some(Command::Pool(PoolCommand::Check { json, .. })) => *json,
            Some(Command::Status { json, .. }) | Some(Command::Skus { json, .. }) => *json,
            Some(Command::Catalog { json }) | Some(Command::Clean { json, .. }) => *json,
            Some(Command::Replicate(a)) => a.storage.json,
            Some(Command::Upload(a)) => a.storage.json,
            Some(Command::Publish(a)) => a.json,
            Some(Command::Promote(a)) => a.json,
            Some(Command::Validate(a)) => a.json,
            Some(Command::BootCheck(a)) => a.json,
            Some(Command::Inspect(a)) => a.json,
            Some(Command::Diff(a)) => a.json,
            _ => false,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a manifest will build: distro, features, ports, scripts, gallery replicas.
    #[command(after_help = "\
Examples:
  imgforge plan contrib/gpu-ubuntu2404.toml     distro, features, ports, scripts, pool, warnings,
                                                the replica table (REGION, REPLICAS, STORAGE, WHY)
  imgforge plan m.toml --json | jq .firewall    the data the templates see")]
    Plan(PlanArgs),
    /// Render packer.json and the provisioner scripts into a directory.
    #[command(after_help = "\
Examples:
  imgforge render contrib/gpu-ubuntu2404.toml -o out/               packer.json and scripts/
  imgforge render m.toml -o out/ --templates my-templates/ --force  with template overrides

Environment: IMGFORGE_TEMPLATES (as --templates).")]
    Render(RenderArgs),
    /// The whole pipeline: render, packer validate, packer build, capture, validate,
    /// (local builds) boot check, publish to the gallery (or the legacy VHD copies),
    /// the pool files (--dry-run stops after packer validate).
    #[command(after_help = "\
Examples:
  imgforge build contrib/local-debian12.toml --no-publish     a real image on this machine
  imgforge build contrib/gpu-ubuntu2404.toml --dry-run        render + packer validate only
  imgforge build m.toml --json > result.json                   one JSON document (pipelines)
  imgforge build m.toml --resume .imgforge/builds/<dir>        continue after a failure or Ctrl-C

Environment:
  ARM_CLIENT_ID, ARM_CLIENT_SECRET, ARM_SUBSCRIPTION_ID, ARM_TENANT_ID
                         the service principal Packer's azure-arm builder and publishing use
                         (every one the template reads is checked before Packer runs)
  IMGFORGE_PACKER        the Packer binary (as --packer)
  IMGFORGE_TEMPLATES     template overrides (as --templates)
  IMGFORGE_BLOB_ENDPOINT, IMGFORGE_STORAGE_KEY_<ACCOUNT>, AZURE_STORAGE_KEY   replication storage
  IMGFORGE_ARM_ENDPOINT, AZURE_AUTHORITY_HOST   sovereign clouds
  IMGFORGE_QEMU, IMGFORGE_QEMU_ACCEL, XDG_CACHE_HOME   the local builder's boot check and root cache")]
    Build(BuildArgs),
    /// Export or list the built-in templates.
    #[command(subcommand)]
    Templates(TemplatesCommand),
    /// Batch Shipyard pool configuration: print the snippet for an image, or check a pool.yaml.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Copy a page-blob VHD to one container root per storage account, as many as the pool needs.
    #[command(after_help = "\
Examples:
  imgforge replicate m.toml --source https://build.blob.core.windows.net/images/gpu.vhd
  imgforge replicate --source URL --to acct1 --to acct2 --region westus2 --json")]
    Replicate(ReplicateArgs),
    /// Upload a local fixed VHD (an on-premises or qemu build) as a page blob.
    #[command(after_help = "\
Examples:
  imgforge upload disk.vhd --to imgforgerep1                   into container images/
  imgforge upload disk.vhd --to acct --name gpu-1.vhd --region westus2 --json

Credentials: IMGFORGE_STORAGE_KEY_<ACCOUNT> (or AZURE_STORAGE_KEY), else an Entra ID
token for the ARM_CLIENT_ID / ARM_CLIENT_SECRET / ARM_TENANT_ID service principal.
Environment: IMGFORGE_BLOB_ENDPOINT (as --blob-endpoint).")]
    Upload(UploadArgs),
    /// Publish a VHD as the manifest's managed image and/or gallery image version.
    #[command(after_help = PUBLISH_EXAMPLES)]
    Publish(PublishArgs),
    /// Put a gallery version published with exclude_from_latest into `latest`, once its gates pass.
    ///
    /// Exit status: 0 promoted (or already in latest), 1 a gate failed (nothing
    /// changed), 2 nothing to promote or a wrong argument, 4 the record could not be written.
    #[command(after_help = "\
Examples:
  imgforge promote .imgforge/builds/gpu-20261203T101500Z
        the build's validation and boot check must have passed
  imgforge promote BUILD_DIR --fail-on kernel --fail-on package-removed
        and, against the newest earlier build of the image, no new kernel, no package removed
  imgforge promote /subscriptions/…/galleries/G/images/D/versions/1.2.0
        a version without a build record: no gate but your word

Credentials: ARM_CLIENT_ID, ARM_CLIENT_SECRET, ARM_TENANT_ID, ARM_SUBSCRIPTION_ID.")]
    Promote(PromoteArgs),
    /// Check a VHD against Azure Batch's requirements without booting it: a local file or a blob URL.
    ///
    /// Exit status: 0 when every check passed (warnings and skips allowed), 1 when
    /// a check failed, 2 when the image cannot be read or the command line is wrong.
    #[command(after_help = "\
Examples:
  imgforge validate disk.vhd --manifest m.toml                      a local fixed VHD
  imgforge validate https://acct.blob.core.windows.net/images/gpu.vhd --manifest m.toml --json
  imgforge validate disk.vhd --manifest m.toml --junit report.xml   for CI test reports

Only fixed VHDs are read; a qcow2, VMDK, VHDX or dynamic VHD gets the qemu-img command
that converts it. Environment: IMGFORGE_BLOB_ENDPOINT, IMGFORGE_STORAGE_KEY_<ACCOUNT>.")]
    Validate(ValidateArgs),
    /// Boot a fixed VHD under QEMU (snapshot mode: never written), provisioned as
    /// Azure provisions a VM (ovf-env.xml CD, wire server and IMDS stand-ins), and
    /// check what a Batch node needs: login prompt, cloud-init's Ready report, then
    /// from inside over SSH: boot settled, no failed unit, the agent, Docker, the
    /// features' checks, outbound 443, the firewall's rules; from outside: SSH on
    /// 22, the plan's ports admitted, a closed port dropped.
    ///
    /// Exit status: 0 when every check passed (warnings and skips allowed), 1 when
    /// one failed, 2 when the image is not a fixed VHD, 3 when QEMU, OVMF, xorriso
    /// or OpenSSH's client is missing.
    #[command(after_help = "\
Examples:
  imgforge boot-check disk.vhd                          BIOS boot (an Azure Generation 1 VM)
  imgforge boot-check disk.vhd --uefi --json            BIOS and UEFI (Generation 2), one JSON report
  imgforge boot-check disk.vhd --manifest m.toml        the plan's checks from inside; its ports not probed as closed
  imgforge boot-check https://acct.blob.core.windows.net/images/gpu.vhd --uefi
                                                        a VHD built on Azure: its written ranges fetched, then booted

QEMU uses KVM when /dev/kvm works, else software emulation (TCG, ~40 s a boot on
2 cores); IMGFORGE_QEMU_ACCEL=tcg forces software, IMGFORGE_QEMU names the binary.
The guest's network is restricted: it reaches only the stand-ins for Azure's wire
server (168.63.129.16) and IMDS (169.254.169.254) and a TCP 443 listener; only
forwarded loopback ports reach it. Console logs, the provisioning files, the
stand-ins' requests.jsonl and the guest's journal stay in --logs DIR.")]
    BootCheck(BootCheckArgs),
    /// Serves one guest connection to Azure's wire server, IMDS or the egress
    /// probe on standard input and output (QEMU runs it for the boot check).
    #[command(hide = true)]
    BootStandIn {
        /// wire, imds or egress.
        role: String,
        /// The boot's provisioning directory (guest.json; requests.jsonl is appended).
        dir: PathBuf,
    },
    /// What is in an image, read from its disk without booting it: OS, kernels,
    /// packages, units at boot, users, sshd's ports; an SBOM with --sbom.
    ///
    /// Exit status: 0, or 2 when the image's root filesystem or package
    /// database cannot be read whole (no partial package list is ever given).
    #[command(after_help = "\
Examples:
  imgforge inspect out/disk.vhd                            a summary
  imgforge inspect out/disk.vhd --json > inspect.json      every fact, for `imgforge diff`
  imgforge inspect out/disk.vhd --sbom spdx -o sbom.spdx.json
  imgforge inspect out/disk.vhd --sbom cyclonedx -o bom.cdx.json
  imgforge inspect https://acct.blob.core.windows.net/images/disk.vhd --json
  imgforge inspect /subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/galleries/G/images/D/versions/1.0.0 --sbom spdx

Environment (blob URLs): IMGFORGE_STORAGE_KEY_<ACCOUNT>, a SAS, or the ARM_* principal,
as for `validate`.")]
    Inspect(InspectArgs),
    /// What changed between two images (or two `inspect --json` documents), and a
    /// gate: exit 1 when a --fail-on rule trips.
    #[command(after_help = "\
Examples:
  imgforge diff old.vhd new.vhd
  imgforge diff old.json new.vhd --json
  imgforge diff old.json new.json --fail-on kernel --fail-on new-user --fail-on 'package:nvidia-*'

Rules: kernel, new-port (sshd or the firewall: a new TCP port), new-user (with a login shell), package-removed,
unit-disabled (no longer started at boot), package:GLOB (added, removed or changed),
etc:GLOB (a file under /etc added, removed or changed, e.g. 'etc:/etc/ssh/*').")]
    Diff(DiffArgs),
    /// What happened in a build, stage by stage (from its build.json).
    #[command(after_help = "\
Examples:
  imgforge status                                      the newest build under .imgforge/builds
  imgforge status .imgforge/builds/<dir>
  imgforge status .imgforge/builds/<dir> --json | jq .failed_stage")]
    Status {
        /// The build directory [default: the newest build under .imgforge/builds].
        dir: Option<PathBuf>,
        /// Print the build record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Node agent SKU ids imgforge knows, per distro; with --online, the ones
    /// your Batch account supports today.
    ///
    /// imgforge's catalog records each node agent's end of support from the Batch
    /// team's notices; the Batch account's own list (`--online`) is what decides
    /// whether a new pool is created.
    #[command(after_help = "\
Examples:
  imgforge skus                                          the catalog: distro, node agent, until when
  imgforge skus --online --credentials credentials.yaml  the account's supported images, every page
  imgforge skus --online --account-url https://mybatch.westus2.batch.azure.com --json

--online signs in with Entra ID: the credentials file's batch.aad (or global
aad) service principal, else ARM_TENANT_ID, ARM_CLIENT_ID and ARM_CLIENT_SECRET.
A Batch account key is not used (custom-image pools need Entra ID anyway).
Environment: IMGFORGE_BATCH_URL (the account URL, as --account-url),
AZURE_AUTHORITY_HOST (a sovereign cloud's Entra ID).")]
    Skus {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// Ask the Batch account (GET {account}/supportedimages) instead of the catalog.
        #[arg(long)]
        online: bool,
        /// Batch Shipyard's credentials.yaml (or .json): batch.account_service_url
        /// and the batch.aad (or global aad) service principal.
        #[arg(long, value_name = "FILE", requires = "online")]
        credentials: Option<PathBuf>,
        /// The Batch account's URL, e.g. https://mybatch.westus2.batch.azure.com
        /// [default: the credentials file's batch.account_service_url].
        #[arg(long, value_name = "URL", env = "IMGFORGE_BATCH_URL")]
        account_url: Option<String>,
        /// Seconds --online may take, every page included.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Write a commented starter manifest that `imgforge plan` accepts.
    #[command(after_help = "\
Examples:
  imgforge init                                        ubuntu-24.04, Docker, a gallery image -> imgforge.toml
  imgforge init gpu.toml --distro ubuntu-22.04 --gpu --nfs
  imgforge init local.toml --builder local             Debian 12 built on this machine, no Azure needed
  imgforge init - --distro almalinux-9 --rdma sriov    print instead of writing

`imgforge catalog` lists the distros and features.")]
    Init(InitArgs),
    /// The distros (with their node agent's status) and features imgforge can build.
    #[command(after_help = "\
Examples:
  imgforge catalog
  imgforge catalog --json | jq '.distros[] | select(.new_pools != \"retired\") | .key'")]
    Catalog {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove old build directories (each local build keeps a full VHD).
    ///
    /// A build directory is one with a build.json. Builds still running are never
    /// removed. Without --keep or --older-than nothing is removed.
    #[command(after_help = "\
Examples:
  imgforge clean --keep 3 --dry-run        what would go, newest 3 kept
  imgforge clean --older-than 14d          every build started more than 14 days ago
  imgforge clean --dir /data/builds --keep 1 --json")]
    Clean {
        /// Where the build directories are.
        #[arg(long, value_name = "DIR", default_value = ".imgforge/builds")]
        dir: PathBuf,
        /// Keep the N newest builds.
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Remove builds started longer ago than this (e.g. 36h, 14d, 2weeks).
        #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print what was (or would be) removed as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shell completions on stdout.
    #[command(after_help = "\
Examples:
  imgforge completions bash > ~/.local/share/bash-completion/completions/imgforge
  imgforge completions zsh > ~/.zfunc/_imgforge
  imgforge completions fish > ~/.config/fish/completions/imgforge.fish")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Manual pages (roff): the top page on stdout, or one page per command into DIR.
    #[command(after_help = "\
Examples:
  imgforge man | man -l -
  imgforge man --out ~/.local/share/man/man1     imgforge.1, imgforge-build.1, imgforge-pool-check.1, …")]
    Man {
        /// Write imgforge.1 and one imgforge-COMMAND.1 per subcommand here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the manifest; `-` prints it.
    #[arg(default_value = "imgforge.toml")]
    pub file: PathBuf,
    /// The distro (`imgforge catalog`) [default: ubuntu-24.04; debian-12 with --builder local].
    #[arg(long, value_parser = distro_keys())]
    pub distro: Option<String>,
    /// The image name [default: from the file name, else the distro].
    #[arg(long)]
    pub name: Option<String>,
    /// azure-arm (Packer builds on an Azure VM) or local (this machine; debian-12).
    #[arg(long, default_value = "azure-arm", value_parser = ["azure-arm", "local"])]
    pub builder: String,
    /// Build on this machine from this Azure disk image of the distro (a
    /// file, e.g. Canonical's …-azure.vhd.tar.gz, or an https:// blob URL);
    /// implies --builder local.
    #[arg(long, value_name = "FILE|URL")]
    pub base_image: Option<String>,
    /// gallery (the default: what Batch pools use), or the legacy managed_image / vhd.
    #[arg(long, value_parser = ["gallery", "managed_image", "vhd"])]
    pub target: Option<String>,
    /// The NVIDIA driver and container toolkit.
    #[arg(long)]
    pub gpu: bool,
    /// Infiniband/RDMA: nd or sriov.
    #[arg(long, value_parser = ["nd", "sriov"])]
    pub rdma: Option<String>,
    /// The NFS client.
    #[arg(long)]
    pub nfs: bool,
    /// GlusterFS: client or server.
    #[arg(long, value_parser = ["client", "server"])]
    pub glusterfs: Option<String>,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

/// The catalog's distro keys: what `--distro` accepts and completes.
fn distro_keys() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crate::spec::catalog::DISTROS.iter().map(|d| d.key))
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Print the pool_specification.vm_configuration block that uses a build's image.
    ///
    /// The image is named by its gallery image version id. A build whose image
    /// is a VHD or a managed image makes no pool (Azure Batch retired both
    /// sources on 2026-03-31): refused unless --legacy.
    #[command(after_help = "\
Examples:
  imgforge pool snippet m.toml --from .imgforge/builds/<dir>/build.json
  imgforge pool snippet m.toml --from build.json --format batch-json -o pool.json
  az batch pool create --json-file pool.json
  imgforge pool snippet m.toml --from build.json --format bicep -o pool.bicep
  imgforge pool snippet m.toml --from build.json --format terraform -o pool.tf")]
    Snippet {
        /// The feature manifest the image was built from.
        manifest: PathBuf,
        /// The build record (build.json) of a finished build.
        #[arg(long, value_name = "BUILD_JSON")]
        from: PathBuf,
        /// Which client the pool is for.
        #[arg(long, value_enum, default_value = "shipyard")]
        format: crate::pool::output::PoolFormat,
        /// Write the pool for a VHD (image_uris, Batch Shipyard's form only) or
        /// a managed image anyway: for pools made before 2026-03-31.
        #[arg(long)]
        legacy: bool,
        /// Also write the snippet to this file.
        #[arg(short, long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check a Batch Shipyard pool configuration (YAML or JSON) against Azure Batch's rules.
    ///
    /// Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed,
    /// 2 when the file cannot be read.
    #[command(after_help = "\
Examples:
  imgforge pool check pool.yaml                                    offline rules
  imgforge pool check pool.yaml --manifest m.toml --junit out.xml  also node agent and vm_size
  imgforge pool check pool.yaml --online --credentials credentials.yaml
  imgforge pool check pool.yaml --online --region westus2 --subscription <id>

Environment (--online): ARM_TENANT_ID, ARM_CLIENT_ID, ARM_CLIENT_SECRET and
ARM_SUBSCRIPTION_ID when the credentials file has no service principal;
IMGFORGE_BATCH_URL (as --account-url), IMGFORGE_ARM_ENDPOINT, AZURE_AUTHORITY_HOST;
IMGFORGE_STORAGE_KEY_<ACCOUNT> for the blobs.")]
    Check {
        /// The pool configuration, e.g. pool.yaml.
        config: PathBuf,
        /// The manifest of the image the pool uses: also checks node_agent and vm_size against it.
        #[arg(long, value_name = "MANIFEST")]
        manifest: Option<PathBuf>,
        /// Also ask Azure: each image blob exists and is a page blob (storage keys
        /// or a SAS as for `replicate`), each storage account is in the pool's
        /// region and subscription, and the Batch account allocates pools in the
        /// user's subscription (Resource Manager, as the credentials file's
        /// management.aad or the ARM_* service principal, with Reader).
        #[arg(long)]
        online: bool,
        /// Batch Shipyard's credentials.yaml (or .json): the pool's region from
        /// batch.account_service_url, management.subscription_id, management.aad,
        /// and storage account keys.
        #[arg(long, value_name = "FILE", requires = "online")]
        credentials: Option<PathBuf>,
        /// The Batch account's region, e.g. westus2 [default: from --credentials].
        #[arg(long, requires = "online")]
        region: Option<String>,
        /// The Batch account's subscription id [default: from --credentials, else ARM_SUBSCRIPTION_ID].
        #[arg(long, value_name = "ID", requires = "online")]
        subscription: Option<String>,
        /// The Batch account's URL, asked for its supported node agents
        /// [default: the credentials file's batch.account_service_url].
        #[arg(long, value_name = "URL", env = "IMGFORGE_BATCH_URL")]
        account_url: Option<String>,
        /// Check a file for a pool made before 2026-03-31: VHD image_uris, a
        /// managed image and Batch Shipyard 2.x's flat form warn instead of failing.
        #[arg(long)]
        legacy: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write the report as JUnit XML.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Seconds the --online checks may take together, however slowly
        /// Azure answers (each request is bounded too).
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        timeout: u64,
    },
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The feature manifest (TOML).
    pub manifest: PathBuf,
    /// Print the plan as JSON (the same data the templates see).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TemplateOptions {
    /// A directory of template overrides; each file replaces the built-in with the same relative path.
    #[arg(long, value_name = "DIR", env = "IMGFORGE_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// Leave out the in-VM check script that runs just before deprovisioning.
    #[arg(long)]
    pub no_vm_checks: bool,
}

impl TemplateOptions {
    pub fn plan(&self, manifest: &crate::spec::manifest::Manifest) -> crate::spec::plan::Plan {
        let plan = crate::spec::plan::Plan::new(manifest);
        if self.no_vm_checks {
            plan.without_vm_checks()
        } else {
            plan
        }
    }
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The feature manifest (TOML).
    pub manifest: PathBuf,
    /// Output directory (created; must be empty or absent unless --force).
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace a non-empty output directory.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub templates: TemplateOptions,
    /// Print the list of rendered files as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The feature manifest (TOML).
    pub manifest: PathBuf,
    /// Stop after rendering and `packer validate`; nothing is created in Azure.
    #[arg(long)]
    pub dry_run: bool,
    /// Build directory [default: .imgforge/builds/<image>-<UTC timestamp>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace a non-empty build directory.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub templates: TemplateOptions,
    /// The Packer binary [default: $IMGFORGE_PACKER, then `packer` on PATH].
    #[arg(long, value_name = "PATH")]
    pub packer: Option<PathBuf>,
    /// Print one JSON result document on stdout instead of progress.
    #[arg(long)]
    pub json: bool,
    /// Show all provisioner output, not only the current step.
    #[arg(short, long)]
    pub verbose: bool,
    /// Continue the build in DIR from its first unfinished stage (same manifest and templates).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["out", "force", "dry_run"])]
    pub resume: Option<PathBuf>,
    /// Stop after capture: no copies, no remote validation (a local build's
    /// VHD is still validated and boot-checked).
    #[arg(long)]
    pub no_replicate: bool,
    /// Skip the boot check of a local build's VHD.
    #[arg(long)]
    pub no_boot_check: bool,
    /// Keep a local build's VHD on this machine: no upload, no managed or
    /// gallery image (target = "managed_image" / "gallery").
    #[arg(long)]
    pub no_publish: bool,
    /// Seconds each publishing operation (image, gallery version with its
    /// replication) may take before the build stops; a rerun picks it up.
    #[arg(long, default_value_t = 7200, value_name = "SECONDS")]
    pub publish_timeout: u64,
    /// Publish this gallery image version instead of the manifest's
    /// `[build.gallery] version` (a scheduled rebuild names a new one per run;
    /// a resume keeps it).
    #[arg(long, value_name = "X.Y.Z")]
    pub gallery_version: Option<String>,
    /// Build an image whose Batch node agent is retired for new pools (for
    /// existing pools, and older API users); `plan` names the date.
    #[arg(long)]
    pub allow_retired: bool,
    /// Do not validate the copies after replication.
    #[arg(long)]
    pub no_validate: bool,
    /// Blob endpoint template for the replication accounts (see `replicate --help`).
    #[arg(long, value_name = "TEMPLATE", env = "IMGFORGE_BLOB_ENDPOINT")]
    pub blob_endpoint: Option<String>,
    /// 4 MiB chunks in flight during replication: the memory bound and the
    /// requests each destination account sees at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
    /// Write requests in flight across all destination accounts.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_requests: usize,
    /// How each copy is checked after replication: readback or sample (see `replicate --help`).
    #[arg(long, value_enum, default_value_t = crate::replicate::VerifyMode::Sample)]
    pub verify: crate::replicate::VerifyMode,
    /// Seconds the whole build may take: then it stops as Ctrl-C stops it
    /// (Packer cleans up, a copy stops at a safe point), exit 1, and
    /// `--resume` continues it.
    #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Write the built-in templates to DIR, ready to edit and pass back with --templates.
    #[command(after_help = "\
Examples:
  imgforge templates export my-templates/
  imgforge build m.toml --templates my-templates/     only the files present replace the built-ins")]
    Export {
        /// The directory to write into (created; must be empty unless --force).
        dir: PathBuf,
        /// Write into a non-empty directory, replacing files of the same name.
        #[arg(long)]
        force: bool,
    },
    /// List the built-in template names (the paths overrides must use).
    #[command(after_help = "\
Examples:
  imgforge templates list
  imgforge templates list | grep scripts/             the provisioner scripts")]
    List,
}

#[derive(Debug, Args)]
pub struct StorageOptions {
    /// Blob endpoint template [default: https://{account}.blob.core.windows.net]; e.g.
    /// 'http://127.0.0.1:10000/{account}' for Azurite.
    #[arg(long, value_name = "TEMPLATE", env = "IMGFORGE_BLOB_ENDPOINT")]
    pub blob_endpoint: Option<String>,
    /// Seconds the whole command may take: then it stops at the next safe
    /// point, as Ctrl-C does, and a rerun finishes the copies.
    #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
    pub timeout: u64,
    /// 4 MiB chunks in flight: memory holds at most N chunks whatever the
    /// number of destinations, and each account sees at most N requests at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
    /// Write requests in flight across all destination accounts.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_requests: usize,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// How each copy is checked: readback (every chunk read back and its MD5
    /// compared) or sample (the first and last chunk of every run of data and 4
    /// random ones; for Azure, which checks each write's Content-MD5 itself).
    #[arg(long, value_enum, default_value_t = crate::replicate::VerifyMode::Sample)]
    pub verify: crate::replicate::VerifyMode,
    /// The Batch account's region: before copying, ask Resource Manager (as the
    /// ARM_* principal, subscription ARM_SUBSCRIPTION_ID) that every destination
    /// account is there [default for replicate: the manifest's [replicate] region;
    /// upload: not checked].
    #[arg(long)]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Credentials, per storage account, in this order: a SAS already in the source URL;
IMGFORGE_STORAGE_KEY_<ACCOUNT> (account name upper-cased), or AZURE_STORAGE_KEY when
only one account is involved; otherwise an Entra ID token for the ARM_CLIENT_ID /
ARM_CLIENT_SECRET / ARM_TENANT_ID service principal. Keys, SAS and tokens are never printed.")]
pub struct ReplicateArgs {
    /// The manifest: its [pool] decides how many copies, [replicate] the candidate accounts.
    pub manifest: Option<PathBuf>,
    /// The source VHD: a full blob URL (a SAS in it is used and never printed).
    #[arg(long, value_name = "URL")]
    pub source: String,
    /// A destination storage account (repeat); overrides [replicate] storage_accounts.
    #[arg(long = "to", value_name = "ACCOUNT")]
    pub to: Vec<String>,
    /// Destination container [default: [replicate] container, else "images"].
    #[arg(long)]
    pub container: Option<String>,
    /// Destination blob name [default: the source blob's file name].
    #[arg(long)]
    pub name: Option<String>,
    /// Copy through imgforge even where a server-side copy would work (e.g. the
    /// source account's firewall does not admit the storage service).
    #[arg(long)]
    pub no_server_copy: bool,
    /// With a manifest, copies are validated remotely after replication; this skips that.
    #[arg(long)]
    pub no_validate: bool,
    #[command(flatten)]
    pub storage: StorageOptions,
}

const PUBLISH_EXAMPLES: &str = "\
Examples:
  imgforge publish .imgforge/builds/local-debian12-…/output/local-debian12.vhd --manifest m.toml
  imgforge publish https://imgstage.blob.core.windows.net/images/d12.vhd --manifest m.toml --json

A local file is uploaded to [build] storage_account (container capture_container,
default \"images\") first; a blob URL is used where it is. Then, as the manifest's
target says: a managed image (build.managed_image_name) and/or a gallery image
version ([build.gallery]), with per-region replicas from the pool size
(`imgforge plan` shows the table). Resources that exist with the same content are
kept, so a rerun after a failure or Ctrl-C goes on where it stopped.

Environment:
  ARM_SUBSCRIPTION_ID, ARM_TENANT_ID, ARM_CLIENT_ID, ARM_CLIENT_SECRET
      the service principal (Contributor on the image's resource group)
  IMGFORGE_ARM_ENDPOINT, AZURE_AUTHORITY_HOST   sovereign clouds
  AZURE_STORAGE_KEY / IMGFORGE_BLOB_ENDPOINT    the upload (see `upload --help`)";

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// A local fixed VHD, or the URL of a page blob in the subscription.
    pub image: String,
    /// The manifest whose target (managed_image or gallery) says what to make.
    #[arg(long, value_name = "MANIFEST")]
    pub manifest: PathBuf,
    /// Blob name for an uploaded file [default: the file's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds each operation may take.
    #[arg(long, default_value_t = 7200, value_name = "SECONDS")]
    pub timeout: u64,
    /// Concurrent 4 MiB chunk uploads.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
    /// Blob endpoint template (see `replicate --help`).
    #[arg(long, value_name = "TEMPLATE", env = "IMGFORGE_BLOB_ENDPOINT")]
    pub blob_endpoint: Option<String>,
    /// Publish a local file without validating it against the manifest first
    /// (a blob URL is not validated: `imgforge validate URL --manifest M` does that).
    #[arg(long)]
    pub no_validate: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// A build directory whose build published a gallery version, or a version's resource id.
    pub target: String,
    /// A diff rule against the newest earlier build of the image that must not trip; repeatable.
    #[arg(long = "fail-on", value_name = "RULE")]
    pub fail_on: Vec<crate::inspect::diff::Rule>,
    /// Seconds the update may take.
    #[arg(long, default_value_t = 1800, value_name = "SECONDS")]
    pub timeout: u64,
    /// Print the promotion as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// A local fixed VHD (qemu-img convert -O vpc -o subformat=fixed,force_size=on).
    pub file: PathBuf,
    /// The destination storage account.
    #[arg(long = "to", value_name = "ACCOUNT")]
    pub to: String,
    /// Destination container.
    #[arg(long, default_value = "images")]
    pub container: String,
    /// Destination blob name [default: the file's name].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub storage: StorageOptions,
}

#[derive(Debug, Args)]
pub struct BootCheckArgs {
    /// A local fixed VHD, or a page blob's URL: its written ranges are fetched
    /// into a sparse local file first (deleted after the check).
    pub image: PathBuf,
    /// Also boot in UEFI mode (OVMF, q35), as an Azure Generation 2 VM.
    #[arg(long)]
    pub uefi: bool,
    /// Which boots: bios (Generation 1), uefi (Generation 2) or both
    /// [default: bios, and uefi with --uefi].
    #[arg(long, value_parser = ["bios", "uefi", "both"], conflicts_with = "uefi")]
    pub firmware: Option<String>,
    /// The manifest the image was built from: its extra inbound ports are not
    /// used as the port that must get no answer.
    #[arg(long, value_name = "MANIFEST")]
    pub manifest: Option<PathBuf>,
    /// Seconds from QEMU's start to the login prompt, per boot.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,
    /// Keep the serial console logs in DIR [default: a temporary directory, kept when a check fails].
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// Seconds a blob URL's fetch may take (each request is bounded too).
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub fetch_timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A local fixed VHD, a blob URL (read through range requests, never
    /// downloaded whole), or a gallery image version or managed image id (read
    /// through a temporary managed disk, removed after; ARM_* credentials).
    pub image: String,
    /// Seconds a blob URL's whole inspection may take (each request is bounded
    /// too); for an image id, each Azure operation and the reading.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
    /// Print every fact as JSON (what `imgforge diff` takes).
    #[arg(long, conflicts_with = "sbom")]
    pub json: bool,
    /// Write a software bill of materials instead of the summary.
    #[arg(long, value_enum)]
    pub sbom: Option<crate::inspect::sbom::SbomFormat>,
    /// Write the JSON or SBOM to this file (temp file, then rename) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier image (a VHD file or blob URL) or its `inspect --json` document.
    pub old: String,
    /// The later image (a VHD file or blob URL) or its `inspect --json` document.
    pub new: String,
    /// Seconds each blob URL's inspection may take.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
    /// A rule whose hit fails the diff (exit 1); repeatable.
    #[arg(long = "fail-on", value_name = "RULE")]
    pub fail_on: Vec<crate::inspect::diff::Rule>,
    /// Print the difference as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A local VHD file, or a blob URL (read through range requests, never downloaded whole).
    pub image: String,
    /// The manifest the image was built from: decides which checks apply.
    #[arg(long, value_name = "MANIFEST")]
    pub manifest: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as JUnit XML.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Blob endpoint template, for account-only URLs and Azurite (see `replicate --help`).
    #[arg(long, value_name = "TEMPLATE", env = "IMGFORGE_BLOB_ENDPOINT")]
    pub blob_endpoint: Option<String>,
    /// Seconds a blob URL's whole validation may take, however slowly the
    /// server answers (each request is bounded too); a local file is not limited.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
}
