use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything the client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request never got an HTTP answer (connection refused, reset, timeout...).
    #[error("cannot reach ComfyUI at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// An HTTP answer with an unexpected status. ComfyUI's 5xx bodies are plain text,
    /// never a JSON envelope.
    #[error("ComfyUI answered {status} to {method} {path}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    /// `POST /prompt` refused the prompt (400), or accepted it with `node_errors` (200;
    /// then `queued` is true and the valid outputs are on the queue).
    #[error("{0}")]
    Rejected(Box<PromptRejection>),
    /// A body that does not have the shape the protocol promises.
    #[error("unexpected answer from ComfyUI ({what}): {detail}")]
    Decode { what: String, detail: String },
    /// The WebSocket could not be opened.
    #[error("WebSocket error: {0}")]
    WebSocket(String),
    /// The server is gone: the WebSocket dropped and neither it nor HTTP came back.
    #[error("ComfyUI is unreachable: {0}")]
    ServerGone(String),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Our prompt is neither on the queue nor in history (server restarted, history
    /// evicted, or deleted by someone else).
    #[error("prompt {0} is neither queued, running nor in history")]
    PromptLost(String),
    /// Not an API-format workflow (UI format, or not a workflow at all).
    #[error("invalid workflow: {0}")]
    InvalidWorkflow(String),
    #[error("invalid URL: {0}")]
    Url(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One validation error (`error` of a 400, or an entry of `node_errors[id].errors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub details: String,
    #[serde(default)]
    pub extra_info: Value,
}

/// `node_errors[id]`: the errors of one node and the output nodes it blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeError {
    #[serde(default)]
    pub errors: Vec<PromptError>,
    #[serde(default)]
    pub dependent_outputs: Vec<String>,
    #[serde(default)]
    pub class_type: String,
}

/// Why `POST /prompt` did not cleanly accept a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRejection {
    pub prompt_id: String,
    /// 400, or 200 when only some outputs failed validation.
    pub http_status: u16,
    /// The top-level error (`prompt_outputs_failed_validation`, `invalid_prompt`,
    /// `prompt_no_outputs`, `no_prompt`, `missing_node_type`, `invalid_prompt_id`...).
    /// On a 200 with `node_errors` there is none, and this is synthesised with type
    /// `partial_validation_failure`.
    pub error: PromptError,
    /// Per-node causes. `error.details` is often empty: read these.
    pub node_errors: BTreeMap<String, NodeError>,
    /// The valid outputs were queued anyway (200 with `node_errors`): cancel the prompt
    /// if you treat this as a failure (`run_prompt` does).
    pub queued: bool,
}

impl fmt::Display for PromptRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ComfyUI rejected the prompt: {}: {}",
            self.error.kind, self.error.message
        )?;
        if !self.error.details.is_empty() {
            write!(f, " ({})", self.error.details)?;
        }
        for (id, ne) in &self.node_errors {
            for e in &ne.errors {
                write!(
                    f,
                    "; node {id} ({}): {}: {}",
                    ne.class_type, e.message, e.details
                )?;
            }
        }
        if self.queued {
            write!(f, "; the valid outputs were queued")?;
        }
        Ok(())
    }
}
