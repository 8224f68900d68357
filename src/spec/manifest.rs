//! The feature manifest: parsed from TOML, then checked against the catalog.
//!
//! Every error names the file, line and column, the key, and what is allowed,
//! because the person reading it is usually a pipeline log reader far from the
//! file.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::catalog::{self, Distro, Os};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read the manifest: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Box<Located>),
    /// More than one problem, each located, in file order, each with its own
    /// hint under it (the list has no hint of its own).
    #[error("{}\n{} problems in {}", .0.iter().map(crate::util::with_hint).collect::<Vec<_>>().join("\nerror: "), .0.len(), .0[0].path.display())]
    Several(Vec<Located>),
}

impl crate::util::Hint for ManifestError {
    fn hint(&self) -> Option<String> {
        match self {
            ManifestError::Invalid(l) => l.hint.clone(),
            ManifestError::Read { .. } | ManifestError::Several(_) => None,
        }
    }
}

impl crate::util::Hint for Located {
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
}

impl ManifestError {
    /// One error, or several in file order; `errors` must not be empty.
    fn from_many(errors: Vec<ManifestError>) -> ManifestError {
        let mut located: Vec<Located> = Vec::new();
        for e in errors {
            match e {
                ManifestError::Invalid(l) => located.push(*l),
                ManifestError::Several(ls) => located.extend(ls),
                read @ ManifestError::Read { .. } => return read,
            }
        }
        located.sort_by_key(|l| (l.line, l.column));
        located.dedup_by(|a, b| a.line == b.line && a.key == b.key && a.message == b.message);
        if located.len() == 1 {
            ManifestError::Invalid(Box::new(located.remove(0)))
        } else {
            ManifestError::Several(located)
        }
    }
}

/// An error with a place in the manifest.
#[derive(Debug)]
pub struct Located {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.key,
            self.message
        )
    }
}

/// What a build makes. The default is a Compute Gallery image version: Azure
/// Batch makes custom-image pools only from those since 2026-03-31
/// ([`crate::spec::catalog::NON_GALLERY_POOLS_RETIRED`]). A VHD is the
/// transport to a gallery and an artefact for other tools; a managed image is
/// an intermediate. Neither makes a pool today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Vhd,
    ManagedImage,
    #[default]
    Gallery,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Vhd => "vhd",
            Target::ManagedImage => "managed_image",
            Target::Gallery => "gallery",
        }
    }

    /// Whether Azure Batch still creates pools from this target's output.
    pub fn makes_pools(self) -> bool {
        self == Target::Gallery
    }
}

/// The security type of a gallery image definition (its `SecurityType`
/// feature). `TrustedLaunchSupported` images run both standard and Trusted
/// Launch VMs; it is what definitions created with the gallery API 2025-03-03
/// default to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityType {
    Standard,
    TrustedLaunchSupported,
    TrustedLaunch,
}

impl SecurityType {
    /// The value of the definition's `SecurityType` feature (`None`: no feature, standard).
    pub fn feature_value(self) -> Option<&'static str> {
        match self {
            SecurityType::Standard => None,
            SecurityType::TrustedLaunchSupported => Some("TrustedLaunchSupported"),
            SecurityType::TrustedLaunch => Some("TrustedLaunch"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SecurityType::Standard => "standard",
            SecurityType::TrustedLaunchSupported => "trusted_launch_supported",
            SecurityType::TrustedLaunch => "trusted_launch",
        }
    }
}

/// Who builds the image: Packer's azure-arm builder on an Azure VM, or the
/// local builder on this machine (a distro root, then a disk, no VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Builder {
    #[default]
    AzureArm,
    Local,
}

impl Builder {
    pub fn as_str(self) -> &'static str {
        match self {
            Builder::AzureArm => "azure-arm",
            Builder::Local => "local",
        }
    }

    /// The Packer template this builder renders (here, not in the catalog,
    /// so the catalog knows nothing of the manifest).
    pub fn packer_template(self) -> &'static str {
        match self {
            Builder::AzureArm => catalog::PACKER_TEMPLATE,
            Builder::Local => catalog::PACKER_TEMPLATE_LOCAL,
        }
    }
}

/// Boot modes the local builder's boot check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BootCheck {
    Bios,
    Uefi,
    #[default]
    Both,
    Off,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSection {
    /// The distro archive [default: the distro's own, e.g. http://deb.debian.org/debian].
    pub mirror: Option<String>,
    /// Archive components [default: main, plus non-free for a distro GPU driver].
    pub components: Option<Vec<String>>,
    /// Virtual disk size in GiB; the VHD is sparse [default: 30].
    pub disk_gib: Option<u32>,
    /// Where base roots are cached between builds, relative to the manifest
    /// [default: $XDG_CACHE_HOME/imgforge/roots, else ~/.cache/imgforge/roots].
    pub cache_dir: Option<PathBuf>,
    /// Which firmware the boot check boots the VHD with [default: both].
    #[serde(default)]
    pub boot_check: BootCheck,
    /// Build from this disk image instead of an mmdebstrap root: a file
    /// relative to the manifest (VHD, VHDX, qcow2 or raw, or one of those in
    /// a .gz/.xz/.zst file or a tar archive) or an https:// blob URL. QEMU
    /// boots it under Packer, provisioned as Azure provisions a VM.
    pub base_image: Option<String>,
    /// Hosts (with an optional :port) the build VM may reach through the
    /// build's proxy [default: the distro's package archives; [] = none].
    pub allow_hosts: Option<Vec<String>>,
}

