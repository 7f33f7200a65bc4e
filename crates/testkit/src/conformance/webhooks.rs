//! The webhook store: endpoints per tenant, the outbox written by the job's own moves,
//! fan-out, claims under a lease, fenced attempt records, bounded listings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use jobs::lifecycle::{Fence, Finish, Move};
use jobs::model::JobStatus;
use jobs::ports::{Clock, JobStore, ManualClock, StoreError};
use jobs::service::apply_move;
use jobs::webhooks::ports::{AttemptRecord, CreateEndpoint, WebhookStore};
use jobs::webhooks::{
    Attempt, Claimed, Delivery, DeliveryState, Endpoint, EventType, OutboxEvent,
    WEBHOOK_SCHEMA_VERSION,
};

use super::{create, sample_job};

fn endpoint(tenant: &str, n: u32, clock: &ManualClock) -> Endpoint {
    Endpoint {
        v: WEBHOOK_SCHEMA_VERSION,
        id: format!("wh_{tenant}_{n:03}"),
        tenant: tenant.into(),
        url: format!("https://hooks.example.com/{tenant}/{n}"),
        events: vec![EventType::JobSucceeded, EventType::JobRunning],
        labels: BTreeMap::new(),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        created_at: clock.now(),
    }
}

fn delivery(event: &OutboxEvent, endpoint: &Endpoint, clock: &ManualClock) -> Delivery {
    Delivery {
        v: WEBHOOK_SCHEMA_VERSION,
        id: Delivery::id_for(&event.id, &endpoint.id),
        tenant: event.tenant.clone(),
        endpoint_id: endpoint.id.clone(),
        event: EventType::of_status(event.status).expect("an event type"),
        job_id: event.job_id.clone(),
        payload: format!(r#"{{"type":"x","job":"{}"}}"#, event.job_id),
        created_at: clock.now(),
        state: DeliveryState::Pending,
        attempts: 0,
        next_attempt_at: Some(clock.now()),
    }
}

fn failed_attempt(claim: &Claimed, n: u32, next: chrono::DateTime<Utc>) -> AttemptRecord {
    let d = &claim.delivery;
    AttemptRecord {
        attempt: Attempt {
            delivery_id: d.id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            event: d.event,
            job_id: d.job_id.clone(),
            attempt: n,
            at: next - Duration::seconds(5),
            status_code: Some(500),
            latency_ms: 12,
            error: None,
            state: DeliveryState::Pending,
            next_attempt_at: Some(next),
        },
        state: DeliveryState::Pending,
    }
}

/// Runs every webhook store check over a fresh store that is also the job store, so
/// that its outbox is filled by the jobs' own moves (the SQLite store).
pub async fn webhook_store<S>(store: Arc<S>, clock: Arc<ManualClock>)
where
    S: JobStore + WebhookStore,
{
    endpoints_are_per_tenant_and_bounded(store.as_ref(), &clock).await;
    let event = moves_record_events_in_the_outbox(store.as_ref(), &clock).await;
    fan_out_writes_each_delivery_once(store.as_ref(), &clock, &event).await;
    claims_are_exclusive_and_attempts_fenced(store.as_ref(), &clock, event).await;
}

/// The checks of [`webhook_store`] without the outbox, for a store whose outbox is
/// elsewhere (DynamoDB: the table's stream): endpoints, fan-out of an event, claims,
/// fenced attempts, listings and sweeps.
pub async fn webhook_deliveries<S>(store: Arc<S>, clock: Arc<ManualClock>)
where
    S: WebhookStore,
{
    endpoints_are_per_tenant_and_bounded(store.as_ref(), &clock).await;
    let event = OutboxEvent {
        id: "1".into(),
        tenant: "wa".into(),
        job_id: super::sample_job("wa", clock.now(), &[]).id,
        status: JobStatus::Succeeded,
    };
    fan_out_writes_each_delivery_once(store.as_ref(), &clock, &event).await;
    claims_are_exclusive_and_attempts_fenced(store.as_ref(), &clock, event).await;
}

async fn fan_out_writes_each_delivery_once<S: WebhookStore + ?Sized>(
    store: &S,
    clock: &ManualClock,
    event: &OutboxEvent,
) {
    let endpoint = store.list_endpoints("wa", 10).await.unwrap().remove(0);
    let made = delivery(event, &endpoint, clock);
    store
        .fan_out(event, std::slice::from_ref(&made))
        .await
        .unwrap();
    let mut changed = made.clone();
    changed.payload = "other".into();
    store.fan_out(event, &[changed]).await.unwrap();
    assert_eq!(
        store.get_delivery(&made.id).await.unwrap(),
        Some(made),
        "a repeated fan-out leaves the delivery as first written"
    );
}

async fn endpoints_are_per_tenant_and_bounded<S: WebhookStore + ?Sized>(
    store: &S,
    clock: &ManualClock,
) {
    let a1 = endpoint("wa", 1, clock);
    let a2 = endpoint("wa", 2, clock);
    assert_eq!(
        store.create_endpoint(&a1, 2).await.unwrap(),
        CreateEndpoint::Created
    );
    assert_eq!(
        store.create_endpoint(&a2, 2).await.unwrap(),
        CreateEndpoint::Created
    );
    assert_eq!(
        store
            .create_endpoint(&endpoint("wa", 3, clock), 2)
            .await
            .unwrap(),
        CreateEndpoint::TooMany,
        "a tenant at its limit is refused"
    );
    assert_eq!(
        store
            .create_endpoint(&endpoint("wb", 1, clock), 2)
            .await
            .unwrap(),
        CreateEndpoint::Created,
        "the limit is per tenant"
    );
    assert_eq!(
        store.list_endpoints("wa", 10).await.unwrap(),
        vec![a1.clone(), a2.clone()]
    );
    assert_eq!(
        store.list_endpoints("wa", 1).await.unwrap().len(),
        1,
        "bounded"
    );
    assert_eq!(
        store.get_endpoint("wa", &a1.id).await.unwrap(),
        Some(a1.clone())
    );
    assert_eq!(
        store.get_endpoint("wb", &a1.id).await.unwrap(),
        None,
        "another tenant's endpoint is not found"
    );
    assert!(!store.delete_endpoint("wb", &a2.id).await.unwrap());
    assert!(store.delete_endpoint("wa", &a2.id).await.unwrap());
    assert!(!store.delete_endpoint("wa", &a2.id).await.unwrap());
    assert_eq!(store.list_endpoints("wa", 10).await.unwrap(), vec![a1]);
}

/// A job of a tenant with an endpoint records `running` and its end, each by the move
/// itself; renewals and other tenants' jobs record nothing.
async fn moves_record_events_in_the_outbox<S: JobStore + WebhookStore>(
    store: &S,
    clock: &ManualClock,
) -> OutboxEvent {
    let before = store.pending_events(100).await.unwrap();
    assert!(before.is_empty(), "no moves yet: {before:?}");
    let watched = sample_job("wa", clock.now(), &[]);
    let unwatched = sample_job("nobody", clock.now(), &[]);
    for job in [&watched, &unwatched] {
        create(store, job).await;
        let claimed = apply_move(
            store,
            clock,
            job.clone(),
            &Move::Claim {
                runner: "r".into(),
                lease: Duration::seconds(30),
                max_attempts: 3,
            },
        )
        .await
        .unwrap();
        let fence = Fence {
            owner: "r".into(),
            attempt: claimed.attempt,
        };
        let renewed = apply_move(
            store,
            clock,
            claimed,
            &Move::Renew {
                fence: fence.clone(),
                lease: Duration::seconds(30),
            },
        )
        .await
        .unwrap();
        let done = apply_move(
            store,
            clock,
            renewed,
            &Move::Finish {
                fence,
                finish: Finish::Succeeded { outputs: vec![] },
            },
        )
        .await
        .unwrap();
        assert_eq!(done.status, JobStatus::Succeeded);
    }
    let events = store.pending_events(100).await.unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.tenant.as_str(), e.job_id.clone(), e.status))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("wa", watched.id.clone(), JobStatus::Running),
            ("wa", watched.id.clone(), JobStatus::Succeeded),
        ],
        "the watched job's start and end, in order, once each"
    );
    assert_ne!(events[0].id, events[1].id);
    assert_eq!(store.pending_events(1).await.unwrap().len(), 1, "bounded");

    // Fanning out removes the event (its deliveries: see the next check).
    store.fan_out(&events[0], &[]).await.unwrap();
    store.fan_out(&events[1], &[]).await.unwrap();
    assert!(store.pending_events(100).await.unwrap().is_empty());
    events[1].clone()
}

