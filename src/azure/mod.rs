//! Azure's services, as clients that know nothing of images: one HTTP policy
//! (`http`: the client, timeouts, retries, bounded bodies, no redirect for a
//! credential), Entra ID tokens (`entra`), Blob Storage (`storage`), Resource
//! Manager's storage accounts (`arm`) and Compute images and galleries
//! (`compute`), and the Batch data plane (`batch`).

pub(crate) mod arm;
pub(crate) mod batch;
pub(crate) mod compute;
pub(crate) mod entra;
pub(crate) mod http;
pub mod storage;
