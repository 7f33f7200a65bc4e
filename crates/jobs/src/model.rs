//! The job record and the values that hang off it.
//!
//! A [`Job`] is what the JobStore keeps: one item per job, written only through the
//! moves in [`crate::lifecycle`], each a single conditional write guarded by `rev`.
//! Things that change often or that must never be logged live apart from it:
//! the progress snapshot ([`ProgressRecord`], its own item) and the workflow and
//! `extra_data` (one blob in the BlobStore, see [`JobInput`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How the API writes instants: RFC 3339, milliseconds, `Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Schema version written into every stored item and queue message.
pub const SCHEMA_VERSION: u32 = 1;

/// A job id: `job_` followed by a ULID, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

static ULID_GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

/// A ULID that is strictly greater than every ULID this process generated before,
/// even within one millisecond, so "newest first" is exact for one API process.
pub(crate) fn monotonic_ulid() -> ulid::Ulid {
    let mut generator = ULID_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let generator = generator.get_or_insert_with(ulid::Generator::new);
    // `generate` only fails when the random part overflows within one millisecond.
    generator.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

impl JobId {
    pub const PREFIX: &'static str = "job_";

    pub fn generate() -> Self {
        JobId(format!("{}{}", Self::PREFIX, monotonic_ulid()))
    }

    /// Parses an id from a URL path. Anything that is not `job_<ULID>` cannot name a job.
    pub fn parse(raw: &str) -> Option<Self> {
        let ulid = raw.strip_prefix(Self::PREFIX)?;
        ulid::Ulid::from_string(ulid).ok()?;
        Some(JobId(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The v2 job states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Canceling,
    Succeeded,
    Failed,
    Canceled,
    Expired,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Canceling,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Canceled,
        JobStatus::Expired,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled | JobStatus::Expired
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Canceling => "canceling",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
            JobStatus::Expired => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed, as v2's `JobError`. Not an HTTP error: it travels in `job.error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub class_type: Option<String>,
    #[serde(default)]
    pub traceback: Option<String>,
}

impl JobError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobError {
            code: code.into(),
            message: message.into(),
            node_id: None,
            class_type: None,
            traceback: None,
        }
    }
}

/// The normalised kind of an output, as v2's `OutputType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    Image,
    Video,
    Audio,
    Text,
    File,
    Latent,
}

/// One committed output of the finishing attempt. The URL is minted at read time
/// from `blob_key`, so a stored record never holds a signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub node_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: OutputKind,
    pub content_type: String,
    pub size_bytes: u64,
    /// The asset id (`asset_<ULID>`): v2 says every output is an asset.
    pub asset_id: String,
    pub hash: Option<String>,
    pub blob_key: String,
}

/// A progress snapshot, v2's `Progress`. Complete on its own: one snapshot re-syncs a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, ToSchema)]
pub struct Progress {
    pub value: f64,
    pub nodes_done: u32,
    pub nodes_total: u32,
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

/// The progress item, stored apart from the job. It names the attempt that wrote it:
/// a snapshot whose attempt is not the job's current attempt is ignored on read, so a
/// fenced-out runner's late progress write can never show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressRecord {
    pub v: u32,
    pub attempt: u32,
    pub progress: Progress,
    pub updated_at: DateTime<Utc>,
}

/// The job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub v: u32,
    pub id: JobId,
    pub tenant: String,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Retention deadline: the record may be deleted after this.
    pub expires_at: DateTime<Utc>,
    /// A `queued` job still queued at this instant becomes `expired`.
    pub queue_deadline: DateTime<Utc>,
    /// Where the workflow (and `extra_data`) lives in the BlobStore.
    pub input_key: String,
    pub metadata: BTreeMap<String, String>,
    /// The attempt number of the current (or last) lease; 0 before the first claim.
    /// Every claim or takeover increments it, so it doubles as the fencing token.
    pub attempt: u32,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    /// A prefetch reservation: the job stays `queued`, but others leave it alone until then.
    pub reserved_by: Option<String>,
    pub reserved_until: Option<DateTime<Utc>>,
    /// Hand-backs (SIGTERM, Spot). They do not count against `max_attempts`, up to a cap.
    pub preemptions: u32,
    /// The price per GPU-hour in force when the job was accepted (`None`: none was
    /// configured). Kept on the record so that a later price change never rewrites
    /// what a past job cost; see [`Job::cost_usd`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_price_per_hour: Option<f64>,
    /// When the current lease began (`None` while no runner holds the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_started_at: Option<DateTime<Utc>>,
    /// Milliseconds of GPU time spent by leases that already ended (handed back, taken
    /// over, finished): what [`Job::gpu_seconds`] adds up. `None` on a job recorded
    /// before this was kept, which falls back to start-to-end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<i64>,
    /// The finishing attempt's outputs (reset on takeover).
    pub outputs: Vec<OutputRecord>,
    pub error: Option<JobError>,
    /// True once the work message was sent; the tick re-sends for jobs left false.
    /// Stored apart from the record, by [`JobStore::mark_enqueued`] alone: it only ever
    /// turns true, needs no `rev`, and no `put_job` of an older copy can clear it.
    ///
    /// [`JobStore::mark_enqueued`]: crate::ports::JobStore::mark_enqueued
    #[serde(skip)]
    pub enqueued: bool,
    /// Optimistic-lock revision: every write is conditioned on the revision it read.
    pub rev: u64,
}