/// Where a feature's packages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PackageSource {
    /// The vendor's repository (Docker's, NVIDIA's), as on Azure build VMs.
    #[default]
    Vendor,
    /// The distro's own archive (Debian's docker.io; Debian's non-free NVIDIA driver).
    Distro,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rdma {
    Nd,
    Sriov,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Glusterfs {
    Client,
    Server,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub name: String,
    pub os: Os,
    pub distro: String,
    /// The Batch node agent SKU id [default: the distro catalog's].
    pub node_agent: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GallerySection {
    pub name: String,
    pub resource_group: Option<String>,
    pub image_definition: String,
    pub version: String,
    #[serde(default)]
    pub replication_regions: Vec<String>,
    /// Pool nodes one replica serves, K in `max(min_replicas, ceil(nodes / K))`
    /// replicas per region [default: 300, Batch's rule for pools].
    pub nodes_per_replica: Option<u32>,
    /// The fewest replicas per region [default: 1; Compute Gallery advises 3
    /// for production].
    pub min_replicas: Option<u32>,
    /// Replica storage: Standard_LRS, Standard_ZRS or Premium_LRS [default: Standard_LRS].
    pub storage_account_type: Option<String>,
    /// Per region, overriding `storage_account_type`, e.g. `{ eastus = "Standard_ZRS" }`.
    #[serde(default)]
    pub region_storage: std::collections::BTreeMap<String, String>,
    /// Keep this version out of `latest` (a pool naming the definition without a version).
    #[serde(default)]
    pub exclude_from_latest: bool,
    /// YYYY-MM-DD after which the version is not to be used (Azure only labels it).
    pub end_of_life_date: Option<String>,
    /// The definition's security type [default: trusted_launch_supported for
    /// Generation 2, standard for Generation 1].
    pub security_type: Option<SecurityType>,
    /// The image definition's identifier, used when imgforge creates the
    /// definition [default: "imgforge", the image name, the distro].
    pub publisher: Option<String>,
    pub offer: Option<String>,
    pub sku: Option<String>,
}

/// The Hyper-V generation an image is published as: Generation 1 VMs boot
/// with BIOS, Generation 2 VMs with UEFI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HyperVGeneration {
    V1,
    V2,
}

impl HyperVGeneration {
    pub fn as_str(self) -> &'static str {
        match self {
            HyperVGeneration::V1 => "V1",
            HyperVGeneration::V2 => "V2",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    #[serde(default)]
    pub builder: Builder,
    #[serde(default)]
    pub target: Target,
    pub location: Option<String>,
    pub vm_size: Option<String>,
    pub resource_group: Option<String>,
    pub storage_account: Option<String>,
    pub capture_container: Option<String>,
    pub managed_image_name: Option<String>,
    pub gallery: Option<GallerySection>,
    /// builder = "local" only.
    pub local: Option<LocalSection>,
    /// builder = "local" with target = "managed_image" or "gallery": the
    /// generation the image is published as [default: V2 when the boot check
    /// boots UEFI, else V1].
    pub hyper_v_generation: Option<HyperVGeneration>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerFeature {
    /// Version pin, e.g. `20.10.21`; unpinned when absent.
    pub version: Option<String>,
    /// `vendor`: Docker's repository (docker-ce); `distro`: the distro's docker.io.
    #[serde(default)]
    pub source: PackageSource,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuFeature {
    /// NVIDIA driver branch (`470`) or exact version (`470.82.01`).
    pub driver: String,
    #[serde(default = "yes")]
    pub container_toolkit: bool,
    /// `vendor`: NVIDIA's CUDA repository; `distro`: Debian's non-free driver (DKMS).
    #[serde(default)]
    pub source: PackageSource,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSection {
    #[serde(default)]
    pub docker: DockerFeature,
    pub gpu: Option<GpuFeature>,
    pub rdma: Option<Rdma>,
    #[serde(default)]
    pub nfs: bool,
    pub glusterfs: Option<Glusterfs>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallSection {
    #[serde(default)]
    pub inbound_tcp: Vec<u16>,
    #[serde(default)]
    pub outbound_tcp: Vec<u16>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionSection {
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub scripts: Vec<PathBuf>,
    /// User scripts may come from outside the manifest's directory (they are
    /// refused there by default: a manifest from elsewhere must not pull
    /// `../../etc/shadow` or `/proc/self/cmdline` into a build).
    #[serde(default)]
    pub allow_outside: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    #[serde(default)]
    pub dedicated: u32,
    #[serde(default)]
    pub low_priority: u32,
    pub autoscale_max: Option<u32>,
}

impl PoolSection {
    /// The most nodes the pool can reach at once.
    pub fn max_nodes(&self) -> u32 {
        let fixed = self.dedicated.saturating_add(self.low_priority);
        fixed.max(self.autoscale_max.unwrap_or(0))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateSection {
    #[serde(default)]
    pub storage_accounts: Vec<String>,
    /// Container at whose root the copies are written.
    pub container: Option<String>,
    /// The Batch account's region: when set, the destination accounts are
    /// looked up in Resource Manager and must be there before anything is copied.
    pub region: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub image: ImageSection,
    #[serde(default)]
    pub build: BuildSection,
    #[serde(default)]
    pub features: FeaturesSection,
    #[serde(default)]
    pub firewall: FirewallSection,
    #[serde(default)]
    pub provision: ProvisionSection,
    #[serde(default)]
    pub pool: PoolSection,
    #[serde(default)]
    pub replicate: ReplicateSection,
}

/// A manifest that parsed and passed every check against the catalog.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub source: String,
    pub distro: &'static Distro,
    pub raw: RawManifest,
    /// User scripts, resolved against the manifest's directory.
    pub user_scripts: Vec<PathBuf>,
    /// shellcheck's findings on the user scripts, named as the manifest
    /// names them (plan warnings; empty where shellcheck is absent).
    pub script_findings: Vec<String>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let source =
            crate::util::fsutil::read_input_string(path).map_err(|source| ManifestError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Manifest::parse(path, source)
    }

    pub fn parse(path: &Path, source: String) -> Result<Manifest, ManifestError> {
        let raw = deserialize(path, &source)?;
        let checker = Checker {
            path,
            source: &source,
        };
        let (distro, user_scripts) = checker.check(&raw)?;
        let script_findings = raw
            .provision
            .scripts
            .iter()
            .zip(&user_scripts)
            .flat_map(|(shown, full)| {
                crate::spec::scripts::lint(full, &shown.display().to_string())
            })
            .collect();
        Ok(Manifest {
            path: path.to_path_buf(),
            distro,
            user_scripts,
            script_findings,
            raw,
            source,
        })
    }
}

/// The manifest's sections, with every type error reported, not only the
/// first: serde stops at the first, so the offending line is blanked (line
/// numbers stay) and the document read again, up to 32 times. A blanked line
/// that breaks the TOML (a value over several lines) or a "missing field" for
/// a key already reported ends the search: those would be echoes, not news.
fn deserialize(path: &Path, source: &str) -> Result<RawManifest, ManifestError> {
    let mut text = source.to_string();
    let mut errors: Vec<ManifestError> = Vec::new();
    let mut reported: Vec<String> = Vec::new();
    for _ in 0..32 {
        let e = match toml::from_str::<RawManifest>(&text) {
            Ok(raw) if errors.is_empty() => return Ok(raw),
            Ok(_) => break,
            Err(e) => e,
        };
        let syntax = toml::de::DeTable::parse(&text).is_err();
        if syntax && !errors.is_empty() {
            break;
        }
        let err = syntax_error(path, &text, &e);
        let ManifestError::Invalid(located) = &err else {
            break;
        };
        let echo = reported.iter().any(|k| {
            e.message().contains(&format!(
                "missing field `{}`",
                k.rsplit('.').next().unwrap_or(k)
            ))
        });
        if echo {
            break;
        }
        let line = located.line;
        reported.push(located.key.clone());
        errors.push(err);
        if syntax || e.span().is_none() || e.message().contains("missing field") {
            break;
        }
        // Blank the offending line, keeping every line number.
        text = text
            .split_inclusive('\n')
            .enumerate()
            .map(|(i, l)| {
                if i + 1 == line {
                    if l.ends_with('\n') { "\n" } else { "" }
                } else {
                    l
                }
            })
            .collect();
    }
    Err(ManifestError::from_many(errors))
}

/// serde's wording ("invalid type: string \"10\", expected u32") in words a
/// manifest's author uses.
fn plain_words(message: &str) -> String {
    let expected = |t: &str| -> Option<&'static str> {
        Some(match t {
            "u8" => "a whole number from 0 to 255",
            "u16" => "a whole number from 0 to 65535",
            "u32" => "a whole number from 0 to 4294967295",
            "u64" | "usize" => "a whole number, 0 or more",
            "i32" | "i64" => "a whole number",
            "a boolean" => "true or false (without quotes)",
            "a string" => "text in double quotes",
            "a sequence" => "a list in brackets, e.g. [\"a\", \"b\"]",
            "f32" | "f64" => "a number",
            _ if t.starts_with("struct ") || t == "a map" => {
                "a table (a [section] or { key = value })"
            }
            _ => return None,
        })
    };
    let got = |g: &str| -> String {
        // `string "10"` → `the text "10"`; `integer `-1`` → `-1`.
        if let Some(v) = g.strip_prefix("string ") {
            format!("the text {v}")
        } else if let Some(v) = g
            .strip_prefix("integer ")
            .or_else(|| g.strip_prefix("float "))
        {
            v.trim_matches('`').to_string()
        } else if let Some(v) = g.strip_prefix("boolean ") {
            v.trim_matches('`').to_string()
        } else {
            g.to_string()
        }
    };
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, want)) = rest.rsplit_once(", expected ")
            && let Some(words) = expected(want.trim())
        {
            return format!("is {}; write {words}", got(found));
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ")
        && let Some((found, want)) = rest.split_once(", expected ")
    {
        let options = want
            .trim_start_matches("one of ")
            .replace('`', "\"")
            .replace(" or ", ", ");
        return format!("{} is not one of: {options}", found.replace('`', "\""));
    }
    if let Some(rest) = message.strip_prefix("unknown field ")
        && let Some((found, want)) = rest.split_once(", expected ")
    {
        let keys = want.trim_start_matches("one of ").replace('`', "");
        return format!(
            "{} is not a key here; the keys here are: {keys}",
            found.replace('`', "\"")
        );
    }
    if let Some(field) = message.strip_prefix("missing field ") {
        return format!("the key {} is required here", field.replace('`', "\""));
    }
    message.to_string()
}

fn syntax_error(path: &Path, source: &str, e: &toml::de::Error) -> ManifestError {
    let span = e.span().unwrap_or(0..0);
    let (line, column) = line_col(source, span.start);
    // A document that does not parse has no key tree: take the key written on
    // the offending line.
    let top_level_missing = e.message().contains("missing field") && span.start == 0;
    let key = if top_level_missing {
        Some("(top level)".to_string())
    } else {
        key_at(source, span.start)
    };
    let key = key.unwrap_or_else(|| {
        source
            .lines()
            .nth(line - 1)
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "(syntax)".to_string())
    });
    let message = e.message().trim().to_string();
    let hint = if message.contains("unknown field") {
        Some("the README's manifest reference lists every key".to_string())
    } else if message.contains("missing field") {
        Some("add the key; the README's manifest reference shows an example".to_string())
    } else {
        None
    };
    ManifestError::Invalid(Box::new(Located {
        path: path.to_path_buf(),
        line,
        column,
        key,
        message: elide(&plain_words(&message), 400),
        hint,
    }))
}

/// The dotted key whose key or value covers `offset`, deepest first.
fn key_at(source: &str, offset: usize) -> Option<String> {
    fn walk(table: &toml::de::DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            if let Some(inner) = v.get_ref().as_table()
                && let Some(deeper) = walk(inner, offset, &path)
            {
                return Some(deeper);
            }
            if k.span().contains(&offset) || v.span().contains(&offset) {
                return Some(path);
            }
        }
        None
    }
    let root = toml::de::DeTable::parse(source).ok()?;
    walk(root.get_ref(), offset, "")
}

fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

struct Checker<'a> {
    path: &'a Path,
    source: &'a str,
}

type Check<T> = Result<T, ManifestError>;

impl Checker<'_> {
    /// Where a dotted key's value sits in the source, for error messages.
    fn span_of(&self, key: &str) -> Range<usize> {
        let Ok(root) = toml::de::DeTable::parse(self.source) else {
            return 0..0;
        };
        let mut parts = key.split('.');
        let Some(first) = parts.next() else {
            return 0..0;
        };
        let Some(mut node) = root.get_ref().get(first) else {
            return 0..0;
        };
        let mut best = node.span();
        for part in parts {
            let next = match part.parse::<usize>() {
                Ok(i) => node.get_ref().get(i),
                Err(_) => node.get_ref().get(part),
            };
            match next {
                Some(n) => {
                    node = n;
                    best = n.span();
                }
                None => break,
            }
        }
        best
    }

    fn fail(
        &self,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> ManifestError {
        let (line, column) = line_col(self.source, self.span_of(key).start);
        let hint: String = hint.into();
        // Messages quote values from the file: bounded whatever the value.
        ManifestError::Invalid(Box::new(Located {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: elide(&message.into(), 400),
            hint: (!hint.is_empty()).then(|| elide(&hint, 600)),
        }))
    }

    /// Every section is checked, each reporting its first problem, so one run
    /// names the problems of all sections; checks that need the distro run
    /// only when it is known.
    fn check(&self, m: &RawManifest) -> Check<(&'static Distro, Vec<PathBuf>)> {
        let mut errors: Vec<ManifestError> = Vec::new();
        let mut keep = |r: Check<()>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };
        keep(self.name(&m.image.name));
        let distro = catalog::distro(&m.image.distro).ok_or_else(|| {
            self.fail(
                "image.distro",
                format!("unknown distro `{}`", m.image.distro),
                format!("known distros: {}", catalog::distro_keys().join(", ")),
            )
        });
        let distro = match distro {
            Ok(d) => Some(d),
            Err(e) => {
                keep(Err(e));
                None
            }
        };
        if let Some(distro) = distro
            && distro.os != m.image.os
        {
            keep(Err(self.fail(
                "image.os",
                format!(
                    "`{}` contradicts distro `{}`, which is {}",
                    os_name(m.image.os),
                    distro.key,
                    os_name(distro.os)
                ),
                format!("set os = \"{}\"", os_name(distro.os)),
            )));
        }
        if let Some(agent) = &m.image.node_agent {
            let ok = agent.starts_with("batch.node.")
                && agent.len() <= 64
                && agent
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || " ._-".contains(c));
            keep(self.require(
                ok,
                "image.node_agent",
                agent,
                "a Batch node agent SKU id",
                "e.g. \"batch.node.ubuntu 22.04\"; `imgforge skus` lists the known ones",
            ));
        }
        keep(self.build(&m.build));
        if let Some(distro) = distro {
            if m.build.builder == Builder::Local {
                keep(self.local_build(&m.build, distro));
            }
            keep(self.features(m, distro));
        }
        keep(self.firewall(&m.firewall));
        keep(self.provision_packages(&m.provision.packages));
        let scripts = match self.provision_scripts(&m.provision.scripts, m.provision.allow_outside)
        {
            Ok(s) => s,
            Err(e) => {
                keep(Err(e));
                Vec::new()
            }
        };
        if distro.is_some_and(|d| d.os == Os::Windows)
            && (!m.provision.packages.is_empty() || !m.provision.scripts.is_empty())
        {
            keep(Err(self.fail(
                "provision",
                "extra packages and user scripts are Linux-only",
                "remove [provision] from a Windows manifest",
            )));
        }
        keep(self.replicate(&m.replicate));
        keep(self.batch_region(m));
        match distro {
            Some(d) if errors.is_empty() => Ok((d, scripts)),
            _ => Err(ManifestError::from_many(errors)),
        }
    }

    fn name(&self, name: &str) -> Check<()> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(())
        } else {
            Err(self.fail(
                "image.name",
                format!("`{}` is not a valid image name", printable(name)),
                "use 1-63 lowercase letters, digits and '-', starting with a letter or digit \
                 (it becomes part of blob and file names)",
            ))
        }
    }

    /// The local builder: a VHD on this machine and no Azure settings, or a
    /// VHD that imgforge publishes itself (target = "managed_image" or
    /// "gallery": uploaded to `storage_account`, then an image in
    /// `resource_group` at `location`).
    fn local_build(&self, b: &BuildSection, distro: &Distro) -> Check<()> {
        if b.target == Target::Vhd {
            let azure_only = [
                ("location", b.location.is_some()),
                ("resource_group", b.resource_group.is_some()),
                ("storage_account", b.storage_account.is_some()),
                ("capture_container", b.capture_container.is_some()),
                ("managed_image_name", b.managed_image_name.is_some()),
                ("gallery", b.gallery.is_some()),
                ("hyper_v_generation", b.hyper_v_generation.is_some()),
            ];
            if let Some((key, _)) = azure_only.iter().find(|(_, set)| *set) {
                return Err(self.fail(
                    &format!("build.{key}"),
                    format!(
                        "`{key}` is for publishing; builder = \"local\" with target = \"vhd\" builds on this machine only"
                    ),
                    "remove it, or set target = \"managed_image\" or \"gallery\" to publish the VHD",
                ));
            }
        }
        if let (Some(BootCheck::Bios), Some(HyperVGeneration::V2)) =
            (b.local.as_ref().map(|l| l.boot_check), b.hyper_v_generation)
        {
            return Err(self.fail(
                "build.hyper_v_generation",
                "a Generation 2 image boots with UEFI, but [build.local] boot_check = \"bios\" never boots it so",
                "set boot_check = \"uefi\" or \"both\", or hyper_v_generation = \"V1\"",
            ));
        }
        let base_image = b.local.as_ref().and_then(|l| l.base_image.as_deref());
        if let Some(base) = base_image {
            return self.base_image(distro, b.local.as_ref().expect("has a base image"), base);
        }
        if distro.local.is_none() {
            let can = catalog::distro_keys_where(|d| d.local.is_some());
            let from_base = catalog::distro_keys_where(|d| d.azure_base.is_some());
            return Err(self.fail(
                "image.distro",
                format!(
                    "the local builder cannot make {} from nothing (it builds apt-based roots with mmdebstrap)",
                    distro.key
                ),
                format!(
                    "give [build.local] base_image = \"FILE\" (the distro's Azure disk image; known for {}), use builder = \"azure-arm\", or one of: {}",
                    from_base.join(", "),
                    can.join(", ")
                ),
            ));
        }
        let Some(l) = &b.local else { return Ok(()) };
        if l.allow_hosts.is_some() {
            return Err(self.fail(
                "build.local.allow_hosts",
                "`allow_hosts` limits the network of a build VM booted from base_image; an mmdebstrap root has no VM",
                "remove it, or give base_image",
            ));
        }
        if let Some(m) = &l.mirror {
            let ok =
                (m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/"))
                    && m.len() <= 512
                    && m.chars()
                        .all(|c| c.is_ascii_graphic() && !"'\"`$\\;&|<>(){}".contains(c));
            self.require(
                ok,
                "build.local.mirror",
                m,
                "an archive URL",
                "use an http(s):// or file:/ URL without quotes or shell characters, e.g. \"http://deb.debian.org/debian\"",
            )?;
            // A user name or password in the URL would be printed by `plan`,
            // rendered into the scripts and left in the image's sources.list.
            let userinfo = url::Url::parse(m)
                .map(|u| !u.username().is_empty() || u.password().is_some())
                .unwrap_or(false);
            if userinfo {
                return Err(self.fail(
                    "build.local.mirror",
                    "the mirror URL carries a user name or password (`user:password@`)",
                    "give the mirror without credentials: they would be printed, rendered and left in the image's sources.list; an archive that needs them takes them from apt's auth.conf, which this build does not write",
                ));
            }
        }
        if let Some(cs) = &l.components {
            if cs.is_empty() {
                return Err(self.fail(
                    "build.local.components",
                    "no archive component",
                    "e.g. components = [\"main\"]",
                ));
            }
            for (i, c) in cs.iter().enumerate() {
                let ok = !c.is_empty()
                    && c.len() <= 64
                    && c.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                self.require(
                    ok,
                    &format!("build.local.components.{i}"),
                    c,
                    "an archive component",
                    "e.g. \"main\", \"contrib\", \"non-free\", \"non-free-firmware\"",
                )?;
            }
        }
        self.disk_gib(l)
    }

    /// `[build.local] disk_gib`: a size Azure takes for an OS disk.
    fn disk_gib(&self, l: &LocalSection) -> Check<()> {
        if let Some(g) = l.disk_gib
            && !(2..=1023).contains(&g)
        {
            return Err(self.fail(
                "build.local.disk_gib",
                format!("{g} GiB is not a usable OS disk size"),
                "use a whole number of GiB from 2 to 1023 (Azure's OS disk limit is 4095; Batch images are usually 30; from a base image, at least its size)",
            ));
        }
        Ok(())
    }

    /// `[build.local] base_image` and what goes with it.
    fn base_image(&self, distro: &catalog::Distro, l: &LocalSection, base: &str) -> Check<()> {
        if distro.azure_base.is_none() {
            let with = catalog::distro_keys_where(|d| d.azure_base.is_some());
            return Err(self.fail(
                "build.local.base_image",
                format!("imgforge knows no Azure disk image of {}", distro.key),
                format!("use one of: {}", with.join(", ")),
            ));
        }
        let download = distro.base_download().unwrap_or_default();
        for (key, set) in [
            ("mirror", l.mirror.is_some()),
            ("components", l.components.is_some()),
            ("cache_dir", l.cache_dir.is_some()),
        ] {
            if set {
                return Err(self.fail(
                    &format!("build.local.{key}"),
                    format!("`{key}` is for an mmdebstrap root; a build from base_image keeps the image's own package sources"),
                    "remove it (allow_hosts names what the build VM may reach)",
                ));
            }
        }
        let url = base.starts_with("https://") || base.starts_with("http://");
        if url {
            let ok = url::Url::parse(base).is_ok_and(|u| {
                u.scheme() == "https"
                    || u.host_str()
                        .is_some_and(|h| h == "127.0.0.1" || h == "localhost")
            });
            self.require(
                ok,
                "build.local.base_image",
                base,
                "an https:// blob URL",
                "give an https:// URL (a SAS token in it is never printed), or a file path",
            )?;
        } else {
            let path = self.path.parent().unwrap_or(Path::new(".")).join(base);
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                return Err(self.fail(
                    "build.local.base_image",
                    format!("no file at {} (relative to the manifest)", path.display()),
                    format!("download it first — {download}"),
                ));
            }
        }
        for (i, h) in l.allow_hosts.iter().flatten().enumerate() {
            let (host, port) = h.split_once(':').unwrap_or((h, "80"));
            let ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                && port.parse::<u16>().is_ok_and(|p| p > 0);
            self.require(
                ok,
                &format!("build.local.allow_hosts.{i}"),
                h,
                "a host name, optionally with :port",
                "e.g. \"deb.debian.org\" or \"download.docker.com:443\" (no scheme, no path)",
            )?;
        }
        self.disk_gib(l)
    }

    fn build(&self, b: &BuildSection) -> Check<()> {
        let local = b.builder == Builder::Local;
        if local && b.target == Target::Vhd {
            return Ok(());
        }
        if !local && b.hyper_v_generation.is_some() {
            return Err(self.fail(
                "build.hyper_v_generation",
                "`hyper_v_generation` is for images imgforge publishes (builder = \"local\"); the azure-arm builder's image has its source image's generation",
                "remove it",
            ));
        }
        if !local && b.local.is_some() {
            return Err(self.fail(
                "build.local",
                "[build.local] is only used with builder = \"local\"",
                "remove it, or set builder = \"local\" under [build]",
            ));
        }
        let need = |key: &str, value: &Option<String>| -> Check<()> {
            if value.as_deref().is_none_or(str::is_empty) {
                Err(self.fail(
                    "build",
                    format!(
                        "target = \"{}\"{} needs build.{key}",
                        b.target.as_str(),
                        default_target_note(b.target)
                    ),
                    format!(
                        "add `{key} = \"…\"` under [build]{}",
                        if b.target == Target::Gallery {
                            "; or set target = \"vhd\" for a VHD alone (it makes no pool until published to a gallery)"
                        } else {
                            ""
                        }
                    ),
                ))
            } else {
                Ok(())
            }
        };
        let only_for = |key: &str, present: bool, target: Target| -> Check<()> {
            if present && b.target != target {
                Err(self.fail(
                    &format!("build.{key}"),
                    format!(
                        "`{key}` is only used with target = \"{}\", but target is \"{}\"{}",
                        target.as_str(),
                        b.target.as_str(),
                        default_target_note(b.target)
                    ),
                    format!("remove it, or set target = \"{}\"", target.as_str()),
                ))
            } else {
                Ok(())
            }
        };
        need("location", &b.location)?;
        need("resource_group", &b.resource_group)?;
        if local {
            // The VHD is uploaded to `storage_account` (`capture_container`,
            // default "images") and the image is made from that blob.
            need("storage_account", &b.storage_account)?;
        } else {
            only_for("storage_account", b.storage_account.is_some(), Target::Vhd)?;
            only_for(
                "capture_container",
                b.capture_container.is_some(),
                Target::Vhd,
            )?;
        }
        only_for("gallery", b.gallery.is_some(), Target::Gallery)?;
        if b.managed_image_name.is_some() && b.target == Target::Vhd {
            return Err(self.fail(
                "build.managed_image_name",
                "`managed_image_name` is not used with target = \"vhd\"",
                "remove it, or set target = \"managed_image\" or \"gallery\"",
            ));
        }
        match b.target {
            Target::Vhd => {
                need("storage_account", &b.storage_account)?;
                need("capture_container", &b.capture_container)?;
            }
            Target::ManagedImage => need("managed_image_name", &b.managed_image_name)?,
            Target::Gallery => {
                // Packer 1.6's azure-arm builder makes a managed image on the
                // way to the gallery; imgforge publishes from the blob.
                if !local {
                    need("managed_image_name", &b.managed_image_name)?;
                }
                let Some(g) = &b.gallery else {
                    return Err(self.fail(
                        "build",
                        format!(
                            "target = \"gallery\"{} needs a [build.gallery] table",
                            default_target_note(b.target)
                        ),
                        "add [build.gallery] with name, image_definition and version; or set target = \"vhd\" for a VHD alone (it makes no pool until published to a gallery)",
                    ));
                };
                self.azure_name("build.gallery.name", &g.name, 80, "._")?;
                self.azure_name(
                    "build.gallery.image_definition",
                    &g.image_definition,
                    80,
                    "._-",
                )?;
                if let Some(rg) = &g.resource_group {
                    self.azure_name("build.gallery.resource_group", rg, 90, "._-()")?;
                }
                if !is_gallery_version(&g.version) {
                    return Err(self.fail(
                        "build.gallery.version",
                        format!("`{}` is not a gallery image version", printable(&g.version)),
                        "use MAJOR.MINOR.PATCH with digits only, e.g. \"1.0.0\"",
                    ));
                }
                for (i, r) in g.replication_regions.iter().enumerate() {
                    self.location(&format!("build.gallery.replication_regions.{i}"), r)?;
                }
                if let Some(k) = g.nodes_per_replica
                    && !(1..=1000).contains(&k)
                {
                    return Err(self.fail(
                        "build.gallery.nodes_per_replica",
                        format!("{k} is not a number of nodes per replica"),
                        "use a whole number from 1 to 1000: 300 is Azure Batch's rule for pools, 50 Compute Gallery's for VMs created directly",
                    ));
                }
                if let Some(n) = g.min_replicas
                    && !(1..=catalog::MAX_REPLICAS).contains(&n)
                {
                    return Err(self.fail(
                        "build.gallery.min_replicas",
                        format!("{n} is not a number of replicas"),
                        format!(
                            "use a whole number from 1 to {} (Azure's most per region); 3 is Compute Gallery's advice for production",
                            catalog::MAX_REPLICAS
                        ),
                    ));
                }
                let storage_types = ["Standard_LRS", "Standard_ZRS", "Premium_LRS"];
                let storage = g
                    .storage_account_type
                    .iter()
                    .map(|t| ("build.gallery.storage_account_type".to_string(), t))
                    .chain(
                        g.region_storage
                            .iter()
                            .map(|(r, t)| (format!("build.gallery.region_storage.{r}"), t)),
                    );
                for (key, t) in storage {
                    if !storage_types.contains(&t.as_str()) {
                        return Err(self.fail(
                            &key,
                            format!("`{}` is not a replica storage account type", printable(t)),
                            format!("use one of {}", storage_types.join(", ")),
                        ));
                    }
                }
                let zone_or_premium = g
                    .storage_account_type
                    .iter()
                    .chain(g.region_storage.values())
                    .any(|t| t != "Standard_LRS");
                if !local && zone_or_premium {
                    return Err(self.fail(
                        if g.storage_account_type.is_some() {
                            "build.gallery.storage_account_type"
                        } else {
                            "build.gallery.region_storage"
                        },
                        "Packer 1.6.6's azure-arm builder replicates gallery versions as Standard_LRS only (it has no storage account type setting)",
                        "remove it (Standard_LRS), or build with builder = \"local\", whose publish stage sets the type per region",
                    ));
                }
                for r in g.region_storage.keys() {
                    self.location(&format!("build.gallery.region_storage.{r}"), r)?;
                }
                if let Some(d) = &g.end_of_life_date
                    && !is_iso_date(d)
                {
                    return Err(self.fail(
                        "build.gallery.end_of_life_date",
                        format!("`{}` is not a date", printable(d)),
                        "write it as YYYY-MM-DD, e.g. \"2027-12-31\"",
                    ));
                }
                if g.security_type == Some(SecurityType::TrustedLaunch)
                    && b.hyper_v_generation == Some(HyperVGeneration::V1)
                {
                    return Err(self.fail(
                        "build.gallery.security_type",
                        "Trusted Launch needs a Generation 2 image, but hyper_v_generation = \"V1\"",
                        "set hyper_v_generation = \"V2\", or security_type = \"standard\"",
                    ));
                }
                for (key, v) in [
                    ("publisher", &g.publisher),
                    ("offer", &g.offer),
                    ("sku", &g.sku),
                ] {
                    if let Some(v) = v {
                        self.azure_name(&format!("build.gallery.{key}"), v, 128, "._-")?;
                    }
                }
            }
        }
        if let Some(l) = &b.location {
            self.location("build.location", l)?;
        }
        if let Some(rg) = &b.resource_group {
            self.azure_name("build.resource_group", rg, 90, "._-()")?;
        }
        if let Some(sa) = &b.storage_account {
            self.storage_account("build.storage_account", sa)?;
        }
        if let Some(c) = &b.capture_container {
            self.container("build.capture_container", c)?;
        }
        if let Some(n) = &b.managed_image_name {
            self.azure_name("build.managed_image_name", n, 80, "._-")?;
        }
        if let Some(v) = &b.vm_size {
            self.azure_name("build.vm_size", v, 64, "_-")?;
        }
        Ok(())
    }

    /// `Ok` when `ok`, else an error at `key` quoting the value as `what`.
    fn require(
        &self,
        ok: bool,
        key: &str,
        value: &str,
        what: &str,
        hint: impl Into<String>,
    ) -> Check<()> {
        if ok {
            Ok(())
        } else {
            Err(self.fail(key, format!("`{}` is not {what}", printable(value)), hint))
        }
    }

    fn location(&self, key: &str, value: &str) -> Check<()> {
        // The longest region name today is 20 characters (southafricanorth 16,
        // australiasoutheast 18, …); 40 leaves room and bounds the value.
        let ok = !value.is_empty()
            && value.len() <= 40
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        self.require(
            ok,
            key,
            value,
            "an Azure region name",
            "use the short form, e.g. \"eastus\" or \"westeurope\" (`az account list-locations -o table`)",
        )
    }

    fn azure_name(&self, key: &str, value: &str, max: usize, extra: &str) -> Check<()> {
        let ok = !value.is_empty()
            && value.len() <= max
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
        self.require(
            ok,
            key,
            value,
            "a valid name here",
            format!("use up to {max} letters, digits and any of `{extra}`"),
        )
    }

    fn storage_account(&self, key: &str, value: &str) -> Check<()> {
        let ok = (3..=24).contains(&value.len())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        self.require(
            ok,
            key,
            value,
            "a storage account name",
            "storage account names are 3-24 lowercase letters and digits",
        )
    }

    fn container(&self, key: &str, value: &str) -> Check<()> {
        let ok = (3..=63).contains(&value.len())
            && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && !value.ends_with('-')
            && !value.contains("--")
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        self.require(
            ok,
            key,
            value,
            "a blob container name",
            "container names are 3-63 lowercase letters, digits and single '-', starting with a letter or digit",
        )
    }

    fn features(&self, m: &RawManifest, distro: &Distro) -> Check<()> {
        let f = &m.features;
        if distro.os == Os::Windows {
            let linux_only = [
                ("features.gpu", f.gpu.is_some()),
                ("features.rdma", f.rdma.is_some()),
                ("features.nfs", f.nfs),
                ("features.glusterfs", f.glusterfs.is_some()),
                ("features.docker.version", f.docker.version.is_some()),
            ];
            if let Some((key, _)) = linux_only.iter().find(|(_, on)| *on) {
                return Err(self.fail(
                    key,
                    format!(
                        "`{key}` is not available on Windows images ({})",
                        distro.key
                    ),
                    "remove it, or choose a Linux distro",
                ));
            }
        }
        if let Some(v) = &f.docker.version {
            self.version_pin(
                "features.docker.version",
                v,
                "e.g. \"20.10.21\" or \"5:20.10.21~3-0~ubuntu-xenial\"",
            )?;
        }
        if f.docker.source == PackageSource::Distro && distro.family != catalog::PackageFamily::Apt
        {
            return Err(self.fail(
                "features.docker.source",
                format!("{} has no Docker engine in its own archive", distro.key),
                "use source = \"vendor\" (Docker's repository)",
            ));
        }
        if f.docker.source == PackageSource::Distro && f.docker.version.is_some() {
            return Err(self.fail(
                "features.docker.version",
                "a Docker version pin applies to Docker's repository, not the distro's docker.io",
                "remove the pin, or use source = \"vendor\"",
            ));
        }
        if let Some(gpu) = &f.gpu
            && gpu.source == PackageSource::Distro
        {
            if distro.os_release_id != "debian" {
                return Err(self.fail(
                    "features.gpu.source",
                    format!(
                        "{} does not package the NVIDIA driver in its archive for imgforge",
                        distro.key
                    ),
                    "use source = \"vendor\" (NVIDIA's CUDA repository)",
                ));
            }
            if gpu.container_toolkit {
                return Err(self.fail(
                    "features.gpu.container_toolkit",
                    format!(
                        "the NVIDIA container toolkit is not packaged by {} (only NVIDIA's repository has it)",
                        distro.key
                    ),
                    "set container_toolkit = false (Batch Shipyard then reports \"nvidia container runtime not installed\"), or use source = \"vendor\"",
                ));
            }
            let components = m.build.local.as_ref().and_then(|l| l.components.as_ref());
            if let Some(cs) = components
                && !(cs.iter().any(|c| c == "non-free") && cs.iter().any(|c| c == "contrib"))
            {
                return Err(self.fail(
                    "build.local.components",
                    "Debian's NVIDIA driver is in the non-free component and nvidia-persistenced in contrib; both must be listed",
                    "add \"contrib\", \"non-free\" and \"non-free-firmware\" to components, or leave components out",
                ));
            }
        }
        if let Some(gpu) = &f.gpu {
            let ok = !gpu.driver.is_empty()
                && gpu.driver.starts_with(|c: char| c.is_ascii_digit())
                && gpu.driver.chars().all(|c| c.is_ascii_digit() || c == '.');
            if !ok {
                return Err(self.fail(
                    "features.gpu.driver",
                    format!(
                        "`{}` is not an NVIDIA driver branch or version",
                        printable(&gpu.driver)
                    ),
                    "use a branch such as \"470\" or an exact version such as \"470.82.01\"",
                ));
            }
        }
        if f.rdma == Some(Rdma::Sriov) && distro.hpc_base_image.is_none() {
            let with = catalog::distro_keys_where(|d| d.hpc_base_image.is_some());
            return Err(self.fail(
                "features.rdma",
                format!(
                    "rdma = \"sriov\" needs an Azure HPC base image with OFED, which {} does not have",
                    distro.key
                ),
                format!("use rdma = \"nd\", or one of: {}", with.join(", ")),
            ));
        }
        Ok(())
    }

    fn version_pin(&self, key: &str, v: &str, example: &str) -> Check<()> {
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:~+-_*".contains(c));
        self.require(
            ok,
            key,
            v,
            "a package version",
            format!("letters, digits and . : ~ + - _ * only; {example}"),
        )
    }

    fn firewall(&self, fw: &FirewallSection) -> Check<()> {
        for (list, key) in [
            (&fw.inbound_tcp, "inbound_tcp"),
            (&fw.outbound_tcp, "outbound_tcp"),
        ] {
            if let Some(i) = list.iter().position(|&p| p == 0) {
                return Err(self.fail(
                    &format!("firewall.{key}.{i}"),
                    "port 0 is not a TCP port",
                    "use 1-65535",
                ));
            }
        }
        Ok(())
    }

    fn provision_packages(&self, packages: &[String]) -> Check<()> {
        for (i, p) in packages.iter().enumerate() {
            // Debian and RPM package names, optionally with an `=version` pin.
            let (name, version) = p.split_once('=').unwrap_or((p, ""));
            let name_ok = !name.is_empty()
                && name.len() <= 128
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+-_".contains(c));
            let version_ok = version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:~+-_*".contains(c));
            if !(name_ok && version_ok) {
                return Err(self.fail(
                    &format!("provision.packages.{i}"),
                    format!("`{}` is not a package name", printable(p)),
                    "package names use letters, digits and . + - _ (optionally `name=version`); \
                     run anything else from a user script",
                ));
            }
        }
        Ok(())
    }

    fn provision_scripts(&self, scripts: &[PathBuf], allow_outside: bool) -> Check<Vec<PathBuf>> {
        let base = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut resolved = Vec::new();
        for (i, s) in scripts.iter().enumerate() {
            let key = format!("provision.scripts.{i}");
            let file_name = s.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let name_ok = !file_name.is_empty()
                && file_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !name_ok {
                return Err(self.fail(
                    &key,
                    format!(
                        "`{}` is not a usable script file name",
                        printable(&s.to_string_lossy())
                    ),
                    "name user scripts with letters, digits, '.', '_' and '-'",
                ));
            }
            let full = if s.is_absolute() {
                s.clone()
            } else {
                base.join(s)
            };
            if !full.is_file() {
                return Err(self.fail(
                    &key,
                    format!("user script `{}` not found", full.display()),
                    "paths are relative to the manifest's directory",
                ));
            }
            // Where it really is, links resolved, against where the manifest is.
            let inside = match (full.canonicalize(), base.canonicalize()) {
                (Ok(f), Ok(b)) => f.starts_with(&b),
                _ => false,
            };
            if !inside && !allow_outside {
                return Err(self.fail(
                    &key,
                    format!(
                        "user script `{}` is outside the manifest's directory `{}`",
                        full.display(),
                        base.display()
                    ),
                    "copy the script next to the manifest, or set `allow_outside = true` under \
                     [provision] to take scripts from elsewhere",
                ));
            }
            // A script bash cannot parse fails the build seconds (locally)
            // or minutes (on a paid Azure VM) in: refused now, by its name here.
            let shown = s.display().to_string();
            if let Some(why) = crate::spec::scripts::syntax_error(&full, &shown) {
                return Err(self.fail(
                    &key,
                    format!(
                        "user script `{}` is not valid shell: {why}",
                        printable(&shown)
                    ),
                    format!(
                        "fix the script (`bash -n {}` shows the same); nothing was built",
                        crate::util::text::shell_quote(&full.display().to_string())
                    ),
                ));
            }
            resolved.push(full);
        }
        Ok(resolved)
    }

    fn replicate(&self, r: &ReplicateSection) -> Check<()> {
        for (i, a) in r.storage_accounts.iter().enumerate() {
            let key = format!("replicate.storage_accounts.{i}");
            self.storage_account(&key, a)?;
            if r.storage_accounts[..i].contains(a) {
                return Err(self.fail(
                    &key,
                    format!("storage account `{a}` is listed twice"),
                    "each copy needs its own storage account; list each once",
                ));
            }
        }
        if let Some(c) = &r.container {
            self.container("replicate.container", c)?;
        }
        if let Some(region) = &r.region {
            self.location("replicate.region", region)?;
        }
        Ok(())
    }
}

