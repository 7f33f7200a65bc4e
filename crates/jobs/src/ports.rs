//! The ports: what the domain needs from the outside world, as async traits.
//!
//! Each port has a local adapter (`crates/local`: SQLite, files) and an AWS adapter
//! (`crates/aws`: DynamoDB, S3, SQS, ECS). Both must pass the conformance suite in
//! the `testkit` crate (a dev-dependency of each adapter crate).
//!
//! **No transaction spans two ports.** A job record and its idempotency record are
//! written together (one port, one transaction), but the workflow blob, the job and
//! the queue message are three separate writes, ordered so that a crash between any
//! two loses nothing: blob first (an orphan blob is harmless), then the job (the tick
//! re-enqueues a job whose `enqueued` flag never flipped), then the message.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{
    ApiKeyRecord, Asset, BlobRecord, IdempotencyRecord, Job, JobId, JobStatus, ProgressRecord,
    UploadRecord,
};

/// A failure of a store, blob store or queue.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The conditional write lost: someone wrote first. Re-read and decide again.
    #[error("conditional write failed: the item changed since it was read")]
    Conflict,
    /// The backing service failed. The message is safe to log (no secrets).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A job with what its view needs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSnapshot {
    pub job: Job,
    pub progress: Option<ProgressRecord>,
    pub queue_position: Option<u64>,
}

/// What a running job's runner polls for, every second: where the job stands, from the
/// smallest read the store can make ([`JobStore::job_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobStatusRead {
    /// `canceling` is the cancel flag: a client asked to stop the job.
    pub status: JobStatus,
    /// The fencing token of the lease the job is under (or last was).
    pub attempt: u32,
}

/// One page request of a tenant's jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub tenant: String,
    /// Every `(key, value)` must match the job's metadata.
    pub metadata: Vec<(String, String)>,
    /// Only jobs with an id strictly below this one (the previous page's last id).
    pub before: Option<JobId>,
    pub limit: usize,
}

/// What [`JobStore::list_jobs_page`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedJobs {
    pub jobs: Vec<Job>,
    /// Set when the store stopped at its read budget before the page was full: the
    /// listing goes on below this id (the last one examined).
    pub resume_before: Option<JobId>,
}

/// Queue positions are counted up to here ("100+"): exact beyond is O(depth) per read.
pub const QUEUE_POSITION_CAP: u64 = 100;

/// What the create step writes alongside a job.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// Written. `queue_position` is the number of jobs queued when this one was
    /// recorded, counted up to [`QUEUE_POSITION_CAP`]: the store knows it while
    /// writing, and the answer to a submit then needs no second read. Job ids grow in
    /// the order they are made, so this is what [`JobStore::queue_position`] says
    /// right after, unless a concurrent submit's job was recorded first.
    Created { queue_position: u64 },
    /// The idempotency key is taken by an unexpired record; here it is.
    KeyTaken(IdempotencyRecord),
    /// A limit of the tenant's quota refused it; nothing was written.
    OverQuota(crate::model::QuotaRefusal),
}

/// The scaling state, one item, updated with an optimistic lock (`rev`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Fleet {
    pub v: u32,
    pub rev: u64,
    /// The last desired worker count the dispatcher decided.
    pub desired: u32,
    /// `MinWarmWorkers` as the last decision saw it: how many idle runners stay up
    /// past their idle timeout (see `dispatch::keeps_warm`).
    #[serde(default)]
    pub min_warm: u32,
    /// The dispatcher's `worker_stale_after` (seconds) as the last decision used it:
    /// a runner deciding whether it is kept warm judges the registry the same way.
    /// `None` (a record older than the field): the default.
    #[serde(default)]
    pub worker_stale_after_s: Option<u64>,
    /// The last capacity failure, shown in health and in queued jobs' progress.
    pub capacity_error: Option<String>,
    pub capacity_error_at: Option<DateTime<Utc>>,
    pub decided_at: Option<DateTime<Utc>>,
    /// While set and in the future, one dispatcher is launching; others stand aside.
    #[serde(default)]
    pub launch_lease_until: Option<DateTime<Utc>>,
}

