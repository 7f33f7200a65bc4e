//! Live job events: what `GET /api/v2/jobs/{id}/events` streams (the API sends them as
//! Server-Sent Events).
//!
//! The stream is derived from the store, never the other way round: it reads the job
//! (and its progress record) every [`EventsConfig::poll`] and yields what changed, as
//! [`JobEvent`]s:
//!
//! - `status` `{status, queue_position}`: on connect, on every change, and last;
//! - `progress`: a complete v2 `Progress` snapshot whenever it changes;
//! - `output`: each committed output, once;
//! - `log` `{level, message}`: queue and capacity news while waiting, the error on failure.
//!
//! It is bounded the way it must be on AWS (API Gateway buffers and cuts responses at
//! 30 s): after [`EventsConfig::window`] the stream ends and comfy-sdk reconnects by
//! itself, getting a fresh snapshot. Each tenant may hold at most
//! [`EventsConfig::max_streams_per_tenant`] streams at once (`too_many_streams`),
//! counted in the store, so across processes ([`StreamLimiter`] says how exactly).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use serde_json::{Value, json};

use crate::error::{DomainError, ErrorKind};
use crate::model::{JobStatus, Progress};
use crate::ports::{Clock, JobStore};
use crate::service::JobService;
use crate::views::OutputView;

#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// How long one stream stays open before the server closes it.
    pub window: Duration,
    /// How often the store is read for changes.
    pub poll: Duration,
    pub max_streams_per_tenant: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            window: Duration::from_secs(20),
            poll: Duration::from_millis(250),
            max_streams_per_tenant: 16,
        }
    }
}

/// Holds the tenants' stream slots in the store ([`JobStore::acquire_stream_slot`]),
/// so the limit holds across every process that serves streams (each Lambda instance
/// of `status`), not per process.
///
/// **The guarantee, exact:** at most `max_streams_per_tenant` slots are held at once,
/// whatever the number of processes: the store decides, with one conditional write
/// (ARCHITECTURE §4's rule for every decision; DynamoDB: one of `max` slot items;
/// SQLite: the one process that serves streams; see each adapter). A slot is held
/// like a lease: until a deadline, freed early by its holder or late by time.
/// A slot is taken until the stream's window ends plus [`SLOT_MARGIN`] and freed when
/// the stream ends; a process that dies mid-stream (a Lambda frozen or killed, so
/// the free never runs) leaves a slot that frees itself at that `until`. What it
/// costs is the other way round: for at most a window plus the margin, such a dead
/// stream still counts against its tenant (a limit that can briefly refuse one
/// stream too many, never admit one).
///
/// [`JobStore::acquire_stream_slot`]: crate::ports::JobStore::acquire_stream_slot
pub struct StreamLimiter {
    store: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
}

/// How long past its window a slot is held: the stream's last read and the free
/// that follows it.
pub const SLOT_MARGIN: Duration = Duration::from_secs(10);

/// Holds one tenant's stream slot; frees it when dropped (the client went away or the
/// stream ended). The free is a store write, spawned; if it never runs, the slot
/// expires.
pub struct StreamSlot {
    store: Arc<dyn JobStore>,
    tenant: String,
    holder: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime to write with: the slot expires
        };
        let (store, tenant, holder) = (
            self.store.clone(),
            std::mem::take(&mut self.tenant),
            std::mem::take(&mut self.holder),
        );
        runtime.spawn(async move {
            if let Err(e) = store.release_stream_slot(&tenant, &holder).await {
                tracing::warn!(error = %e, "could not free a stream slot; it expires by itself");
            }
        });
    }
}

impl StreamLimiter {
    pub fn new(store: Arc<dyn JobStore>, clock: Arc<dyn Clock>) -> Self {
        StreamLimiter { store, clock }
    }

    /// A slot for a stream that lasts at most `window`, if `tenant` holds fewer than
    /// `max`.
    pub async fn acquire(
        &self,
        tenant: &str,
        max: usize,
        window: Duration,
    ) -> Result<StreamSlot, DomainError> {
        let holder = ulid::Ulid::new().to_string();
        let now = self.clock.now();
        let until = now
            + chrono::Duration::from_std(window + SLOT_MARGIN)
                .map_err(|_| DomainError::unavailable())?;
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        if !self
            .store
            .acquire_stream_slot(tenant, &holder, max, now, until)
            .await?
        {
            return Err(DomainError::new(
                ErrorKind::TooManyRequests,
                "too_many_streams",
                format!("at most {max} event streams may be open at once; close one or poll"),
            )
            .with_retry_after(5));
        }
        Ok(StreamSlot {
            store: self.store.clone(),
            tenant: tenant.to_string(),
            holder,
        })
    }
}