/// MAJOR.MINOR.PATCH with digits only: what Compute Gallery takes as a version name.
pub fn is_gallery_version(v: &str) -> bool {
    v.split('.').count() == 3
        && v.split('.')
            .all(|p| !p.is_empty() && p.len() <= 10 && p.chars().all(|c| c.is_ascii_digit()))
}

impl Manifest {
    /// `build --gallery-version`: this build publishes `version` instead of
    /// the manifest's `[build.gallery] version` (a published version never
    /// changes, so a scheduled rebuild names a new one each run).
    pub fn set_gallery_version(&mut self, version: &str) -> Result<(), String> {
        if !is_gallery_version(version) {
            return Err(format!(
                "--gallery-version {}: not a gallery image version; use MAJOR.MINOR.PATCH with digits only, e.g. 1.0.42",
                version.chars().take(40).collect::<String>().escape_debug()
            ));
        }
        match (self.raw.build.target, self.raw.build.gallery.as_mut()) {
            (Target::Gallery, Some(g)) => {
                g.version = version.to_string();
                Ok(())
            }
            _ => Err(format!(
                "--gallery-version is for target = \"gallery\"; {} builds target = \"{}\"",
                self.path.display(),
                self.raw.build.target.as_str()
            )),
        }
    }
}

/// " (the default)" when `target` is what a manifest without one gets.
fn default_target_note(target: Target) -> &'static str {
    if target == Target::default() {
        " (the default: Azure Batch makes custom-image pools only from Compute Gallery image versions)"
    } else {
        ""
    }
}