/// What a worker is doing, as it last told the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerPhase {
    /// Launched, not yet reporting (instance boot, image pull, model load).
    Starting,
    Idle,
    Busy,
    Draining,
    /// Up but taking no job: ComfyUI lacks something the runner was promised (a custom
    /// node class). The record's `detail` says what; health shows it.
    Refusing,
}

/// One runner's registry item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub v: u32,
    pub id: String,
    pub phase: WorkerPhase,
    pub heartbeat_at: DateTime<Utc>,
    pub launched_at: DateTime<Utc>,
    /// A free-form description: the ECS task ARN, a process id, a ComfyUI URL.
    pub detail: String,
}

/// The ports the services run on, as one bundle: every entry point builds one from
/// its adapters and hands it to the services.
#[derive(Clone)]
pub struct Ports {
    pub store: std::sync::Arc<dyn JobStore>,
    pub blobs: std::sync::Arc<dyn BlobStore>,
    pub queue: std::sync::Arc<dyn Queue>,
    pub clock: std::sync::Arc<dyn Clock>,
}

/// The job store: jobs, progress, idempotency records, the fleet and worker registry.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Writes a new job, and its idempotency record if given, in one transaction.
    /// An unexpired record under the same `(tenant, key)` wins: nothing is written and
    /// the existing record comes back. An expired one is replaced.
    async fn create_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyRecord>,
        now: DateTime<Utc>,
    ) -> StoreResult<CreateOutcome> {
        self.create_job_within_quota(job, idempotency, now, &crate::model::TenantQuota::UNLIMITED)
            .await
    }

    /// [`JobStore::create_job`], in the same write holding the tenant to its quota: the
    /// tenant's jobs `queued`, `running` or `canceling` stay within `max_active_jobs`,
    /// and the jobs it records within one second (`now`'s) within `submits_per_second`.
    /// The idempotency check comes first: a replay is answered, never refused. DynamoDB
    /// does it with a per-tenant usage item updated under a condition in the job's
    /// `TransactWriteItems` (and decremented by the write that ends a job).
    async fn create_job_within_quota(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyRecord>,
        now: DateTime<Utc>,
        quota: &crate::model::TenantQuota,
    ) -> StoreResult<CreateOutcome>;

    /// The quota set for a tenant, if any (else the default applies).
    async fn get_tenant_quota(
        &self,
        tenant: &str,
    ) -> StoreResult<Option<crate::model::TenantQuota>>;

    /// Sets a tenant's quota, replacing any.
    async fn put_tenant_quota(
        &self,
        tenant: &str,
        quota: &crate::model::TenantQuota,
    ) -> StoreResult<()>;

    /// What a tenant uses now: active jobs, and bytes of its blob records.
    async fn tenant_usage(&self, tenant: &str) -> StoreResult<crate::model::TenantUsage>;

    /// Takes one of `tenant`'s `max` live-event-stream slots for `holder` until
    /// `until`, or renews `holder`'s own. Slots whose `until` is at or before `now`
    /// count for nothing, so a holder that crashed frees its slot by itself.
    /// `Ok(false)`: all `max` are held. Exact across every process sharing the store:
    /// never more than `max` unexpired slots at once (the events module's docs).
    async fn acquire_stream_slot(
        &self,
        tenant: &str,
        holder: &str,
        max: u32,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Frees `holder`'s slot before its `until` (none held: Ok).
    async fn release_stream_slot(&self, tenant: &str, holder: &str) -> StoreResult<()>;

    async fn get_job(&self, id: &JobId) -> StoreResult<Option<Job>>;

    /// The job's status and attempt only: the cheap read a runner makes every second
    /// while a job runs, so that a cancel lands within a second. It may be *eventually
    /// consistent* (DynamoDB: a projected `GetItem` of the job item, half a read unit):
    /// a caller acts on it only by making a fenced move, which decides on the latest
    /// state. The default reads the whole job.
    async fn job_status(&self, id: &JobId) -> StoreResult<Option<JobStatusRead>> {
        Ok(self.get_job(id).await?.map(|job| JobStatusRead {
            status: job.status,
            attempt: job.attempt,
        }))
    }

    /// Replaces the job if its stored `rev` is still `expected_rev`, else `Conflict`.
    /// Leaves the stored `enqueued` flag as it is, whatever `job.enqueued` says.
    async fn put_job(&self, job: &Job, expected_rev: u64) -> StoreResult<()>;

    /// Records that the job's work message was sent: sets `enqueued`, which is kept
    /// apart from the record (a column, a separate attribute) so that this write needs
    /// no read, no `rev` and no body, and never conflicts. It only ever turns true.
    /// A job that does not exist is left alone.
    async fn mark_enqueued(&self, id: &JobId) -> StoreResult<()>;

    /// A tenant's jobs, newest first.
    async fn list_jobs(&self, query: &ListQuery) -> StoreResult<Vec<Job>>;

    /// A page of [`Self::list_jobs`] within a read budget: a store may stop after
    /// examining a bounded number of rows (a filter that matches few of many jobs),
    /// returning fewer jobs and where to go on. The default never stops early.
    async fn list_jobs_page(&self, query: &ListQuery) -> StoreResult<ListedJobs> {
        Ok(ListedJobs {
            jobs: self.list_jobs(query).await?,
            resume_before: None,
        })
    }

    /// Jobs in a status, oldest first, for the tick.
    async fn jobs_in_status(&self, status: JobStatus, limit: usize) -> StoreResult<Vec<Job>>;

    /// Queued jobs created before this one (all tenants share one queue), counting
    /// no further than `cap`: a deep queue must not make every read cost O(depth).
    async fn queue_position(&self, id: &JobId, cap: u64) -> StoreResult<u64>;

    /// Queued jobs nobody has claimed or reserved, counting no further than `cap`.
    async fn count_unclaimed_queued(&self, now: DateTime<Utc>, cap: u64) -> StoreResult<u64>;

    /// The job, its progress record and (while queued) its queue position, read
    /// together: what `GET /api/v2/jobs/{id}` shows. Adapters that can read these in
    /// one round trip (a SQLite read transaction, DynamoDB BatchGetItem) override it.
    async fn load_snapshot(
        &self,
        id: &JobId,
        position_cap: u64,
    ) -> StoreResult<Option<JobSnapshot>> {
        let Some(job) = self.get_job(id).await? else {
            return Ok(None);
        };
        let progress = self.get_progress(id).await?;
        let queue_position = if job.status == JobStatus::Queued {
            Some(self.queue_position(id, position_cap).await?)
        } else {
            None
        };
        Ok(Some(JobSnapshot {
            job,
            progress,
            queue_position,
        }))
    }

    async fn get_idempotency(
        &self,
        tenant: &str,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRecord>>;

    /// Writes the progress item unless a later attempt's progress is already there, or
    /// the job has ended (a late write is dropped: a canceled job's progress stays as
    /// it was when it ended). Renewals, outputs and finishes are fenced by
    /// `jobs::lifecycle`; this is the fence of the one write that is not a move.
    async fn put_progress(&self, id: &JobId, record: &ProgressRecord) -> StoreResult<()>;

    async fn get_progress(&self, id: &JobId) -> StoreResult<Option<ProgressRecord>>;

    async fn get_fleet(&self) -> StoreResult<Fleet>;

    /// Replaces the fleet item if its `rev` is still `expected_rev`, else `Conflict`.
    async fn put_fleet(&self, fleet: &Fleet, expected_rev: u64) -> StoreResult<()>;

    async fn put_worker(&self, worker: &WorkerRecord) -> StoreResult<()>;

    async fn delete_worker(&self, id: &str) -> StoreResult<()>;

    async fn list_workers(&self) -> StoreResult<Vec<WorkerRecord>>;

    async fn put_asset(&self, asset: &Asset) -> StoreResult<()>;

    async fn get_asset(&self, id: &str) -> StoreResult<Option<Asset>>;

    /// Deletes the asset record; true if it existed. The blob stays: other assets may
    /// share it.
    async fn delete_asset(&self, id: &str) -> StoreResult<bool>;

    /// The tenant's newest asset over `hash` with this `file_path`, if any.
    async fn find_asset(
        &self,
        tenant: &str,
        hash: &str,
        file_path: Option<&str>,
    ) -> StoreResult<Option<Asset>>;

    /// The dedup index: the blob a tenant may mint from, by hash.
    async fn get_blob_record(&self, tenant: &str, hash: &str) -> StoreResult<Option<BlobRecord>>;

    /// Records a blob unless the tenant already has one with this hash. Returns the
    /// record that stands, and whether it is the one given.
    async fn put_blob_record_if_absent(
        &self,
        record: &BlobRecord,
    ) -> StoreResult<(BlobRecord, bool)>;

    /// Whether any asset of the tenant is over `hash` and, when `blob_key` is given,
    /// stored at that key: what decides that a deleted asset's bytes may go.
    async fn is_blob_referenced(
        &self,
        tenant: &str,
        hash: &str,
        blob_key: Option<&str>,
    ) -> StoreResult<bool>;

    /// Removes the tenant's dedup record for `hash`; true if it existed.
    async fn delete_blob_record(&self, tenant: &str, hash: &str) -> StoreResult<bool>;

    /// Finished jobs (terminal status) whose `expires_at` is at or before `now`, oldest
    /// deadline first, at most `limit`: what the retention sweep removes. A job still
    /// queued or running is never returned, whatever its `expires_at` says.
    async fn expired_jobs(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Job>>;

    /// Deletes a job with everything keyed by it in the store: its labels and progress
    /// (and, kept by the adapter, its counters). True if it existed. Its assets and
    /// blobs are the sweep's to remove first (see [`crate::retention`]).
    async fn delete_job(&self, id: &JobId) -> StoreResult<bool>;

    /// The assets minted for a job (its outputs, of any attempt), at most `limit`.
    async fn job_assets(&self, id: &JobId, limit: usize) -> StoreResult<Vec<Asset>>;

    /// Deletes idempotency records whose `expires_at` is at or before `now`, at most
    /// `limit`; returns how many went. An expired record already answers nothing.
    async fn delete_expired_idempotency(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<usize>;

    /// How many jobs are in each status (statuses with none may be left out), for
    /// health.
    async fn count_jobs_by_status(&self) -> StoreResult<Vec<(JobStatus, u64)>>;

    /// Bytes the store's own files take, where the adapter knows (SQLite: its file
    /// and WAL); `None` where it is not ours to count (DynamoDB).
    async fn bytes_used(&self) -> StoreResult<Option<u64>> {
        Ok(None)
    }

    /// After a sweep deleted many records: returns a bounded amount of freed space to
    /// the filesystem (SQLite: an incremental vacuum step). A no-op where the service
    /// manages its own space.
    async fn reclaim(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Creates or replaces an API key record (revoking writes `revoked_at`).
    async fn put_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()>;

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>>;

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>>;

    /// Deletes every API key record, revoked ones too (the operator's explicit way
    /// back to a keyless server); returns how many there were.
    async fn delete_all_api_keys(&self) -> StoreResult<usize>;

    async fn put_upload(&self, upload: &UploadRecord) -> StoreResult<()>;

    async fn get_upload(&self, id: &str) -> StoreResult<Option<UploadRecord>>;

    async fn delete_upload(&self, id: &str) -> StoreResult<()>;

    /// Uploads whose `expires_at` is at or before `now`, oldest first, at most `limit`.
    async fn expired_uploads(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<UploadRecord>>;

    /// The pointer to the latest node catalogue, if one was published
    /// ([`crate::catalogue`]).
    async fn get_catalogue_ref(&self) -> StoreResult<Option<crate::catalogue::CatalogueRef>>;

    /// Moves the pointer to the latest node catalogue; the last writer wins.
    async fn put_catalogue_ref(&self, pointer: &crate::catalogue::CatalogueRef) -> StoreResult<()>;

    /// A cheap round trip, for health.
    async fn ping(&self) -> StoreResult<()>;

    /// A short name for health (`sqlite`, `dynamodb`).
    fn kind(&self) -> &'static str;
}

/// A stream of bytes, as blobs are written and read.
pub type ByteStream = futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Why a streamed blob write failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobWriteError {
    #[error("the body is larger than {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
    /// The client's stream failed (disconnect, malformed multipart).
    #[error("the upload stream failed: {0}")]
    Body(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A blob being read: its whole size, and the bytes of the requested range.
pub struct BlobRead {
    pub size: u64,
    pub stream: ByteStream,
}

/// What a presigned request lets its holder do, and nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedAccess {
    /// Read the blob. The response carries `content_type` when given (S3's
    /// `response-content-type`), whatever the object was stored as.
    Get { content_type: Option<String> },
    /// Write exactly `size_bytes` bytes to the key. The store itself refuses a body of
    /// any other length: S3 through a signed `Content-Length` (a request with another
    /// length fails its signature), the local blob server by checking the signed size.
    /// (A size *range* would need an S3 POST policy, which the SDK does not presign.)
    PutExact { size_bytes: u64 },
}

/// The HTTP method of a presigned request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedMethod {
    Get,
    Put,
}

impl SignedMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SignedMethod::Get => "GET",
            SignedMethod::Put => "PUT",
        }
    }
}

/// A request a client can make without credentials until it expires: the method,
/// the URL, and the headers the client must send exactly as given (they are part of
/// the signature: for a PUT, `content-length`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    pub method: SignedMethod,
    pub url: String,
    /// Lower-case names, in a stable order.
    pub headers: Vec<(String, String)>,
}

/// Blob storage: workflows, inputs, outputs.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> StoreResult<()>;

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>>;

    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Writes a stream without holding it in memory, refusing more than `max_bytes`.
    /// Returns the size written. Nothing is left at `key` on failure.
    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        max_bytes: u64,
    ) -> Result<u64, BlobWriteError>;

    /// Reads a blob, or the inclusive byte range `first..=last` of it.
    async fn read(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<Option<BlobRead>>;

    /// The blob's size, if it exists.
    async fn size(&self, key: &str) -> StoreResult<Option<u64>>;

    /// Moves a blob to a new key (S3: copy, then delete).
    async fn rename(&self, from: &str, to: &str) -> StoreResult<()>;

    /// Presigns a request that grants `access` to `key` until `expires_at`, without
    /// credentials. Async because S3 presigning reads credentials from an async cache.
    /// Never logs the URL: its query string is a bearer credential.
    async fn presign(
        &self,
        key: &str,
        access: SignedAccess,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<SignedRequest>;

    /// Bytes the stored blobs take, where the adapter can tell cheaply (local files);
    /// `None` where it cannot (S3: see its metrics).
    async fn bytes_used(&self) -> StoreResult<Option<u64>> {
        Ok(None)
    }

    /// Deletes blobs under `prefix` last written or moved before `older_than`, at
    /// most `limit`; returns how many went. What an S3 lifecycle rule does (where the
    /// rule itself does it, this is a no-op); only for prefixes that no record ever
    /// names, such as `staging/`.
    async fn expire_prefix(
        &self,
        _prefix: &str,
        _older_than: DateTime<Utc>,
        _limit: usize,
    ) -> StoreResult<usize> {
        Ok(0)
    }

    /// As [`JobStore::reclaim`], for the blob store's own database, if any.
    async fn reclaim(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// The queues the system uses. Each main queue has a dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueName {
    /// One message per job to run.
    Work,
    /// A nudge for the dispatcher: "there may be work; decide the fleet".
    Wake,
    WorkDeadLetter,
    WakeDeadLetter,
}

impl QueueName {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Work => "work",
            QueueName::Wake => "wake",
            QueueName::WorkDeadLetter => "work-dlq",
            QueueName::WakeDeadLetter => "wake-dlq",
        }
    }

    /// Where messages go after too many receives.
    pub fn dead_letter(self) -> Option<QueueName> {
        match self {
            QueueName::Work => Some(QueueName::WorkDeadLetter),
            QueueName::Wake => Some(QueueName::WakeDeadLetter),
            _ => None,
        }
    }
}

