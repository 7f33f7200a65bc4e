//! Reading a workflow file and changing it from the command line, before anything is
//! sent.
//!
//! - [`load`] reads an API-format workflow with the server's own parser and validator
//!   (`jobs::validate`), so a UI-format file, a duplicate key or a broken link is
//!   refused here, with the same explanation the server would give, without a round
//!   trip. A saved `/prompt` body (`{"prompt": {...}}`) is unwrapped, as on the server.
//! - [`Assignment`] is one `--set NODE.INPUT=VALUE` or `--input NODE.INPUT=FILE`,
//!   checked against the graph: the node must exist and must already have that input.
//!   A typo (`6.txet`) is an error that lists what exists, not a silently ignored key.
//! - [`Assignment::apply_set`] types a `--set` value as JSON where it parses (`42`, `1.5`,
//!   `true`, `null`, `"quoted"`, `[..]`, `{..}`) and as a string otherwise, so
//!   `--set 6.text="a red fox"` and `--set 3.seed=42` both do what they look like.

use std::path::Path;

use jobs::validate::{UI_FORMAT_MESSAGE, parse_json_strict, validate_workflow};
use serde_json::{Map, Value};

use super::error::ClientError;

/// An API-format graph: node id → `{class_type, inputs, ...}`.
pub type Graph = Map<String, Value>;

/// Reads and validates a workflow file.
pub fn load(path: &Path) -> Result<Graph, ClientError> {
    let bytes = std::fs::read(path).map_err(|source| ClientError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let shown = path.display();
    let value = parse_json_strict(&bytes)
        .map_err(|e| ClientError::Usage(format!("{shown}: {}", e.message)))?;
    validate_workflow(value).map_err(|e| {
        if e.code == "workflow_format_ui" {
            ClientError::Usage(format!("{shown}: {UI_FORMAT_MESSAGE}"))
        } else {
            // The same line the server would give, node errors included.
            let e = jobs::ApiError::from(e);
            let server_like = ClientError::Api {
                status: e.status.as_u16(),
                code: e.code.to_string(),
                message: e.message.clone(),
                details: e.details.map(|d| *d),
            };
            ClientError::Usage(format!("{shown}: {server_like}"))
        }
    })
}

/// One `NODE.INPUT=VALUE`, resolved against a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub node: String,
    pub input: String,
    /// The text after `=`, untyped.
    pub value: String,
}

impl Assignment {
    /// Parses `NODE.INPUT=VALUE` (`flag` names the option in messages). The node id
    /// may itself contain dots: the split is the first one that names a node.
    pub fn parse(flag: &str, raw: &str, graph: &Graph) -> Result<Assignment, ClientError> {
        let usage = |why: String| ClientError::Usage(format!("{flag} {raw:?}: {why}"));
        let Some((target, value)) = raw.split_once('=') else {
            return Err(usage(format!(
                "expected NODE.INPUT=VALUE, e.g. {flag} 6.text=\"a red fox\""
            )));
        };
        let splits: Vec<(&str, &str)> = target
            .match_indices('.')
            .map(|(i, _)| (&target[..i], &target[i + 1..]))
            .collect();
        if splits.is_empty() {
            return Err(usage(format!(
                "expected NODE.INPUT=VALUE (a node id, a dot, an input name), e.g. {flag} 6.text=..."
            )));
        }
        let Some((node, input)) = splits
            .iter()
            .find(|(node, _)| graph.contains_key(*node))
            .copied()
        else {
            let (node, _) = splits[0];
            return Err(usage(format!(
                "the workflow has no node {node:?} (its nodes: {})",
                list(graph.keys())
            )));
        };
        let inputs = graph[node].get("inputs").and_then(Value::as_object);
        let class = graph[node]
            .get("class_type")
            .and_then(Value::as_str)
            .unwrap_or("?");
        if input.is_empty() {
            return Err(usage(format!(
                "no input name after the node id (node {node} ({class}) has: {})",
                list(inputs.into_iter().flat_map(|i| i.keys()))
            )));
        }
        if !inputs.is_some_and(|i| i.contains_key(input)) {
            return Err(usage(format!(
                "node {node} ({class}) has no input {input:?} (its inputs: {})",
                list(inputs.into_iter().flat_map(|i| i.keys()))
            )));
        }
        Ok(Assignment {
            node: node.to_string(),
            input: input.to_string(),
            value: value.to_string(),
        })
    }

