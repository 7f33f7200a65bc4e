//! The ports webhooks need: a store for endpoints, the outbox, deliveries and
//! attempts ([`WebhookStore`]), and a way to send a request ([`WebhookSender`]).
//!
//! Kept apart from [`crate::ports::JobStore`] so that a deployment without webhooks
//! needs nothing new; an adapter implements both over the same database (the outbox
//! must be written by the job store's own writes, see [`WebhookStore::pending_events`]).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{Attempt, Claimed, Delivery, DeliveryState, Endpoint, OutboxEvent};
use crate::ports::StoreResult;

/// Endpoints a tenant may register at most (the list route returns them all).
pub const MAX_ENDPOINTS_PER_TENANT: usize = 16;

/// What [`WebhookStore::create_endpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateEndpoint {
    Created,
    /// The tenant already has `max` endpoints; nothing was written.
    TooMany,
}

/// How an attempt ended, as [`WebhookStore::record_attempt`] writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub attempt: Attempt,
    /// The delivery's state after it (`Pending` with `attempt.next_attempt_at` set, or
    /// final).
    pub state: DeliveryState,
}

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Writes an endpoint unless its tenant already has `max` (checked in the same
    /// write, so concurrent creates cannot pass the limit together).
    async fn create_endpoint(&self, endpoint: &Endpoint, max: usize)
    -> StoreResult<CreateEndpoint>;

    /// A tenant's endpoints, oldest first, at most `limit`.
    async fn list_endpoints(&self, tenant: &str, limit: usize) -> StoreResult<Vec<Endpoint>>;

    async fn get_endpoint(&self, tenant: &str, id: &str) -> StoreResult<Option<Endpoint>>;

    /// Deletes a tenant's endpoint with its deliveries and attempts; true if it existed.
    async fn delete_endpoint(&self, tenant: &str, id: &str) -> StoreResult<bool>;

    /// Status changes waiting to be fanned out, oldest first, at most `limit`.
    ///
    /// **The durability rule**: a job's move into `running` or a terminal status,
    /// written by [`crate::ports::JobStore::put_job`] (by any process), appears here by
    /// the same write, for a tenant that had an endpoint when it was written. A store
    /// may leave out tenants without endpoints, since nothing would be delivered.
    async fn pending_events(&self, limit: usize) -> StoreResult<Vec<OutboxEvent>>;

    /// Writes the deliveries made from an event and removes the event, together.
    /// Deliveries whose id exists already are left as they are (a repeated fan-out).
    async fn fan_out(&self, event: &OutboxEvent, deliveries: &[Delivery]) -> StoreResult<()>;

    /// Claims up to `limit` pending deliveries due at `now`, earliest first: each is
    /// hidden from other claims for `lease` (then due again, should its holder die) and
    /// comes with a fresh token that [`Self::record_attempt`] requires.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>>;

    /// Records an attempt and the delivery's new state, if `token` still holds the
    /// claim; else `Conflict` and nothing is written (the lease lapsed and another
    /// deliverer has it).
    async fn record_attempt(&self, token: &str, record: &AttemptRecord) -> StoreResult<()>;

    /// A delivery by id.
    async fn get_delivery(&self, id: &str) -> StoreResult<Option<Delivery>>;

    /// An endpoint's attempts, newest first, at most `limit`.
    async fn list_attempts(
        &self,
        tenant: &str,
        endpoint_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<Attempt>>;

    /// Deletes deliveries (and their attempts) that ended before `before`, at most
    /// `limit`; returns how many went. Keeps the attempt history bounded in time.
    async fn delete_finished_deliveries(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<usize>;
}

/// What came back from one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// The status, when an answer came.
    pub status: Option<u16>,
    /// Why no answer came (timeout, refused address, connection failed): short, no
    /// secrets.
    pub error: Option<String>,
}

/// Sends one signed request. The adapter ([`super::http`], feature `webhook-http`) owns the address
/// rules at connect time, the timeout, the redirect policy and the bounded read.
#[async_trait]
pub trait WebhookSender: Send + Sync + 'static {
    async fn send(&self, url: &str, headers: &[(&'static str, String)], body: Bytes)
    -> SendOutcome;

    /// Checks a URL at registration where the sender can tell more than the literal
    /// checks of [`super::address::check_url`] (resolving its name now). `Err` holds a
    /// message for the client.
    async fn check_url(&self, _url: &url::Url) -> Result<(), String> {
        Ok(())
    }
}
