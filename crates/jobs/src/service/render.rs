//! The v2 job object: a job's URLs, its outputs with fresh signed URLs, its progress
//! (or, while it waits, an honest message about the queue and capacity).

use chrono::Duration;

use super::JobService;
use crate::error::DomainError;
use crate::model::{Job, JobId, JobStatus, Progress, timestamp};
use crate::ports::{Fleet, JobSnapshot, QUEUE_POSITION_CAP, SignedAccess};
use crate::views::{JobUrls, JobView, Metrics, OutputView};

impl JobService {
    fn urls(&self, id: &JobId) -> JobUrls {
        let base = format!("{}/api/v2/jobs/{id}", self.config.path_prefix);
        JobUrls {
            events: format!("{base}/events"),
            cancel: format!("{base}/cancel"),
            self_: base,
        }
    }

    /// The outputs with fresh signed URLs. Presigning is local work (no request
    /// leaves the process once credentials are cached), so the outputs are signed
    /// together; one that cannot be signed points at the API's `/content` instead.
    async fn outputs_view(&self, job: &Job) -> Vec<OutputView> {
        let expires = self.ports.clock.now() + self.config.url_ttl;
        futures::future::join_all(job.outputs.iter().map(|o| async move {
            let access = SignedAccess::Get {
                content_type: Some(crate::content_policy::served_type(&o.content_type)),
            };
            let url = match self.ports.blobs.presign(&o.blob_key, access, expires).await {
                Ok(signed) => signed.url,
                Err(_) => format!(
                    "{}/api/v2/assets/{}/content",
                    self.config.path_prefix, o.asset_id
                ),
            };
            OutputView {
                node_id: o.node_id.clone(),
                name: o.name.clone(),
                kind: o.kind,
                content_type: o.content_type.clone(),
                size_bytes: o.size_bytes,
                id: o.asset_id.clone(),
                hash: o.hash.clone(),
                url,
                url_expires_at: timestamp(expires),
            }
        }))
        .await
    }

    /// The lighter shape of a list item: everything but the live progress and the
    /// queue position, which cost a read each.
    pub(super) async fn list_item(&self, job: &Job) -> JobView {
        self.render(job, None, None).await
    }

    async fn render(
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
            outputs: self.outputs_view(job).await,
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
    pub async fn view(&self, job: &Job) -> Result<JobView, DomainError> {
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
    pub(super) async fn view_snapshot(
        &self,
        snapshot: JobSnapshot,
    ) -> Result<JobView, DomainError> {
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
        if let Some(position) = queue_position {
            // A graph accepted unchecked says so beside the wait.
            let unchecked = progress
                .as_ref()
                .is_some_and(|p| p.message.as_deref() == Some(crate::catalogue::UNCHECKED_MESSAGE));
            if progress.is_none() || unchecked {
                let mut waiting = self.waiting_progress(position).await?;
                if unchecked && let Some(m) = waiting.message.as_mut() {
                    *m = format!("{m}; {}", crate::catalogue::UNCHECKED_MESSAGE);
                }
                progress = Some(waiting);
            }
        }
        Ok(self.render(job, progress, queue_position).await)
    }

    /// The progress shown while a job waits: honest about capacity problems.
    async fn waiting_progress(&self, position: u64) -> Result<Progress, DomainError> {
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

    async fn fleet_cached(&self) -> Result<Fleet, DomainError> {
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
