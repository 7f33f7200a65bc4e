//! Signed webhooks: a tenant's endpoints are told when its jobs start and end.
//!
//! ## The shape of it
//!
//! ```text
//!  job ends ──(same write)──▶ outbox event ──fan out──▶ one delivery per matching endpoint
//!                                                        │
//!                                 claim (lease) ◀────────┘  due now?
//!                                      │
//!                                 sign + POST ──2xx──▶ delivered
//!                                      │ else
//!                                 attempt recorded, next try after backoff … gave up after ~1 day
//! ```
//!
//! 1. **Registration** ([`service::WebhookService::create`]): a tenant gives a URL, the
//!    event types it wants ([`EventType`]) and optionally labels a job must carry. It
//!    gets back the endpoint with its signing secret, once: lists never show it again.
//! 2. **Recording** (the durability rule): the event is written *in the same write that
//!    moves the job* to its new status, so a crash can never end a job and lose its
//!    event. SQLite does it with a trigger on the jobs table (same transaction as the
//!    move, whichever process writes it: `dev` or a runner); on DynamoDB the table's
//!    stream is that outbox (the stream record is written atomically with the update).
//! 3. **Fan out** ([`deliver::Deliverer::drain_outbox`]): each event is rendered once,
//!    as `{"type", "timestamp", "data"}` where `data` is the job exactly as
//!    `GET /api/v2/jobs/{id}` shows it when the event is fanned out (within a
//!    deliverer round of the move: final for a terminal event; a `job.running` event
//!    of a very short job may already show it finished), and becomes one [`Delivery`]
//!    per endpoint that wants it. Rendering once means every retry sends the same bytes under the same
//!    `webhook-id`, so receivers can deduplicate.
//! 4. **Delivery** ([`deliver::Deliverer::deliver_due`]): due deliveries are *claimed*
//!    under a lease (a store write that hides them for a while), so two deliverers never
//!    both send one; the answer is recorded as an [`Attempt`] fenced by the claim. A
//!    2xx is delivered; anything else (status, timeout, refused address) is retried on
//!    the [`backoff::Backoff`] schedule, exponential with jitter for about a day, then
//!    given up, and that is recorded too.
//!
//! ## Signing ([`signing`])
//!
//! The [Standard Webhooks](https://www.standardwebhooks.com/) scheme, so its published
//! verifiers (Python, JS, Go, Rust…) accept our requests unchanged: headers
//! `webhook-id`, `webhook-timestamp` (Unix seconds of the attempt) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, the key
//! being the secret `whsec_<base64>` decoded.
//!
//! **Why the secret is stored recoverably** (unlike API keys, stored as hashes): an API
//! key is *checked*, and a hash is enough to check; a webhook secret is *used* to sign,
//! and HMAC needs the key itself on every attempt. So it is kept as given, in the store
//! only, never logged, never shown after creation. Rotating it means deleting the
//! endpoint and creating another.
//!
//! ## Server-side request forgery ([`address`])
//!
//! A webhook URL makes our server send requests where a tenant says. By default we
//! refuse any address a tenant should not reach through us: loopback, private
//! networks, link-local (and so the cloud metadata service, `169.254.169.254` and
//! `fd00:ec2::254`), carrier-grade NAT, unspecified, multicast, reserved. It is checked
//! at registration (literal addresses here; names by the sender's resolver) and again
//! **at connect time**, by the resolver the HTTP client uses: a name that resolved to
//! a public address at registration and to `127.0.0.1` now (DNS rebinding) is refused
//! then. Redirects are never followed (a 3xx is a failed attempt), so a public URL
//! cannot bounce us inward. `dev --webhooks-allow-private` lifts the rule, for a
//! receiver on the same machine.
//!
//! | module | what it holds |
//! |---|---|
//! | this one | [`EventType`], [`Endpoint`], [`OutboxEvent`], [`Delivery`], [`Attempt`] |
//! | [`signing`] | secrets and the Standard Webhooks signature |
//! | [`backoff`] | the retry schedule |
//! | [`address`] | which IP addresses and URLs a webhook may reach |
//! | [`ports`] | [`ports::WebhookStore`] and [`ports::WebhookSender`] |
//! | [`service`] | registration, listing, deletion and attempts (what the routes call) |
//! | [`deliver`] | the deliverer: outbox fan-out, claiming, sending, recording |
//! | `http` (feature `webhook-http`) | the reqwest sender: inner addresses refused at connect time |

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{JobId, JobStatus};