/// A received message. `receipt` names this delivery, not the message: it changes on
/// every receive, and only the latest one is guaranteed to work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    /// Deliveries so far, this one included (SQS's ApproximateReceiveCount).
    pub receive_count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct QueueDepth {
    /// Messages ready to be received.
    pub visible: u64,
    /// Messages received and not yet deleted or visible again.
    pub in_flight: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The receipt is not the message's latest (it was received again), or the message
    /// is gone. SQS answers this for some stale handles and silently accepts others, so
    /// callers must treat both outcomes as possible.
    #[error("the receipt handle is stale or the message is gone")]
    StaleReceipt,
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

pub type QueueResult<T> = Result<T, QueueError>;

/// A queue with SQS's semantics: at-least-once delivery, a visibility timeout, receive
/// counts, dead-lettering after `max_receive_count` receives, no ordering guarantee.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    async fn send(&self, queue: QueueName, body: &str) -> QueueResult<String>;

    /// Up to `max` messages, waiting up to `wait` for the first (long polling). Each is
    /// hidden from other receivers for `visibility`.
    async fn receive(
        &self,
        queue: QueueName,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> QueueResult<Vec<Received>>;

    /// Hides (or, with zero, reveals) a received message for `visibility` from now.
    async fn change_visibility(
        &self,
        queue: QueueName,
        receipt: &str,
        visibility: Duration,
    ) -> QueueResult<()>;

    async fn delete(&self, queue: QueueName, receipt: &str) -> QueueResult<()>;

    async fn depth(&self, queue: QueueName) -> QueueResult<QueueDepth>;

    /// Bytes the queue's own files take, where the adapter has any (SQLite).
    fn bytes_used(&self) -> Option<u64> {
        None
    }
}

/// A worker the launcher started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchedWorker {
    pub id: String,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No capacity now (e.g. `VcpuLimitExceeded`, no Spot capacity). Shown to users.
    #[error("{0}")]
    Capacity(String),
    #[error("launcher unavailable: {0}")]
    Unavailable(String),
}

