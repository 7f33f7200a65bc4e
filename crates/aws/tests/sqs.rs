//! `SqsQueue` against moto_server, with the real SDK client: the shared queue
//! conformance checks, with and without the fault-injecting queue.
//!
//! Where moto is kinder than SQS (said here so nobody mistakes a green run for more
//! than it proves):
//! - **Stale receipts:** moto accepts a visibility change with a stale receipt, and a
//!   delete with an older receipt *deletes* the message; real SQS may answer Ok and not
//!   delete. Hence `queue_sqs` (both outcomes allowed) instead of `queue_strict`, and
//!   the fault-injecting queue, which makes stale and silently ignored deletes happen.
//! - **Redrive:** moto moves a message to the DLQ during the receive after
//!   `maxReceiveCount` (that receive returns nothing), as SQS does in practice; SQS's
//!   documentation promises no timing, so callers must not depend on it either.
//! - **Short polls:** moto returns every visible message on a zero-wait receive; SQS
//!   samples a subset of its servers and may return nothing.
//! - **Counts:** moto's `ApproximateNumberOf*` are exact; SQS's lag by up to a minute.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws::{QueueUrls, SqsQueue};
use jobs::faults::{Faults, FaultyQueue};
use jobs::ports::{Queue, QueueName};
use testkit::conformance::{self, TimeControl};

/// SQS visibility runs on the server's clock: time moves by waiting.
struct RealTime;

#[async_trait]
impl TimeControl for RealTime {
    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_semantics_conformance() {
    // Sleeps through two 31 s visibility lapses: SQS has no clock to move.
    conformance::queue_sqs(Arc::new(common::fresh_queue(3).await), &RealTime, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_at_least_once_without_faults() {
    conformance::queue_at_least_once(Arc::new(common::fresh_queue(1000).await), 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_at_least_once_with_faults() {
    let queue: Arc<dyn Queue> = Arc::new(common::fresh_queue(1000).await);
    let faulty = Arc::new(FaultyQueue::new(queue, Faults::CHAOTIC, 7));
    conformance::queue_at_least_once(faulty, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_receipt_is_stale_and_an_unknown_queue_is_unavailable() {
    let queue = common::fresh_queue(5).await;
    assert!(matches!(
        queue.delete(QueueName::Work, "not-a-receipt").await,
        Err(jobs::ports::QueueError::StaleReceipt)
    ));
    let client = common::clients().await.sqs;
    let endpoint = &common::moto().endpoint;
    let gone = SqsQueue::new(
        client,
        QueueUrls {
            work: format!("{endpoint}/123456789012/no-such-queue"),
            wake: String::new(),
            work_dead_letter: String::new(),
            wake_dead_letter: String::new(),
        },
    );
    match gone.send(QueueName::Work, "x").await {
        Err(jobs::ports::QueueError::Unavailable(message)) => {
            assert!(message.contains("SendMessage on"), "{message}");
            assert!(
                message.contains("no-such-queue"),
                "names the queue: {message}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
