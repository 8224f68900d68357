//! Inspecting an image that lives in Azure — what an azure-arm build makes:
//! a Compute Gallery image version or a managed image — without a VM. Its
//! OS disk is not a blob anyone can read, so a managed disk is made from the
//! image in the image's own resource group (`Disks - Create`,
//! `createOption: FromImage`), a read-only SAS is asked for
//! (`beginGetAccess`), and the disk is read through range requests exactly
//! as a VHD blob is (`validate::with_blob_disk`). Access is then revoked and
//! the disk deleted — also when the reading failed, timed out or was
//! cancelled; a cleanup that fails is said with the command that finishes it.
//! The disk exists for the minutes of the reading (a standard HDD disk of the
//! image's size: cents).
//!
//! The principal needs, on the resource group: `Microsoft.Compute/disks/write`,
//! `…/disks/beginGetAccess/action`, `…/disks/endGetAccess/action`,
//! `…/disks/delete`, and read on the image (Contributor has them all).

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::json;

use super::{InspectError, Inspection};
use crate::azure::arm::{Arm, ArmError};
use crate::azure::compute::{GALLERY_API, IMAGES_API, Wait};

/// The Disks API version (DiskRP 2024-03-02: its examples are the stand-in's shapes).
pub const DISKS_API: &str = "2024-03-02";

/// What a resource id names: a gallery image version or a managed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageId {
    pub id: String,
    pub subscription: String,
    pub resource_group: String,
    pub gallery_version: bool,
}

impl ImageId {
    /// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/`
    /// then `galleries/{g}/images/{d}/versions/{v}` or `images/{name}`.
    pub fn parse(id: &str) -> Option<ImageId> {
        let parts: Vec<&str> = id.trim_start_matches('/').split('/').collect();
        let prefix_ok = parts.len() >= 8
            && parts[0].eq_ignore_ascii_case("subscriptions")
            && parts[2].eq_ignore_ascii_case("resourceGroups")
            && parts[4].eq_ignore_ascii_case("providers")
            && parts[5].eq_ignore_ascii_case("Microsoft.Compute")
            && parts.iter().all(|p| !p.is_empty());
        if !prefix_ok || !id.starts_with('/') {
            return None;
        }
        let gallery_version = match (parts.len(), parts[6].to_ascii_lowercase().as_str()) {
            (12, "galleries")
                if parts[8].eq_ignore_ascii_case("images")
                    && parts[10].eq_ignore_ascii_case("versions") =>
            {
                true
            }
            (8, "images") => false,
            _ => return None,
        };
        Some(ImageId {
            id: id.to_string(),
            subscription: parts[1].to_string(),
            resource_group: parts[3].to_string(),
            gallery_version,
        })
    }
}

/// Whether `text` looks like a Resource Manager id (for the CLI's choice).
pub fn is_resource_id(text: &str) -> bool {
    text.to_ascii_lowercase().starts_with("/subscriptions/")
}

pub struct Options<'a> {
    /// For each long-running operation, and for the reading.
    pub timeout: Duration,
    pub cancel: &'a AtomicBool,
    pub progress: &'a mut dyn FnMut(&str),
}

fn failed(image: &ImageId, why: impl Into<String>, hint: Option<String>) -> InspectError {
    InspectError::Azure {
        subject: image.id.clone(),
        why: why.into(),
        hint,
    }
}

fn arm_failed(image: &ImageId, e: ArmError) -> InspectError {
    use crate::util::Hint;
    let hint = e.hint();
    failed(image, e.to_string(), hint)
}

