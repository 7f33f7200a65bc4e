//! The deliverer: fans the outbox out into deliveries, and sends what is due.
//!
//! It runs beside the API (`dev` runs [`Deliverer::run`] as a task; on AWS the
//! `webhooks` Lambda calls the same steps, [`Deliverer::fan_out_ids`] for each record of
//! the table's stream and [`Deliverer::attempt`] for each message of its queue), never inside a job's
//! path: a receiver that is slow or down costs this loop time, bounded by the sender's
//! timeout and [`DeliveryConfig::concurrency`], and never a job or a runner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

use super::ports::{AttemptRecord, MAX_ENDPOINTS_PER_TENANT, SendOutcome, WebhookSender};
use super::service::WebhookService;
use super::{
    Attempt, Claimed, Delivery, DeliveryState, EventType, OutboxEvent, WEBHOOK_SCHEMA_VERSION,
    backoff::Backoff, signing,
};
use crate::error::{DomainError, ErrorKind};
use crate::ports::StoreError;

/// Settings of the deliverer.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub backoff: Backoff,
    /// How long a claimed delivery stays hidden from other deliverers: longer than one
    /// request may take (the sender's timeout), so that only a dead holder loses it.
    pub lease: Duration,
    /// The longest one request may take, the sender's own timeout included.
    pub timeout: Duration,
    /// Deliveries claimed, and outbox events fanned out, per round.
    pub batch: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// How often [`Deliverer::run`] looks for work.
    pub poll_every: Duration,
    /// How long finished deliveries and their attempts stay visible.
    pub keep_finished: chrono::Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            backoff: Backoff::default(),
            lease: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            batch: 64,
            concurrency: 16,
            poll_every: Duration::from_millis(500),
            keep_finished: chrono::Duration::days(7),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub events: usize,
    pub sent: usize,
    pub delivered: usize,
}

/// How one [`Deliverer::attempt`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempted {
    /// The receiver answered 2xx.
    pub accepted: bool,
    /// The attempt was recorded under the claim (false: the claim had lapsed, or the
    /// store failed; the delivery is then someone else's, or due again after the lease).
    pub recorded: bool,
    /// The delivery's state after it, as recorded.
    pub state: DeliveryState,
    /// The delivery's attempts after it.
    pub attempts: u32,
    /// When the next attempt is due, for a recorded `Pending`.
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub struct Deliverer {
    hooks: Arc<WebhookService>,
    sender: Arc<dyn WebhookSender>,
    config: DeliveryConfig,
}

impl Deliverer {
    pub fn new(
        hooks: Arc<WebhookService>,
        sender: Arc<dyn WebhookSender>,
        config: DeliveryConfig,
    ) -> Self {
        Deliverer {
            hooks,
            sender,
            config,
        }
    }

    /// Turns up to one batch of outbox events into deliveries; returns how many events.
    pub async fn drain_outbox(&self) -> Result<usize, DomainError> {
        let store = &self.hooks.store;
        let events = store.pending_events(self.config.batch).await?;
        for event in &events {
            self.fan_out(event).await?;
        }
        Ok(events.len())
    }

    /// Fans one event out: writes its deliveries (and, where the store keeps an
    /// outbox, removes the event). Returns how many deliveries it made. What a consumer
    /// of the table's stream calls for each record (`aws::webhooks::outbox_event`).
    pub async fn fan_out(&self, event: &OutboxEvent) -> Result<usize, DomainError> {
        Ok(self.fan_out_ids(event).await?.len())
    }

    /// [`Self::fan_out`], answering the ids of the deliveries written (or found
    /// written by an earlier fan-out of the same event): what a consumer that hands
    /// each delivery to a queue needs.
    pub async fn fan_out_ids(&self, event: &OutboxEvent) -> Result<Vec<String>, DomainError> {
        let deliveries = self.deliveries_of(event).await?;
        self.hooks.store.fan_out(event, &deliveries).await?;
        Ok(deliveries.into_iter().map(|d| d.id).collect())
    }

