//! The tick's repairs on moto, through the real `dispatch` handler fed the EventBridge
//! tick's event, over the DynamoDB and SQS adapters. Each test has its own table and
//! queues; the job store and the dispatcher share a manual clock, so a lease lapses or a
//! queue timeout passes without waiting (SQS's visibility timeouts still run on moto's
//! real clock, which the tests rely on where they say so).
//!
//! The fourth repair, a job recorded without its message, is covered in
//! tests/functions.rs (`the_tick_enqueues_a_job_recorded_without_its_message`).
//!
//! Where moto is not AWS: a message goes to the dead-letter queue only when a receive
//! finds it past `maxReceiveCount` (moto moves it on that receive, never on a timer), so
//! the dead-letter test makes that receive itself; and TTL never deletes in moto, which
//! plays no part here: expiry past the queue timeout is the tick's work (found through
//! the sparse index of active jobs), not TTL's, on AWS as on moto.

mod common;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use common::{deployment_with, scheduled_event};
use functions_common::Deployment;
use functions_common::dispatch::DispatchHandler;
use jobs::lifecycle::{Fence, Move, Refusal};
use jobs::model::{Job, JobId, JobStatus, WorkMessage};
use jobs::ports::{ManualClock, QueueName, SystemClock};
use jobs::service::{MoveError, Ports, apply_move};
use serde_json::{Value, json};

const TENANT: &str = "acme";
/// The lease the runners here take (the template's is 30 s as well).
const LEASE: Duration = Duration::seconds(30);
const NO_WAIT: StdDuration = StdDuration::ZERO;

fn invert() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/workflows/invert.json"
    );
    json!({ "workflow": serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap()).unwrap() })
}

/// A job submitted as the `submit` function does: recorded, its work message on SQS.
async fn submit(deployment: &Deployment) -> JobId {
    let body = serde_json::to_vec(&invert()).unwrap();
    let submitted = deployment
        .app()
        .jobs()
        .submit(TENANT, &body, None)
        .await
        .expect("submit");
    JobId::parse(&submitted.job.id).unwrap()
}

async fn job(ports: &Ports, id: &JobId) -> Job {
    ports.store.get_job(id).await.unwrap().expect("the job")
}

/// A runner's claim (or takeover of a lapsed lease), as the runner makes it.
async fn claim(ports: &Ports, id: &JobId, runner: &str) -> Result<Job, MoveError> {
    let current = job(ports, id).await;
    let mv = Move::Claim {
        runner: runner.into(),
        lease: LEASE,
        max_attempts: 3, // the template's MaxAttempts
    };
    apply_move(ports.store.as_ref(), ports.clock.as_ref(), current, &mv).await
}

/// One work message, received as a runner receives it (visibility = the lease).
async fn receive_work(ports: &Ports) -> Vec<jobs::ports::Received> {
    ports
        .queue
        .receive(QueueName::Work, 10, NO_WAIT, LEASE.to_std().unwrap())
        .await
        .unwrap()
}

