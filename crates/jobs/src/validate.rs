//! Request validation: everything is checked before anything is stored.
//!
//! - [`parse_json_strict`] turns bytes into JSON, refusing what `serde_json` would
//!   silently accept: duplicate object keys (which of two `"3"` nodes would run?).
//! - [`parse_submission`] checks a `POST /api/v2/jobs` body: the workflow graph, the
//!   `metadata` labels, `extra_data`, and the fields v2 reserves.
//! - [`validate_workflow`] checks an API-format graph the way ComfyUI reads it: an
//!   object of nodes, each `{class_type, inputs}`, where any array input is a link
//!   `[source node id, output index]`. It does not know node classes; ComfyUI does,
//!   and its own validation errors come back through the runner. It does know two
//!   things ComfyUI gets wrong for a shared server: node ids ([`check_node_id`]) and
//!   inputs that name files on the server ([`FILE_INPUTS`], [`check_file_input`]).
//! - Every error it returns is bounded: at most [`MAX_REPORTED_ERRORS`] entries in
//!   `details.node_errors` (the rest counted in `details.omitted_errors`), each message
//!   at most [`MAX_MESSAGE_BYTES`], and a cycle is named once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value, json};

use crate::error::DomainError;

pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_BYTES: usize = 64;
pub const MAX_METADATA_VALUE_BYTES: usize = 512;
/// The most nodes a workflow may have (ComfyUI graphs of a few thousand nodes are
/// already large). More is 422 `workflow_too_large`.
pub const MAX_NODES: usize = 10_000;
/// Node ids: at most this many bytes of `[A-Za-z0-9_.:-]`, and not `.` or `..`
/// (ComfyUI's own are `"3"`, and `"12:5"` for flattened subgraphs).
pub const MAX_NODE_ID_BYTES: usize = 64;
/// At most this many problems are listed in `details.node_errors`.
pub const MAX_REPORTED_ERRORS: usize = 50;
/// Each problem's message (and quoted names) is cut to this many bytes.
pub const MAX_MESSAGE_BYTES: usize = 512;
/// A cycle's message shows at most this many of its node ids.
const MAX_CYCLE_IDS_SHOWN: usize = 16;
/// The longest bare file name a file input may carry.
const MAX_FILE_NAME_BYTES: usize = 255;

/// The `(class_type, input)` pairs that ComfyUI resolves as a path under its input
/// directory (`folder_paths.get_annotated_filepath` and friends), joining the value to
/// the folder with no containment check: `../../etc/hostname`, `/etc/hostname` or
/// `x.png [output]` reach any file the server can read. The one home of this list; the
/// runner checks the same pairs again before `POST /prompt`.
pub const FILE_INPUTS: &[(&str, &str)] = &[
    ("LoadImage", "image"),
    ("LoadImageMask", "image"),
    ("LoadImageOutput", "image"),
    ("LoadLatent", "latent"),
    ("LoadAudio", "audio"),
    ("LoadVideo", "file"),
    ("Load3D", "model_file"),
    ("Load3DAnimation", "model_file"),
];

/// The runner stages every `core/ASSET` upload under a name starting with this (the
/// asset id, `asset_…`). A plain string may not name one: uploads only enter a job
/// through `core/ASSET`, so no job can name another job's staged file.
pub const STAGED_NAME_PREFIX: &str = "asset_";

