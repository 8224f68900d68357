//! What a build produced, read from Packer's artifacts.
//!
//! azure-arm reports a VHD (OSDiskUri, plus a read-only SAS that is a secret),
//! a managed image, or a gallery image version. Any builder whose artifact is a
//! local `.vhd` file is captured as a local image, so on-premises builds flow
//! through the same pipeline.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::events::RawArtifact;

pub const AZURE_ARM_BUILDER_ID: &str = "Azure.ResourceManagement.VMImage";
const MANIFEST_POST_PROCESSOR_ID: &str = "packer.post-processor.manifest";

/// A secret string: never serialized, never printed.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    // Read by the replicator, which copies from the read-only SAS URL.
    #[allow(dead_code)]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::redact::MASK)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Captured {
    AzureVhd {
        os_disk_uri: String,
        os_type: Option<String>,
        storage_account_location: Option<String>,
        /// Read-only SAS URL of the VHD, for replication; kept out of every output.
        #[serde(skip)]
        read_only_sas_url: Secret,
    },
    ManagedImage {
        id: String,
        name: Option<String>,
        resource_group: Option<String>,
        location: Option<String>,
    },
    GalleryImageVersion {
        id: String,
        managed_image_id: Option<String>,
    },
    LocalVhd {
        path: PathBuf,
        bytes: u64,
    },
}

impl Captured {
    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Captured::AzureVhd { os_disk_uri, .. } => format!("VHD {os_disk_uri}"),
            Captured::ManagedImage { id, .. } => format!("managed image {id}"),
            Captured::GalleryImageVersion { id, .. } => format!("gallery image version {id}"),
            Captured::LocalVhd { path, bytes } => {
                format!("local VHD {} ({bytes} bytes)", path.display())
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureError {
    #[error("Packer reported no artifact, so there is no image to capture")]
    NoArtifact,
    #[error(
        "Packer's artifacts hold no image imgforge can use (builders: {builders})\n  hint: a custom builder must produce a local .vhd file, or use the azure-arm builder"
    )]
    Unrecognised { builders: String },
    #[error(
        "the azure-arm artifact has none of OSDiskUri, ManagedImageId or ManagedImageSharedImageGalleryId:\n{string}"
    )]
    AzureFieldsMissing { string: String },
}

/// Picks the image out of a build's artifacts. `build_dir` resolves relative
/// file paths (Packer runs there).
pub fn capture(artifacts: &[RawArtifact], build_dir: &Path) -> Result<Captured, CaptureError> {
    let useful: Vec<&RawArtifact> = artifacts
        .iter()
        .filter(|a| a.builder_id != MANIFEST_POST_PROCESSOR_ID)
        .collect();
    if useful.is_empty() {
        return Err(CaptureError::NoArtifact);
    }
    if let Some(a) = useful.iter().find(|a| a.builder_id == AZURE_ARM_BUILDER_ID) {
        return azure(a);
    }
    for a in &useful {
        if let Some(file) = a
            .files
            .iter()
            .find(|f| f.to_ascii_lowercase().ends_with(".vhd"))
        {
            let path = build_dir.join(file);
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            return Ok(Captured::LocalVhd { path, bytes });
        }
    }
    Err(CaptureError::Unrecognised {
        builders: useful
            .iter()
            .map(|a| a.builder_id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn azure(a: &RawArtifact) -> Result<Captured, CaptureError> {
    let field = |name: &str| -> Option<String> {
        a.string.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name)
                .then(|| value.trim().to_string())
                .filter(|v| !v.is_empty())
        })
    };
    if let Some(id) = field("ManagedImageSharedImageGalleryId") {
        return Ok(Captured::GalleryImageVersion {
            id,
            managed_image_id: field("ManagedImageId"),
        });
    }
    if let Some(id) = field("ManagedImageId") {
        return Ok(Captured::ManagedImage {
            id,
            name: field("ManagedImageName"),
            resource_group: field("ManagedImageResourceGroupName"),
            location: field("ManagedImageLocation"),
        });
    }
    if let Some(uri) = field("OSDiskUri") {
        return Ok(Captured::AzureVhd {
            os_disk_uri: uri,
            os_type: field("OSType"),
            storage_account_location: field("StorageAccountLocation"),
            read_only_sas_url: Secret(field("OSDiskUriReadOnlySas").unwrap_or_default()),
        });
    }
    Err(CaptureError::AzureFieldsMissing {
        string: crate::redact::redact(&a.string),
    })
}
