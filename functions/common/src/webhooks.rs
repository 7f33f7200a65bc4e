//! The `webhooks` function: the jobs table's stream in, signed requests out.
//!
//! One handler for two event sources, told apart by the records' `eventSource`:
//!
//! | event | what runs |
//! |---|---|
//! | DynamoDB stream batch (`aws:dynamodb`) | each record whose job `status` moved into `running` or an end becomes an outbox event ([`aws::webhooks::outbox_event`]), fanned out to one delivery per endpoint that wants it ([`Deliverer::fan_out_ids`], the code `dev` runs), each handed to the delivery queue as one message. A record that fails is reported by its sequence number (`ReportBatchItemFailures`): Lambda retries the batch from there, and since delivery ids derive from the record's sequence number, a retried record writes no second delivery |
//! | a TTL deletion on the stream (`REMOVE` by `dynamodb.amazonaws.com`) of a job's `OUT#` item | the output asset it names is deleted and its bytes released ([`jobs::assets::release_bytes`], as `jobs::retention` does in `dev`): TTL removes the job's items but not its output asset records nor their bytes |
//! | delivery queue batch (`aws:sqs`) | each message names a delivery: it is claimed (fenced by a token), signed and sent ([`Deliverer::attempt`], the same sender rules as `dev`), and the attempt recorded. A failed attempt sends the message again delayed until the next try (at most 15 minutes a message; longer waits chain), a success or a give-up ends it. A message that cannot be *processed* (the table or the queue failing) is reported back, and after the queue's `maxReceiveCount` goes to its dead-letter queue |
//!
//! **The safety net.** A delivery whose message was lost (a send that failed after the
//! attempt was recorded, a message sent to the DLQ) stays due in the table's `WHDUE`
//! index; the dispatch tick calls [`WebhookRelay::tick`], which claims what has been
//! due for more than [`OVERDUE`] and enqueues it with its claim token, and prunes
//! finished deliveries past their keep time.
//!
//! **Addresses.** The sender is `jobs::webhooks::http` (public addresses only, checked
//! at connect time, no redirects, a timeout, a bounded read), built on first use so
//! that a cold start makes no TLS setup it may not need;
//! `SERVERLESS_COMFYUI_WEBHOOKS_ALLOW_PRIVATE=true` lifts the address rule for local
//! testing.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use aws::webhook_queue::WebhookQueue;
use aws::webhooks::{ClaimOne, outbox_event};
use aws::{DynamoWebhookStore, stream};
use aws_lambda_events::dynamodb::Event as StreamEvent;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jobs::app::App;
use jobs::ports::{Clock, QueueError, StoreError};
use jobs::service::Ports;
use jobs::webhooks::deliver::{Deliverer, DeliveryConfig};
use jobs::webhooks::http::{HttpSender, HttpSenderConfig};
use jobs::webhooks::ports::{SendOutcome, WebhookSender, WebhookStore};
use jobs::webhooks::{Claimed, DeliveryState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Deployment;
use crate::dispatch::shape;

/// How long a delivery must have been due before the tick re-enqueues it: well past
/// the time its own message takes to arrive, so the safety net does not race it.
pub const OVERDUE: Duration = Duration::from_secs(120);

/// Deliveries the tick re-enqueues at most per run.
pub const TICK_BATCH: usize = 100;

/// Finished deliveries the tick prunes at most per run.
pub const PRUNE_BATCH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum WebhooksError {
    #[error("unknown event ({shape})")]
    Unknown { shape: String },
    #[error("malformed {kind} event: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("{0}")]
    Domain(String),
}

/// A message of the delivery queue: the delivery to attempt, and, when the tick's
/// safety net claimed it already, that claim's token (never logged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryMessage {
    pub delivery: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The attempts the delivery had when this message was sent. A message that finds
    /// the delivery not yet due *and* with other attempts since is a duplicate (a
    /// stream batch retried, a message sent twice) and ends, so only one chain of
    /// delayed messages follows a delivery.
    #[serde(default)]
    pub attempts: u32,
}

/// The HTTP sender, built on its first use.
pub struct LazySender {
    allow_private: bool,
    inner: OnceLock<Option<HttpSender>>,
}

impl LazySender {
    pub fn new(allow_private: bool) -> Self {
        LazySender {
            allow_private,
            inner: OnceLock::new(),
        }
    }

    fn get(&self) -> Option<&HttpSender> {
        self.inner
            .get_or_init(|| {
                HttpSender::new(HttpSenderConfig {
                    allow_private: self.allow_private,
                    ..HttpSenderConfig::default()
                })
                .inspect_err(|e| tracing::error!(error = %e, "webhook HTTP client not built"))
                .ok()
            })
            .as_ref()
    }
}