/// ComfyUI's folder annotations: a value ending in one is read from that folder.
const ANNOTATIONS: [&str; 3] = ["[input]", "[output]", "[temp]"];

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
pub fn parse_json_strict(bytes: &[u8]) -> Result<Value, DomainError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DomainError::invalid_request(
            "the request body is empty; send a JSON object",
        ));
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(DomainError::invalid_request(format!(
            "the request body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize(&mut deserializer)
        .and_then(|v| deserializer.end().map(|()| v.0))
        .map_err(|e| {
            DomainError::invalid_request(format!("the request body is not valid JSON: {e}"))
        })?;
    Ok(value)
}

/// A validated `POST /api/v2/jobs` body.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub workflow: Map<String, Value>,
    pub metadata: BTreeMap<String, String>,
    pub extra_data: Option<Map<String, Value>>,
    /// `"x-serverless-comfyui": {"cache": "bypass"}`: run every node of this job afresh,
    /// never from ComfyUI's cache (which is shared by every job on that ComfyUI).
    pub cache_bypass: bool,
}

/// Fields v2 reserves for later and rejects today.
const RESERVED_FIELDS: [&str; 2] = ["webhook_url", "inputs"];
/// Our additive extension of the job body: `{"cache": "bypass"}`.
pub const EXTENSION_FIELD: &str = "x-serverless-comfyui";
const KNOWN_FIELDS: [&str; 4] = ["workflow", "metadata", "extra_data", EXTENSION_FIELD];

/// Validates a submission body (already parsed as JSON).
pub fn parse_submission(body: Value) -> Result<Submission, DomainError> {
    let Value::Object(mut body) = body else {
        return Err(DomainError::unprocessable(
            "invalid_request",
            "the request body must be a JSON object with a `workflow` field",
        ));
    };
    for field in RESERVED_FIELDS {
        if body.contains_key(field) {
            return Err(DomainError::unprocessable(
                "reserved_field",
                format!("`{field}` is reserved by Comfy API v2 and not supported yet; remove it"),
            )
            .with_details(json!({ "field": field })));
        }
    }
    if let Some(unknown) = body.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(DomainError::unprocessable(
            "unknown_field",
            format!(
                "unknown field `{}`; a job body has `workflow`, and optionally `metadata`, `extra_data` and `{EXTENSION_FIELD}`",
                clip(unknown, MAX_METADATA_KEY_BYTES)
            ),
        )
        .with_details(json!({ "field": clip(unknown, MAX_METADATA_KEY_BYTES) })));
    }
    let workflow = match body.remove("workflow") {
        Some(workflow) => validate_workflow(workflow)?,
        None => {
            return Err(DomainError::unprocessable(
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
            return Err(DomainError::unprocessable(
                "invalid_extra_data",
                "`extra_data` is empty; omit it instead",
            ));
        }
        Some(Value::Object(extra)) => Some(extra),
        Some(_) => {
            return Err(DomainError::unprocessable(
                "invalid_extra_data",
                "`extra_data` must be a JSON object",
            ));
        }
    };
    let cache_bypass = match body.remove(EXTENSION_FIELD) {
        None | Some(Value::Null) => false,
        Some(extension) => parse_extension(extension)?,
    };
    Ok(Submission {
        workflow,
        metadata,
        extra_data,
        cache_bypass,
    })
}

/// `"x-serverless-comfyui": {"cache": "bypass" | "shared"}`; returns whether to bypass.
fn parse_extension(extension: Value) -> Result<bool, DomainError> {
    let fail = |message: &str| {
        DomainError::unprocessable("invalid_extension", message.to_string())
            .with_details(json!({ "field": EXTENSION_FIELD }))
    };
    let Value::Object(extension) = extension else {
        return Err(fail(
            "`x-serverless-comfyui` must be an object, e.g. {\"cache\": \"bypass\"}",
        ));
    };
    let mut bypass = false;
    for (key, value) in extension {
        match (key.as_str(), value.as_str()) {
            ("cache", Some("bypass")) => bypass = true,
            ("cache", Some("shared")) => bypass = false,
            ("cache", _) => {
                return Err(fail(
                    "`x-serverless-comfyui.cache` must be \"bypass\" or \"shared\"",
                ));
            }
            _ => {
                return Err(fail(
                    "`x-serverless-comfyui` has one field, `cache` (\"bypass\" or \"shared\")",
                ));
            }
        }
    }
    Ok(bypass)
}

/// Validates metadata labels: at most 16 string pairs with bounded keys and values.
pub fn validate_metadata(metadata: Value) -> Result<BTreeMap<String, String>, DomainError> {
    let fail = |message: String| DomainError::unprocessable("metadata_invalid", message);
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

/// Per-node problems, collected so the client sees them at once, but bounded: the
/// first [`MAX_REPORTED_ERRORS`] are listed, the rest only counted.
#[derive(Default)]
struct NodeErrors {
    listed: BTreeMap<String, Vec<Value>>,
    first: Option<String>,
    reported: usize,
    omitted: usize,
}

impl NodeErrors {
    fn add(&mut self, node: &str, field: Option<&str>, reason: &str, message: String) {
        let message = clip(&message, MAX_MESSAGE_BYTES);
        if self.first.is_none() {
            self.first = Some(message.clone());
        }
        if self.reported >= MAX_REPORTED_ERRORS {
            self.omitted += 1;
            return;
        }
        self.reported += 1;
        self.listed
            .entry(clip(node, MAX_NODE_ID_BYTES))
            .or_default()
            .push(json!({
                "field": field.map(|f| clip(f, MAX_NODE_ID_BYTES)),
                "reason": reason,
                "message": message,
            }));
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

/// `s` cut to at most `max` bytes (on a char boundary), with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Checks a node id: 1–64 bytes of ASCII letters, digits, `_`, `-`, `:` and `.`, and
/// not `.` or `..`. Node ids become parts of storage keys (`outputs/{job}/{attempt}/{node}/…`).
pub fn check_node_id(id: &str) -> Result<(), String> {
    let shown = clip(id, 32);
    if id.is_empty() {
        return Err("a node id is empty".into());
    }
    if id.len() > MAX_NODE_ID_BYTES {
        return Err(format!(
            "node id {shown:?} is {} bytes; at most {MAX_NODE_ID_BYTES} are allowed",
            id.len()
        ));
    }
    if id == "." || id == ".." {
        return Err(format!("node id {id:?} is not allowed"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
    {
        return Err(format!(
            "node id {shown:?} may only contain ASCII letters, digits, `_`, `-`, `:` and `.`"
        ));
    }
    Ok(())
}

/// Why a plain-string file name is refused, or `None` for a bare file name.
///
/// ComfyUI joins these names to its input folder without a containment check, so only a
/// bare name is safe: never absolute, no `..`, no `/` or `\`, no NUL, no
/// `[input]`/`[output]`/`[temp]` annotation, and not a name the runner staged for a job
/// ([`STAGED_NAME_PREFIX`]). That leaves the files the runner's image ships in its input
/// folder. (Issue 15 will also check the name against the image's catalogue; until then
/// this bare-name rule is the guard.) Uploaded files enter only through `core/ASSET`.
pub fn unsafe_file_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('\0') {
        Some("contains a NUL character")
    } else if has_annotation(name) {
        Some("carries an [input]/[output]/[temp] annotation")
    } else if name.starts_with('/')
        || name.starts_with('\\')
        || name.as_bytes().get(1) == Some(&b':')
    {
        Some("is an absolute path")
    } else if name.contains("..") {
        Some("contains `..`")
    } else if name.contains('/') || name.contains('\\') {
        Some("contains a path separator")
    } else if name.len() > MAX_FILE_NAME_BYTES {
        Some("is longer than 255 bytes")
    } else if name.starts_with(STAGED_NAME_PREFIX) {
        Some("names a file staged for a job; send uploads as core/ASSET references")
    } else {
        None
    }
}

fn has_annotation(value: &str) -> bool {
    // ComfyUI tests `name.endswith("[output]")`, with or without the space.
    ANNOTATIONS.iter().any(|a| value.ends_with(a))
}

/// Checks one literal input: a file input ([`FILE_INPUTS`]) must be a bare file name
/// ([`unsafe_file_name`]), and no input may carry a folder annotation (custom nodes
/// resolve those too). `Err`: the message, naming node and input.
pub fn check_file_input(
    node_id: &str,
    class: Option<&str>,
    input: &str,
    value: &Value,
) -> Result<(), String> {
    let is_file_input = class.is_some_and(|c| FILE_INPUTS.contains(&(c, input)));
    let is_asset = value.get("__type").and_then(Value::as_str) == Some("core/ASSET");
    if is_file_input && (value.is_array() || (value.is_object() && !is_asset)) {
        // A link (or a wrapped value) is only known at run time, where nothing checks it:
        // a custom node with a `*` output could hand LoadImage any path.
        return Err(format!(
            "node {} input `{}` is a file input: give it a bare file name or a core/ASSET \
             reference, not a link or another object (its value could not be checked)",
            clip(node_id, MAX_NODE_ID_BYTES),
            clip(input, MAX_NODE_ID_BYTES),
        ));
    }
    let Value::String(name) = value else {
        return Ok(());
    };
    let why = if is_file_input {
        unsafe_file_name(name)
    } else if has_annotation(name) {
        Some("carries an [input]/[output]/[temp] annotation")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(format!(
            "node {} input `{}`: the file name {:?} {why}; a file input takes a bare file name, \
             and uploads go in as core/ASSET references",
            clip(node_id, MAX_NODE_ID_BYTES),
            clip(input, MAX_NODE_ID_BYTES),
            clip(name, 64),
        )),
    }
}

/// The first node id or literal file input of a workflow that must not reach ComfyUI:
/// `(node id, input, message)`. The runner's check before `POST /prompt`, for a job that
/// did not come through [`validate_workflow`].
pub fn first_unsafe_input(
    workflow: &Map<String, Value>,
) -> Option<(String, Option<String>, String)> {
    for (id, node) in workflow {
        if let Err(message) = check_node_id(id) {
            return Some((clip(id, MAX_NODE_ID_BYTES), None, message));
        }
        let class = node.get("class_type").and_then(Value::as_str);
        let Some(Value::Object(inputs)) = node.get("inputs") else {
            continue;
        };
        for (input, value) in inputs {
            if let Err(message) = check_file_input(id, class, input, value) {
                return Some((id.clone(), Some(clip(input, MAX_NODE_ID_BYTES)), message));
            }
        }
    }
    None
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
pub fn validate_workflow(workflow: Value) -> Result<Map<String, Value>, DomainError> {
    let Value::Object(mut graph) = workflow else {
        return Err(DomainError::unprocessable(
            "invalid_workflow",
            format!(
                "`workflow` must be an object of nodes (node id → {{class_type, inputs}}), not {}",
                json_type(&workflow)
            ),
        ));
    };
    if is_ui_format(&graph) {
        return Err(DomainError::unprocessable(
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
            return Err(DomainError::unprocessable(
                "workflow_format_ui",
                UI_FORMAT_MESSAGE,
            ));
        }
    }
    if graph.is_empty() {
        return Err(DomainError::unprocessable(
            "invalid_workflow",
            "the workflow has no nodes",
        ));
    }
    if graph.len() > MAX_NODES {
        return Err(DomainError::unprocessable(
            "workflow_too_large",
            format!(
                "the workflow has {} nodes; at most {MAX_NODES} are allowed",
                graph.len()
            ),
        )
        .with_details(json!({ "nodes": graph.len(), "max_nodes": MAX_NODES })));
    }

    let mut errors = NodeErrors::default();
    // Edges for the cycle check: node → the nodes it reads from.
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, node) in &graph {
        if let Err(message) = check_node_id(id) {
            errors.add(id, None, "invalid_node_id", message);
        }
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
        let class = node.get("class_type").and_then(Value::as_str);
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
            if let Err(message) = check_file_input(id, class, name, value) {
                errors.add(id, Some(name), "unsafe_file_input", message);
            }
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
    if errors.is_empty()
        && let Some(cycle) = find_cycle(&edges)
    {
        // Named once, on its first node: listing the whole cycle on each of its nodes
        // made a 10,000-node ring a 1.3 GB answer.
        let len = cycle.len() - 1;
        let mut shown = cycle
            .iter()
            .take(MAX_CYCLE_IDS_SHOWN)
            .map(|n| clip(n, MAX_NODE_ID_BYTES))
            .collect::<Vec<_>>()
            .join(" → ");
        if cycle.len() > MAX_CYCLE_IDS_SHOWN {
            shown.push_str(" → …");
        }
        errors.add(
            cycle[0],
            None,
            "cycle",
            format!(
                "node {} is part of a cycle of {len} node(s): {shown}",
                cycle[0]
            ),
        );
    }
    let Some(first) = errors.first.take() else {
        return Ok(graph);
    };
    let total = errors.reported + errors.omitted;
    let message = if total == 1 {
        format!("invalid workflow: {first}")
    } else {
        format!(
            "invalid workflow: {first} (and {} more problem(s))",
            total - 1
        )
    };
    let mut details = json!({ "node_errors": errors.listed });
    if errors.omitted > 0 {
        details["omitted_errors"] = json!(errors.omitted);
    }
    Err(DomainError::unprocessable("invalid_workflow", message).with_details(details))
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
    use crate::error::ErrorKind;

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

    fn ring(n: usize) -> Value {
        let mut graph = Map::new();
        for i in 0..n {
            graph.insert(
                i.to_string(),
                json!({"class_type": "X", "inputs": {"x": [((i + 1) % n).to_string(), 0]}}),
            );
        }
        Value::Object(graph)
    }

    /// The size of the error as a client receives it.
    fn body_len(e: &DomainError) -> usize {
        serde_json::to_vec(
            &json!({"error": {"code": e.code, "message": e.message, "details": e.details}}),
        )
        .unwrap()
        .len()
    }

    #[test]
    fn a_ring_of_10000_nodes_is_named_once_in_a_small_answer() {
        let started = std::time::Instant::now();
        let e = validate_workflow(ring(MAX_NODES)).unwrap_err();
        assert_eq!(e.code, "invalid_workflow");
        assert_eq!(e.kind, ErrorKind::Unprocessable);
        let details = e.details.as_deref().unwrap();
        let node_errors = details["node_errors"].as_object().unwrap();
        assert_eq!(node_errors.len(), 1, "one entry names the cycle: {details}");
        let message = node_errors.values().next().unwrap()[0]["message"]
            .as_str()
            .unwrap();
        assert!(message.contains("cycle of 10000 node(s)"), "{message}");
        assert!(body_len(&e) < 4 * 1024, "{} bytes", body_len(&e));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn more_than_max_nodes_is_workflow_too_large() {
        let mut graph = Map::new();
        for i in 0..=MAX_NODES {
            graph.insert(i.to_string(), json!({"class_type": "X", "inputs": {}}));
        }
        let e = validate_workflow(Value::Object(graph)).unwrap_err();
        assert_eq!(e.code, "workflow_too_large");
        assert_eq!(e.details.as_deref().unwrap()["max_nodes"], MAX_NODES);
    }

    #[test]
    fn many_errors_are_listed_up_to_the_cap_and_counted() {
        let mut graph = Map::new();
        let long = "y".repeat(100_000);
        for i in 0..MAX_NODES {
            // Two problems per node, one quoting a 100 KB link source.
            graph.insert(i.to_string(), json!({"inputs": {"x": [long.clone(), 0]}}));
        }
        let e = validate_workflow(Value::Object(graph)).unwrap_err();
        let details = e.details.as_deref().unwrap();
        let listed: usize = details["node_errors"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_array().unwrap().len())
            .sum();
        assert_eq!(listed, MAX_REPORTED_ERRORS);
        assert_eq!(
            details["omitted_errors"],
            2 * MAX_NODES - MAX_REPORTED_ERRORS,
            "{}",
            e.message
        );
        assert!(e.message.contains("19999 more problem(s)"), "{}", e.message);
        assert!(body_len(&e) < 64 * 1024, "{} bytes", body_len(&e));
    }

    fn load_image(value: Value) -> Value {
        json!({
            "10": {"class_type": "LoadImage", "inputs": {"image": value}},
            "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
        })
    }

    #[test]
    fn file_inputs_take_only_bare_names() {
        for bad in [
            "../../etc/hostname",
            "/etc/hostname",
            "x.png [output]",
            "x.png[temp]",
            "a\\b",
            "sub/x.png",
            "..",
            "a\0b",
            "C:\\Windows\\win.ini",
            "asset_01JD0000000000000000000000_photo.png",
            "",
        ] {
            let e = validate_workflow(load_image(json!(bad))).unwrap_err();
            assert_eq!(e.code, "invalid_workflow", "{bad:?}");
            let entry = &e.details.as_deref().unwrap()["node_errors"]["10"][0];
            assert_eq!(entry["field"], "image", "{bad:?}: {entry}");
            assert_eq!(entry["reason"], "unsafe_file_input", "{bad:?}: {entry}");
            assert!(e.message.contains("node 10 input `image`"), "{}", e.message);
        }
        for good in ["example.png", "photo 1 (2).png", "a.b.png"] {
            validate_workflow(load_image(json!(good))).unwrap_or_else(|e| panic!("{good}: {e:?}"));
        }
        // Uploads (core/ASSET) and other classes' plain strings are untouched...
        validate_workflow(load_image(
            json!({"__type": "core/ASSET", "info": {"id": "asset_1"}}),
        ))
        .unwrap();
        let text = json!({"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a/b/../c"}}});
        validate_workflow(text).unwrap();
        // ...but an annotation is refused on any input: custom nodes resolve them too.
        let custom = json!({"1": {"class_type": "MyLoader", "inputs": {"path": "x.png [output]"}}});
        let e = validate_workflow(custom).unwrap_err();
        assert_eq!(
            e.details.as_deref().unwrap()["node_errors"]["1"][0]["field"],
            "path"
        );
        // A file input's value must be known at submit: no link, no other object.
        let linked = json!({
            "1": {"class_type": "MyPathNode", "inputs": {}},
            "10": {"class_type": "LoadImage", "inputs": {"image": ["1", 0]}},
        });
        let e = validate_workflow(linked).unwrap_err();
        assert_eq!(
            e.details.as_deref().unwrap()["node_errors"]["10"][0]["reason"],
            "unsafe_file_input"
        );
        assert!(validate_workflow(load_image(json!({"__value__": "/etc/hostname"}))).is_err());
        // LoadImageMask is a file input too.
        let mask = json!({"1": {"class_type": "LoadImageMask", "inputs": {"image": "/etc/passwd", "channel": "alpha"}}});
        assert!(validate_workflow(mask).is_err());
    }

    #[test]
    fn the_runner_check_finds_the_same_inputs() {
        let Value::Object(bad) = load_image(json!("../main.py")) else {
            unreachable!()
        };
        let (node, input, message) = first_unsafe_input(&bad).unwrap();
        assert_eq!((node.as_str(), input.as_deref()), ("10", Some("image")));
        assert!(message.contains("`..`"), "{message}");
        let Value::Object(good) = load_image(json!("example.png")) else {
            unreachable!()
        };
        assert_eq!(first_unsafe_input(&good), None);
        let Value::Object(dots) = json!({"..": {"class_type": "SaveImage", "inputs": {}}}) else {
            unreachable!()
        };
        assert_eq!(first_unsafe_input(&dots).unwrap().0, "..");
    }

    #[test]
    fn node_ids_are_checked() {
        for bad in ["..", ".", "a/b", "a b", "", &"9".repeat(65), "é"] {
            let wf = json!({ bad: {"class_type": "SaveImage", "inputs": {}} });
            let e = validate_workflow(wf).unwrap_err();
            let errors = e.details.as_deref().unwrap()["node_errors"]
                .as_object()
                .unwrap();
            let entry = &errors.values().next().unwrap()[0];
            assert_eq!(entry["reason"], "invalid_node_id", "{bad:?}: {entry}");
            assert!(errors.keys().all(|k| k.len() <= MAX_NODE_ID_BYTES + 3));
        }
        for good in ["3", "12:5", "load_image-1.a", &"9".repeat(64)] {
            let wf = json!({ good: {"class_type": "SaveImage", "inputs": {}} });
            validate_workflow(wf).unwrap_or_else(|e| panic!("{good}: {e:?}"));
        }
    }

    #[test]
    fn the_cache_extension_is_parsed() {
        let wf = json!({"1": {"class_type": "A", "inputs": {}}});
        let s = parse_submission(json!({"workflow": wf})).unwrap();
        assert!(!s.cache_bypass);
        let s =
            parse_submission(json!({"workflow": wf, "x-serverless-comfyui": {"cache": "bypass"}}))
                .unwrap();
        assert!(s.cache_bypass);
        for bad in [
            json!("bypass"),
            json!({"cache": "off"}),
            json!({"other": 1}),
        ] {
            let e =
                parse_submission(json!({"workflow": wf, "x-serverless-comfyui": bad})).unwrap_err();
            assert_eq!(e.code, "invalid_extension");
        }
    }

    #[test]
    fn clip_cuts_on_a_char_boundary() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("ééé", 5), "é…");
        assert!(clip(&"x".repeat(1000), 10).len() <= 10);
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