/// YYYY-MM-DD with a real month and day.
fn is_iso_date(d: &str) -> bool {
    let p: Vec<&str> = d.split('-').collect();
    let num = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse::<u32>().ok())
    };
    matches!(
        (p.as_slice(), p.first().and_then(|y| num(y, 4))),
        ([_, m, dd], Some(Some(_)))
            if num(m, 2).flatten().is_some_and(|m| (1..=12).contains(&m))
                && num(dd, 2).flatten().is_some_and(|dd| (1..=31).contains(&dd))
    )
}

impl Checker<'_> {
    /// A published image serves pools in the Batch account's region only if
    /// it is there: a managed image is in its `location`; a gallery version in
    /// its location and replication regions.
    fn batch_region(&self, m: &RawManifest) -> Check<()> {
        let (Some(batch), Some(location)) = (&m.replicate.region, &m.build.location) else {
            return Ok(());
        };
        let norm = crate::util::text::normalize_region;
        let targets: Vec<&String> = match m.build.target {
            // A gallery version is always replicated to the Batch account's
            // region: the plan adds it.
            Target::Vhd | Target::Gallery => return Ok(()),
            Target::ManagedImage => vec![location],
        };
        if targets.iter().any(|t| norm(t) == norm(batch)) {
            return Ok(());
        }
        let (what, fix) = match m.build.target {
            Target::Gallery => (
                format!(
                    "the gallery version is replicated to {}",
                    targets
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!("add \"{batch}\" to build.gallery.replication_regions"),
            ),
            _ => (
                format!("the managed image is in {location}"),
                format!(
                    "set build.location = \"{batch}\": Batch uses managed images in its own region only (or publish to a gallery)"
                ),
            ),
        };
        Err(self.fail(
            "replicate.region",
            format!("the Batch account is in {batch}, but {what}"),
            fix,
        ))
    }
}

