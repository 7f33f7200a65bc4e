//! The runner's error type.

use jobs::ports::{QueueError, StoreError};

/// Why the runner could not start or had to stop. Failures of a single job are not
/// errors of the runner: they end up in the job record (`job.error`).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A flag or setting is wrong; the message says which.
    #[error("configuration: {0}")]
    Config(String),
    /// ComfyUI could not be started, or never became ready.
    #[error("ComfyUI: {0}")]
    Engine(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Comfy(#[from] comfyui::Error),
}