impl Job {
    /// A new job, `queued` and not yet enqueued, with a fresh id.
    pub fn new_queued(
        tenant: &str,
        metadata: BTreeMap<String, String>,
        now: DateTime<Utc>,
        retention: chrono::Duration,
        queue_timeout: chrono::Duration,
    ) -> Job {
        let id = JobId::generate();
        Job {
            v: SCHEMA_VERSION,
            input_key: crate::blob_keys::input(&id),
            id,
            tenant: tenant.to_string(),
            status: JobStatus::Queued,
            created_at: now,
            started_at: None,
            completed_at: None,
            expires_at: now + retention,
            queue_deadline: now + queue_timeout,
            metadata,
            attempt: 0,
            lease_owner: None,
            lease_until: None,
            reserved_by: None,
            reserved_until: None,
            preemptions: 0,
            gpu_price_per_hour: None,
            lease_started_at: None,
            held_ms: None,
            outputs: vec![],
            error: None,
            enqueued: false,
            rev: 1,
        }
    }

    pub fn has_live_lease(&self, now: DateTime<Utc>) -> bool {
        self.lease_owner.is_some() && self.lease_until.is_some_and(|until| until > now)
    }

    pub fn has_live_reservation(&self, now: DateTime<Utc>) -> bool {
        self.reserved_by.is_some() && self.reserved_until.is_some_and(|until| until > now)
    }

    /// Milliseconds spent waiting for a worker (null until the job started).
    pub fn queue_ms(&self) -> Option<i64> {
        self.started_at
            .map(|started| (started - self.created_at).num_milliseconds())
    }

    /// Milliseconds of execution (null until the job finished after starting).
    pub fn execution_ms(&self) -> Option<i64> {
        match (self.started_at, self.completed_at) {
            (Some(started), Some(done)) => Some((done - started).num_milliseconds()),
            _ => None,
        }
    }

    /// Seconds GPU runners held the job: the sum of its leases, each from its claim to
    /// its end (finish, hand-back, or a lapsed lease's expiry), so a takeover's lost
    /// attempt is counted (the GPU was held, whoever's it was) and the time a handed-back
    /// job waited in the queue is not. Null until the job finished after starting.
    pub fn gpu_seconds(&self) -> Option<f64> {
        let ms = match self.held_ms {
            Some(ms) => {
                self.completed_at?;
                self.started_at?;
                ms
            }
            // Recorded before leases were summed: start to end.
            None => self.execution_ms()?,
        };
        Some(ms.max(0) as f64 / 1000.0)
    }

    /// The estimated cost: [`Job::gpu_seconds`] at the price recorded on the job,
    /// rounded to a millionth of a dollar. Null without a price or before the end.
    pub fn cost_usd(&self) -> Option<f64> {
        let price = self.gpu_price_per_hour.filter(|p| *p > 0.0)?;
        let cost = self.gpu_seconds()? * price / 3600.0;
        Some((cost * 1e6).round() / 1e6)
    }
}

/// What the blob at [`Job::input_key`] holds. `extra_data` rides here rather than in the
/// job record because it may carry a user's secret (a partner API key): it is read only
/// by the runner, never listed, never logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInput {
    pub v: u32,
    pub workflow: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_data: Option<serde_json::Map<String, serde_json::Value>>,
    /// Run every node afresh, never from ComfyUI's (shared) cache: submitted as
    /// `"x-serverless-comfyui": {"cache": "bypass"}`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_bypass: bool,
}

/// The body of a message on the work queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkMessage {
    pub v: u32,
    pub job_id: JobId,
}

impl WorkMessage {
    /// The work message of a job: the one place its body is made.
    pub fn for_job(id: &JobId) -> Self {
        WorkMessage {
            v: SCHEMA_VERSION,
            job_id: id.clone(),
        }
    }

    /// The message as it goes on the queue.
    pub fn body(&self) -> String {
        // A version and a string: serializing cannot fail.
        serde_json::to_string(self).expect("a work message serializes")
    }
}

/// The body of a message on the wake queue: a nudge to the dispatcher ("there may be
/// work"); it names no job, so duplicates and losses are harmless (the tick scales too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeMessage {
    pub v: u32,
}

impl WakeMessage {
    /// The message as it goes on the queue.
    pub fn body() -> String {
        serde_json::to_string(&WakeMessage { v: SCHEMA_VERSION })
            .expect("a wake message serializes")
    }
}

/// The idempotency record: a fingerprint of the request, never the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub v: u32,
    pub tenant: String,
    pub key: String,
    /// SHA-256 of the request body, hex.
    pub fingerprint: String,
    pub job_id: JobId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// An asset id: `asset_` followed by a ULID.
