//! One error type for the CLI, and the documented exit codes.

use crate::packer::PackerError;
use crate::render::RenderError;
use crate::render::templates::TemplateError;
use crate::spec::manifest::ManifestError;

pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const TOOL: i32 = 3;
    pub const IO: i32 = 4;
    pub const CANCELLED: i32 = 130;
}

/// The one mapping from a failure's category to its exit code.
pub fn exit_code(category: crate::util::Category) -> i32 {
    use crate::util::Category;
    match category {
        Category::Failed => exit::FAILED,
        Category::Input => exit::BAD_INPUT,
        Category::Tool => exit::TOOL,
        Category::Io => exit::IO,
        Category::Cancelled => exit::CANCELLED,
    }
}

/// The version of every `--json` document's layout, errors included; a
/// document that has its own `schema` (build.json) keeps it. Here, below the
/// commands that write the documents, so neither module imports the other back.
pub const JSON_SCHEMA: u32 = 1;

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
    Build(Box<crate::pipeline::BuildError>),
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    #[error(transparent)]
    Replicate(#[from] crate::replicate::ReplicateError),
    #[error(transparent)]
    Validate(#[from] crate::validate::ValidateError),
    #[error(transparent)]
    Boot(#[from] crate::validate::boot::BootError),
    #[error(transparent)]
    Publish(Box<crate::publish::PublishError>),
    #[error(transparent)]
    Storage(#[from] crate::azure::storage::StorageError),
    #[error(transparent)]
    Batch(#[from] crate::azure::batch::BatchError),
    #[error(transparent)]
    Inspect(Box<crate::inspect::InspectError>),
    /// Input that cannot work (exit 2).
    #[error("{message}")]
    Refused {
        message: String,
        hint: Option<String>,
    },
    /// Input that was read and checked, and failed its checks (exit 1).
    #[error("{message}")]
    Rejected {
        message: String,
        hint: Option<String>,
    },
    /// A failure whose `--json` document (a build's record) is already on
    /// stdout: the error goes to stderr only, so stdout stays one document
    /// (as cargo's "already reported" errors).
    #[error(transparent)]
    Reported(Box<AppError>),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl From<crate::pipeline::BuildError> for AppError {
    fn from(e: crate::pipeline::BuildError) -> AppError {
        AppError::Build(Box::new(e))
    }
}

impl From<crate::publish::PublishError> for AppError {
    fn from(e: crate::publish::PublishError) -> AppError {
        AppError::Publish(Box::new(e))
    }
}

impl crate::util::Hint for AppError {
    fn hint(&self) -> Option<String> {
        match self {
            AppError::Manifest(e) => e.hint(),
            AppError::Template(e) => e.hint(),
            AppError::Render(e) => e.hint(),
            AppError::Packer(e) => e.hint(),
            AppError::Build(e) => e.hint(),
            AppError::Pool(e) => e.hint(),
            AppError::Replicate(e) => e.hint(),
            AppError::Validate(_) | AppError::Io { .. } => None,
            AppError::Boot(e) => e.hint(),
            AppError::Publish(e) => e.hint(),
            AppError::Storage(e) => e.hint(),
            AppError::Batch(e) => e.hint(),
            AppError::Inspect(e) => e.hint(),
            AppError::Refused { hint, .. } | AppError::Rejected { hint, .. } => hint.clone(),
            AppError::Reported(e) => e.hint(),
        }
    }
}

impl AppError {
    /// Input that cannot work, and what to do about it (exit 2).
    pub fn refused(message: impl Into<String>, hint: impl Into<String>) -> AppError {
        AppError::Refused {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// Another stage's error as a refusal, its hint kept.
    pub fn refused_by(e: &(impl std::fmt::Display + crate::util::Hint)) -> AppError {
        AppError::Refused {
            message: e.to_string(),
            hint: e.hint(),
        }
    }

    /// What a terminal shows: the message, then the hint on its own line.
    pub fn to_text(&self) -> String {
        crate::util::redact::redact(&crate::util::with_hint(self))
    }

    /// The error as the JSON document a `--json` caller gets on stdout:
    /// `{"schema": 1, "error": {"message", "hint", "exit_code", "problems"?}}`,
    /// `problems` listing each located manifest problem.
    pub fn to_json(&self) -> serde_json::Value {
        use crate::util::Hint as _;
        let message = crate::util::redact::redact(&self.to_string());
        let hint = self.hint().map(|h| crate::util::redact::redact(&h));
        let located = |l: &crate::spec::manifest::Located| {
            serde_json::json!({
                "file": l.path, "line": l.line, "column": l.column, "key": l.key,
                "message": crate::util::redact::redact(&l.message),
                "hint": l.hint.as_deref().map(crate::util::redact::redact),
            })
        };
        let problems: Option<Vec<serde_json::Value>> = match self {
            AppError::Manifest(ManifestError::Invalid(l)) => Some(vec![located(l)]),
            AppError::Manifest(ManifestError::Several(ls)) => {
                Some(ls.iter().map(located).collect())
            }
            _ => None,
        };
        let mut error = serde_json::json!({
            "message": problems.as_ref().and_then(|p| p.first()).map_or(message, |first| {
                if problems.as_ref().is_some_and(|p| p.len() > 1) {
                    format!("{} problems in the manifest", problems.as_ref().map_or(0, Vec::len))
                } else {
                    first["message"].as_str().unwrap_or_default().to_string()
                }
            }),
            "hint": hint,
            "exit_code": self.exit_code(),
        });
        if let Some(p) = problems {
            error["problems"] = p.into();
        }
        serde_json::json!({"schema": JSON_SCHEMA, "error": error})
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Manifest(ManifestError::Read { .. }) => exit::BAD_INPUT,
            AppError::Manifest(ManifestError::Invalid(_) | ManifestError::Several(_)) => {
                exit::BAD_INPUT
            }
            AppError::Template(TemplateError::Export { .. }) => exit::IO,
            AppError::Template(_) => exit::BAD_INPUT,
            AppError::Render(RenderError::Write { .. }) => exit::IO,
            AppError::Render(_) => exit::BAD_INPUT,
            AppError::Packer(PackerError::Invalid { .. }) => exit::FAILED,
            AppError::Packer(_) => exit::TOOL,
            AppError::Build(e) => exit_code(e.category()),
            AppError::Pool(_) => exit::BAD_INPUT,
            AppError::Replicate(e) => exit_code(e.category()),
            AppError::Validate(_) => exit::BAD_INPUT,
            AppError::Boot(e) => exit_code(e.category()),
            AppError::Publish(e) => exit_code(e.category()),
            AppError::Storage(_) => exit::BAD_INPUT,
            AppError::Batch(crate::azure::batch::BatchError::Insecure(_)) => exit::BAD_INPUT,
            AppError::Batch(_) => exit::FAILED,
            AppError::Inspect(e) => exit_code(e.category()),
            AppError::Io { .. } => exit::IO,
            AppError::Refused { .. } => exit::BAD_INPUT,
            AppError::Rejected { .. } => exit::FAILED,
            AppError::Reported(e) => e.exit_code(),
        }
    }

    /// Whether a `--json` caller still needs this error as a JSON document.
    pub fn needs_json_document(&self) -> bool {
        !matches!(self, AppError::Reported(_))
    }
}