/// Makes a disk of `image`, reads it, and removes the disk.
pub async fn inspect_azure_image(
    image: &ImageId,
    opts: Options<'_>,
) -> Result<Inspection, InspectError> {
    let principal = crate::azure::entra::ServicePrincipal::from_env().ok_or_else(|| {
        failed(
            image,
            "the ARM_* service principal is not set",
            Some(
                "export ARM_TENANT_ID, ARM_CLIENT_ID and ARM_CLIENT_SECRET (a principal with Contributor on the image's resource group)"
                    .into(),
            ),
        )
    })?;
    let mut arm = Arm::connect(&crate::azure::arm::endpoint_from_env(), &principal)
        .await
        .map_err(|e| arm_failed(image, e))?;
    let (op, api) = if image.gallery_version {
        ("Get Gallery Image Version", GALLERY_API)
    } else {
        ("Get Image", IMAGES_API)
    };
    let resource = arm
        .get_resource(op, &image.id, api, None)
        .await
        .map_err(|e| arm_failed(image, e))?
        .ok_or_else(|| {
            failed(
                image,
                "the image does not exist",
                Some(
                    "give the id a build recorded (`imgforge status --json`: publish.arm_image_id)"
                        .into(),
                ),
            )
        })?;
    let location = resource["location"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let disk_id = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/disks/imgforge-inspect-{stamp}-{}",
        image.subscription,
        image.resource_group,
        std::process::id()
    );
    let source = if image.gallery_version {
        json!({"createOption": "FromImage", "galleryImageReference": {"id": image.id}})
    } else {
        json!({"createOption": "FromImage", "imageReference": {"id": image.id}})
    };
    let body = json!({
        "location": location,
        "sku": {"name": "Standard_LRS"},
        "properties": {"creationData": source},
    });
    let mut wait = Wait {
        timeout: opts.timeout,
        cancel: opts.cancel,
        progress: opts.progress,
        every: Duration::from_secs(30),
    };
    let made = arm
        .put_and_wait("Create Disk", &disk_id, DISKS_API, &body, &mut wait)
        .await;
    let result = match made {
        Ok(_) => read_disk(&mut arm, image, &disk_id, &mut wait).await,
        Err(e) => Err(arm_failed(image, e)),
    };
    // Whatever happened: no access left open, no disk left behind.
    let cleanup = cleanup(&mut arm, &disk_id).await;
    match (result, cleanup) {
        (Ok(i), Ok(())) => Ok(i),
        (Ok(_), Err(why)) => Err(failed(
            image,
            format!("the image was read, but its temporary disk could not be removed: {why}"),
            Some(format!(
                "az disk revoke-access --ids {disk_id}; az disk delete --ids {disk_id} --yes"
            )),
        )),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(why)) => {
            crate::util::term::warning(&format!(
                "the temporary disk {disk_id} could not be removed ({why}): az disk revoke-access --ids {disk_id}; az disk delete --ids {disk_id} --yes"
            ));
            Err(e)
        }
    }
}

async fn read_disk(
    arm: &mut Arm,
    image: &ImageId,
    disk_id: &str,
    wait: &mut Wait<'_>,
) -> Result<Inspection, InspectError> {
    let granted = arm
        .act_and_wait(
            "Grant Disk Access",
            reqwest::Method::POST,
            &format!("{disk_id}/beginGetAccess"),
            DISKS_API,
            Some(&json!({"access": "Read", "durationInSeconds": 3600})),
            wait,
        )
        .await
        .map_err(|e| arm_failed(image, e))?;
    let Some(sas) = granted["accessSAS"].as_str() else {
        return Err(failed(
            image,
            "beginGetAccess answered without an accessSAS",
            None,
        ));
    };
    let blob = crate::azure::storage::BlobRef::parse(sas)
        .map_err(|e| failed(image, format!("the disk's SAS URL: {e}"), None))?;
    let subject = image.id.clone();
    let reading = async {
        let storage = crate::azure::storage::Storage::for_blobs(
            std::slice::from_ref(&blob.account),
            &[&blob],
        )
        .await
        .map_err(|e| InspectError::Validate(e.into()))?;
        crate::validate::with_blob_disk(std::sync::Arc::new(storage), blob, move |disk, _, _| {
            super::inspect_disk(&subject, disk)
        })
        .await?
    };
    match tokio::time::timeout(wait.timeout, reading).await {
        Ok(r) => r,
        Err(_) => Err(failed(
            image,
            format!(
                "the disk was not read within {} s; nothing was judged",
                wait.timeout.as_secs()
            ),
            Some("raise --timeout if the storage is slow but working".into()),
        )),
    }
}

/// Revokes the SAS and deletes the disk, with its own short deadline and
/// regardless of a cancel (the user's Ctrl-C must not leave a disk).
async fn cleanup(arm: &mut Arm, disk_id: &str) -> Result<(), String> {
    let never = AtomicBool::new(false);
    let mut quiet = |_: &str| {};
    let mut wait = Wait {
        timeout: Duration::from_secs(600),
        cancel: &never,
        progress: &mut quiet,
        every: Duration::from_secs(30),
    };
    let exists = arm
        .get_resource("Get Disk", disk_id, DISKS_API, None)
        .await
        .map_err(|e| e.to_string())?;
    if exists.is_none() {
        return Ok(());
    }
    arm.act_and_wait(
        "Revoke Disk Access",
        reqwest::Method::POST,
        &format!("{disk_id}/endGetAccess"),
        DISKS_API,
        None,
        &mut wait,
    )
    .await
    .map_err(|e| e.to_string())?;
    arm.act_and_wait(
        "Delete Disk",
        reqwest::Method::DELETE,
        disk_id,
        DISKS_API,
        None,
        &mut wait,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_are_gallery_versions_or_managed_images() {
        let v = ImageId::parse(
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d/versions/1.0.0",
        )
        .unwrap();
        assert!(v.gallery_version);
        assert_eq!(
            (v.subscription.as_str(), v.resource_group.as_str()),
            ("s1", "rg")
        );
        let m = ImageId::parse(
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/images/img",
        )
        .unwrap();
        assert!(!m.gallery_version);
        for bad in [
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d",
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/disks/x",
            "/subscriptions/s1/resourceGroups//providers/Microsoft.Compute/images/img",
            "subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/images/img",
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Storage/images/img",
        ] {
            assert_eq!(ImageId::parse(bad), None, "{bad}");
        }
    }
}
