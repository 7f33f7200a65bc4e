//! A Queue decorator that misbehaves the way SQS is allowed to.
//!
//! SQS promises at-least-once delivery and little else. No adapter may be kinder, so
//! the conformance and chaos suites wrap a queue (SQLite's or SQS's) in [`FaultyQueue`],
//! which injects,
//! each with its own probability (seeded, so a failing run can be replayed):
//!
//! - **duplicates**: a send delivers two copies;
//! - **reordering**: a receive looks further ahead and hands messages out shuffled;
//! - **early redelivery**: a message becomes visible again at once, while its first
//!   receiver is still working on it (whose receipt then goes stale);
//! - **stale receipts**: a delete or visibility change fails with `StaleReceipt`
//!   without acting;
//! - **silently ignored deletes**: a delete answers Ok but does nothing, so the
//!   message comes back after its visibility timeout (SQS does this for some stale
//!   handles).
//!
//! It lives here, beside the `Queue` port (the `testkit` crate, home of the conformance
//! suite, re-exports it), so every adapter's tests and both runner entries (the local `--chaos-queue-seed`, the AWS
//! entry's test-only `SERVERLESS_COMFYUI_TEST_CHAOS_QUEUE_SEED`) use one copy, and the
//! AWS runner needs no SQLite to link it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ports::{Queue, QueueDepth, QueueError, QueueName, QueueResult, Received};
use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Probabilities in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    pub duplicate: f64,
    pub reorder: f64,
    pub early_redelivery: f64,
    pub stale_receipt: f64,
    pub ignored_delete: f64,
}

impl Faults {
    pub const NONE: Faults = Faults {
        duplicate: 0.0,
        reorder: 0.0,
        early_redelivery: 0.0,
        stale_receipt: 0.0,
        ignored_delete: 0.0,
    };

    /// A mix hostile enough to shake out mistakes, used by the suites.
    pub const CHAOTIC: Faults = Faults {
        duplicate: 0.2,
        reorder: 0.5,
        early_redelivery: 0.1,
        stale_receipt: 0.1,
        ignored_delete: 0.1,
    };
}

pub struct FaultyQueue {
    inner: Arc<dyn Queue>,
    faults: Faults,
    rng: Mutex<StdRng>,
}

impl FaultyQueue {
    pub fn new(inner: Arc<dyn Queue>, faults: Faults, seed: u64) -> Self {
        FaultyQueue {
            inner,
            faults,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .gen_bool(p.min(1.0))
    }
}

#[async_trait]
impl Queue for FaultyQueue {
    async fn send(&self, queue: QueueName, body: &str) -> QueueResult<String> {
        let id = self.inner.send(queue, body).await?;
        if self.roll(self.faults.duplicate) {
            self.inner.send(queue, body).await?;
        }
        Ok(id)
    }

    async fn receive(
        &self,
        queue: QueueName,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> QueueResult<Vec<Received>> {
        let reorder = self.roll(self.faults.reorder);
        let ask = if reorder { max.max(1) * 3 } else { max };
        let mut batch = self.inner.receive(queue, ask, wait, visibility).await?;
        if reorder {
            batch.shuffle(&mut *self.rng.lock().unwrap_or_else(|e| e.into_inner()));
            // Put back what we looked at but do not hand out.
            for extra in batch.split_off(max.min(batch.len())) {
                let _ = self
                    .inner
                    .change_visibility(queue, &extra.receipt, Duration::ZERO)
                    .await;
            }
        }
        for message in &batch {
            if self.roll(self.faults.early_redelivery) {
                let _ = self
                    .inner
                    .change_visibility(queue, &message.receipt, Duration::ZERO)
                    .await;
            }
        }
        Ok(batch)
    }

    async fn change_visibility(
        &self,
        queue: QueueName,
        receipt: &str,
        visibility: Duration,
    ) -> QueueResult<()> {
        if self.roll(self.faults.stale_receipt) {
            return Err(QueueError::StaleReceipt);
        }
        self.inner
            .change_visibility(queue, receipt, visibility)
            .await
    }

    async fn delete(&self, queue: QueueName, receipt: &str) -> QueueResult<()> {
        if self.roll(self.faults.stale_receipt) {
            return Err(QueueError::StaleReceipt);
        }
        if self.roll(self.faults.ignored_delete) {
            return Ok(());
        }
        self.inner.delete(queue, receipt).await
    }

    async fn depth(&self, queue: QueueName) -> QueueResult<QueueDepth> {
        self.inner.depth(queue).await
    }
}