/// Starts and stops workers.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// Starts up to `count` workers. Some may start before a capacity error stops the rest.
    async fn launch(
        &self,
        count: u32,
    ) -> Result<Vec<LaunchedWorker>, (Vec<LaunchedWorker>, LaunchError)>;

    async fn stop(&self, worker_id: &str) -> Result<(), LaunchError>;

    /// Workers this launcher has seen exit since the last call (a reaped child), so
    /// their records go at once instead of when they go stale: a SIGKILLed runner never
    /// deregisters. Default: none known (ECS tasks are not watched).
    fn exited(&self) -> Vec<String> {
        Vec::new()
    }

    /// A short name for health (`ecs`, `subprocess`, `none`).
    fn kind(&self) -> &'static str;
}

/// A launcher that launches nothing: the API alone, with no runner.
pub struct NoLauncher;

#[async_trait]
impl Launcher for NoLauncher {
    async fn launch(
        &self,
        _count: u32,
    ) -> Result<Vec<LaunchedWorker>, (Vec<LaunchedWorker>, LaunchError)> {
        Ok(vec![])
    }

    async fn stop(&self, _worker_id: &str) -> Result<(), LaunchError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "none"
    }
}

/// Time, as a port, so tests can move it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(std::sync::Mutex::new(start))
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
