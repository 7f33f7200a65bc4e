//! The job services: submit, get, list, cancel, get-workflow. They use only the ports.
//!
//! The submit path writes in an order that survives a crash at any point, without a
//! transaction across ports:
//!
//! 1. the workflow (and `extra_data`) to the BlobStore: an orphan if we die now;
//! 2. the job and its idempotency record, one transaction in the JobStore, with
//!    `enqueued = false`;
//! 3. the work message, then a wake nudge;
//! 4. `enqueued = true` on the job (after the answer, where the server outlives it:
//!    [`JobsConfig::record_enqueue_in_background`]).
//!
//! If we die between 2 and 4, a retry with the same `Idempotency-Key` re-enqueues, and
//! so does the tick for a job left `enqueued = false`. A duplicate message is harmless:
//! runners claim through the lease protocol, so a second copy finds the job taken.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

use crate::cursor::CursorCodec;
use crate::error::ApiError;
use crate::lifecycle::{self, Move, Refusal};
use crate::model::{
    IdempotencyRecord, Job, JobId, JobInput, JobStatus, Progress, SCHEMA_VERSION, WorkMessage,
    timestamp,
};
use crate::ports::SignedAccess;
use crate::ports::{
    BlobStore, Clock, CreateOutcome, Fleet, JobSnapshot, JobStore, ListQuery, Queue, QueueName,
    StoreError,
};
use crate::validate::{self, Submission};
use crate::views::{JobUrls, JobView, Metrics, OutputView, WorkflowView};

/// Settings of the job services. Defaults are the documented production defaults.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// How long a finished job (and its outputs) is kept.
    pub retention: Duration,
    /// A job still queued after this long becomes `expired`.
    pub queue_timeout: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// A replay within this long of the original, whose enqueue has not happened yet,
    /// is a concurrent retry (409); after it, the original is presumed dead and the
    /// replay re-enqueues.
    pub idempotency_in_flight: Duration,
    /// Charged attempts before a job fails with `attempts_exhausted`.
    pub max_attempts: u32,
    /// Mount prefix of the API (`/prod` behind an API Gateway stage, say), so `urls`
    /// resolve behind a path prefix or a custom domain.
    pub path_prefix: String,
    /// How long a content URL (an output's, an asset's) is valid.
    pub url_ttl: Duration,
    /// Wake nudges sent within this window of the previous one are folded into one,
    /// sent at the end of the window. Zero sends one per enqueue, which is what a
    /// Lambda needs: it may be frozen before a deferred send could run.
    pub wake_coalesce: std::time::Duration,
    /// Whether a submit answers as soon as its work message is sent, recording that it
    /// was sent (the job's `enqueued` flag) in the background. Losing that record is
    /// harmless: the tick would send a second message after `enqueue_grace`, and the
    /// runners absorb duplicates. Off for a Lambda, which may be frozen before a
    /// background write runs; on for `dev`, where it takes one wait off every submit.
    pub record_enqueue_in_background: bool,
    /// The quota of a tenant that has none of its own (see [`crate::quota`]).
    pub default_quota: crate::quota::TenantQuota,
    /// The price of one GPU-hour in US dollars, recorded on each job at submit so its
    /// `metrics.cost_micro_usd` can be estimated; 0 records none (and the cost stays null).
    pub gpu_price_per_hour: f64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            retention: Duration::days(7),
            queue_timeout: Duration::hours(1),
            idempotency_ttl: Duration::hours(24),
            idempotency_in_flight: Duration::seconds(10),
            max_attempts: 3,
            path_prefix: String::new(),
            url_ttl: Duration::hours(1),
            wake_coalesce: std::time::Duration::ZERO,
            record_enqueue_in_background: false,
            default_quota: crate::quota::TenantQuota::default(),
            gpu_price_per_hour: 0.0,
        }
    }
}

/// The ports the services run on.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn JobStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub queue: Arc<dyn Queue>,
    pub clock: Arc<dyn Clock>,
}

/// The result of a submit.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub job: JobView,
    /// True when an `Idempotency-Key` matched an earlier request.
    pub replayed: bool,
}

/// A page of jobs.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    pub next_cursor: Option<String>,
}

pub use crate::ports::QUEUE_POSITION_CAP;

/// Folds wake nudges together (see [`JobsConfig::wake_coalesce`]).
#[derive(Default)]
struct WakeCoalescer {
    /// True while a nudge is scheduled and not yet begun.
    deferred: std::sync::atomic::AtomicBool,
}

