//! One WebSocket per ComfyUI generation, shared by every prompt of this runner.
//!
//! ComfyUI sends a prompt's events to the socket of the prompt's `client_id`. Opening a
//! socket per prompt costs a connection setup (and, with some servers, a stall on the
//! first frames) on every job's critical path; so the runner keeps one socket, with
//! `client_id = scr-runner-<worker>-<uuid>`, submits every prompt under that id, and
//! routes each event to the prompt it names. Items about the connection itself
//! (`Disconnected`, `Reconnected`, `GaveUp`) go to every prompt: after a reconnect,
//! history is the source of truth, and [`run`] re-reads it.
//!
//! [`run`] is the runner's version of `comfyui::Client::run_prompt` over this socket:
//! submit with our own prompt id (subscribed *before* the POST, since events may
//! arrive before its answer), follow events, poll `/queue` then `/history` every second
//! so that a lost event can never hang us, and return what history says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use comfyui::{Client, Error, PromptRequest, PromptRun, PromptState, StreamConfig, StreamItem};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::CLIENT_ID_PREFIX;

pub struct EventHub {
    client_id: String,
    subs: Mutex<HashMap<String, mpsc::UnboundedSender<StreamItem>>>,
    dead: AtomicBool,
    stop: CancellationToken,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl EventHub {
    pub(crate) async fn connect(client: &Client, worker: &str) -> Result<Arc<EventHub>, Error> {
        let client_id = format!(
            "{CLIENT_ID_PREFIX}{worker}-{}",
            uuid::Uuid::new_v4().simple()
        );
        let config = StreamConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            max_reconnect_attempts: 4,
            ..StreamConfig::default()
        };
        let stream = client.events(&client_id, config).await?;
        let hub = Arc::new(EventHub {
            client_id,
            subs: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        tokio::spawn(pump(stream, Arc::downgrade(&hub), hub.stop.clone()));
        Ok(hub)
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// True once the socket gave up reconnecting: no prompt can be followed on it, so
    /// the supervisor starts a new generation (with a new socket).
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Stops following (the generation is over).
    pub(crate) fn close(&self) {
        self.stop.cancel();
    }

    fn subs(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<StreamItem>>> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(&self, prompt_id: &str) -> mpsc::UnboundedReceiver<StreamItem> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subs().insert(prompt_id.to_string(), tx);
        rx
    }

    fn unsubscribe(&self, prompt_id: &str) {
        self.subs().remove(prompt_id);
    }

    fn broadcast(&self, item: &StreamItem) {
        for tx in self.subs().values() {
            let _ = tx.send(item.clone());
        }
    }
}

async fn pump(mut stream: comfyui::EventStream, hub: Weak<EventHub>, stop: CancellationToken) {
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = stop.cancelled() => break,
        };
        let Some(hub) = hub.upgrade() else {
            break;
        };
        match item {
            Some(StreamItem::Event(event)) => {
                if let Some(prompt_id) = event.prompt_id()
                    && let Some(tx) = hub.subs().get(prompt_id)
                {
                    let _ = tx.send(StreamItem::Event(event));
                }
            }
            Some(item) => {
                if matches!(item, StreamItem::GaveUp { .. }) {
                    hub.dead.store(true, Ordering::SeqCst);
                }
                hub.broadcast(&item);
            }
            None => {
                hub.dead.store(true, Ordering::SeqCst);
                hub.broadcast(&StreamItem::GaveUp {
                    reason: "the event stream ended".into(),
                });
                break;
            }
        }
    }
    if let Some(hub) = hub.upgrade() {
        hub.dead.store(true, Ordering::SeqCst);
        hub.subs().clear();
    }
    stream.close().await;
}

struct Unsubscribe<'a>(&'a EventHub, &'a str);

impl Drop for Unsubscribe<'_> {
    fn drop(&mut self) {
        self.0.unsubscribe(self.1);
    }
}

fn finished(prompt_id: &str, history: comfyui::HistoryEntry, reconnects: u32) -> PromptRun {
    PromptRun {
        prompt_id: prompt_id.to_string(),
        outcome: history.outcome(),
        outputs: history.collect_outputs(),
        history,
        node_errors: Map::new(),
        reconnects,
    }
}

/// Submits `workflow` as `prompt_id` and follows it to its end over the shared socket.
/// Errors as `Client::run_prompt`: `Rejected`, `ServerGone`, `PromptLost`.
pub(crate) async fn run(
    client: &Client,
    hub: &EventHub,
    prompt_id: &str,
    workflow: Map<String, Value>,
    extra_data: Option<Map<String, Value>>,
    mut on_item: impl FnMut(&StreamItem),
) -> comfyui::Result<PromptRun> {
    let mut rx = hub.subscribe(prompt_id);
    let _unsubscribe = Unsubscribe(hub, prompt_id);
    if hub.dead.load(Ordering::SeqCst) {
        return Err(Error::ServerGone("the event stream is gone".into()));
    }
    let req = PromptRequest {
        prompt_id: prompt_id.to_string(),
        prompt: workflow,
        client_id: Some(hub.client_id.clone()),
        extra_data,
        front: false,
        partial_execution_targets: None,
        allow_partial: false,
    };
    match client.queue_prompt(&req).await {
        Ok(_) => {}
        Err(Error::Rejected(r)) => {
            if r.queued {
                let _ = client
                    .cancel_prompt(prompt_id, Duration::from_secs(2))
                    .await;
            }
            return Err(Error::Rejected(r));
        }
        Err(e) => return Err(e),
    }
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut grace: Option<tokio::time::Instant> = None;
    let (mut failures, mut reconnects) = (0u32, 0u32);
    loop {
        let mut check = false;
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => {
                    on_item(&item);
                    match &item {
                        StreamItem::Event(e) if e.is_done(prompt_id) => check = true,
                        StreamItem::Event(e) if e.is_terminal_for(prompt_id) => {
                            grace = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                        }
                        StreamItem::Reconnected { .. } => {
                            reconnects += 1;
                            check = true;
                        }
                        StreamItem::GaveUp { reason } => {
                            return match client.prompt_state(prompt_id).await {
                                Ok(PromptState::Finished(h)) => Ok(finished(prompt_id, *h, reconnects)),
                                _ => Err(Error::ServerGone(reason.clone())),
                            };
                        }
                        _ => {}
                    }
                }
                None => return Err(Error::ServerGone("the event stream is gone".into())),
            },
            _ = poll.tick() => check = true,
            _ = tokio::time::sleep_until(grace.unwrap_or(far)), if grace.is_some() => {
                grace = None;
                check = true;
            }
        }
        if check {
            match client.prompt_state(prompt_id).await {
                Ok(PromptState::Finished(h)) => return Ok(finished(prompt_id, *h, reconnects)),
                Ok(PromptState::Unknown) => return Err(Error::PromptLost(prompt_id.to_string())),
                Ok(_) => failures = 0,
                Err(e @ (Error::Transport { .. } | Error::Status { .. })) => {
                    failures += 1;
                    if failures >= 2 {
                        return Err(Error::ServerGone(e.to_string()));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}
