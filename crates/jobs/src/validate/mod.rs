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

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

use crate::error::DomainError;

mod graph;
mod strict_json;

pub use graph::*;
pub use strict_json::*;

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

#[cfg(test)]
mod tests;
