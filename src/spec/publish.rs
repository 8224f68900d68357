//! What a build publishes, decided from the manifest alone (pure; the I/O
//! is the publish stage, `src/publish.rs`): the target, where, which Hyper-V
//! generation and security type, and how many gallery replicas per region —
//! `max(min_replicas, ceil(peak_nodes / K))`, capped at 100, with K = 300 by
//! default: Azure Batch's rule for pools ("at least one replica per 300 pool
//! instances", Learn: batch-sig-images). Compute Gallery's general 1-per-50
//! is for VMs and scale sets created directly; a manifest can still ask for it.
//! The Batch account's region is always a target region: a pool there reads
//! the version from its own region's replicas.

use serde::{Deserialize, Serialize};

use crate::azure::compute;
use crate::spec::catalog::{MarketplaceImage, PurchasePlan};
use crate::spec::manifest::{
    BootCheck, Builder, HyperVGeneration, RawManifest, SecurityType, Target,
};
use crate::util::text::normalize_region;

pub const DEFAULT_NODES_PER_REPLICA: u32 = 300;
pub const DEFAULT_MIN_REPLICAS: u32 = 1;
/// Azure's limit of replicas per region (a service fact: in the catalog).
pub use crate::spec::catalog::MAX_REPLICAS;
pub const DEFAULT_STORAGE_ACCOUNT_TYPE: &str = "Standard_LRS";
/// What a build publishes, decided from the manifest alone.
#[derive(Debug, Clone, Serialize)]
pub struct PublishPlan {
    pub target: Target,
    /// "imgforge" (a local build's VHD, over REST) or "packer" (azure-arm).
    pub by: &'static str,
    pub resource_group: String,
    pub location: String,
    pub os_type: &'static str,
    pub hyper_v_generation: HyperVGeneration,
    /// Why this generation (what the boot check proved, or the manifest).
    pub generation_why: String,
    /// The gallery definition's security type (and the pool's security profile).
    pub security_type: SecurityType,
    pub security_why: String,
    /// Where the VHD is uploaded first (local builds).
    pub staging_account: Option<String>,
    pub staging_container: String,
    pub managed_image: Option<String>,
    pub gallery: Option<GalleryPlan>,
    /// `[replicate] region`: the Batch account's region.
    pub batch_region: Option<String>,
    /// The marketplace base's purchase plan, which an azure-arm build keeps:
    /// the gallery definition must repeat it and the pool's subscription
    /// must have accepted its terms. A local build's VHD carries none.
    pub purchase_plan: Option<PurchasePlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GalleryPlan {
    pub name: String,
    pub resource_group: String,
    pub definition: String,
    pub version: String,
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub nodes_per_replica: u32,
    pub min_replicas: u32,
    pub regions: Vec<RegionReplicas>,
    pub exclude_from_latest: bool,
    pub end_of_life_date: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegionReplicas {
    pub region: String,
    pub replicas: u32,
    pub why: String,
    /// Standard_LRS, Standard_ZRS or Premium_LRS.
    #[serde(default = "default_storage")]
    pub storage_account_type: String,
}

fn default_storage() -> String {
    DEFAULT_STORAGE_ACCOUNT_TYPE.to_string()
}

/// `max(min, ceil(nodes / k))`, at most 100, and the arithmetic in words.
pub fn replicas(peak_nodes: u32, k: u32, min: u32) -> (u32, String) {
    let k = k.max(1);
    let min = min.clamp(1, MAX_REPLICAS);
    let needed = peak_nodes.div_ceil(k);
    let n = needed.clamp(min, MAX_REPLICAS);
    let why = if needed > MAX_REPLICAS {
        format!(
            "ceil({peak_nodes} nodes / {k} per replica) = {needed}, capped at Azure's {MAX_REPLICAS} per region"
        )
    } else if needed < min {
        format!(
            "ceil({peak_nodes} nodes / {k} per replica) = {needed}, raised to the minimum of {min}"
        )
    } else {
        format!("ceil({peak_nodes} nodes / {k} per replica) = {needed}")
    };
    (n, why)
}

impl PublishPlan {
    /// `None` for target = "vhd". `base`: the azure-arm builder's
    /// marketplace base (its generation and purchase plan carry over).
    pub fn new(
        raw: &RawManifest,
        os_type: &'static str,
        peak_nodes: u32,
        base: &MarketplaceImage,
    ) -> Option<PublishPlan> {
        let base_gen2 = base.gen2;
        let b = &raw.build;
        if b.target == Target::Vhd {
            return None;
        }
        let location = b.location.clone().unwrap_or_default();
        let boot = b.local.as_ref().map(|l| l.boot_check).unwrap_or_default();
        let (hyper_v_generation, generation_why) = match (b.builder, b.hyper_v_generation) {
            (_, Some(g)) => (g, "build.hyper_v_generation".to_string()),
            (Builder::Local, None) => match boot {
                BootCheck::Bios => (
                    HyperVGeneration::V1,
                    "the boot check boots BIOS only (Generation 1)".to_string(),
                ),
                BootCheck::Off => (
                    HyperVGeneration::V2,
                    "default (the image has BIOS and UEFI boot; the boot check is off)".to_string(),
                ),
                _ => (
                    HyperVGeneration::V2,
                    "the image boots UEFI (boot-checked), as Generation 2 VM sizes need"
                        .to_string(),
                ),
            },
            (Builder::AzureArm, None) if base_gen2 => (
                HyperVGeneration::V2,
                "the marketplace base is Generation 2; Packer's azure-arm builder keeps it"
                    .to_string(),
            ),
            (Builder::AzureArm, None) => (
                HyperVGeneration::V1,
                "the marketplace base is Generation 1; Packer's azure-arm builder keeps it"
                    .to_string(),
            ),
        };
        let asked = b.gallery.as_ref().and_then(|g| g.security_type);
        let (security_type, security_why) = match (asked, hyper_v_generation) {
            (Some(t), _) => (t, "build.gallery.security_type".to_string()),
            (None, HyperVGeneration::V2) => (
                SecurityType::TrustedLaunchSupported,
                "a Generation 2 image: it runs standard and Trusted Launch VMs (Azure's default for new definitions since gallery API 2025-03-03)".to_string(),
            ),
            (None, HyperVGeneration::V1) => (
                SecurityType::Standard,
                "a Generation 1 image: Trusted Launch needs Generation 2".to_string(),
            ),
        };
        let gallery = (b.target == Target::Gallery)
            .then_some(b.gallery.as_ref())
            .flatten()
            .map(|g| {
                let k = g.nodes_per_replica.unwrap_or(DEFAULT_NODES_PER_REPLICA);
                let min = g.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS);
                let (n, why) = replicas(peak_nodes, k, min);
                let mut regions: Vec<String> = vec![location.clone()];
                for r in g.replication_regions.iter().chain(&raw.replicate.region) {
                    if !regions
                        .iter()
                        .any(|x| normalize_region(x) == normalize_region(r))
                    {
                        regions.push(r.clone());
                    }
                }
                let storage_of = |region: &str| {
                    g.region_storage
                        .iter()
                        .find(|(r, _)| normalize_region(r) == normalize_region(region))
                        .map(|(_, t)| t.clone())
                        .or(g.storage_account_type.clone())
                        .unwrap_or_else(default_storage)
                };
                GalleryPlan {
                    name: g.name.clone(),
                    resource_group: g
                        .resource_group
                        .clone()
                        .or(b.resource_group.clone())
                        .unwrap_or_default(),
                    definition: g.image_definition.clone(),
                    version: g.version.clone(),
                    publisher: g.publisher.clone().unwrap_or_else(|| "imgforge".into()),
                    offer: g.offer.clone().unwrap_or_else(|| raw.image.name.clone()),
                    sku: g.sku.clone().unwrap_or_else(|| raw.image.distro.clone()),
                    nodes_per_replica: k,
                    min_replicas: min,
                    regions: regions
                        .into_iter()
                        .map(|region| RegionReplicas {
                            storage_account_type: storage_of(&region),
                            region,
                            replicas: n,
                            why: why.clone(),
                        })
                        .collect(),
                    exclude_from_latest: g.exclude_from_latest,
                    end_of_life_date: g.end_of_life_date.clone(),
                }
            });
        Some(PublishPlan {
            target: b.target,
            by: if b.builder == Builder::Local {
                "imgforge"
            } else {
                "packer"
            },
            resource_group: b.resource_group.clone().unwrap_or_default(),
            location,
            os_type,
            hyper_v_generation,
            generation_why,
            security_type,
            security_why,
            staging_account: (b.builder == Builder::Local)
                .then(|| b.storage_account.clone())
                .flatten(),
            staging_container: b
                .capture_container
                .clone()
                .unwrap_or_else(|| "images".into()),
            managed_image: b.managed_image_name.clone(),
            gallery,
            batch_region: raw.replicate.region.clone(),
            purchase_plan: (b.builder == Builder::AzureArm)
                .then_some(base.plan)
                .flatten(),
        })
    }

    /// The lines `imgforge plan` shows.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "publish    by {}: Hyper-V generation {} ({}), in resource group `{}` at {}\n",
            self.by,
            self.hyper_v_generation.as_str(),
            self.generation_why,
            self.resource_group,
            self.location
        ));
        if let Some(a) = &self.staging_account {
            s.push_str(&format!(
                "           the VHD is uploaded to {a}/{} first\n",
                self.staging_container
            ));
        }
        if let Some(m) = &self.managed_image {
            s.push_str(&format!("           managed image `{m}`\n"));
        }
        if let Some(g) = &self.gallery {
            s.push_str(&format!(
                "           gallery `{}` image `{}` version {}, security type {} ({})\n",
                g.name,
                g.definition,
                g.version,
                self.security_type.as_str(),
                self.security_why
            ));
            if let Some(p) = &self.purchase_plan {
                s.push_str(&format!(
                    "           purchase plan {}/{}/{} (the base's): imgforge creates the definition with it before Packer runs; an existing one must carry it\n",
                    p.publisher, p.product, p.name
                ));
            }
            s.push_str(&format!(
                "           replicas: at least one per {} pool nodes (Azure Batch's rule), at least {} per region{}{}\n",
                g.nodes_per_replica,
                g.min_replicas,
                if g.exclude_from_latest {
                    "; excluded from `latest`"
                } else {
                    ""
                },
                g.end_of_life_date
                    .as_ref()
                    .map(|d| format!("; end of life {d}"))
                    .unwrap_or_default()
            ));
            s.push_str(&format!(
                "           {:<18} {:>8}  {:<12}  WHY\n",
                "REGION", "REPLICAS", "STORAGE"
            ));
            for r in &g.regions {
                let batch = self
                    .batch_region
                    .as_ref()
                    .is_some_and(|b| normalize_region(b) == normalize_region(&r.region));
                s.push_str(&format!(
                    "           {:<18} {:>8}  {:<12}  {}{}\n",
                    r.region,
                    r.replicas,
                    r.storage_account_type,
                    r.why,
                    if batch {
                        " (the Batch account's region)"
                    } else {
                        ""
                    }
                ));
            }
        }
        s
    }

    /// The id the pool names: the gallery version's, else the managed image's.
    pub fn arm_image_id(&self, subscription: &str) -> Option<String> {
        if let Some(g) = &self.gallery {
            let gid = compute::gallery_id(subscription, &g.resource_group, &g.name);
            return Some(compute::version_id(
                &compute::definition_id(&gid, &g.definition),
                &g.version,
            ));
        }
        self.managed_image
            .as_ref()
            .map(|m| compute::image_id(subscription, &self.resource_group, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_follow_batchs_rule() {
        // One per 300 pool nodes (Batch): 3,000 nodes -> 10.
        assert_eq!(replicas(3000, 300, 1).0, 10);
        assert_eq!(replicas(3001, 300, 1).0, 11);
        assert_eq!(replicas(1, 300, 1).0, 1);
        assert_eq!(replicas(0, 300, 1).0, 1);
        assert_eq!(replicas(60, 300, 3).0, 3);
        assert!(
            replicas(60, 300, 3)
                .1
                .contains("raised to the minimum of 3")
        );
        assert_eq!(
            replicas(40_000, 300, 1),
            (
                100,
                "ceil(40000 nodes / 300 per replica) = 134, capped at Azure's 100 per region"
                    .to_string()
            )
        );
        // Compute Gallery's own 1 per 50, when a manifest asks for it.
        assert_eq!(replicas(2001, 50, 1).0, 41);
        assert_eq!(replicas(1000, 20, 1).0, 50);
    }
}