#[async_trait]
impl WebhookSender for LazySender {
    async fn send(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> SendOutcome {
        match self.get() {
            Some(sender) => sender.send(url, headers, body).await,
            None => SendOutcome {
                status: None,
                error: Some("no HTTP client".into()),
            },
        }
    }

    async fn check_url(&self, url: &url::Url) -> Result<(), String> {
        match self.get() {
            Some(sender) => sender.check_url(url).await,
            None => Ok(()),
        }
    }
}

/// The stream consumer, the queue consumer and the tick's safety net, over one
/// deployment.
pub struct WebhookRelay {
    deliverer: Deliverer,
    /// The job ports, for the assets a TTL deletion leaves behind.
    ports: Ports,
    store: DynamoWebhookStore,
    queue: WebhookQueue,
    clock: Arc<dyn Clock>,
    config: DeliveryConfig,
}

impl WebhookRelay {
    /// The relay of `deployment`, whose `app` was built with webhooks, sending with
    /// `config`; `None` when the deployment has no delivery queue.
    pub fn new(deployment: &Deployment, app: &App, config: DeliveryConfig) -> Option<Self> {
        let url = deployment.webhooks.queue_url.clone()?;
        let hooks = app.webhooks()?.clone();
        let sender = Arc::new(LazySender::new(deployment.webhooks.allow_private));
        Some(WebhookRelay {
            deliverer: Deliverer::new(hooks, sender, config.clone()),
            ports: deployment.ports(),
            store: deployment.webhook_store(),
            queue: WebhookQueue::new(deployment.clients.sqs.clone(), url),
            clock: deployment.clock.clone(),
            config,
        })
    }

    async fn enqueue(
        &self,
        message: &DeliveryMessage,
        at: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        let body = serde_json::to_string(message).unwrap_or_default();
        let delay = (at - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
        self.queue.send(&body, delay).await.map(|_| ())
    }

    /// One stream record: its deliveries written and enqueued; how many.
    async fn stream_record(
        &self,
        record: &aws_lambda_events::dynamodb::EventRecord,
    ) -> Result<usize, WebhooksError> {
        // The images as DynamoDB JSON, as the stream delivered them.
        let change = serde_json::to_value(&record.change).unwrap_or_default();
        let image = |name: &str| -> Option<stream::Item> {
            match stream::item_from_image(change.get(name)?) {
                Ok(item) if !item.is_empty() => Some(item),
                Ok(_) => None,
                Err(e) => {
                    // A record that cannot be read now never can: skipped, not retried.
                    tracing::error!(error = %e, "stream record image unreadable; skipped");
                    None
                }
            }
        };
        if record.event_name == "REMOVE" {
            let by_ttl = record.user_identity.as_ref().is_some_and(|who| {
                who.type_ == "Service" && who.principal_id == stream::TTL_PRINCIPAL
            });
            match image("OldImage") {
                Some(old) if by_ttl => self.release_expired_output(&old).await?,
                _ => {}
            }
            return Ok(0);
        }
        let Some(new) = image("NewImage") else {
            return Ok(0);
        };
        let old = image("OldImage");
        let sequence = record.change.sequence_number.as_deref().unwrap_or_default();
        let Some(event) = outbox_event(sequence, old.as_ref(), &new) else {
            return Ok(0);
        };
        let ids = self
            .deliverer
            .fan_out_ids(&event)
            .await
            .map_err(|e| WebhooksError::Domain(e.to_string()))?;
        let now = self.clock.now();
        for id in &ids {
            let message = DeliveryMessage {
                delivery: id.clone(),
                token: None,
                attempts: 0,
            };
            self.enqueue(&message, now).await?;
        }
        tracing::info!(job_id = %event.job_id, status = event.status.as_str(), deliveries = ids.len(), "webhook event");
        Ok(ids.len())
    }

    /// After TTL deleted an expired job's output item: deletes the output asset it
    /// names and releases its bytes. Safe to repeat (a retried batch finds it gone).
    async fn release_expired_output(&self, old: &stream::Item) -> Result<(), WebhooksError> {
        let Some((job_id, asset_id)) = stream::expired_output_asset(old) else {
            return Ok(());
        };
        let store = &self.ports.store;
        let Some(asset) = store.get_asset(&asset_id).await? else {
            return Ok(());
        };
        // Only the job's own output: never an asset a user uploaded.
        if asset.job_id.as_ref().map(|j| j.as_str()) != Some(job_id.as_str()) {
            return Ok(());
        }
        if store.delete_asset(&asset.id).await? {
            jobs::assets::release_bytes(&self.ports, &asset).await?;
            tracing::info!(%job_id, %asset_id, "expired output asset released");
        }
        Ok(())
    }

    /// A stream batch, in order; the first record that fails is reported with its
    /// sequence number and the rest left for the retry Lambda makes from there.
    pub async fn on_stream(&self, batch: StreamEvent) -> DynamoDbEventResponse {
        let mut response = DynamoDbEventResponse::default();
        for record in &batch.records {
            if let Err(e) = self.stream_record(record).await {
                tracing::error!(error = %e, "stream record failed; the batch is retried from it");
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = record.change.sequence_number.clone();
                response.batch_item_failures.push(failure);
                break;
            }
        }
        response
    }

    /// One message: claim, send, record, and send itself on when a retry is due.
    pub async fn on_message(&self, body: &str) -> Result<(), WebhooksError> {
        let Ok(message) = serde_json::from_str::<DeliveryMessage>(body) else {
            // Not ours, and never will be: dropped, not retried into the DLQ.
            tracing::error!("a delivery queue message that names no delivery; dropped");
            return Ok(());
        };
        let claim = match &message.token {
            Some(token) => match self.store.get_delivery(&message.delivery).await? {
                Some(delivery) if delivery.state == DeliveryState::Pending => Claimed {
                    delivery,
                    token: token.clone(),
                },
                _ => return Ok(()),
            },
            None => match self
                .store
                .claim(&message.delivery, self.clock.now(), self.config.lease)
                .await?
            {
                ClaimOne::Claimed(claim) => claim,
                ClaimOne::NotDue { due, attempts } if attempts == message.attempts => {
                    // A wait longer than one message can be delayed: sent on.
                    return Ok(self.enqueue(&message, due).await?);
                }
                // A duplicate; its holder sends it, or (should it die) the tick.
                ClaimOne::NotDue { .. } | ClaimOne::Held | ClaimOne::Finished => {
                    return Ok(());
                }
            },
        };
        let done = self.deliverer.attempt(claim).await;
        if let (true, DeliveryState::Pending, Some(next)) =
            (done.recorded, done.state, done.next_attempt_at)
        {
            let next_message = DeliveryMessage {
                delivery: message.delivery,
                token: None,
                attempts: done.attempts,
            };
            self.enqueue(&next_message, next).await?;
        }
        Ok(())
    }

    /// A queue batch, its messages concurrently; the ones that failed are reported.
    pub async fn on_queue(&self, batch: SqsEvent) -> SqsBatchResponse {
        let failures: Vec<String> = futures::stream::iter(batch.records)
            .map(|record| async move {
                let body = record.body.unwrap_or_default();
                match self.on_message(&body).await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "webhook message failed; it returns to the queue");
                        record.message_id
                    }
                }
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .filter_map(futures::future::ready)
            .collect()
            .await;
        let mut response = SqsBatchResponse::default();
        for id in failures {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
        response
    }

    /// The tick's part: re-enqueues deliveries due for more than [`OVERDUE`] (their
    /// message was lost), claimed so that only that message sends them, and prunes
    /// finished ones. Returns `(re-enqueued, pruned)`.
    pub async fn tick(&self) -> Result<(usize, usize), WebhooksError> {
        let now = self.clock.now();
        let overdue = chrono::Duration::from_std(OVERDUE).unwrap_or_default();
        // Claimed as of `now - OVERDUE`, so the lease must reach past that much more.
        let claimed = self
            .store
            .claim_due(now - overdue, OVERDUE + self.config.lease, TICK_BATCH)
            .await?;
        for claim in &claimed {
            let message = DeliveryMessage {
                delivery: claim.delivery.id.clone(),
                token: Some(claim.token.clone()),
                attempts: claim.delivery.attempts,
            };
            self.enqueue(&message, now).await?;
        }
        let before = now - self.config.keep_finished;
        let pruned = self
            .store
            .delete_finished_deliveries(before, PRUNE_BATCH)
            .await?;
        Ok((claimed.len(), pruned))
    }
}

/// The `webhooks` function's handler.
pub struct WebhooksHandler {
    relay: WebhookRelay,
}

impl WebhooksHandler {
    /// `None` when the deployment has no delivery queue (its settings require one for
    /// this function, so `Deployment::from_env` has refused to start already).
    pub fn new(deployment: &Deployment) -> Option<Self> {
        Self::with_config(deployment, DeliveryConfig::default())
    }