    /// The deliveries an event makes: one per endpoint that wants it, each carrying the
    /// job as `GET /api/v2/jobs/{id}` renders it now.
    async fn deliveries_of(&self, event: &OutboxEvent) -> Result<Vec<Delivery>, DomainError> {
        let Some(kind) = EventType::of_status(event.status) else {
            return Ok(Vec::new());
        };
        let endpoints = self
            .hooks
            .store
            .list_endpoints(&event.tenant, MAX_ENDPOINTS_PER_TENANT.max(64))
            .await?;
        if !endpoints.iter().any(|e| e.events.contains(&kind)) {
            return Ok(Vec::new());
        }
        let view = match self
            .hooks
            .jobs
            .get(&event.tenant, event.job_id.as_str())
            .await
        {
            Ok(view) => view,
            // Swept since: nothing left to tell.
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let now = self.hooks.jobs.ports().clock.now();
        let at = match kind {
            EventType::JobRunning => view.started_at.clone(),
            _ => view.completed_at.clone(),
        }
        .unwrap_or_else(|| crate::model::timestamp(now));
        let payload = json!({"type": kind.as_str(), "timestamp": at, "data": view}).to_string();
        Ok(endpoints
            .iter()
            .filter(|e| e.wants(kind, &view.metadata))
            .map(|e| Delivery {
                v: WEBHOOK_SCHEMA_VERSION,
                id: Delivery::id_for(&event.id, &e.id),
                tenant: event.tenant.clone(),
                endpoint_id: e.id.clone(),
                event: kind,
                job_id: event.job_id.clone(),
                payload: payload.clone(),
                created_at: now,
                state: DeliveryState::Pending,
                attempts: 0,
                next_attempt_at: Some(now),
            })
            .collect())
    }

    /// Claims what is due and sends it, `concurrency` at a time.
    pub async fn deliver_due(&self) -> Result<Round, DomainError> {
        let now = self.hooks.jobs.ports().clock.now();
        let claimed = self
            .hooks
            .store
            .claim_due(now, self.config.lease, self.config.batch)
            .await?;
        let sent = claimed.len();
        let delivered = futures::stream::iter(claimed)
            .map(|claim| self.attempt(claim))
            .buffer_unordered(self.config.concurrency.max(1))
            .filter(|done| futures::future::ready(done.accepted))
            .count()
            .await;
        Ok(Round {
            events: 0,
            sent,
            delivered,
        })
    }

    /// Sends one claimed delivery and records the attempt. Public for a consumer that
    /// claims deliveries one at a time (the `webhooks` Lambda, from its queue).
    pub async fn attempt(&self, claim: Claimed) -> Attempted {
        let Claimed { delivery, token } = claim;
        let store = &self.hooks.store;
        let endpoint = match store
            .get_endpoint(&delivery.tenant, &delivery.endpoint_id)
            .await
        {
            Ok(Some(endpoint)) => endpoint,
            // Deleted: its deliveries went with it, or (a deletion cut short) this one
            // is closed now, so no claim keeps coming back to it.
            Ok(None) => {
                let now = self.hooks.jobs.ports().clock.now();
                let record = AttemptRecord {
                    attempt: Attempt {
                        delivery_id: delivery.id.clone(),
                        endpoint_id: delivery.endpoint_id.clone(),
                        event: delivery.event,
                        job_id: delivery.job_id.clone(),
                        attempt: delivery.attempts + 1,
                        at: now,
                        status_code: None,
                        latency_ms: 0,
                        error: Some("the endpoint was deleted".into()),
                        state: DeliveryState::GaveUp,
                        next_attempt_at: None,
                    },
                    state: DeliveryState::GaveUp,
                };
                let recorded = store.record_attempt(&token, &record).await.is_ok();
                return Attempted {
                    accepted: false,
                    recorded,
                    attempts: delivery.attempts + 1,
                    state: DeliveryState::GaveUp,
                    next_attempt_at: None,
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, delivery_id = %delivery.id, "webhook endpoint unreadable; the lease will lapse and it is tried again");
                return Attempted {
                    accepted: false,
                    recorded: false,
                    attempts: delivery.attempts,
                    state: DeliveryState::Pending,
                    next_attempt_at: None,
                };
            }
        };
        let clock = self.hooks.jobs.ports().clock.clone();
        let sent_at = clock.now();
        let body = Bytes::from(delivery.payload.clone());
        let started = Instant::now();
        let outcome =
            match signing::headers(&endpoint.secret, &delivery.id, sent_at.timestamp(), &body) {
                Some(headers) => tokio::time::timeout(
                    self.config.timeout,
                    self.sender.send(&endpoint.url, &headers, body),
                )
                .await
                .unwrap_or_else(|_| SendOutcome {
                    status: None,
                    error: Some("timed out".into()),
                }),
                None => SendOutcome {
                    status: None,
                    error: Some("the endpoint's secret is malformed".into()),
                },
            };
        let latency_ms = started.elapsed().as_millis() as u64;
        let accepted = outcome.status.is_some_and(|s| (200..300).contains(&s));
        let attempts = delivery.attempts + 1;
        let now = clock.now();
        let (state, next_attempt_at) = if accepted {
            (DeliveryState::Delivered, None)
        } else {
            match self.config.backoff.next_attempt(
                delivery.created_at,
                attempts,
                now,
                rand::random::<f64>(),
            ) {
                Some(next) => (DeliveryState::Pending, Some(next)),
                None => (DeliveryState::GaveUp, None),
            }
        };
        let record = AttemptRecord {
            attempt: Attempt {
                delivery_id: delivery.id.clone(),
                endpoint_id: delivery.endpoint_id.clone(),
                event: delivery.event,
                job_id: delivery.job_id.clone(),
                attempt: attempts,
                at: sent_at,
                status_code: outcome.status,
                latency_ms,
                error: outcome.error.map(|e| e.chars().take(200).collect()),
                state,
                next_attempt_at,
            },
            state,
        };
        // The URL is not logged: a tenant may have put a token in its query.
        tracing::info!(
            delivery_id = %delivery.id, endpoint_id = %delivery.endpoint_id,
            event = delivery.event.as_str(), attempt = attempts, status = ?outcome.status,
            latency_ms, state = state.as_str(), "webhook attempt"
        );
        let recorded = match store.record_attempt(&token, &record).await {
            Ok(()) => true,
            Err(StoreError::Conflict) => {
                tracing::warn!(delivery_id = %delivery.id, "webhook claim lapsed before its attempt was recorded");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, delivery_id = %delivery.id, "webhook attempt not recorded; it will be tried again");
                false
            }
        };
        Attempted {
            accepted,
            recorded,
            attempts,
            state,
            next_attempt_at,
        }
    }

    /// One round: fan out, send what is due.
    pub async fn round(&self) -> Result<Round, DomainError> {
        let events = self.drain_outbox().await?;
        let mut round = self.deliver_due().await?;
        round.events = events;
        Ok(round)
    }

    /// Rounds every `poll_every` until `stop` turns true; failures are logged and the
    /// next round tries again. Finished deliveries older than `keep_finished` are
    /// removed once a minute.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.config.poll_every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            match self.round().await {
                Ok(round) if round != Round::default() => tracing::debug!(?round, "webhooks"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhook round failed; retrying"),
            }
            if last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                last_prune = Some(Instant::now());
                let before = self.hooks.jobs.ports().clock.now() - self.config.keep_finished;
                if let Err(e) = self
                    .hooks
                    .store
                    .delete_finished_deliveries(before, 500)
                    .await
                {
                    tracing::warn!(error = %e, "old webhook deliveries not pruned");
                }
            }
        }
    }
}
