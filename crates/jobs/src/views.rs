//! What the API returns, as typed structs. The OpenAPI document is generated from these
//! same types, so the document cannot drift from the responses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{JobError, JobStatus, OutputKind, Progress};

/// v2's `Job`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    #[schema(example = "job_01JZTGXW9Q2M4R8V0B1N3P5D7F")]
    pub id: String,
    pub status: JobStatus,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Retention deadline.
    pub expires_at: String,
    /// Queued jobs ahead of this one (counted up to 100); null unless queued.
    pub queue_position: Option<u64>,
    pub progress: Option<Progress>,
    /// The finishing attempt's outputs, filled in as they are committed.
    pub outputs: Vec<OutputView>,
    pub error: Option<JobError>,
    pub metrics: Metrics,
    pub urls: JobUrls,
    /// The labels given at submit.
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Metrics {
    pub queue_ms: Option<i64>,
    pub execution_ms: Option<i64>,
    /// Our extension: milliseconds a GPU runner held the job, from its first start to
    /// its end (null until then). Whole numbers, as every metric: comfy-sdk reads
    /// `metrics` as a map of integers and refuses a job with a fraction in it.
    #[schema(example = 12500)]
    pub gpu_ms: Option<i64>,
    /// Our extension: the estimated cost in millionths of a US dollar, `gpu_ms` at the
    /// price per GPU-hour in force when the job was accepted; null when no price is
    /// configured.
    #[schema(example = 3507)]
    pub cost_micro_usd: Option<i64>,
}

/// Follow-up links, root-relative and carrying the API's mount prefix.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobUrls {
    #[serde(rename = "self")]
    pub self_: String,
    pub events: String,
    pub cancel: String,
}