    /// The input's current value in the graph.
    pub fn current<'g>(&self, graph: &'g Graph) -> Option<&'g Value> {
        graph.get(&self.node)?.get("inputs")?.get(&self.input)
    }

    /// Sets the input to `value`.
    pub fn apply(&self, graph: &mut Graph, value: Value) {
        if let Some(inputs) = graph
            .get_mut(&self.node)
            .and_then(|n| n.get_mut("inputs"))
            .and_then(Value::as_object_mut)
        {
            inputs.insert(self.input.clone(), value);
        }
    }

    /// Applies a `--set`: the value typed as JSON where it parses. A number or a
    /// boolean in the workflow is not silently replaced by text.
    pub fn apply_set(&self, graph: &mut Graph) -> Result<(), ClientError> {
        // Bare text that did not parse as JSON, where the workflow has a number: most
        // likely a typo (`3.seed=4two`). Quoted JSON text is taken as meant.
        let (value, bare_text) = match serde_json::from_str::<Value>(&self.value) {
            Ok(value) => (value, false),
            Err(_) => (Value::String(self.value.clone()), true),
        };
        let current = self.current(graph);
        let mismatch = match (current, bare_text) {
            (Some(Value::Number(_)), true) => Some("a number"),
            (Some(Value::Bool(_)), true) => Some("true or false"),
            _ => None,
        };
        if let Some(expected) = mismatch {
            return Err(ClientError::Usage(format!(
                "--set {}.{}={}: the workflow has {} there (now {}); to send text anyway, quote it \
                 as JSON: --set '{}.{}=\"{}\"'",
                self.node,
                self.input,
                self.value,
                expected,
                current.map(Value::to_string).unwrap_or_default(),
                self.node,
                self.input,
                self.value,
            )));
        }
        self.apply(graph, value);
        Ok(())
    }
}

/// A `core/ASSET` input reference.
pub fn asset_reference(asset_id: &str) -> Value {
    serde_json::json!({"__type": "core/ASSET", "info": {"id": asset_id}})
}

/// Parses `KEY=VALUE` (`--label`).
pub fn parse_label(raw: &str) -> Result<(String, String), ClientError> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(ClientError::Usage(format!(
            "--label {raw:?}: expected KEY=VALUE, e.g. --label project=fox"
        ))),
    }
}

fn list<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let items: Vec<&str> = items.map(String::as_str).collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn graph() -> Graph {
        json!({
            "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0]}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["4", 1]}},
            "12:5": {"class_type": "Thing", "inputs": {"a.b": 1}},
            "v1.2": {"class_type": "Dotted", "inputs": {"x": true}},
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn set_types_values_and_checks_the_graph() {
        let mut g = graph();
        for (raw, node, input, value) in [
            ("6.text=a red fox", "6", "text", json!("a red fox")),
            ("3.seed=42", "3", "seed", json!(42)),
            ("3.steps=1.5", "3", "steps", json!(1.5)),
            ("6.text=\"42\"", "6", "text", json!("42")),
            ("6.text=", "6", "text", json!("")),
            ("6.text=a=b", "6", "text", json!("a=b")),
            ("12:5.a.b=2", "12:5", "a.b", json!(2)),
            ("v1.2.x=false", "v1.2", "x", json!(false)),
            ("3.model=[\"6\", 0]", "3", "model", json!(["6", 0])),
        ] {
            let a = Assignment::parse("--set", raw, &g).unwrap();
            assert_eq!((a.node.as_str(), a.input.as_str()), (node, input), "{raw}");
            a.apply_set(&mut g).unwrap();
            assert_eq!(g[node]["inputs"][input], value, "{raw}");
        }
    }

    #[test]
    fn set_errors_name_what_exists() {
        let g = graph();
        let e = Assignment::parse("--set", "99.text=x", &g).unwrap_err();
        assert!(e.to_string().contains("no node \"99\""), "{e}");
        assert!(e.to_string().contains("3, 4, 6"), "{e}");
        let e = Assignment::parse("--set", "6.txet=x", &g).unwrap_err();
        assert!(
            e.to_string()
                .contains("node 6 (CLIPTextEncode) has no input \"txet\" (its inputs: text, clip)"),
            "{e}"
        );
        for bad in ["6text=x", "6.text", "6.=x"] {
            assert!(Assignment::parse("--set", bad, &g).is_err(), "{bad}");
        }
        let mut g = graph();
        let seed = Assignment::parse("--set", "3.seed=abc", &g).unwrap();
        let e = seed.apply_set(&mut g).unwrap_err();
        assert!(e.to_string().contains("a number"), "{e}");
        let quoted = Assignment::parse("--set", "3.seed=\"abc\"", &g).unwrap();
        quoted.apply_set(&mut g).unwrap();
        assert_eq!(g["3"]["inputs"]["seed"], json!("abc"));
    }

    #[test]
    fn labels() {
        assert_eq!(
            parse_label("project=fox=1").unwrap(),
            ("project".into(), "fox=1".into())
        );
        assert!(parse_label("=x").is_err());
        assert!(parse_label("x").is_err());
    }
}
