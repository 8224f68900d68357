//! What a build publishes, decided from the manifest alone (pure; the I/O
//! is the publish stage, `src/publish.rs`): the target, where, which Hyper-V generation, and
//! how many gallery replicas per region — `max(3, ceil(peak_nodes / K))`,
//! capped at 100 (one replica per 50 concurrent VM deployments by default:
//! the modern form of the one-VHD-per-40-VMs rule).

use serde::{Deserialize, Serialize};

use crate::azure::compute;
use crate::spec::manifest::{BootCheck, Builder, HyperVGeneration, RawManifest, Target};
use crate::util::text::normalize_region;

pub const DEFAULT_NODES_PER_REPLICA: u32 = 50;
pub const MIN_REPLICAS: u32 = 3;
pub const MAX_REPLICAS: u32 = 100;
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
    /// Where the VHD is uploaded first (local builds).
    pub staging_account: Option<String>,
    pub staging_container: String,
    pub managed_image: Option<String>,
    pub gallery: Option<GalleryPlan>,
    /// `[replicate] region`: the Batch account's region.
    pub batch_region: Option<String>,
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
    pub regions: Vec<RegionReplicas>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegionReplicas {
    pub region: String,
    pub replicas: u32,
    pub why: String,
}

/// `max(3, ceil(nodes / k))`, at most 100, and the reason in words.
pub fn replicas(peak_nodes: u32, k: u32) -> (u32, String) {
    let k = k.max(1);
    let needed = peak_nodes.div_ceil(k);
    let n = needed.clamp(MIN_REPLICAS, MAX_REPLICAS);
    let why = if needed > MAX_REPLICAS {
        format!(
            "{peak_nodes} nodes / {k} per replica = {needed}, capped at Azure's {MAX_REPLICAS} per region"
        )
    } else if needed < MIN_REPLICAS {
        format!(
            "{peak_nodes} nodes / {k} per replica = {needed}, raised to the minimum of {MIN_REPLICAS}"
        )
    } else {
        format!("{peak_nodes} nodes / {k} per replica")
    };
    (n, why)
}

impl PublishPlan {
    /// `None` for target = "vhd".
    pub fn new(raw: &RawManifest, os_type: &'static str, peak_nodes: u32) -> Option<PublishPlan> {
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
            (Builder::AzureArm, None) => (
                HyperVGeneration::V1,
                "Packer's azure-arm builder keeps the marketplace image's generation".to_string(),
            ),
        };
        let gallery = (b.target == Target::Gallery)
            .then_some(b.gallery.as_ref())
            .flatten()
            .map(|g| {
                let k = g.nodes_per_replica.unwrap_or(DEFAULT_NODES_PER_REPLICA);
                let (n, why) = replicas(peak_nodes, k);
                let mut regions: Vec<String> = vec![location.clone()];
                for r in &g.replication_regions {
                    if !regions
                        .iter()
                        .any(|x| normalize_region(x) == normalize_region(r))
                    {
                        regions.push(r.clone());
                    }
                }
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
                    regions: regions
                        .into_iter()
                        .map(|region| RegionReplicas {
                            region,
                            replicas: n,
                            why: why.clone(),
                        })
                        .collect(),
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
                "           gallery `{}` image `{}` version {} ({} nodes per replica)\n",
                g.name, g.definition, g.version, g.nodes_per_replica
            ));
            s.push_str(&format!(
                "           {:<18} {:>8}  WHY\n",
                "REGION", "REPLICAS"
            ));
            for r in &g.regions {
                let batch = self
                    .batch_region
                    .as_ref()
                    .is_some_and(|b| normalize_region(b) == normalize_region(&r.region));
                s.push_str(&format!(
                    "           {:<18} {:>8}  {}{}\n",
                    r.region,
                    r.replicas,
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
    fn replicas_follow_the_pool_size() {
        // 1 and 60 nodes: the minimum of 3; 2,000: 40; 10,000: capped at 100.
        assert_eq!(replicas(1, 50).0, 3);
        assert_eq!(replicas(60, 50).0, 3);
        assert_eq!(replicas(0, 50).0, 3);
        assert_eq!(replicas(2000, 50).0, 40);
        assert_eq!(replicas(2001, 50).0, 41);
        assert_eq!(
            replicas(10_000, 50),
            (
                100,
                "10000 nodes / 50 per replica = 200, capped at Azure's 100 per region".to_string()
            )
        );
        assert_eq!(replicas(2000, 20).0, 100);
        assert_eq!(replicas(1000, 20).0, 50);
        assert!(replicas(60, 50).1.contains("raised to the minimum of 3"));
    }
}