fn os_name(os: Os) -> &'static str {
    match os {
        Os::Linux => "linux",
        Os::Windows => "windows",
    }
}

/// Shows control characters visibly so an error message cannot be spoofed or
/// broken across lines by the value it quotes.
/// A value as an error shows it: escaped, and cut to 100 characters (a
/// rejected 100 MB value is not echoed whole).
fn printable(s: &str) -> String {
    elide(&s.escape_debug().to_string(), 100)
}

/// `s` with its middle replaced by "…(N characters)…" past `max` characters.
fn elide(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max / 2).collect();
    let tail: String = s.chars().skip(n - max / 4).collect();
    format!("{head}…({n} characters)…{tail}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn serde_wording_becomes_words() {
        let w = super::plain_words;
        assert_eq!(
            w("invalid type: string \"10\", expected u32"),
            "is the text \"10\"; write a whole number from 0 to 4294967295"
        );
        assert_eq!(
            w("invalid value: integer `70000`, expected u16"),
            "is 70000; write a whole number from 0 to 65535"
        );
        assert_eq!(
            w("invalid type: string \"yes\", expected a boolean"),
            "is the text \"yes\"; write true or false (without quotes)"
        );
        assert_eq!(
            w("unknown variant `lin`, expected `linux` or `windows`"),
            "\"lin\" is not one of: \"linux\", \"windows\""
        );
        assert_eq!(
            w("missing field `distro`"),
            "the key \"distro\" is required here"
        );
        // Anything else is kept as it is.
        assert_eq!(
            w("invalid type: map, expected something odd"),
            "invalid type: map, expected something odd"
        );
    }

    use super::*;

    const GOOD: &str = r#"