/// Bounded retries of read-decide-write when a conditional write loses a race.
pub(crate) const MAX_CAS_RETRIES: usize = 8;

pub struct JobService {
    ports: Ports,
    config: JobsConfig,
    wakes: Arc<WakeCoalescer>,
    cursors: CursorCodec,
    /// The fleet item changes rarely and is advisory here (a capacity message for queued
    /// jobs), so reads share one copy for a second.
    fleet_cache: Mutex<Option<(DateTime<Utc>, Fleet)>>,
    quotas: crate::quota::QuotaBook,
}

fn conflict_exhausted() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        "the job changed too often while updating it; retry",
    )
    .with_retry_after(1)
}

/// Records that the job's work message is out (see [`JobStore::mark_enqueued`]).
async fn record_enqueued(store: &dyn JobStore, mut job: Job) -> Result<Job, ApiError> {
    if !job.enqueued {
        store.mark_enqueued(&job.id).await?;
        job.enqueued = true;
    }
    Ok(job)
}

impl JobService {
    pub fn new(ports: Ports, config: JobsConfig, cursor_key: Vec<u8>) -> Self {
        JobService {
            quotas: crate::quota::QuotaBook::new(
                ports.store.clone(),
                ports.clock.clone(),
                config.default_quota,
            ),
            ports,
            config,
            cursors: CursorCodec::new(cursor_key),
            fleet_cache: Mutex::new(None),
            wakes: Arc::new(WakeCoalescer::default()),
        }
    }

