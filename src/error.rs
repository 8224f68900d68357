//! One error type for the CLI, and the documented exit codes.

use crate::manifest::ManifestError;
use crate::packer::PackerError;
use crate::render::RenderError;
use crate::templates::TemplateError;

pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const TOOL: i32 = 3;
    pub const IO: i32 = 4;
    pub const CANCELLED: i32 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Packer(#[from] PackerError),
    #[error(transparent)]
    Build(Box<crate::build::BuildError>),
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    #[error(transparent)]
    Replicate(#[from] crate::replicate::ReplicateError),
    #[error(transparent)]
    Validate(#[from] crate::validate::ValidateError),
    #[error(transparent)]
    Boot(#[from] crate::bootcheck::BootError),
    #[error(transparent)]
    Publish(Box<crate::publish::PublishError>),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Batch(#[from] crate::batch::BatchError),
    #[error("{0}")]
    Refused(String),
    /// Input that was read and checked, and failed its checks (exit 1).
    #[error("{0}")]
    Rejected(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl From<crate::build::BuildError> for AppError {
    fn from(e: crate::build::BuildError) -> AppError {
        AppError::Build(Box::new(e))
    }
}

impl From<crate::publish::PublishError> for AppError {
    fn from(e: crate::publish::PublishError) -> AppError {
        AppError::Publish(Box::new(e))
    }
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Manifest(ManifestError::Read { .. }) => exit::BAD_INPUT,
            AppError::Manifest(ManifestError::Invalid(_)) => exit::BAD_INPUT,
            AppError::Template(TemplateError::Export { .. }) => exit::IO,
            AppError::Template(_) => exit::BAD_INPUT,
            AppError::Render(RenderError::Write { .. }) => exit::IO,
            AppError::Render(_) => exit::BAD_INPUT,
            AppError::Packer(PackerError::Invalid { .. }) => exit::FAILED,
            AppError::Packer(_) => exit::TOOL,
            AppError::Build(e) => e.exit_code(),
            AppError::Pool(_) => exit::BAD_INPUT,
            AppError::Replicate(e) => e.exit_code(),
            AppError::Validate(_) => exit::BAD_INPUT,
            AppError::Boot(e) => e.exit_code(),
            AppError::Publish(e) => e.exit_code(),
            AppError::Storage(_) => exit::BAD_INPUT,
            AppError::Batch(crate::batch::BatchError::Insecure(_)) => exit::BAD_INPUT,
            AppError::Batch(_) => exit::FAILED,
            AppError::Io { .. } => exit::IO,
            AppError::Refused(_) => exit::BAD_INPUT,
            AppError::Rejected(_) => exit::FAILED,
        }
    }
}
