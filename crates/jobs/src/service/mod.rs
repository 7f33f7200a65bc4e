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
//!
//! | module | what it holds |
//! |---|---|
//! | this one | [`JobService`]: get, cancel, workflow, input, list; [`JobsConfig`] |
//! | `submit` | submit, idempotency replays, enqueue (the write order above) |
//! | `render` | the v2 job object: URLs, outputs, progress and the waiting message |
//! | `moves` | [`apply_move`]: the bounded read-decide-write every state change goes through |

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

use crate::cursor::CursorCodec;
use crate::error::{DomainError, ErrorKind};
use crate::lifecycle::Move;
use crate::model::{Job, JobId, JobInput};
use crate::ports::{Fleet, ListQuery, Queue, QueueName};
use crate::views::{JobView, WorkflowView};

mod moves;
mod render;
mod submit;

pub use moves::{MoveError, apply_move};

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

pub use crate::ports::Ports;

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
    /// The node catalogue submit checks graphs against, parsed once per hash.
    catalogues: crate::catalogue::Catalogues,
}

fn conflict_exhausted() -> DomainError {
    DomainError::new(
        ErrorKind::Conflict,
        "conflict",
        "the job changed too often while updating it; retry",
    )
    .with_retry_after(1)
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
            catalogues: Default::default(),
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

    /// Reads a job of this tenant. Another tenant's job is "not found", never "forbidden".
    pub async fn load(&self, tenant: &str, raw_id: &str) -> Result<Job, DomainError> {
        let id = JobId::parse(raw_id).ok_or_else(|| DomainError::not_found("job"))?;
        match self.ports.store.get_job(&id).await? {
            Some(job) if job.tenant == tenant => Ok(job),
            _ => Err(DomainError::not_found("job")),
        }
    }

    /// `GET /api/v2/jobs/{id}`.
    pub async fn get(&self, tenant: &str, raw_id: &str) -> Result<JobView, DomainError> {
        let id = JobId::parse(raw_id).ok_or_else(|| DomainError::not_found("job"))?;
        match self
            .ports
            .store
            .load_snapshot(&id, QUEUE_POSITION_CAP)
            .await?
        {
            Some(snapshot) if snapshot.job.tenant == tenant => self.view_snapshot(snapshot).await,
            _ => Err(DomainError::not_found("job")),
        }
    }

    /// `POST /api/v2/jobs/{id}/cancel`: idempotent; returns the job as it now is.
    pub async fn cancel(&self, tenant: &str, raw_id: &str) -> Result<JobView, DomainError> {
        let job = self.load(tenant, raw_id).await?;
        let job = self.apply_move(job, &Move::Cancel).await?;
        tracing::info!(job_id = %job.id, status = %job.status, "cancel requested");
        self.view(&job).await
    }

    /// Applies a move with read-decide-write retries. A refusal is returned as-is.
    pub async fn apply_move(&self, job: Job, mv: &Move) -> Result<Job, DomainError> {
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
            Err(MoveError::Refused(r)) => Err(DomainError::new(
                ErrorKind::Conflict,
                "conflict",
                r.to_string(),
            )),
            Err(MoveError::Gone) => Err(DomainError::not_found("job")),
            Err(MoveError::Contended) => Err(conflict_exhausted()),
        }
    }

    /// `GET /api/v2/jobs/{id}/workflow`.
    pub async fn workflow(&self, tenant: &str, raw_id: &str) -> Result<WorkflowView, DomainError> {
        let job = self.load(tenant, raw_id).await?;
        let input = self.input(&job).await?;
        Ok(WorkflowView {
            workflow: input.workflow,
            format: "api".into(),
        })
    }

    /// The stored input of a job (workflow and `extra_data`). For runners.
    pub async fn input(&self, job: &Job) -> Result<JobInput, DomainError> {
        let bytes = self
            .ports
            .blobs
            .get(&job.input_key)
            .await?
            .ok_or_else(|| DomainError::not_found("job workflow"))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            tracing::error!(job_id = %job.id, error = %e, "stored job input is unreadable");
            DomainError::unavailable()
        })
    }

    /// `GET /api/v2/jobs`: newest first, filtered by metadata, paged by a MAC'd cursor.
    pub async fn list(
        &self,
        tenant: &str,
        metadata: Vec<(String, String)>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, DomainError> {
        let before = match cursor {
            None => None,
            Some(raw) => Some(self.cursors.decode(tenant, &metadata, raw).ok_or_else(|| {
                DomainError::new(
                    ErrorKind::InvalidRequest,
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
            views.push(self.list_item(job).await);
        }
        Ok(JobPage {
            jobs: views,
            next_cursor,
        })
    }
}
