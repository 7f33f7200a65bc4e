//! What a Comfy API v2 server answers, read leniently.
//!
//! The server's own types live in `jobs::views`, but this client talks to *any* v2
//! server (`dev`, a deployed stack, Comfy Cloud), so it reads only what it uses and
//! gives every field a default: a server that omits `metrics`, or adds fields we do not
//! know, still works. Each struct keeps the raw JSON it came from (`raw`), which is what
//! `--json` prints, so nothing the server said is lost in translation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job's status. Unknown statuses (a newer server) read as [`JobStatus::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Canceling,
    Succeeded,
    Failed,
    Canceled,
    Expired,
    #[serde(other)]
    Other,
}

impl JobStatus {
    /// The server's status, unless this one is unknown to this client. The rules about
    /// statuses (which are terminal, their wire names) live in `jobs::model`.
    fn known(self) -> Option<jobs::model::JobStatus> {
        use jobs::model::JobStatus as Known;
        match self {
            JobStatus::Queued => Some(Known::Queued),
            JobStatus::Running => Some(Known::Running),
            JobStatus::Canceling => Some(Known::Canceling),
            JobStatus::Succeeded => Some(Known::Succeeded),
            JobStatus::Failed => Some(Known::Failed),
            JobStatus::Canceled => Some(Known::Canceled),
            JobStatus::Expired => Some(Known::Expired),
            JobStatus::Other => None,
        }
    }

    /// True when the job will not change again.
    pub fn is_terminal(self) -> bool {
        self.known()
            .is_some_and(jobs::model::JobStatus::is_terminal)
    }

    pub fn as_str(self) -> &'static str {
        self.known()
            .map_or("unknown", jobs::model::JobStatus::as_str)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// v2's `Job`.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub id: String,
    pub status: JobStatus,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub queue_position: Option<u64>,
    #[serde(default)]
    pub progress: Option<Progress>,
    #[serde(default)]
    pub outputs: Vec<Output>,
    #[serde(default)]
    pub error: Option<JobError>,
    #[serde(default)]
    pub metrics: Option<Metrics>,
    #[serde(default)]
    pub urls: Option<JobUrls>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The job exactly as the server sent it.
    #[serde(skip)]
    pub raw: Value,
}

/// v2's `Progress`; every field optional, so a partial snapshot still reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Progress {
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub nodes_done: Option<u32>,
    #[serde(default)]
    pub nodes_total: Option<u32>,
    #[serde(default)]
    pub current_node: Option<String>,
    #[serde(default)]
    pub current_node_class: Option<String>,
    #[serde(default)]
    pub step: Option<u32>,
    #[serde(default)]
    pub steps: Option<u32>,
    #[serde(default)]
    pub message: Option<String>,
}

/// v2's `Output`: a committed output, which is an asset.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Output {
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// The asset id.
    #[serde(default)]
    pub id: Option<String>,
    /// `blake3:<hex>` when the server knows it; downloads are checked against it.
    #[serde(default)]
    pub hash: Option<String>,
    /// A signed, short-lived URL (absolute, or root-relative).
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub class_type: Option<String>,
    #[serde(default)]
    pub traceback: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metrics {
    #[serde(default)]
    pub queue_ms: Option<i64>,
    #[serde(default)]
    pub execution_ms: Option<i64>,
    /// Our extension: milliseconds a GPU runner held the job.
    #[serde(default)]
    pub gpu_ms: Option<i64>,
    /// Our extension: the estimated cost in millionths of a US dollar.
    #[serde(default)]
    pub cost_micro_usd: Option<i64>,
}

/// Follow-up links: root-relative with the server's mount prefix, or absolute.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobUrls {
    #[serde(rename = "self", default)]
    pub self_: Option<String>,
    #[serde(default)]
    pub events: Option<String>,
    #[serde(default)]
    pub cancel: Option<String>,
}

/// One page of `GET /api/v2/jobs`.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
    pub raw: Value,
}

/// v2's `Asset`.
#[derive(Debug, Clone, Deserialize)]
pub struct Asset {
    pub id: String,
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub file_path: Option<String>,
    /// On create: a brand-new blob (true) or deduplicated (false).
    #[serde(default)]
    pub created_new: Option<bool>,
    #[serde(skip)]
    pub raw: Value,
}

/// Reads `T` from JSON, keeping the raw value in `raw` via `set_raw`.
pub(crate) fn from_value_keeping<T: serde::de::DeserializeOwned>(
    value: Value,
    set_raw: impl FnOnce(&mut T, Value),
) -> Result<T, serde_json::Error> {
    let mut parsed: T = serde_json::from_value(value.clone())?;
    set_raw(&mut parsed, value);
    Ok(parsed)
}

impl Job {
    pub fn from_json(value: Value) -> Result<Job, serde_json::Error> {
        from_value_keeping(value, |job: &mut Job, raw| job.raw = raw)
    }
}

impl Asset {
    pub fn from_json(value: Value) -> Result<Asset, serde_json::Error> {
        from_value_keeping(value, |asset: &mut Asset, raw| asset.raw = raw)
    }
}

impl JobPage {
    pub fn from_json(value: Value) -> Result<JobPage, serde_json::Error> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            jobs: Vec<Value>,
            #[serde(default)]
            next_cursor: Option<String>,
        }
        let page: Page = serde_json::from_value(value.clone())?;
        let jobs = page
            .jobs
            .into_iter()
            .map(Job::from_json)
            .collect::<Result<_, _>>()?;
        Ok(JobPage {
            jobs,
            next_cursor: page.next_cursor,
            raw: value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sparse_job_from_another_server_reads() {
        let job = Job::from_json(json!({"id": "j1", "status": "queued", "extra": 1})).unwrap();
        assert_eq!(job.status, JobStatus::Queued);
        assert!(job.outputs.is_empty());
        assert_eq!(job.raw["extra"], 1);
        let newer = Job::from_json(json!({"id": "j2", "status": "paused"})).unwrap();
        assert_eq!(newer.status, JobStatus::Other);
        assert!(!newer.status.is_terminal());
    }
}
