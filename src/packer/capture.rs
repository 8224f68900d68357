//! What a build produced, read from Packer's artifacts.
//!
//! azure-arm reports a VHD (OSDiskUri, plus a read-only SAS that is a secret),
//! a managed image, or a gallery image version. Any builder whose artifact is a
//! local `.vhd` file is captured as a local image, so on-premises builds flow
//! through the same pipeline.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::packer::events::RawArtifact;
use crate::util::redact::Secret;

pub const AZURE_ARM_BUILDER_ID: &str = "Azure.ResourceManagement.VMImage";
const MANIFEST_POST_PROCESSOR_ID: &str = "packer.post-processor.manifest";

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    #[error("Packer's artifacts hold no image imgforge can use (builders: {builders})")]
    Unrecognised { builders: String },
    #[error(
        "the azure-arm artifact has none of OSDiskUri, ManagedImageId or ManagedImageSharedImageGalleryId:\n{string}"
    )]
    AzureFieldsMissing { string: String },
}

impl crate::util::Hint for CaptureError {
    fn hint(&self) -> Option<String> {
        match self {
            CaptureError::Unrecognised { .. } => Some(
                "a custom builder must produce a local .vhd file, or use the azure-arm builder"
                    .into(),
            ),
            _ => None,
        }
    }
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
            let joined = build_dir.join(file);
            let path = std::fs::canonicalize(&joined).unwrap_or(joined);
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
            read_only_sas_url: Secret::new(field("OSDiskUriReadOnlySas").unwrap_or_default()),
        });
    }
    Err(CaptureError::AzureFieldsMissing {
        string: crate::util::redact::redact(&a.string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packer::events::{ArtifactCollector, parse_line};

    /// Artifact lines in the shape Packer 1.6.6's azure-arm builder writes with
    /// `-machine-readable` (DOMAIN.md §3): fields `builder-id`, `id`, `string`
    /// (newlines as a literal `\n`, commas as `%!(PACKER_COMMA)`), `files-count`, `end`.
    fn collect(lines: &[&str]) -> Vec<RawArtifact> {
        let mut c = ArtifactCollector::default();
        for l in lines {
            c.observe(&parse_line(l).expect("machine-readable line"));
        }
        c.into_artifacts()
    }

    const VHD: &[&str] = &[
        "1606900000,azure-arm,artifact-count,1",
        "1606900000,azure-arm,artifact,0,builder-id,Azure.ResourceManagement.VMImage",
        "1606900000,azure-arm,artifact,0,id,https://acct0.blob.core.windows.net/system/Microsoft.Compute/Images/images/gpu-osDisk.7b0c.vhd",
        "1606900000,azure-arm,artifact,0,string,Azure.ResourceManagement.VMImage:\\n\\nOSType: Linux\\nStorageAccountLocation: eastus\\nOSDiskUri: https://acct0.blob.core.windows.net/system/Microsoft.Compute/Images/images/gpu-osDisk.7b0c.vhd\\nOSDiskUriReadOnlySas: https://acct0.blob.core.windows.net/system/Microsoft.Compute/Images/images/gpu-osDisk.7b0c.vhd?se=2026-12-28T07%3A00%3A00Z&sig=c2VjcmV0%2Bsig%3D&sp=r&sr=b&sv=2015-02-21\\nTemplateUri: https://acct0.blob.core.windows.net/system/Microsoft.Compute/Images/images/gpu-vmTemplate.7b0c.json\\nTemplateUriReadOnlySas: https://acct0.blob.core.windows.net/system/Microsoft.Compute/Images/images/gpu-vmTemplate.7b0c.json?se=2026-12-28T07%3A00%3A00Z&sig=dGVtcGxhdGU%3D&sp=r&sr=b&sv=2015-02-21\\n",
        "1606900000,azure-arm,artifact,0,files-count,0",
        "1606900000,azure-arm,artifact,0,end",
    ];

    #[test]
    fn azure_vhd_artifact_yields_the_os_disk_uri_and_keeps_the_sas_secret() {
        let captured = capture(&collect(VHD), Path::new("/b")).unwrap();
        let Captured::AzureVhd {
            os_disk_uri,
            os_type,
            storage_account_location,
            read_only_sas_url,
        } = &captured
        else {
            panic!("{captured:?}")
        };
        assert_eq!(
            os_disk_uri,
            "https://acct0.blob.core.windows.net/system/Microsoft.Compute/Images/images/gpu-osDisk.7b0c.vhd"
        );
        assert_eq!(os_type.as_deref(), Some("Linux"));
        assert_eq!(storage_account_location.as_deref(), Some("eastus"));
        assert!(read_only_sas_url.expose().contains("sig=c2VjcmV0%2Bsig%3D"));
        let json = serde_json::to_string(&captured).unwrap();
        assert!(!json.contains("sig="), "{json}");
        assert!(!format!("{captured:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn managed_image_artifact_yields_its_id() {
        let lines = [
            "1,azure-arm,artifact,0,builder-id,Azure.ResourceManagement.VMImage",
            "1,azure-arm,artifact,0,id,/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/images/img1",
            "1,azure-arm,artifact,0,string,Azure.ResourceManagement.VMImage:\\n\\nOSType: Linux\\nManagedImageResourceGroupName: rg\\nManagedImageName: img1\\nManagedImageId: /subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/images/img1\\nManagedImageLocation: westus2\\n",
            "1,azure-arm,artifact,0,end",
        ];
        let captured = capture(&collect(&lines), Path::new("/b")).unwrap();
        let Captured::ManagedImage {
            id, name, location, ..
        } = captured
        else {
            panic!()
        };
        assert_eq!(
            id,
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/images/img1"
        );
        assert_eq!(name.as_deref(), Some("img1"));
        assert_eq!(location.as_deref(), Some("westus2"));
    }

    #[test]
    fn gallery_artifact_yields_the_image_version_id() {
        let lines = [
            "1,azure-arm,artifact,0,builder-id,Azure.ResourceManagement.VMImage",
            "1,azure-arm,artifact,0,string,Azure.ResourceManagement.VMImage:\\n\\nOSType: Linux\\nManagedImageResourceGroupName: rg\\nManagedImageName: img1\\nManagedImageId: /subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/images/img1\\nManagedImageLocation: eastus\\nManagedImageSharedImageGalleryId: /subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/galleries/g1/images/def/versions/1.0.0\\n",
            "1,azure-arm,artifact,0,end",
            "1,azure-arm,artifact,0,builder-id,packer.post-processor.manifest",
            "1,azure-arm,artifact,0,end",
        ];
        let captured = capture(&collect(&lines), Path::new("/b")).unwrap();
        let Captured::GalleryImageVersion {
            id,
            managed_image_id,
        } = captured
        else {
            panic!()
        };
        assert!(id.ends_with("/galleries/g1/images/def/versions/1.0.0"));
        assert!(managed_image_id.unwrap().ends_with("/images/img1"));
    }

    #[test]
    fn only_the_manifest_post_processor_means_no_artifact() {
        let lines = [
            "1,azure-arm,artifact,0,builder-id,packer.post-processor.manifest",
            "1,azure-arm,artifact,0,end",
        ];
        assert_eq!(
            capture(&collect(&lines), Path::new("/b")).unwrap_err(),
            CaptureError::NoArtifact
        );
    }
}
