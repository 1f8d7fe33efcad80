//! One error type for the engine. Every message is meant to be shown to a user as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the image: {0}")]
    Image(String),
    #[error("invalid prompt: {0}")]
    Prompt(String),
    #[error("weights file {file}: {reason}")]
    Weights { file: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The compute device failed or computed wrong values (on WebGPU: the page falls back to the CPU).
    #[error("the compute device failed: {0}")]
    Device(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn weights(file: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Weights { file: file.into(), reason: reason.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
