//! Request validation: everything is checked before anything is stored.
//!
//! - [`parse_json_strict`] turns bytes into JSON, refusing what `serde_json` would
//!   silently accept: duplicate object keys (which of two `"3"` nodes would run?).
//! - [`parse_submission`] checks a `POST /api/v2/jobs` body: the workflow graph, the
//!   `metadata` labels, `extra_data`, and the fields v2 reserves.
//! - [`validate_workflow`] checks an API-format graph the way ComfyUI reads it: an
//!   object of nodes, each `{class_type, inputs}`, where any array input is a link
//!   `[source node id, output index]`. It does not know node classes; ComfyUI does,
//!   and its own validation errors come back through the runner.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value, json};

use crate::error::ApiError;

pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_BYTES: usize = 64;
pub const MAX_METADATA_VALUE_BYTES: usize = 512;
pub const MAX_NODES: usize = 10_000;

/// A JSON value whose objects never had duplicate keys.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if object.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
        }
        Ok(Value::Object(object))
    }
}

/// Parses a JSON body, refusing invalid UTF-8, trailing data, nesting deeper than 128
/// and duplicate keys, each with a 400 `invalid_request` that says where.
pub fn parse_json_strict(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_request(
            "the request body is empty; send a JSON object",
        ));
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ApiError::invalid_request(format!(
            "the request body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize(&mut deserializer)
        .and_then(|v| deserializer.end().map(|()| v.0))
        .map_err(|e| {
            ApiError::invalid_request(format!("the request body is not valid JSON: {e}"))
        })?;
    Ok(value)
}

/// A validated `POST /api/v2/jobs` body.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub workflow: Map<String, Value>,
    pub metadata: BTreeMap<String, String>,
    pub extra_data: Option<Map<String, Value>>,
}

/// Fields v2 reserves for later and rejects today.
const RESERVED_FIELDS: [&str; 2] = ["webhook_url", "inputs"];
const KNOWN_FIELDS: [&str; 3] = ["workflow", "metadata", "extra_data"];

/// Validates a submission body (already parsed as JSON).
pub fn parse_submission(body: Value) -> Result<Submission, ApiError> {
    let Value::Object(mut body) = body else {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "the request body must be a JSON object with a `workflow` field",
        ));
    };
    for field in RESERVED_FIELDS {
        if body.contains_key(field) {
            return Err(ApiError::unprocessable(
                "reserved_field",
                format!("`{field}` is reserved by Comfy API v2 and not supported yet; remove it"),
            )
            .with_details(json!({ "field": field })));
        }
    }
    if let Some(unknown) = body.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::unprocessable(
            "unknown_field",
            format!(
                "unknown field `{unknown}`; a job body has `workflow`, and optionally `metadata` and `extra_data`"
            ),
        )
        .with_details(json!({ "field": unknown })));
    }
    let workflow = match body.remove("workflow") {
        Some(workflow) => validate_workflow(workflow)?,
        None => {
            return Err(ApiError::unprocessable(
                "invalid_workflow",
                "the request body has no `workflow`; send {\"workflow\": {<API-format graph>}}",
            ));
        }
    };
    let metadata = match body.remove("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(metadata) => validate_metadata(metadata)?,
    };
    let extra_data = match body.remove("extra_data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(extra)) if extra.is_empty() => {
            return Err(ApiError::unprocessable(
                "invalid_extra_data",
                "`extra_data` is empty; omit it instead",
            ));
        }
        Some(Value::Object(extra)) => Some(extra),
        Some(_) => {
            return Err(ApiError::unprocessable(
                "invalid_extra_data",
                "`extra_data` must be a JSON object",
            ));
        }
    };
    Ok(Submission {
        workflow,
        metadata,
        extra_data,
    })
}

/// Validates metadata labels: at most 16 string pairs with bounded keys and values.
pub fn validate_metadata(metadata: Value) -> Result<BTreeMap<String, String>, ApiError> {
    let fail = |message: String| ApiError::unprocessable("metadata_invalid", message);
    let Value::Object(pairs) = metadata else {
        return Err(fail(
            "`metadata` must be an object of string keys to string values".into(),
        ));
    };
    if pairs.len() > MAX_METADATA_PAIRS {
        return Err(fail(format!(
            "`metadata` has {} pairs; at most {MAX_METADATA_PAIRS} are allowed",
            pairs.len()
        )));
    }
    let mut labels = BTreeMap::new();
    for (key, value) in pairs {
        validate_label_key(&key).map_err(fail)?;
        let Value::String(value) = value else {
            return Err(fail(format!(
                "metadata value for `{key}` must be a string, not {}",
                json_type(&value)
            )));
        };
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(fail(format!(
                "metadata value for `{key}` is {} bytes; at most {MAX_METADATA_VALUE_BYTES} are allowed",
                value.len()
            )));
        }
        labels.insert(key, value);
    }
    Ok(labels)
}