/// One event of a job's stream.
#[derive(Debug, Clone)]
pub enum JobEvent {
    Status {
        status: JobStatus,
        queue_position: Option<u64>,
    },
    Progress(Progress),
    Output(OutputView),
    Log {
        level: &'static str,
        message: Option<String>,
    },
}

impl JobEvent {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Status { .. } => "status",
            JobEvent::Progress(_) => "progress",
            JobEvent::Output(_) => "output",
            JobEvent::Log { .. } => "log",
        }
    }

    /// The event's data, as JSON.
    pub fn data(&self) -> Value {
        match self {
            JobEvent::Status {
                status,
                queue_position,
            } => json!({"status": status, "queue_position": queue_position}),
            JobEvent::Progress(progress) => json!(progress),
            JobEvent::Output(output) => json!(output),
            JobEvent::Log { level, message } => json!({"level": level, "message": message}),
        }
    }
}

/// The events of a job the caller may see, until the job ends, the window closes or
/// the stream is dropped (which frees the tenant's slot).
pub async fn job_events(
    jobs: Arc<JobService>,
    limiter: Arc<StreamLimiter>,
    config: EventsConfig,
    tenant: String,
    raw_id: String,
) -> Result<impl Stream<Item = JobEvent> + Send + 'static, DomainError> {
    // Not found before taking a slot, so probing unknown ids costs nothing. Each look is
    // one snapshot read (job, progress and queue position together).
    let first = jobs.get(&tenant, &raw_id).await?;
    let slot = limiter
        .acquire(&tenant, config.max_streams_per_tenant, config.window)
        .await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<JobEvent>(32);
    tokio::spawn(async move {
        let _slot = slot;
        let deadline = tokio::time::Instant::now() + config.window;
        let mut last_status = None;
        let mut last_progress = None;
        let mut last_message: Option<String> = None;
        let mut sent_outputs = HashSet::new();
        let mut view = first;
        loop {
            let mut frames = Vec::new();
            let status = (view.status, view.queue_position);
            let terminal = view.status.is_terminal();
            if last_status != Some(status) && !terminal {
                frames.push(JobEvent::Status {
                    status: view.status,
                    queue_position: view.queue_position,
                });
            }
            for output in &view.outputs {
                if sent_outputs.insert(output.id.clone()) {
                    frames.push(JobEvent::Output(output.clone()));
                }
            }
            if let Some(progress) = view
                .progress
                .as_ref()
                .filter(|p| Some(*p) != last_progress.as_ref())
            {
                frames.push(JobEvent::Progress(progress.clone()));
                let message = progress.message.clone();
                if view.status == JobStatus::Queued && message.is_some() && message != last_message
                {
                    let level = if message.as_deref().is_some_and(|m| m.contains("capacity")) {
                        "warning"
                    } else {
                        "info"
                    };
                    frames.push(JobEvent::Log {
                        level,
                        message: message.clone(),
                    });
                }
                last_message = message;
                last_progress = view.progress.clone();
            }
            if terminal {
                if let Some(error) = &view.error {
                    frames.push(JobEvent::Log {
                        level: "error",
                        message: Some(format!("{}: {}", error.code, error.message)),
                    });
                }
                frames.push(JobEvent::Status {
                    status: view.status,
                    queue_position: view.queue_position,
                });
            }
            last_status = Some(status);
            for frame in frames {
                if sender.send(frame).await.is_err() {
                    return; // the client went away
                }
            }
            if terminal || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(config.poll).await;
            if sender.is_closed() {
                return; // the client went away: free the slot now
            }
            match jobs.get(&tenant, &raw_id).await {
                Ok(fresh) => view = fresh,
                Err(_) => return,
            }
        }
    });
    Ok(futures::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|frame| (frame, receiver)) },
    ))
}