[image]
name = "t"
os = "linux"
distro = "ubuntu-22.04"

[build]
target = "vhd"
location = "eastus"
resource_group = "rg"
storage_account = "acct"
capture_container = "images"
"#;

    fn parse(src: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("m.toml"), src.to_string())
    }

    fn err(src: &str) -> Located {
        match parse(src) {
            Err(ManifestError::Invalid(l)) => *l,
            other => panic!("expected an invalid manifest, got {other:?}"),
        }
    }

    #[test]
    fn the_default_target_is_a_gallery_version_and_says_so_when_incomplete() {
        // Without `target`, a manifest builds a gallery image version.
        let e = err(&GOOD.replace("target = \"vhd\"\n", ""));
        assert_eq!(e.key, "build.storage_account", "{e:?}");
        assert!(e.message.contains("(the default: Azure Batch makes custom-image pools only from Compute Gallery image versions)"), "{e:?}");
        let e = err(&GOOD
            .replace("target = \"vhd\"\n", "managed_image_name = \"m\"\n")
            .replace(
                "storage_account = \"acct\"\ncapture_container = \"images\"\n",
                "",
            ));
        assert!(e.message.contains("needs a [build.gallery] table"), "{e:?}");
        assert!(
            e.hint
                .as_deref()
                .unwrap_or("")
                .contains("target = \"vhd\" for a VHD alone"),
            "{e:?}"
        );
        let m = parse(&format!(
            "{}\n[build.gallery]\nname = \"g\"\nimage_definition = \"d\"\nversion = \"1.0.0\"\n",
            GOOD.replace("target = \"vhd\"\n", "managed_image_name = \"m\"\n")
                .replace(
                    "storage_account = \"acct\"\ncapture_container = \"images\"\n",
                    ""
                )
        ))
        .unwrap();
        assert_eq!(m.raw.build.target, Target::Gallery);
    }

    #[test]
    fn gallery_settings_are_checked_where_they_are_written() {
        let base = GOOD
            .replace("target = \"vhd\"\n", "managed_image_name = \"m\"\n")
            .replace(
                "storage_account = \"acct\"\ncapture_container = \"images\"\n",
                "",
            );
        let with = |extra: &str| {
            format!(
                "{base}\n[build.gallery]\nname = \"g\"\nimage_definition = \"d\"\nversion = \"1.0.0\"\n{extra}"
            )
        };
        for (extra, key) in [
            (
                "storage_account_type = \"Premium_ZRS\"\n",
                "build.gallery.storage_account_type",
            ),
            (
                "end_of_life_date = \"2027-13-01\"\n",
                "build.gallery.end_of_life_date",
            ),
            (
                "end_of_life_date = \"soon\"\n",
                "build.gallery.end_of_life_date",
            ),
            ("min_replicas = 0\n", "build.gallery.min_replicas"),
            ("min_replicas = 101\n", "build.gallery.min_replicas"),
            // Packer 1.6.6's azure-arm builder has no storage type setting.
            (
                "storage_account_type = \"Standard_ZRS\"\n",
                "build.gallery.storage_account_type",
            ),
            (
                "[build.gallery.region_storage]\neastus = \"Premium_LRS\"\n",
                "build.gallery.region_storage",
            ),
        ] {
            let e = err(&with(extra));
            assert_eq!(e.key, key, "{extra}: {e:?}");
        }
        let m = parse(&with("end_of_life_date = \"2027-12-31\"\nmin_replicas = 3\nexclude_from_latest = true\nsecurity_type = \"trusted_launch\"\n")).unwrap();
        let g = m.raw.build.gallery.unwrap();
        assert_eq!(g.min_replicas, Some(3));
        assert_eq!(g.security_type, Some(SecurityType::TrustedLaunch));
        assert!(g.exclude_from_latest);
    }

    #[test]
    fn a_minimal_manifest_parses_with_defaults() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.raw.build.target, Target::Vhd);
        assert!(!m.raw.features.nfs);
        assert_eq!(m.distro.key, "ubuntu-22.04");
    }

    #[test]
    fn unknown_distro_lists_known_ones_and_points_at_the_value() {
        let e = err(&GOOD.replace("ubuntu-22.04", "ubuntu-99.04"));
        assert_eq!(e.key, "image.distro");
        assert_eq!((e.line, e.column), (5, 10));
        assert!(e.hint.unwrap().contains("centos-7"));
    }

    #[test]
    fn unknown_key_names_line_and_allowed_keys() {
        let e = err(&GOOD.replace("os = \"linux\"", "os = \"linux\"\ncolour = 1"));
        assert_eq!(e.line, 5);
        assert!(e.message.contains("colour"), "{}", e.message);
        assert!(e.message.contains("distro"), "{}", e.message);
    }

    #[test]
    fn sriov_on_a_distro_without_hpc_image_is_a_contradiction() {
        let src = GOOD.replace("ubuntu-22.04", "ubuntu-16.04") + "\n[features]\nrdma = \"sriov\"\n";
        let e = err(&src);
        assert_eq!(e.key, "features.rdma");
        assert_eq!(e.line, 15);
    }

    #[test]
    fn pool_max_nodes_takes_the_larger_of_fixed_and_autoscale() {
        let p = PoolSection {
            dedicated: 30,
            low_priority: 11,
            autoscale_max: Some(20),
        };
        assert_eq!(p.max_nodes(), 41);
        let p = PoolSection {
            autoscale_max: Some(100),
            ..p
        };
        assert_eq!(p.max_nodes(), 100);
    }
}
