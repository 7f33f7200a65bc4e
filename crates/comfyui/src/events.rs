//! Typed WebSocket events and their decoding.
//!
//! Every JSON frame is `{"type": ..., "data": {...}}`; binary frames start with a
//! big-endian `u32` event type (1: preview, 3: progress text, 4: preview with metadata).
//! Decoding is tolerant: an unknown type, or a known type with an unexpected shape,
//! becomes [`Event::Unknown`] / [`Event::UnknownBinary`] instead of an error.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `execution_error` (also the last message of a failed history entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ExecutionError {
    #[serde(default)]
    pub prompt_id: String,
    /// The node that raised (as submitted; expanded nodes use their real id).
    #[serde(default)]
    pub node_id: String,
    /// Its class, e.g. `"SaveImage"`.
    #[serde(default)]
    pub node_type: String,
    /// Node ids that ran before the failure (cached ones are not listed).
    #[serde(default)]
    pub executed: Vec<String>,
    /// `"<text>\n<tips>"`: ends with `\n` when there are no tips.
    #[serde(default)]
    pub exception_message: String,
    /// Module-qualified class name: `"Exception"`, `"torch.OutOfMemoryError"`, ...
    #[serde(default)]
    pub exception_type: String,
    #[serde(default)]
    pub traceback: Vec<String>,
    /// Usually an object of input name → list of values; an array in the cycle variant.
    #[serde(default)]
    pub current_inputs: Value,
    #[serde(default)]
    pub current_outputs: Vec<String>,
    /// Absent on the non-fatal "ExecutionBlocked" variant.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

impl ExecutionError {
    /// The "ExecutionBlocked" variant: sent directly, not recorded in history, and the
    /// run carries on. Not a failure of the prompt.
    pub fn is_non_fatal(&self) -> bool {
        self.timestamp.is_none() || self.exception_type == "ExecutionBlocked"
    }
}

/// `execution_interrupted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Interruption {
    #[serde(default)]
    pub prompt_id: String,
    /// The node that was about to run, or running (a ticking node).
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub node_type: String,
    #[serde(default)]
    pub executed: Vec<String>,
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// One node in a `progress_state` snapshot. `value`/`max` may be integers or floats on
/// the wire (cached nodes report `1/1`); here they are `f64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeProgress {
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub value: f64,
    #[serde(default)]
    pub max: f64,
    /// `running` or `finished` (`pending` entries are never sent).
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub display_node_id: Option<String>,
    #[serde(default)]
    pub parent_node_id: Option<String>,
    #[serde(default)]
    pub real_node_id: Option<String>,
}

/// Metadata of a type-4 preview frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PreviewMetadata {
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub prompt_id: Option<String>,
    #[serde(default)]
    pub display_node_id: Option<String>,
    #[serde(default)]
    pub parent_node_id: Option<String>,
    #[serde(default)]
    pub real_node_id: Option<String>,
    #[serde(default)]
    pub image_type: Option<String>,
}

/// A binary preview image (type 1, or type 4 with metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    /// `image/png` or `image/jpeg`.
    pub mime: String,
    pub image: Bytes,
    /// Only type 4 carries node and prompt ids; a type-1 preview belongs to the last
    /// `executing` node of the socket's client.
    pub metadata: Option<PreviewMetadata>,
}

/// A WebSocket message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Queue changed. `sid` only on the first message of a connection.
    Status {
        queue_remaining: Option<u64>,
        sid: Option<String>,
    },
    ExecutionStart {
        prompt_id: String,
        timestamp: Option<i64>,
    },
    /// Nodes whose cached output will be reused (no `executing` for them).
    ExecutionCached {
        prompt_id: String,
        nodes: Vec<String>,
        timestamp: Option<i64>,
    },
    /// A node is about to run. `node: None` with our `prompt_id`: the prompt is finished
    /// (any outcome) and its history entry exists. The reconnect replay has a node and
    /// no `prompt_id`: ignore it for completion logic.
    Executing {
        node: Option<String>,
        display_node: Option<String>,
        prompt_id: Option<String>,
    },
    /// A progress-bar tick.
    Progress {
        prompt_id: Option<String>,
        node: Option<String>,
        value: f64,
        max: f64,
    },
    ProgressState {
        prompt_id: String,
        nodes: Vec<NodeProgress>,
    },
    /// A node produced UI output (as in history `outputs[node]`); `None` for a cached
    /// node without UI.
    Executed {
        node: String,
        display_node: Option<String>,
        output: Option<Value>,
        prompt_id: String,
    },
    ExecutionSuccess {
        prompt_id: String,
        timestamp: Option<i64>,
    },
    ExecutionError(ExecutionError),
    ExecutionInterrupted(Interruption),
    Logs {
        data: Value,
    },
    /// The server's reply to our feature-flag handshake.
    FeatureFlags(Map<String, Value>),
    Preview(Preview),
    /// Binary type 3: text shown on a node.
    ProgressText {
        node_id: String,
        text: String,
    },
    Unknown {
        kind: String,
        data: Value,
    },
    UnknownBinary {
        event_type: u32,
        data: Bytes,
    },
}