/// Checks a label key, as used in metadata and in list filters.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("metadata keys must not be empty".into());
    }
    if key.len() > MAX_METADATA_KEY_BYTES {
        return Err(format!(
            "metadata key `{}…` is {} bytes; at most {MAX_METADATA_KEY_BYTES} are allowed",
            key.chars().take(16).collect::<String>(),
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("metadata keys must not contain control characters".into());
    }
    Ok(())
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Per-node problems, collected so the client sees all of them at once.
#[derive(Default)]
struct NodeErrors(BTreeMap<String, Vec<Value>>);

impl NodeErrors {
    fn add(&mut self, node: &str, field: Option<&str>, reason: &str, message: String) {
        self.0.entry(node.to_string()).or_default().push(json!({
            "field": field,
            "reason": reason,
            "message": message,
        }));
    }
}

/// The message for a workflow in the editor's UI format.
pub const UI_FORMAT_MESSAGE: &str = "This is a ComfyUI UI-format workflow (it has `nodes` and `links`), \
     but the API runs the API format. In ComfyUI, open the workflow and use \
     Workflow → Export (API) (enable the dev mode options in the settings if the \
     menu entry is missing), then submit the exported file.";

/// True for the editor's UI format (`nodes` + `links` arrays).
pub fn is_ui_format(workflow: &Map<String, Value>) -> bool {
    workflow.get("nodes").is_some_and(Value::is_array) && workflow.contains_key("links")
}

/// Validates an API-format workflow graph and returns it (unwrapped from a saved
/// `/prompt` body if it was one).
pub fn validate_workflow(workflow: Value) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(mut graph) = workflow else {
        return Err(ApiError::unprocessable(
            "invalid_workflow",
            format!(
                "`workflow` must be an object of nodes (node id → {{class_type, inputs}}), not {}",
                json_type(&workflow)
            ),
        ));
    };
    if is_ui_format(&graph) {
        return Err(ApiError::unprocessable(
            "workflow_format_ui",
            UI_FORMAT_MESSAGE,
        ));
    }
    // A saved `/prompt` request body: {"prompt": {...graph...}, "client_id": ...}.
    let is_saved_prompt_body = matches!(graph.get("prompt"), Some(Value::Object(_)))
        && !graph.values().any(|node| node.get("class_type").is_some());
    if is_saved_prompt_body {
        let Some(Value::Object(inner)) = graph.remove("prompt") else {
            unreachable!("checked above")
        };
        graph = inner;
        if is_ui_format(&graph) {
            return Err(ApiError::unprocessable(
                "workflow_format_ui",
                UI_FORMAT_MESSAGE,
            ));
        }
    }
    if graph.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_workflow",
            "the workflow has no nodes",
        ));
    }
    if graph.len() > MAX_NODES {
        return Err(ApiError::unprocessable(
            "invalid_workflow",
            format!(
                "the workflow has {} nodes; at most {MAX_NODES} are allowed",
                graph.len()
            ),
        ));
    }

    let mut errors = NodeErrors::default();
    // Edges for the cycle check: node → the nodes it reads from.
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, node) in &graph {
        let Value::Object(node) = node else {
            errors.add(
                id,
                None,
                "invalid_node",
                format!(
                    "node {id} must be an object with `class_type` and `inputs`, not {}",
                    json_type(node)
                ),
            );
            continue;
        };
        match node.get("class_type") {
            Some(Value::String(class)) if !class.trim().is_empty() => {}
            Some(Value::String(_)) => errors.add(
                id,
                Some("class_type"),
                "invalid_class_type",
                format!("node {id} has an empty `class_type`"),
            ),
            Some(other) => errors.add(
                id,
                Some("class_type"),
                "invalid_class_type",
                format!(
                    "node {id}: `class_type` must be a string, not {}",
                    json_type(other)
                ),
            ),
            None => errors.add(
                id,
                Some("class_type"),
                "missing_class_type",
                format!("node {id} has no `class_type`"),
            ),
        }
        let inputs = match node.get("inputs") {
            Some(Value::Object(inputs)) => inputs,
            Some(other) => {
                errors.add(
                    id,
                    Some("inputs"),
                    "invalid_inputs",
                    format!(
                        "node {id}: `inputs` must be an object, not {}",
                        json_type(other)
                    ),
                );
                continue;
            }
            None => {
                errors.add(
                    id,
                    Some("inputs"),
                    "missing_inputs",
                    format!("node {id} has no `inputs` object"),
                );
                continue;
            }
        };
        let sources = edges.entry(id.as_str()).or_default();
        for (name, value) in inputs {
            let Value::Array(link) = value else { continue };
            // ComfyUI reads every array input as a link.
            match link.as_slice() {
                [Value::String(source), Value::Number(index)] if index.as_u64().is_some() => {
                    if graph.contains_key(source) {
                        sources.push(source.as_str());
                    } else {
                        errors.add(
                            id,
                            Some(name),
                            "missing_link_source",
                            format!("node {id} input `{name}` links to node {source}, which is not in the workflow"),
                        );
                    }
                }
                _ => errors.add(
                    id,
                    Some(name),
                    "invalid_link",
                    format!(
                        "node {id} input `{name}` is an array, so it must be a link \
                         [\"<node id>\", <output index>] with a string id and a non-negative integer index"
                    ),
                ),
            }
        }
    }
    if errors.0.is_empty()
        && let Some(cycle) = find_cycle(&edges)
    {
        {
            for node in &cycle {
                errors.add(
                    node,
                    None,
                    "cycle",
                    format!("node {node} is part of a cycle: {}", cycle.join(" → ")),
                );
            }
        }
    }
    if errors.0.is_empty() {
        return Ok(graph);
    }
    let count = errors.0.len();
    let first = errors
        .0
        .values()
        .next()
        .and_then(|e| e.first())
        .and_then(|e| e["message"].as_str())
        .unwrap_or_default()
        .to_string();
    let message = if count == 1 {
        format!("invalid workflow: {first}")
    } else {
        format!(
            "invalid workflow: {first} (and problems in {} more node(s))",
            count - 1
        )
    };
    Err(ApiError::unprocessable("invalid_workflow", message)
        .with_details(json!({ "node_errors": errors.0 })))
}