/// v2's `Output`: a committed output, which is an asset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutputView {
    pub node_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: OutputKind,
    pub content_type: String,
    pub size_bytes: u64,
    /// The asset id.
    pub id: String,
    pub hash: Option<String>,
    pub url: String,
    pub url_expires_at: String,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobListView {
    pub jobs: Vec<JobView>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /api/v2/jobs/{id}/workflow`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowView {
    #[schema(value_type = Object)]
    pub workflow: serde_json::Map<String, serde_json::Value>,
    /// Always `api`: the executed API-format graph.
    pub format: String,
}

/// The body of `POST /api/v2/jobs`. Its schema in the document is
/// [`submit_request_schemas`]: the validator's rules are more than this type says.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmitRequest {
    /// API-format workflow graph (node id → {class_type, inputs}), verbatim. A saved
    /// `/prompt` body (`{"prompt": {...}}`) is unwrapped.
    #[schema(value_type = Object)]
    pub workflow: serde_json::Value,
    /// Up to 16 string labels, filterable in the list.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Passed to ComfyUI (e.g. `api_key_comfy_org`); stored apart, never returned or logged.
    #[schema(value_type = Option<Object>)]
    pub extra_data: Option<serde_json::Value>,
    /// Our extension: `{"cache": "bypass"}` runs every node of this job afresh instead of
    /// from ComfyUI's cache, which every job on a ComfyUI shares (default `"shared"`).
    #[serde(rename = "x-serverless-comfyui")]
    #[schema(value_type = Option<Object>)]
    pub x_serverless_comfyui: Option<serde_json::Value>,
}

/// The v2 error envelope.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "invalid_workflow")]
    pub code: String,
    pub message: String,
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// A string with at least one character that is not whitespace, as `str::trim` sees it
/// (Unicode `White_Space`), spelled out so every regex engine agrees.
pub const NOT_BLANK_PATTERN: &str =
    r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// A string without control characters (`char::is_control`: Unicode `Cc`).
pub const NO_CONTROL_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// The request schemas of `POST /api/v2/jobs`, written to the letter of
/// [`crate::validate::parse_submission`] (JSON Schema that utoipa's derive cannot
/// spell: `anyOf`, `not`, `propertyNames`, `prefixItems`). Lengths are in characters
/// here and in bytes of UTF-8 on the server: the descriptions say so.
pub fn submit_request_schemas() -> Vec<(&'static str, serde_json::Value)> {
    use crate::validate::{
        MAX_METADATA_KEY_BYTES, MAX_METADATA_PAIRS, MAX_METADATA_VALUE_BYTES, MAX_NODES,
    };
    use serde_json::json;
    let graph = json!({"$ref": "#/components/schemas/WorkflowGraph"});
    vec![
        (
            "SubmitRequest",
            json!({
                "type": "object",
                "required": ["workflow"],
                "additionalProperties": false,
                "description": "`webhook_url` and `inputs` are reserved by v2 (422 `reserved_field`); \
                                any other unknown field is 422 `unknown_field`.",
                "properties": {
                    "workflow": {
                        "description": "API-format workflow graph (node id → {class_type, inputs}), \
                                        verbatim. A saved `/prompt` body (`{\"prompt\": {...}}`) is unwrapped.",
                        "anyOf": [graph, {"$ref": "#/components/schemas/SavedPromptBody"}],
                    },
                    "metadata": {
                        "type": ["object", "null"],
                        "description": format!(
                            "Up to {MAX_METADATA_PAIRS} string labels, filterable in the list. Keys are 1 to \
                             {MAX_METADATA_KEY_BYTES} bytes of UTF-8 without control characters, values \
                             at most {MAX_METADATA_VALUE_BYTES} bytes."
                        ),
                        "maxProperties": MAX_METADATA_PAIRS,
                        "propertyNames": {
                            "minLength": 1,
                            "maxLength": MAX_METADATA_KEY_BYTES,
                            "pattern": NO_CONTROL_PATTERN,
                        },
                        "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE_BYTES},
                    },
                    "extra_data": {
                        "type": ["object", "null"],
                        "minProperties": 1,
                        "description": "Passed to ComfyUI (e.g. `api_key_comfy_org`); stored apart, \
                                        never returned or logged. Omit it rather than send `{}`.",
                    },
                },
            }),
        ),
        (
            "WorkflowGraph",
            json!({
                "type": "object",
                "minProperties": 1,
                "maxProperties": MAX_NODES,
                "description": "Node id → node. Every link names a node of this graph, and the \
                                graph has no cycle (422 `invalid_workflow` with per-node details).",
                // Node ids become parts of storage keys (`validate::check_node_id`).
                "propertyNames": {
                    "pattern": "^[A-Za-z0-9_.:-]{1,64}$",
                    "not": {"enum": [".", ".."]},
                },
                "additionalProperties": {"$ref": "#/components/schemas/WorkflowNode"},
            }),
        ),
        (
            "SavedPromptBody",
            json!({
                "type": "object",
                "description": "A saved ComfyUI `/prompt` request body: its `prompt` is the graph; \
                                its other fields (such as `client_id`) are ignored.",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"allOf": [graph, {"not": {"required": ["class_type"]}}]},
                },
                // Not a graph itself: no value is a node.
                "additionalProperties": {"not": {"type": "object", "required": ["class_type"]}},
                // Not the editor's UI format either.
                "not": {"required": ["nodes", "links"], "properties": {"nodes": {"type": "array"}}},
            }),
        ),
        (
            "WorkflowNode",
            json!({
                "type": "object",
                "required": ["class_type", "inputs"],
                "properties": {
                    "class_type": {"type": "string", "pattern": NOT_BLANK_PATTERN},
                    "inputs": {
                        "type": "object",
                        "additionalProperties": {"$ref": "#/components/schemas/NodeInput"},
                    },
                },
            }),
        ),
        (
            "NodeInput",
            json!({
                "description": "A literal value, an asset reference, or a link. ComfyUI reads \
                                every array input as a link.",
                "anyOf": [
                    {"type": ["string", "number", "boolean", "null"]},
                    {
                        "type": "object",
                        "not": {"required": ["__type"], "properties": {"__type": {"const": "core/ASSET"}}},
                    },
                    {"$ref": "#/components/schemas/AssetReference"},
                    {"$ref": "#/components/schemas/Link"},
                ],
            }),
        ),
        (
            "Link",
            json!({
                "type": "array",
                "description": "`[source node id, output index]`: the source is a node of the same graph.",
                "prefixItems": [
                    {"type": "string"},
                    {"type": "integer", "minimum": 0, "maximum": u64::MAX},
                ],
                "minItems": 2,
                "maxItems": 2,
            }),
        ),
        (
            "AssetReference",
            json!({
                "type": "object",
                "description": "An input naming an asset: `info.id` must be an asset of the caller \
                                (422 `missing_asset` otherwise).",
                "required": ["__type", "info"],
                "properties": {
                    "__type": {"const": "core/ASSET"},
                    "info": {
                        "type": "object",
                        "required": ["id"],
                        "properties": {"id": {"type": "string", "minLength": 1}},
                    },
                },
            }),
        ),
    ]
}