async fn tick(deployment: &Deployment) -> Value {
    DispatchHandler::new(deployment)
        .handle(scheduled_event())
        .await
        .expect("the tick runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_offers_an_expired_lease_again_and_another_runner_takes_it_over() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let (deployment, _ecs) = deployment_with(5, clock.clone()).await;
    let ports = deployment.ports();
    let id = submit(&deployment).await;

    // Runner A receives the message, claims the job, and is SIGKILLed: its message
    // stays in flight (30 s of moto's real time), its lease lapses unrenewed.
    assert_eq!(receive_work(&ports).await.len(), 1);
    let claimed = claim(&ports, &id, "runner-a").await.unwrap();
    assert_eq!((claimed.status, claimed.attempt), (JobStatus::Running, 1));
    clock.advance(Duration::minutes(3));

    let report = tick(&deployment).await;
    assert_eq!(
        (&report["awaiting_takeover"], &report["reaped"]),
        (&json!(1), &json!(0)),
        "{report}"
    );
    // Waiting for a takeover is demand for a runner, like a queued job.
    assert_eq!(report["scale"]["awaiting_takeover"], 1, "{report}");
    let waiting = job(&ports, &id).await;
    assert_eq!(
        (
            waiting.status,
            waiting.attempt,
            waiting.lease_owner.as_deref()
        ),
        (JobStatus::Running, 1, Some("runner-a")),
        "the tick writes nothing: the takeover is a runner's"
    );
    // Lapsed for over two minutes: the tick re-offered a fresh copy. A's copy is still
    // in flight, so the one visible message is the tick's.
    let offered = receive_work(&ports).await;
    assert_eq!(offered.len(), 1, "the tick re-offered the job");
    let message: WorkMessage = serde_json::from_str(&offered[0].body).unwrap();
    assert_eq!(message.job_id, id);

    // Runner B takes it over: a new attempt under B's name.
    let taken = claim(&ports, &id, "runner-b").await.unwrap();
    assert_eq!(
        (taken.status, taken.attempt, taken.lease_owner.as_deref()),
        (JobStatus::Running, 2, Some("runner-b"))
    );
    // A, had it only stalled, is fenced out of every write.
    let stale = Move::Renew {
        fence: Fence {
            owner: "runner-a".into(),
            attempt: 1,
        },
        lease: LEASE,
    };
    let refused = apply_move(ports.store.as_ref(), clock.as_ref(), taken, &stale).await;
    assert!(
        matches!(refused, Err(MoveError::Refused(Refusal::Fenced))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_fails_a_job_whose_last_attempt_lapsed() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let (deployment, _ecs) = deployment_with(5, clock.clone()).await;
    let ports = deployment.ports();
    let id = submit(&deployment).await;

    // Three runners in turn claim or take over, and each dies with its lease lapsing:
    // MaxAttempts (3) attempts charged.
    for (n, runner) in ["runner-a", "runner-b", "runner-c"].iter().enumerate() {
        let claimed = claim(&ports, &id, runner).await.unwrap();
        assert_eq!(claimed.attempt, n as u32 + 1);
        clock.advance(LEASE + Duration::seconds(1));
    }

    let report = tick(&deployment).await;
    assert_eq!(
        (&report["reaped"], &report["awaiting_takeover"]),
        (&json!(1), &json!(0)),
        "{report}"
    );
    let failed = job(&ports, &id).await;
    assert_eq!(failed.status, JobStatus::Failed, "{failed:?}");
    assert_eq!(
        failed.error.as_ref().map(|e| e.code.as_str()),
        Some("attempts_exhausted")
    );
    // Nothing takes it over now.
    assert!(matches!(
        claim(&ports, &id, "runner-d").await,
        Err(MoveError::Refused(Refusal::WrongState(JobStatus::Failed)))
    ));
    // And a later tick leaves it be.
    let again = tick(&deployment).await;
    assert_eq!(again["reaped"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_fails_a_job_whose_message_was_dead_lettered() {
    // Redrive after two receives (the template's is far above MaxAttempts; two keeps
    // the test short).
    let (deployment, _ecs) = deployment_with(2, Arc::new(SystemClock)).await;
    let ports = deployment.ports();
    let id = submit(&deployment).await;

    // Received twice and never claimed nor deleted (a runner dying right after the
    // receive, twice); visibility 0 so it is back at once.
    for n in 1..=2 {
        let got = ports
            .queue
            .receive(QueueName::Work, 1, NO_WAIT, StdDuration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "receive {n}");
        assert_eq!(got[0].receive_count, n);
    }
    // moto redrives only here, on the receive after maxReceiveCount: that receive
    // delivers nothing and moves the message to the dead-letter queue.
    let third = ports
        .queue
        .receive(QueueName::Work, 1, NO_WAIT, StdDuration::ZERO)
        .await
        .unwrap();
    assert!(third.is_empty(), "past maxReceiveCount: dead-lettered");
    assert_eq!(
        ports
            .queue
            .depth(QueueName::WorkDeadLetter)
            .await
            .unwrap()
            .visible,
        1
    );
    assert_eq!(job(&ports, &id).await.status, JobStatus::Queued);

    let report = tick(&deployment).await;
    assert_eq!(report["dead_lettered"], 1, "{report}");
    let failed = job(&ports, &id).await;
    assert_eq!(failed.status, JobStatus::Failed, "{failed:?}");
    assert_eq!(
        failed.error.as_ref().map(|e| e.code.as_str()),
        Some("dead_lettered")
    );
    // The dead letter is drained, not left to be counted again.
    let dlq = ports.queue.depth(QueueName::WorkDeadLetter).await.unwrap();
    assert_eq!((dlq.visible, dlq.in_flight), (0, 0), "{dlq:?}");
    let again = tick(&deployment).await;
    assert_eq!(again["dead_lettered"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_expires_a_job_queued_past_the_queue_timeout() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let (deployment, _ecs) = deployment_with(5, clock.clone()).await;
    let ports = deployment.ports();
    let id = submit(&deployment).await;

    // Just before the template's QueueTimeout (3600 s): nothing to do.
    clock.advance(Duration::seconds(3590));
    let report = tick(&deployment).await;
    assert_eq!(report["expired"], 0, "{report}");
    assert_eq!(job(&ports, &id).await.status, JobStatus::Queued);

    clock.advance(Duration::seconds(20));
    let report = tick(&deployment).await;
    assert_eq!(report["expired"], 1, "{report}");
    let expired = job(&ports, &id).await;
    assert_eq!(expired.status, JobStatus::Expired, "{expired:?}");
    assert_eq!(
        expired.error.as_ref().map(|e| e.code.as_str()),
        Some("queue_timeout")
    );
    // It left the sparse index of active jobs: no runner is launched for it.
    let queued = ports
        .store
        .jobs_in_status(JobStatus::Queued, 100)
        .await
        .unwrap();
    assert!(queued.iter().all(|j| j.id != id), "{queued:?}");
    assert_eq!(report["scale"]["unclaimed_queued"], 0, "{report}");
    // A runner that receives the leftover message finds it terminal: no claim.
    assert!(matches!(
        claim(&ports, &id, "runner-a").await,
        Err(MoveError::Refused(Refusal::WrongState(JobStatus::Expired)))
    ));
}