async fn claims_are_exclusive_and_attempts_fenced<S: WebhookStore + ?Sized>(
    store: &S,
    clock: &ManualClock,
    event: OutboxEvent,
) {
    let lease = StdDuration::from_secs(60);
    let endpoint = store.list_endpoints("wa", 10).await.unwrap().remove(0);
    let id = Delivery::id_for(&event.id, &endpoint.id);
    let first = store.claim_due(clock.now(), lease, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].delivery.id, id);
    assert!(
        store
            .claim_due(clock.now(), lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "a claimed delivery is not claimed again while its lease holds"
    );
    // The holder died: the lease lapses and another deliverer takes it.
    clock.advance(Duration::seconds(61));
    let second = store.claim_due(clock.now(), lease, 10).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].token, first[0].token);
    let next = clock.now() + Duration::seconds(30);
    assert!(
        matches!(
            store
                .record_attempt(&first[0].token, &failed_attempt(&first[0], 1, next))
                .await,
            Err(StoreError::Conflict)
        ),
        "the lapsed holder may not record"
    );
    store
        .record_attempt(&second[0].token, &failed_attempt(&second[0], 1, next))
        .await
        .unwrap();
    let stored = store.get_delivery(&id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.attempts, stored.next_attempt_at),
        (DeliveryState::Pending, 1, Some(next))
    );
    assert!(
        matches!(
            store
                .record_attempt(&second[0].token, &failed_attempt(&second[0], 2, next))
                .await,
            Err(StoreError::Conflict)
        ),
        "a claim records one attempt"
    );
    assert!(
        store
            .claim_due(clock.now(), lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due before its next attempt"
    );
    clock.advance(Duration::seconds(30));
    let third = store.claim_due(clock.now(), lease, 10).await.unwrap();
    assert_eq!(third.len(), 1);
    let mut delivered = failed_attempt(&third[0], 2, clock.now());
    delivered.state = DeliveryState::Delivered;
    delivered.attempt.state = DeliveryState::Delivered;
    delivered.attempt.status_code = Some(204);
    delivered.attempt.next_attempt_at = None;
    delivered.attempt.at = clock.now();
    store
        .record_attempt(&third[0].token, &delivered)
        .await
        .unwrap();
    clock.advance(Duration::days(2));
    assert!(
        store
            .claim_due(clock.now(), lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "a delivered delivery is never claimed again"
    );
    let attempts = store.list_attempts("wa", &endpoint.id, 10).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.attempt, a.status_code))
            .collect::<Vec<_>>(),
        vec![(2, Some(204)), (1, Some(500))],
        "newest first"
    );
    assert_eq!(
        store
            .list_attempts("wa", &endpoint.id, 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .list_attempts("wb", &endpoint.id, 10)
            .await
            .unwrap()
            .is_empty(),
        "another tenant sees no attempts"
    );

    // Old finished deliveries go with their attempts; pending ones stay.
    assert_eq!(
        store
            .delete_finished_deliveries(clock.now() - Duration::days(3), 10)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .delete_finished_deliveries(clock.now(), 10)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.get_delivery(&id).await.unwrap(), None);
    assert!(
        store
            .list_attempts("wa", &endpoint.id, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Deleting an endpoint takes its pending deliveries with it.
    let pending = OutboxEvent {
        id: "999999".into(),
        ..event
    };
    store
        .fan_out(&pending, &[delivery(&pending, &endpoint, clock)])
        .await
        .unwrap();
    assert!(store.delete_endpoint("wa", &endpoint.id).await.unwrap());
    assert!(
        store
            .claim_due(clock.now(), lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "a deleted endpoint's deliveries are not sent"
    );
}
