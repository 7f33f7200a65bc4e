//! Typed views of ComfyUI's HTTP bodies.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::events::{ExecutionError, Interruption};
use crate::outputs::{Outputs, collect_outputs};

/// `history/{id}` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The queue tuple `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
    #[serde(default)]
    pub prompt: Value,
    /// Node id → UI dict. Use [`HistoryEntry::collect_outputs`].
    #[serde(default)]
    pub outputs: Map<String, Value>,
    /// `null` only on very old servers.
    #[serde(default)]
    pub status: Option<HistoryStatus>,
    #[serde(default)]
    pub meta: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryStatus {
    /// `success` or `error` (an interruption is an `error` too: read the last message).
    pub status_str: String,
    pub completed: bool,
    /// `[event, data]` pairs: `execution_start`, `execution_cached`, then exactly one of
    /// `execution_success`, `execution_error`, `execution_interrupted`.
    #[serde(default)]
    pub messages: Vec<(String, Value)>,
}

/// How a finished prompt ended, according to history (the source of truth).
#[derive(Debug, Clone, PartialEq)]
pub enum PromptOutcome {
    Success,
    /// A node raised: `node_id`, `node_type` (class), `exception_message`, `traceback`.
    Failed(ExecutionError),
    Interrupted(Interruption),
    /// `status_str` is not `success` and no known final message explains why (or a very
    /// old server without `status`).
    Unknown(String),
}

impl HistoryEntry {
    pub fn outcome(&self) -> PromptOutcome {
        let Some(st) = &self.status else {
            return PromptOutcome::Unknown("history entry has no status".into());
        };
        if st.status_str == "success" && st.completed {
            return PromptOutcome::Success;
        }
        for (name, data) in st.messages.iter().rev() {
            match name.as_str() {
                "execution_error" => {
                    return PromptOutcome::Failed(
                        serde_json::from_value(data.clone()).unwrap_or_default(),
                    );
                }
                "execution_interrupted" => {
                    return PromptOutcome::Interrupted(
                        serde_json::from_value(data.clone()).unwrap_or_default(),
                    );
                }
                _ => {}
            }
        }
        PromptOutcome::Unknown(format!(
            "status_str={} completed={}",
            st.status_str, st.completed
        ))
    }

    pub fn collect_outputs(&self) -> Outputs {
        collect_outputs(&self.outputs)
    }

    pub fn prompt_id(&self) -> Option<&str> {
        self.prompt.get(1).and_then(Value::as_str)
    }

    pub fn client_id(&self) -> Option<&str> {
        self.prompt
            .get(3)
            .and_then(|e| e.get("client_id"))
            .and_then(Value::as_str)
    }
}

/// One entry of `/queue`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueItem {
    /// Priority (may be negative with `front`, or a float when the client sent `number`).
    pub number: f64,
    pub prompt_id: String,
    pub prompt: Value,
    pub extra_data: Map<String, Value>,
    pub outputs_to_execute: Vec<String>,
}

impl QueueItem {
    pub(crate) fn from_tuple(v: &Value) -> Option<QueueItem> {
        let a = v.as_array()?;
        // Comfy Cloud orders the tuple differently: its 4th element is an array.
        let (extra, outputs) = if a.get(3).is_some_and(Value::is_array) {
            (a.get(4), a.get(3))
        } else {
            (a.get(3), a.get(4))
        };
        Some(QueueItem {
            number: a.first()?.as_f64().unwrap_or(0.0),
            prompt_id: a.get(1)?.as_str()?.to_string(),
            prompt: a.get(2).cloned().unwrap_or_default(),
            extra_data: extra
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            outputs_to_execute: outputs
                .and_then(|o| serde_json::from_value(o.clone()).ok())
                .unwrap_or_default(),
        })
    }

    pub fn client_id(&self) -> Option<&str> {
        self.extra_data.get("client_id").and_then(Value::as_str)
    }
}

/// `/queue`: the running item(s) and the pending ones, sorted by run order (the server
/// sends its heap array unsorted).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueState {
    pub running: Vec<QueueItem>,
    pub pending: Vec<QueueItem>,
}

impl QueueState {
    pub fn is_running(&self, prompt_id: &str) -> bool {
        self.running.iter().any(|i| i.prompt_id == prompt_id)
    }
    pub fn is_pending(&self, prompt_id: &str) -> bool {
        self.pending.iter().any(|i| i.prompt_id == prompt_id)
    }
}

/// Where a prompt stands, read in the safe order: `/queue` first, then `/history`.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptState {
    Pending,
    Running,
    Finished(Box<HistoryEntry>),
    /// In neither: never accepted, deleted while pending, evicted, or the server restarted.
    Unknown,
}

/// `POST /prompt` 200 body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PromptAccepted {
    pub prompt_id: String,
    /// Integer when the server chose it; a float when the client sent `number`.
    pub number: f64,
    #[serde(default)]
    pub node_errors: Map<String, Value>,
}

/// `POST /upload/image` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadedFile {
    /// Possibly renamed (`x (1).png`) on a clash with different content, or an existing
    /// name when identical content was already there.
    pub name: String,
    #[serde(default)]
    pub subfolder: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl UploadedFile {
    /// The value to give `LoadImage.image`.
    pub fn load_image_name(&self) -> String {
        // ComfyUI may leave `type` empty for an upload, which means `input`.
        let kind = if self.kind.is_empty() {
            "input"
        } else {
            &self.kind
        };
        crate::outputs::FileRef::new(&self.name, &self.subfolder, kind).load_image_name()
    }
}

/// Options of `POST /upload/image`.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Default `""`.
    pub subfolder: String,
    /// `input` (default), `temp` or `output`.
    pub kind: Option<String>,
    /// Replace an existing file of the same name.
    pub overwrite: bool,
}