/// Finds one cycle in the graph, iteratively (no recursion, so no stack overflow on a
/// long chain). Returns the node ids around the cycle.
fn find_cycle<'a>(edges: &HashMap<&'a str, Vec<&'a str>>) -> Option<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    let mut roots: Vec<&&str> = edges.keys().collect();
    roots.sort();
    for root in roots {
        if marks.contains_key(*root) {
            continue;
        }
        // Stack of (node, index of the next edge to follow).
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        marks.insert(root, Mark::Visiting);
        while let Some((node, next)) = stack.last_mut() {
            let targets = edges.get(*node).map(Vec::as_slice).unwrap_or_default();
            if let Some(target) = targets.get(*next) {
                *next += 1;
                match marks.get(target) {
                    Some(Mark::Visiting) => {
                        let start = stack.iter().position(|(n, _)| n == target).unwrap_or(0);
                        let mut cycle: Vec<&str> = stack[start..].iter().map(|(n, _)| *n).collect();
                        cycle.push(target);
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(target, Mark::Visiting);
                        stack.push((target, 0));
                    }
                }
            } else {
                marks.insert(node, Mark::Done);
                stack.pop();
            }
        }
    }
    None
}

/// The `core/ASSET` references in a workflow: `(node id, input name, asset id)`.
/// A reference without a string `info.id` is reported with an empty id.
pub fn asset_references(workflow: &Map<String, Value>) -> Vec<(String, String, String)> {
    let mut refs = Vec::new();
    for (node_id, node) in workflow {
        let Some(Value::Object(inputs)) = node.get("inputs") else {
            continue;
        };
        for (input, value) in inputs {
            if value.get("__type").and_then(Value::as_str) == Some("core/ASSET") {
                let id = value
                    .pointer("/info/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                refs.push((node_id.clone(), input.clone(), id.to_string()));
            }
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let e = parse_json_strict(br#"{"workflow": {"1": {"a": 1, "a": 2}}}"#).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        assert!(e.message.contains("duplicate key \"a\""), "{}", e.message);
    }

    #[test]
    fn cycle_is_found_on_a_long_chain_without_recursion() {
        let mut graph = Map::new();
        let n = 5000;
        for i in 0..n {
            let source = (i + 1) % n;
            graph.insert(
                i.to_string(),
                json!({"class_type": "X", "inputs": {"x": [source.to_string(), 0]}}),
            );
        }
        let e = validate_workflow(Value::Object(graph)).unwrap_err();
        assert_eq!(e.code, "invalid_workflow");
        assert!(e.message.contains("cycle"));
    }

    #[test]
    fn asset_references_are_found() {
        let wf = json!({"10": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "asset_1"}}}}});
        let Value::Object(wf) = wf else {
            unreachable!()
        };
        assert_eq!(
            asset_references(&wf),
            vec![("10".to_string(), "image".to_string(), "asset_1".to_string())]
        );
    }
}