    /// Nudges the dispatcher: "there may be work". Sent after the work message, so the
    /// decision it triggers sees the job. Coalesced when configured: a nudge inside the
    /// window is deferred to its end, never dropped.
    async fn wake(&self) {
        let window = self.config.wake_coalesce;
        let queue = self.ports.queue.clone();
        let send = |queue: Arc<dyn Queue>| async move {
            if let Err(e) = queue
                .send(QueueName::Wake, &crate::model::WakeMessage::body())
                .await
            {
                // The tick scales even when a nudge is lost.
                tracing::warn!(error = %e, "wake nudge not sent");
            }
        };
        if window.is_zero() {
            send(queue).await;
            return;
        }
        if self
            .wakes
            .deferred
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return; // a deferred nudge is already due; it will cover this job
        }
        let wakes = self.wakes.clone();
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            // Clear first: an enqueue from now on schedules its own nudge.
            wakes
                .deferred
                .store(false, std::sync::atomic::Ordering::Release);
            send(queue).await;
        });
    }

    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    /// `POST /api/v2/jobs`.
    pub async fn submit(
        &self,
        tenant: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, ApiError> {
        crate::json_budget::check_value_count(body)?;
        let submission = validate::parse_submission(validate::parse_json_strict(body)?)?;
        crate::assets::check_references(self.ports.store.as_ref(), tenant, &submission.workflow)
            .await?;
        let now = self.ports.clock.now();
        let fingerprint = hex::encode(Sha256::digest(body));

        // A replayed key is found by the create step itself, atomically; reading it
        // first would cost every submit a read to spare the rare replay a blob write.
        if let Some(key) = idempotency_key {
            validate_idempotency_key(key)?;
        }

        let job = self.new_job(tenant, &submission, now);
        // Serialized into a buffer sized from the body (no doubling on the way), and
        // the parsed tree dropped before the blob is written: the two together are
        // most of a large submit's peak memory.
        let input_bytes = {
            let input = JobInput {
                v: SCHEMA_VERSION,
                workflow: submission.workflow,
                extra_data: submission.extra_data,
                cache_bypass: submission.cache_bypass,
            };
            let mut buffer = Vec::with_capacity(body.len() + 64);
            serde_json::to_writer(&mut buffer, &input).map_err(|_| ApiError::unavailable())?;
            buffer
        };
        self.ports
            .blobs
            .put(&job.input_key, Bytes::from(input_bytes), "application/json")
            .await?;

        let record = idempotency_key.map(|key| IdempotencyRecord {
            v: SCHEMA_VERSION,
            tenant: tenant.to_string(),
            key: key.to_string(),
            fingerprint: fingerprint.clone(),
            job_id: job.id.clone(),
            created_at: now,
            expires_at: now + self.config.idempotency_ttl,
        });
        let quota = self.quotas.quota(tenant).await?;
        let queue_position = match self
            .ports
            .store
            .create_job_within_quota(&job, record.as_ref(), now, &quota)
            .await?
        {
            CreateOutcome::Created { queue_position } => queue_position,
            CreateOutcome::OverQuota(refusal) => {
                // Nothing was recorded: the workflow blob is an orphan, and the client
                // retries after Retry-After.
                let _ = self.ports.blobs.delete(&job.input_key).await;
                return Err(refusal.into());
            }
            CreateOutcome::KeyTaken(existing) => {
                // A replay, or a concurrent request with the same key that won the
                // race. Our blob is an orphan; remove it (best effort: an orphan is
                // harmless).
                let _ = self.ports.blobs.delete(&job.input_key).await;
                return self.answer_existing(tenant, &existing, &fingerprint).await;
            }
        };
        tracing::info!(job_id = %job.id, tenant, "job recorded");
        let job = if self.config.record_enqueue_in_background {
            self.send_work(&job).await?;
            let store = self.ports.store.clone();
            let id = job.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.mark_enqueued(&id).await {
                    tracing::warn!(error = %e, "could not record an enqueue; the tick will send the job again");
                }
            });
            job
        } else {
            self.enqueue(job).await?
        };
        // A job this new has no progress record worth a read.
        let queue_position = (job.status == JobStatus::Queued).then_some(queue_position);
        let view = self
            .view_snapshot(JobSnapshot {
                job,
                progress: None,
                queue_position,
            })
            .await?;
        Ok(Submitted {
            job: view,
            replayed: false,
        })
    }

    fn new_job(&self, tenant: &str, submission: &Submission, now: DateTime<Utc>) -> Job {
        let mut job = Job::new_queued(
            tenant,
            submission.metadata.clone(),
            now,
            self.config.retention,
            self.config.queue_timeout,
        );
        let price = self.config.gpu_price_per_hour;
        job.gpu_price_per_hour = (price.is_finite() && price > 0.0).then_some(price);
        job
    }

    /// Answers a request whose `Idempotency-Key` is already recorded.
    async fn answer_existing(
        &self,
        tenant: &str,
        record: &IdempotencyRecord,
        fingerprint: &str,
    ) -> Result<Submitted, ApiError> {
        if record.fingerprint != fingerprint {
            return Err(ApiError::unprocessable(
                "idempotency_key_reuse",
                "this Idempotency-Key was used with a different request body; use a new key for a new request",
            ));
        }
        let Some(job) = self.ports.store.get_job(&record.job_id).await? else {
            return Err(in_flight_conflict());
        };
        if job.tenant != tenant {
            // Records are keyed by tenant, so this cannot happen; never leak across.
            return Err(in_flight_conflict());
        }
        let job = if job.enqueued {
            job
        } else if self.ports.clock.now() - record.created_at < self.config.idempotency_in_flight {
            return Err(in_flight_conflict());
        } else {
            tracing::warn!(job_id = %job.id, "replay found a job that was never enqueued; enqueuing");
            self.enqueue(job).await?
        };
        Ok(Submitted {
            job: self.view(&job).await?,
            replayed: true,
        })
    }

    /// Sends the work message and a wake nudge, then records that it did.
    pub async fn enqueue(&self, job: Job) -> Result<Job, ApiError> {
        self.send_work(&job).await?;
        record_enqueued(self.ports.store.as_ref(), job).await
    }

    /// Sends the job's work message and nudges the dispatcher.
    async fn send_work(&self, job: &Job) -> Result<(), ApiError> {
        let message = WorkMessage::for_job(&job.id).body();
        self.ports.queue.send(QueueName::Work, &message).await?;
        self.wake().await;
        Ok(())
    }

    /// Reads a job of this tenant. Another tenant's job is "not found", never "forbidden".
    pub async fn load(&self, tenant: &str, raw_id: &str) -> Result<Job, ApiError> {
        let id = JobId::parse(raw_id).ok_or_else(|| ApiError::not_found("job"))?;
        match self.ports.store.get_job(&id).await? {
            Some(job) if job.tenant == tenant => Ok(job),
            _ => Err(ApiError::not_found("job")),
        }
    }

    /// `GET /api/v2/jobs/{id}`.
    pub async fn get(&self, tenant: &str, raw_id: &str) -> Result<JobView, ApiError> {
        let id = JobId::parse(raw_id).ok_or_else(|| ApiError::not_found("job"))?;
        match self
            .ports
            .store
            .load_snapshot(&id, QUEUE_POSITION_CAP)
            .await?
        {
            Some(snapshot) if snapshot.job.tenant == tenant => self.view_snapshot(snapshot).await,
            _ => Err(ApiError::not_found("job")),
        }
    }

    /// `POST /api/v2/jobs/{id}/cancel`: idempotent; returns the job as it now is.
    pub async fn cancel(&self, tenant: &str, raw_id: &str) -> Result<JobView, ApiError> {
        let job = self.load(tenant, raw_id).await?;
        let job = self.apply_move(job, &Move::Cancel).await?;
        tracing::info!(job_id = %job.id, status = %job.status, "cancel requested");
        self.view(&job).await
    }

    /// Applies a move with read-decide-write retries. A refusal is returned as-is.
    pub async fn apply_move(&self, job: Job, mv: &Move) -> Result<Job, ApiError> {
        match apply_move(
            self.ports.store.as_ref(),
            self.ports.clock.as_ref(),
            job,
            mv,
        )
        .await
        {
            Ok(job) => Ok(job),
            Err(MoveError::Store(e)) => Err(e.into()),
            Err(MoveError::Refused(r)) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                r.to_string(),
            )),
            Err(MoveError::Gone) => Err(ApiError::not_found("job")),
            Err(MoveError::Contended) => Err(conflict_exhausted()),
        }
    }

    /// `GET /api/v2/jobs/{id}/workflow`.
    pub async fn workflow(&self, tenant: &str, raw_id: &str) -> Result<WorkflowView, ApiError> {
        let job = self.load(tenant, raw_id).await?;
        let input = self.input(&job).await?;
        Ok(WorkflowView {
            workflow: input.workflow,
            format: "api".into(),
        })
    }

    /// The stored input of a job (workflow and `extra_data`). For runners.
    pub async fn input(&self, job: &Job) -> Result<JobInput, ApiError> {
        let bytes = self
            .ports
            .blobs
            .get(&job.input_key)
            .await?
            .ok_or_else(|| ApiError::not_found("job workflow"))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            tracing::error!(job_id = %job.id, error = %e, "stored job input is unreadable");
            ApiError::unavailable()
        })
    }

    /// `GET /api/v2/jobs`: newest first, filtered by metadata, paged by a MAC'd cursor.
    pub async fn list(
        &self,
        tenant: &str,
        metadata: Vec<(String, String)>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, ApiError> {
        let before = match cursor {
            None => None,
            Some(raw) => Some(self.cursors.decode(tenant, &metadata, raw).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    "the cursor is invalid or was issued for a different query; start again without it",
                )
            })?),
        };
        let query = ListQuery {
            tenant: tenant.to_string(),
            metadata: metadata.clone(),
            before,
            limit: limit + 1,
        };
        let listed = self.ports.store.list_jobs_page(&query).await?;
        let mut jobs = listed.jobs;
        let next_cursor = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last()
                .map(|last| self.cursors.encode(tenant, &metadata, &last.id))
        } else {
            // The store stopped at its read budget: a short (even empty) page, and a
            // cursor that goes on where it stopped.
            listed
                .resume_before
                .map(|id| self.cursors.encode(tenant, &metadata, &id))
        };
        let mut views = Vec::with_capacity(jobs.len());
        for job in &jobs {
            views.push(self.list_item(job));
        }
        Ok(JobPage {
            jobs: views,
            next_cursor,
        })
    }

    fn urls(&self, id: &JobId) -> JobUrls {
        let base = format!("{}/api/v2/jobs/{id}", self.config.path_prefix);
        JobUrls {
            events: format!("{base}/events"),
            cancel: format!("{base}/cancel"),
            self_: base,
        }
    }

    fn outputs_view(&self, job: &Job) -> Vec<OutputView> {
        let expires = self.ports.clock.now() + self.config.url_ttl;
        job.outputs
            .iter()
            .map(|o| OutputView {
                node_id: o.node_id.clone(),
                name: o.name.clone(),
                kind: o.kind,
                content_type: o.content_type.clone(),
                size_bytes: o.size_bytes,
                id: o.asset_id.clone(),
                hash: o.hash.clone(),
                url: self
                    .ports
                    .blobs
                    .signed_url(
                        &o.blob_key,
                        SignedAccess::Get,
                        expires,
                        Some(&crate::content_policy::served_type(&o.content_type)),
                    )
                    .unwrap_or_else(|_| {
                        format!(
                            "{}/api/v2/assets/{}/content",
                            self.config.path_prefix, o.asset_id
                        )
                    }),
                url_expires_at: timestamp(expires),
            })
            .collect()
    }

    /// The lighter shape of a list item: everything but the live progress and the
    /// queue position, which cost a read each.
    fn list_item(&self, job: &Job) -> JobView {
        self.render(job, None, None)
    }

    fn render(
        &self,
        job: &Job,
        progress: Option<Progress>,
        queue_position: Option<u64>,
    ) -> JobView {
        JobView {
            id: job.id.to_string(),
            status: job.status,
            created_at: timestamp(job.created_at),
            started_at: job.started_at.map(timestamp),
            completed_at: job.completed_at.map(timestamp),
            expires_at: timestamp(job.expires_at),
            queue_position,
            progress,
            outputs: self.outputs_view(job),
            error: job.error.clone(),
            metrics: Metrics {
                queue_ms: job.queue_ms(),
                execution_ms: job.execution_ms(),
                gpu_ms: job.gpu_seconds().map(|s| (s * 1000.0).round() as i64),
                cost_micro_usd: job.cost_usd().map(|usd| (usd * 1e6).round() as i64),
            },
            urls: self.urls(&job.id),
            metadata: job.metadata.clone(),
        }
    }

    /// The full v2 job object.
    pub async fn view(&self, job: &Job) -> Result<JobView, ApiError> {
        let progress = self.ports.store.get_progress(&job.id).await?;
        let queue_position = if job.status == JobStatus::Queued {
            Some(
                self.ports
                    .store
                    .queue_position(&job.id, QUEUE_POSITION_CAP)
                    .await?,
            )
        } else {
            None
        };
        self.view_snapshot(JobSnapshot {
            job: job.clone(),
            progress,
            queue_position,
        })
        .await
    }

    /// The v2 job object from a snapshot read in one go.
    async fn view_snapshot(&self, snapshot: JobSnapshot) -> Result<JobView, ApiError> {
        let JobSnapshot {
            job,
            progress: stored,
            queue_position,
        } = snapshot;
        let job = &job;
        // Progress from an earlier attempt (or a fenced-out runner) is not shown.
        let mut progress = stored
            .filter(|p| p.attempt == job.attempt)
            .map(|p| p.progress);
        if job.status == JobStatus::Succeeded
            && let Some(p) = progress.as_mut()
        {
            p.value = 1.0;
            p.nodes_done = p.nodes_total;
            p.message = None;
        }
        if let Some(position) = queue_position
            && progress.is_none()
        {
            progress = Some(self.waiting_progress(position).await?);
        }
        Ok(self.render(job, progress, queue_position))
    }

    /// The progress shown while a job waits: honest about capacity problems.
    async fn waiting_progress(&self, position: u64) -> Result<Progress, ApiError> {
        let fleet = self.fleet_cached().await?;
        let message = match fleet.capacity_error {
            Some(reason) => format!("waiting for GPU capacity: {reason}"),
            None if position == 0 => "waiting for a worker".to_string(),
            None if position >= QUEUE_POSITION_CAP => {
                format!("queued behind {QUEUE_POSITION_CAP}+ jobs")
            }
            None => format!("queued behind {position} job(s)"),
        };
        Ok(Progress {
            message: Some(message),
            ..Progress::default()
        })
    }

    async fn fleet_cached(&self) -> Result<Fleet, ApiError> {
        let now = self.ports.clock.now();
        let cached = self
            .fleet_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(at, _)| now - *at < Duration::seconds(1));
        if let Some((_, fleet)) = cached {
            return Ok(fleet);
        }
        let fleet = self.ports.store.get_fleet().await?;
        *self.fleet_cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, fleet.clone()));
        Ok(fleet)
    }
}

fn in_flight_conflict() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_conflict",
        "a request with this Idempotency-Key is still being processed; retry after the Retry-After delay",
    )
    .with_retry_after(1)
}

fn validate_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is recommended)",
        ));
    }
    Ok(())
}

/// Why [`apply_move`] did not write.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the job no longer exists")]
    Gone,
    #[error("lost the conditional write too many times")]
    Contended,
}

/// Read-decide-write: applies `mv` to the latest version of the job, retrying when a
/// concurrent write wins. Starts from `job` as the caller last read it.
pub async fn apply_move(
    store: &dyn JobStore,
    clock: &dyn Clock,
    job: Job,
    mv: &Move,
) -> Result<Job, MoveError> {
    let id = job.id.clone();
    let mut current = job;
    for _ in 0..MAX_CAS_RETRIES {
        let applied = lifecycle::apply(&current, mv, clock.now())?;
        if !applied.changed {
            return Ok(applied.job);
        }
        match store.put_job(&applied.job, current.rev).await {
            Ok(()) => return Ok(applied.job),
            Err(StoreError::Conflict) => {
                current = store.get_job(&id).await?.ok_or(MoveError::Gone)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(MoveError::Contended)
}
