//! imgforge: Azure Batch custom images from a feature manifest, built with Packer.
//!
//! Data flows one way, and the folders follow it:
//!
//! - `spec` — manifest → catalog → plan (what is to be built; the only I/O
//!   is reading the manifest and checking its user scripts)
//! - `render` — plan + templates → `packer.json` and provisioner scripts
//! - `packer` — run Packer (azure-arm or the local builder, from an
//!   mmdebstrap root or from a base image booted under QEMU with the boot
//!   check's provisioning), its events, the captured VHD
//! - `validate` — the offline validator: VHD footer, partitions, ext4 / XFS
//!   root, the catalog's checks; `validate::boot`, the boot check: the image
//!   booted under QEMU as Azure provisions a VM, and checked from inside
//! - `inspect` — what is in an image, read through the validator's reader:
//!   packages (dpkg), kernels, units, users; SBOMs (SPDX, CycloneDX); diffs
//! - `publish` (gallery version; legacy managed image) or `replicate` (legacy
//!   VHD copies, one per 40 Linux nodes, each on its own account)
//! - `pool` — the pool that uses the image (Batch Shipyard, Batch REST, Bicep,
//!   Terraform) and checks of pool files (offline and online)
//! - `pipeline` — `imgforge build`: the stages in order, with a journal
//! - `azure` — the service clients the stages use, knowing nothing of images
//! - `cli` — clap types, one function per subcommand, exit codes
//! - `util`, `report` — shared helpers and the findings every check reports
//!
//! Only what the binary, the integration tests and the benches use is
//! public (`spec`, `validate`, `inspect`, `pool`, `report`, `azure::storage`, `cli`'s
//! `args` and `commands`, `util`'s `term` and `text`); the stages and the
//! other clients are `pub(crate)`, so the compiler finds what nothing uses.
//!
//! A new distro or feature: `spec/catalog.rs` (a distro's Azure disk image for
//! local builds: its `azure_base`). A new check: a row of `validate/checks.rs` (or
//! `pool` for pool configs; a check in the booted node: a `row` of
//! `validate/boot/inside.sh` and its name in `inside::KNOWN`). A new target: `spec` (manifest, plan), `render`
//! (its template) and `pipeline`. A new stage: `pipeline`. A new pool output
//! format: `pool/output.rs`; a new fact of an image or SBOM format: `inspect`.

pub mod azure;
pub mod cli;
pub mod inspect;
pub(crate) mod packer;
pub(crate) mod pipeline;
pub mod pool;
pub(crate) mod publish;
pub(crate) mod render;
pub(crate) mod replicate;
pub mod report;
pub mod spec;
pub mod util;
pub mod validate;

/// The readers of untrusted documents that are crate-private to everything
/// else — a build record, a Batch supported-images page, a Resource Manager
/// storage-account list — opened to `tests/fuzz.rs` alone, so mutated inputs
/// reach the same code the commands run.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    /// Reads a build record as `status`, `--resume` and `pool snippet --from`
    /// do, and renders what they would.
    pub fn build_record(path: &Path) {
        if let Ok(r) = crate::pipeline::BuildRecord::read(path) {
            let _ = crate::pipeline::status_text(&r);
            let _ = r.pool_image();
        }
    }

    /// One page of Batch's supported images, read as `skus --online` does,
    /// and the node agents counted.
    pub fn supported_images_page(page: &serde_json::Value) {
        let images: Vec<_> = page["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(crate::azure::batch::parse_image)
                    .collect()
            })
            .unwrap_or_default();
        let _ = crate::azure::batch::agents(&images, "2026-12-03");
    }

    /// One page of Resource Manager's storage-account list.
    pub fn storage_accounts_page(page: &serde_json::Value) {
        if let Some(a) = page["value"].as_array() {
            for v in a {
                let _ = crate::azure::arm::parse_account(v);
            }
        }
        let _ = crate::azure::http::next_page(page, "nextLink", "https://management.azure.com");
    }
}