    /// With its own retry schedule and timeouts (tests).
    pub fn with_config(deployment: &Deployment, config: DeliveryConfig) -> Option<Self> {
        let app = deployment.app();
        Some(WebhooksHandler {
            relay: WebhookRelay::new(deployment, &app, config)?,
        })
    }

    pub fn relay(&self) -> &WebhookRelay {
        &self.relay
    }

    /// Handles one batch: a `DynamoDbEventResponse` for a stream batch, a
    /// `SqsBatchResponse` for a queue batch.
    pub async fn handle(&self, event: Value) -> Result<Value, WebhooksError> {
        let source = event
            .pointer("/Records/0/eventSource")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let malformed = |kind| {
            move |e: serde_json::Error| WebhooksError::Malformed {
                kind,
                reason: e.to_string(),
            }
        };
        let answer = match source.as_str() {
            "aws:dynamodb" => {
                let batch = serde_json::from_value(event).map_err(malformed("stream"))?;
                serde_json::to_value(self.relay.on_stream(batch).await)
            }
            "aws:sqs" => {
                let batch = serde_json::from_value(event).map_err(malformed("SQS"))?;
                serde_json::to_value(self.relay.on_queue(batch).await)
            }
            _ => {
                let shape = shape(&event);
                tracing::error!(%shape, "webhooks: unknown event");
                return Err(WebhooksError::Unknown { shape });
            }
        };
        Ok(answer.unwrap_or(Value::Null))
    }
}