pub fn new_asset_id() -> String {
    format!("asset_{}", monotonic_ulid())
}

/// An asset: a tenant's record over an immutable blob, identified by its own id and
/// carrying the blob's server-computed blake3 hash. Many assets may share one blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asset {
    pub v: u32,
    pub id: String,
    pub tenant: String,
    /// `blake3:<hex>`.
    pub hash: String,
    pub size_bytes: u64,
    pub content_type: String,
    pub file_path: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub blob_key: String,
    /// The job that produced it, for outputs.
    #[serde(default)]
    pub job_id: Option<JobId>,
}

/// A blob a tenant may mint assets from: the dedup index, keyed by `(tenant, hash)`.
/// Scoping it by tenant is what makes `HEAD by-hash` unable to probe another tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub v: u32,
    pub tenant: String,
    pub hash: String,
    pub size_bytes: u64,
    pub blob_key: String,
    pub created_at: DateTime<Utc>,
}

/// An API key, stored only as a hash. The key itself is shown once, at creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub v: u32,
    /// `key_<ULID>`: how `keys list` and `keys revoke` name it.
    pub id: String,
    pub tenant: String,
    /// SHA-256 of the key, hex.
    pub key_hash: String,
    /// The first characters of the key, for recognising it in a list.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A large-file upload in progress (our extension): the client PUTs bytes to a signed
/// URL, then completes, and the server hashes, dedups and mints the asset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub v: u32,
    pub id: String,
    pub tenant: String,
    pub blob_key: String,
    pub max_bytes: u64,
    pub content_type: String,
    pub file_path: String,
    pub expected_hash: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

// Per-tenant quotas (see `crate::quota` for how they are enforced).

/// One tenant's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantQuota {
    /// Jobs queued, running or canceling at once.
    pub max_active_jobs: u32,
    /// Jobs recorded per second.
    pub submits_per_second: u32,
    /// Bytes of distinct content stored (uploads and outputs).
    pub max_stored_bytes: u64,
}

impl TenantQuota {
    /// No limits: what stores apply when a caller has none to give.
    pub const UNLIMITED: TenantQuota = TenantQuota {
        max_active_jobs: u32::MAX,
        submits_per_second: u32::MAX,
        max_stored_bytes: u64::MAX,
    };
}

impl Default for TenantQuota {
    /// Generous: a studio's burst fits; a runaway script does not take the deployment.
    fn default() -> Self {
        TenantQuota {
            max_active_jobs: 10_000,
            submits_per_second: 1_000,
            max_stored_bytes: 1 << 40,
        }
    }
}

/// What a tenant uses now, as the store counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TenantUsage {
    pub active_jobs: u64,
    pub stored_bytes: u64,
}

/// Which job limit refused a submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    ActiveJobs { limit: u32 },
    SubmitRate { limit: u32 },
}

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn queue_messages_have_one_wire_form() {
        let id = JobId::generate();
        let body = WorkMessage::for_job(&id).body();
        assert_eq!(
            serde_json::from_str::<WorkMessage>(&body).unwrap(),
            WorkMessage {
                v: SCHEMA_VERSION,
                job_id: id.clone()
            }
        );
        assert_eq!(
            body,
            format!("{{\"v\":{SCHEMA_VERSION},\"job_id\":\"{}\"}}", id.as_str())
        );
        assert_eq!(WakeMessage::body(), format!("{{\"v\":{SCHEMA_VERSION}}}"));
    }
}

#[cfg(test)]
mod cost_tests {
    use super::*;

    #[test]
    fn cost_is_gpu_seconds_at_the_recorded_price() {
        let t0 = Utc::now();
        let mut job = Job::new_queued(
            "t",
            BTreeMap::new(),
            t0,
            chrono::Duration::days(1),
            chrono::Duration::hours(1),
        );
        assert_eq!((job.gpu_seconds(), job.cost_usd()), (None, None));
        job.started_at = Some(t0 + chrono::Duration::seconds(3));
        job.completed_at = Some(t0 + chrono::Duration::milliseconds(93_500));
        assert_eq!(job.gpu_seconds(), Some(90.5));
        // No price recorded: no cost, rather than a cost of 0 that would claim "free".
        assert_eq!(job.cost_usd(), None);
        job.gpu_price_per_hour = Some(1.212);
        // 90.5 s at $1.212/h = $0.030468...; a millionth of a dollar is the unit.
        assert_eq!(job.cost_usd(), Some(0.030468));
        // The price travels with the stored record; an old record without it reads as None.
        let stored = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<Job>(&stored).unwrap(), job);
        let mut old: serde_json::Value = serde_json::from_str(&stored).unwrap();
        old.as_object_mut().unwrap().remove("gpu_price_per_hour");
        let old: Job = serde_json::from_value(old).unwrap();
        assert_eq!(old.gpu_price_per_hour, None);
    }
}