pub mod address;
pub mod backoff;
pub mod deliver;
#[cfg(feature = "webhook-http")]
pub mod http;
pub mod ports;
pub mod service;
pub mod signing;

/// What happened to a job, as an endpoint subscribes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    #[serde(rename = "job.running")]
    JobRunning,
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.canceled")]
    JobCanceled,
    #[serde(rename = "job.expired")]
    JobExpired,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::JobRunning,
        EventType::JobSucceeded,
        EventType::JobFailed,
        EventType::JobCanceled,
        EventType::JobExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::JobRunning => "job.running",
            EventType::JobSucceeded => "job.succeeded",
            EventType::JobFailed => "job.failed",
            EventType::JobCanceled => "job.canceled",
            EventType::JobExpired => "job.expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == raw)
    }

    /// The event a move into `status` makes, if any (`queued` and `canceling` make none).
    pub fn of_status(status: JobStatus) -> Option<Self> {
        match status {
            JobStatus::Running => Some(EventType::JobRunning),
            JobStatus::Succeeded => Some(EventType::JobSucceeded),
            JobStatus::Failed => Some(EventType::JobFailed),
            JobStatus::Canceled => Some(EventType::JobCanceled),
            JobStatus::Expired => Some(EventType::JobExpired),
            JobStatus::Queued | JobStatus::Canceling => None,
        }
    }
}

/// A registered endpoint, as stored. `secret` never leaves the store except to sign,
/// and once in the answer that created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub v: u32,
    /// `wh_<ulid>`.
    pub id: String,
    pub tenant: String,
    pub url: String,
    pub events: Vec<EventType>,
    /// Every `(key, value)` must be among the job's metadata labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `whsec_<base64 of the key>`.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

impl Endpoint {
    /// Whether this endpoint wants `event` about a job labelled `metadata`.
    pub fn wants(&self, event: EventType, metadata: &BTreeMap<String, String>) -> bool {
        self.events.contains(&event)
            && self
                .labels
                .iter()
                .all(|(k, v)| metadata.get(k).is_some_and(|m| m == v))
    }
}

/// A job's status change, recorded by the write that made it, waiting to be fanned
/// out to endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The store's id of the record (SQLite: its sequence number).
    pub id: String,
    pub tenant: String,
    pub job_id: JobId,
    /// The status the job moved into.
    pub status: JobStatus,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt (or being attempted now, under a claim).
    Pending,
    /// A 2xx answer came.
    Delivered,
    /// Retries ran out; no more attempts.
    GaveUp,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::GaveUp => "gave_up",
        }
    }
}

/// One event for one endpoint: the message, sent until it is accepted or given up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub v: u32,
    /// The `webhook-id` header: the same on every attempt, so receivers deduplicate.
    pub id: String,
    pub tenant: String,
    pub endpoint_id: String,
    pub event: EventType,
    pub job_id: JobId,
    /// The exact body sent, rendered once.
    pub payload: String,
    pub created_at: DateTime<Utc>,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (`None` once delivered or given up).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl Delivery {
    /// The delivery id of `event_id` for `endpoint_id`: derived, not random, so a
    /// fan-out repeated after a crash writes the same deliveries again, not new ones.
    pub fn id_for(event_id: &str, endpoint_id: &str) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{event_id}\n{endpoint_id}").as_bytes());
        format!("msg_{}", &hex::encode(digest)[..32])
    }
}

/// A delivery the caller holds under a lease: only the holder of `token` may record
/// its attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub delivery: Delivery,
    pub token: String,
}

/// One try at sending a delivery, as the deliveries route shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    pub delivery_id: String,
    pub endpoint_id: String,
    pub event: EventType,
    #[schema(value_type = String)]
    pub job_id: JobId,
    /// 1 for the first try.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status; `None` when no answer came (timeout, refused).
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    /// Why it failed without a status (bounded, no secrets).
    pub error: Option<String>,
    /// Where the delivery stands after this attempt.
    pub state: DeliveryState,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Schema version of stored webhook items.
pub const WEBHOOK_SCHEMA_VERSION: u32 = 1;