fn s(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

impl Event {
    /// Decode a text frame. Errors only when the frame is not JSON.
    pub fn from_text(text: &str) -> Result<Event, serde_json::Error> {
        let v: Value = serde_json::from_str(text)?;
        Ok(Self::from_value(&v))
    }

    /// Decode a parsed `{"type", "data"}` message.
    pub fn from_value(v: &Value) -> Event {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let d = v.get("data").cloned().unwrap_or(Value::Null);
        let unknown = || Event::Unknown {
            kind: kind.clone(),
            data: d.clone(),
        };
        let pid = || d.get("prompt_id").and_then(s);
        let ts = || d.get("timestamp").and_then(Value::as_i64);
        match kind.as_str() {
            "status" => Event::Status {
                queue_remaining: d
                    .pointer("/status/exec_info/queue_remaining")
                    .and_then(Value::as_u64),
                sid: d.get("sid").and_then(s),
            },
            "execution_start" => Event::ExecutionStart {
                prompt_id: pid().unwrap_or_default(),
                timestamp: ts(),
            },
            "execution_cached" => Event::ExecutionCached {
                prompt_id: pid().unwrap_or_default(),
                nodes: serde_json::from_value(d.get("nodes").cloned().unwrap_or_default())
                    .unwrap_or_default(),
                timestamp: ts(),
            },
            "executing" => Event::Executing {
                node: d.get("node").and_then(s),
                display_node: d.get("display_node").and_then(s),
                prompt_id: pid(),
            },
            "progress" => Event::Progress {
                prompt_id: pid(),
                node: d.get("node").and_then(s),
                value: f(&d["value"]),
                max: f(&d["max"]),
            },
            "progress_state" => {
                let nodes = d
                    .get("nodes")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(id, n)| {
                                let mut p: NodeProgress =
                                    serde_json::from_value(n.clone()).unwrap_or_default();
                                p.value = f(&n["value"]);
                                p.max = f(&n["max"]);
                                if p.node_id.is_empty() {
                                    p.node_id = id.clone();
                                }
                                p
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Event::ProgressState {
                    prompt_id: pid().unwrap_or_default(),
                    nodes,
                }
            }
            "executed" => match d.get("node").and_then(s) {
                Some(node) => Event::Executed {
                    node,
                    display_node: d.get("display_node").and_then(s),
                    output: d.get("output").filter(|o| !o.is_null()).cloned(),
                    prompt_id: pid().unwrap_or_default(),
                },
                None => unknown(),
            },
            "execution_success" => Event::ExecutionSuccess {
                prompt_id: pid().unwrap_or_default(),
                timestamp: ts(),
            },
            "execution_error" => match serde_json::from_value(d.clone()) {
                Ok(e) => Event::ExecutionError(e),
                Err(_) => unknown(),
            },
            "execution_interrupted" => match serde_json::from_value(d.clone()) {
                Ok(e) => Event::ExecutionInterrupted(e),
                Err(_) => unknown(),
            },
            "logs" => Event::Logs { data: d },
            "feature_flags" => match d {
                Value::Object(m) => Event::FeatureFlags(m),
                _ => unknown(),
            },
            _ => unknown(),
        }
    }

    /// Decode a binary frame.
    pub fn from_binary(b: &[u8]) -> Event {
        let unknown = |t: u32| Event::UnknownBinary {
            event_type: t,
            data: Bytes::copy_from_slice(b),
        };
        if b.len() < 4 {
            return unknown(0);
        }
        let t = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let rest = &b[4..];
        let u32_at = |r: &[u8]| {
            (r.len() >= 4).then(|| u32::from_be_bytes([r[0], r[1], r[2], r[3]]) as usize)
        };
        match t {
            1 => match u32_at(rest) {
                Some(fmt) => Event::Preview(Preview {
                    mime: if fmt == 1 { "image/jpeg" } else { "image/png" }.to_string(),
                    image: Bytes::copy_from_slice(&rest[4..]),
                    metadata: None,
                }),
                None => unknown(t),
            },
            3 => match u32_at(rest) {
                Some(len) if rest.len() >= 4 + len => Event::ProgressText {
                    node_id: String::from_utf8_lossy(&rest[4..4 + len]).to_string(),
                    text: String::from_utf8_lossy(&rest[4 + len..]).to_string(),
                },
                _ => unknown(t),
            },
            4 => match u32_at(rest) {
                Some(len) if rest.len() >= 4 + len => {
                    let meta: PreviewMetadata =
                        serde_json::from_slice(&rest[4..4 + len]).unwrap_or_default();
                    Event::Preview(Preview {
                        mime: meta
                            .image_type
                            .clone()
                            .unwrap_or_else(|| "image/png".into()),
                        image: Bytes::copy_from_slice(&rest[4 + len..]),
                        metadata: Some(meta),
                    })
                }
                _ => unknown(t),
            },
            _ => unknown(t),
        }
    }

    /// The prompt this event is about, when it says.
    pub fn prompt_id(&self) -> Option<&str> {
        match self {
            Event::ExecutionStart { prompt_id, .. }
            | Event::ExecutionCached { prompt_id, .. }
            | Event::ProgressState { prompt_id, .. }
            | Event::Executed { prompt_id, .. }
            | Event::ExecutionSuccess { prompt_id, .. } => Some(prompt_id),
            Event::Executing { prompt_id, .. } | Event::Progress { prompt_id, .. } => {
                prompt_id.as_deref()
            }
            Event::ExecutionError(e) => Some(&e.prompt_id),
            Event::ExecutionInterrupted(i) => Some(&i.prompt_id),
            Event::Preview(p) => p.metadata.as_ref().and_then(|m| m.prompt_id.as_deref()),
            _ => None,
        }
    }

    /// `executing {node: null, prompt_id}` for this prompt: finished, history written.
    pub fn is_done(&self, prompt_id: &str) -> bool {
        matches!(self, Event::Executing { node: None, prompt_id: Some(p), .. } if p == prompt_id)
    }

    /// A lifecycle event that means the end is near (success, interruption, or a fatal
    /// error): `executing null` should follow.
    pub fn is_terminal_for(&self, prompt_id: &str) -> bool {
        match self {
            Event::ExecutionSuccess { prompt_id: p, .. } => p == prompt_id,
            Event::ExecutionInterrupted(i) => i.prompt_id == prompt_id,
            Event::ExecutionError(e) => e.prompt_id == prompt_id && !e.is_non_fatal(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_text_frames() {
        let e = Event::from_value(&json!({"type": "executing", "data": {"node": "2"}}));
        assert_eq!(
            e,
            Event::Executing {
                node: Some("2".into()),
                display_node: None,
                prompt_id: None
            }
        );
        let e = Event::from_value(
            &json!({"type": "executing", "data": {"node": null, "prompt_id": "p"}}),
        );
        assert!(e.is_done("p"));
        let e = Event::from_value(
            &json!({"type": "progress_state", "data": {"prompt_id": "p", "nodes": {"3": {"value": 1, "max": 1, "state": "finished", "node_id": "3", "prompt_id": "p", "display_node_id": "3", "parent_node_id": null, "real_node_id": "3"}}}}),
        );
        match e {
            Event::ProgressState { nodes, .. } => {
                assert_eq!((nodes[0].value, nodes[0].max), (1.0, 1.0))
            }
            other => panic!("{other:?}"),
        }
        let e = Event::from_value(
            &json!({"type": "execution_error", "data": {"prompt_id": "p", "node_id": "1", "node_type": "X", "executed": [], "exception_message": "m\n", "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": [], "current_outputs": []}}),
        );
        assert!(!e.is_terminal_for("p"));
        let e = Event::from_value(&json!({"type": "crystools.monitor", "data": {}}));
        assert!(matches!(e, Event::Unknown { .. }));
    }

    #[test]
    fn decodes_binary_frames() {
        let mut b = vec![0, 0, 0, 1, 0, 0, 0, 2];
        b.extend(b"\x89PNG");
        match Event::from_binary(&b) {
            Event::Preview(p) => assert_eq!(
                (p.mime.as_str(), &p.image[..]),
                ("image/png", &b"\x89PNG"[..])
            ),
            other => panic!("{other:?}"),
        }
        let mut b = vec![0, 0, 0, 3, 0, 0, 0, 2];
        b.extend(b"12width: 64");
        assert_eq!(
            Event::from_binary(&b),
            Event::ProgressText {
                node_id: "12".into(),
                text: "width: 64".into()
            }
        );
        let meta = br#"{"node_id":"3","prompt_id":"p","image_type":"image/jpeg"}"#;
        let mut b = vec![0, 0, 0, 4];
        b.extend((meta.len() as u32).to_be_bytes());
        b.extend(meta);
        b.extend(b"JPEG");
        let e = Event::from_binary(&b);
        assert_eq!(e.prompt_id(), Some("p"));
        assert!(matches!(
            Event::from_binary(&[0, 0, 0, 9, 1]),
            Event::UnknownBinary { event_type: 9, .. }
        ));
    }
}
