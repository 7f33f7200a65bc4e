//! Live job events: `GET /api/v2/jobs/{id}/events` (Server-Sent Events).
//!
//! The stream is derived from the store, never the other way round: it reads the job
//! (and its progress record) every [`EventsConfig::poll`] and sends what changed:
//!
//! - `status` `{status, queue_position}`: on connect, on every change, and last;
//! - `progress`: a complete v2 `Progress` snapshot whenever it changes;
//! - `output`: each committed output, once;
//! - `log` `{level, message}`: queue and capacity news while waiting, the error on failure.
//!
//! It is bounded the way it must be on AWS (API Gateway buffers and cuts responses at
//! 30 s): after [`EventsConfig::window`] the server closes it and comfy-sdk reconnects
//! by itself, getting a fresh snapshot. Each tenant may hold at most
//! [`EventsConfig::max_streams_per_tenant`] streams at once (429 `too_many_streams`).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Serialize;
use serde_json::json;

use crate::error::ApiError;
use crate::model::JobStatus;
use crate::service::JobService;

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

/// Counts open streams per tenant.
#[derive(Default)]
pub struct StreamLimiter {
    open: Mutex<HashMap<String, usize>>,
}

/// Holds one tenant's stream slot; frees it when dropped (the client went away or the
/// stream ended).
pub struct StreamSlot {
    limiter: Arc<StreamLimiter>,
    tenant: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl StreamLimiter {
    pub fn acquire(self: &Arc<Self>, tenant: &str, max: usize) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(tenant.to_string()).or_default();
        if *count >= max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!("at most {max} event streams may be open at once; close one or poll"),
            )
            .with_retry_after(5));
        }
        *count += 1;
        Ok(StreamSlot {
            limiter: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

fn event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name).data("{}"))
}

/// The SSE response for a job the caller may see.
pub async fn job_events(
    jobs: Arc<JobService>,
    limiter: Arc<StreamLimiter>,
    config: EventsConfig,
    tenant: String,
    raw_id: String,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // 404 before taking a slot, so probing unknown ids costs nothing. Each look is
    // one snapshot read (job, progress and queue position together).
    let first = jobs.get(&tenant, &raw_id).await?;
    let slot = limiter.acquire(&tenant, config.max_streams_per_tenant)?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(32);
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
                frames.push(event(
                    "status",
                    &json!({"status": view.status, "queue_position": view.queue_position}),
                ));
            }
            for output in &view.outputs {
                if sent_outputs.insert(output.id.clone()) {
                    frames.push(event("output", output));
                }
            }
            if view.progress.is_some() && view.progress != last_progress {
                frames.push(event("progress", &view.progress));
                let message = view.progress.as_ref().and_then(|p| p.message.clone());
                if view.status == JobStatus::Queued && message.is_some() && message != last_message
                {
                    let level = if message.as_deref().is_some_and(|m| m.contains("capacity")) {
                        "warning"
                    } else {
                        "info"
                    };
                    frames.push(event("log", &json!({"level": level, "message": message})));
                }
                last_message = message;
                last_progress = view.progress.clone();
            }
            if terminal {
                if let Some(error) = &view.error {
                    frames.push(event(
                        "log",
                        &json!({"level": "error", "message": format!("{}: {}", error.code, error.message)}),
                    ));
                }
                frames.push(event(
                    "status",
                    &json!({"status": view.status, "queue_position": view.queue_position}),
                ));
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
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|frame| (Ok(frame), receiver))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}
