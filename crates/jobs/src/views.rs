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

/// The body of `POST /api/v2/jobs`.
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
