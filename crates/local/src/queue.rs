//! Queues on SQLite with SQS's semantics.
//!
//! - At-least-once: a received message is only hidden, for its visibility timeout;
//!   unless deleted it comes back.
//! - Each receive mints a new receipt handle; only the latest one can delete the
//!   message or change its visibility (an old one gets [`QueueError::StaleReceipt`]).
//! - Each receive counts. A message received more than `max_receive_count` times moves
//!   to the dead-letter queue instead of being delivered again (SQS's redrive policy).
//! - Long polling: `receive` waits up to `wait` for a message. Senders in this process
//!   wake waiters at once; other processes (runners) are seen within a short poll.
//!
//! The queue lives in its own database file, apart from the job store, so no
//! transaction can ever span the two, just as none can span DynamoDB and SQS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jobs::ports::{
    Clock, Queue, QueueDepth, QueueError, QueueName, QueueResult, Received, StoreError,
};
use rusqlite::params;
use rusqlite::types::Value;

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}
use tokio::sync::Notify;

use crate::db::Db;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    sent_at_ms INTEGER NOT NULL
);
CREATE INDEX messages_ready ON messages (queue, visible_at_ms, seq);
CREATE UNIQUE INDEX messages_by_receipt ON messages (receipt);
"#,
    // A send touches fewer pages: no AUTOINCREMENT bookkeeping (a new `seq` is still
    // above every live one, which is all the ordering needs), no index on message ids
    // (ULIDs, never looked up), and only received messages in the receipt index.
    r#"
CREATE TABLE messages_v2 (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    sent_at_ms INTEGER NOT NULL
);
INSERT INTO messages_v2 (seq, id, queue, body, visible_at_ms, receive_count, receipt, sent_at_ms)
    SELECT seq, id, queue, body, visible_at_ms, receive_count, receipt, sent_at_ms FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
CREATE INDEX messages_ready ON messages (queue, visible_at_ms, seq);
CREATE UNIQUE INDEX messages_by_receipt ON messages (receipt) WHERE receipt IS NOT NULL;
"#,
];

/// How often a waiting receive on the work queue asks whether another process
/// committed (a runner waits for what `dev` sends): this bounds a job's pickup latency.
/// Sends within the process wake receivers at once.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(10);
/// The same for the other queues: wake nudges from another process (a runner handing
/// a job back) are rare and only hints (the tick is the safety net), and dead letters
/// are drained by the tick, so these waits may wake rarely.
const CROSS_PROCESS_POLL_SLOW: Duration = Duration::from_millis(250);
/// A waiting receive looks again at least this often even when nothing was committed:
/// a message whose visibility timeout ran out becomes visible without any write.
const VISIBILITY_RECHECK: Duration = Duration::from_secs(1);

pub struct SqliteQueue {
    db: Db,
    clock: Arc<dyn Clock>,
    max_receive_count: u32,
    /// One per queue, so a send to `work` does not wake a receiver waiting on `wake`.
    sent: [Notify; 4],
}

fn to_queue_error(e: StoreError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn sql(e: rusqlite::Error) -> StoreError {
    crate::db::unavailable(e)
}

impl SqliteQueue {
    /// Opens the queue database. Messages received more than `max_receive_count` times
    /// are dead-lettered.
    pub fn open(path: &Path, clock: Arc<dyn Clock>, max_receive_count: u32) -> QueueResult<Self> {
        Ok(SqliteQueue {
            db: Db::open(path, MIGRATIONS).map_err(to_queue_error)?,
            clock,
            max_receive_count,
            sent: Default::default(),
        })
    }

    /// Wakes this process's receivers waiting on `queue`.
    fn sent(&self, queue: QueueName) -> &Notify {
        let index = match queue {
            QueueName::Work => 0,
            QueueName::Wake => 1,
            QueueName::WorkDeadLetter => 2,
            QueueName::WakeDeadLetter => 3,
        };
        &self.sent[index]
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    async fn try_receive(
        &self,
        queue: QueueName,
        max: usize,
        visibility: Duration,
    ) -> QueueResult<Vec<Received>> {
        let now = self.now_ms();
        let hidden_until = now + visibility.as_millis() as i64;
        let max_receives = self.max_receive_count;
        self.db
            .write(move |tx| {
                let candidates: Vec<(i64, String, String, u32)> = {
                    // Oldest-visible first, straight off the index: O(max), however deep
                    // the queue (SQS promises no order, so neither do we).
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT seq, id, body, receive_count FROM messages
                             WHERE queue = ?1 AND visible_at_ms <= ?2 ORDER BY visible_at_ms, seq LIMIT ?3",
                        )
                        .map_err(sql)?;
                    let rows = stmt
                        .query_map(params![queue.as_str(), now, (max * 2) as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })
                        .map_err(sql)?;
                    rows.collect::<rusqlite::Result<_>>().map_err(sql)?
                };
                let mut received = Vec::new();
                for (seq, id, body, count) in candidates {
                    if count >= max_receives
                        && let Some(dead) = queue.dead_letter()
                    {
                        tx.prepare_cached(
                            "UPDATE messages SET queue = ?1, visible_at_ms = ?2, receive_count = 0, receipt = NULL WHERE seq = ?3",
                        )
                        .and_then(|mut s| s.execute(params![dead.as_str(), now, seq]))
                        .map_err(sql)?;
                        continue;
                    }
                    if received.len() == max {
                        break;
                    }
                    let receipt = ulid::Ulid::new().to_string();
                    tx.prepare_cached(
                        "UPDATE messages SET receive_count = receive_count + 1, visible_at_ms = ?1, receipt = ?2 WHERE seq = ?3",
                    )
                    .and_then(|mut s| s.execute(params![hidden_until, receipt, seq]))
                    .map_err(sql)?;
                    received.push(Received {
                        message_id: id,
                        receipt,
                        body,
                        receive_count: count + 1,
                    });
                }
                Ok(received)
            })
            .await
            .map_err(to_queue_error)
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, queue: QueueName, body: &str) -> QueueResult<String> {
        let id = ulid::Ulid::new().to_string();
        let now = self.now_ms();
        self.db
            .execute(
                "INSERT INTO messages (id, queue, body, visible_at_ms, sent_at_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
                vec![text(&id), text(queue.as_str()), text(body), Value::Integer(now)],
            )
            .await
            .map_err(to_queue_error)?;
        self.sent(queue).notify_waiters();
        Ok(id)
    }

    async fn receive(
        &self,
        queue: QueueName,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> QueueResult<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + wait;
        let poll = match queue {
            QueueName::Work => CROSS_PROCESS_POLL,
            _ => CROSS_PROCESS_POLL_SLOW,
        };
        // Looking is a write transaction in the writer thread; asking whether anything
        // was committed since the last look is a read of shared memory. An idle wait
        // does the second, every `poll`, and the first only when it may find something.
        let mut look = true;
        let mut version = None;
        let mut looked_at = tokio::time::Instant::now();
        loop {
            // Register interest before looking, so a send in between is not missed.
            let notified = self.sent(queue).notified();
            let now_version = self.db.data_version().map_err(to_queue_error)?;
            if look || version != Some(now_version) || looked_at.elapsed() >= VISIBILITY_RECHECK {
                version = Some(now_version);
                looked_at = tokio::time::Instant::now();
                let received = self.try_receive(queue, max.max(1), visibility).await?;
                if !received.is_empty() {
                    return Ok(received);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let nap = poll.min(deadline - now);
            look = tokio::time::timeout(nap, notified).await.is_ok();
        }
    }

    async fn change_visibility(
        &self,
        queue: QueueName,
        receipt: &str,
        visibility: Duration,
    ) -> QueueResult<()> {
        let visible_at = self.now_ms() + visibility.as_millis() as i64;
        let changed = self
            .db
            .execute(
                "UPDATE messages SET visible_at_ms = ?1 WHERE queue = ?2 AND receipt = ?3",
                vec![
                    Value::Integer(visible_at),
                    text(queue.as_str()),
                    text(receipt),
                ],
            )
            .await
            .map_err(to_queue_error)?;
        if changed == 0 {
            return Err(QueueError::StaleReceipt);
        }
        if visibility.is_zero() {
            self.sent(queue).notify_waiters();
        }
        Ok(())
    }

    async fn delete(&self, queue: QueueName, receipt: &str) -> QueueResult<()> {
        let changed = self
            .db
            .execute(
                "DELETE FROM messages WHERE queue = ?1 AND receipt = ?2",
                vec![text(queue.as_str()), text(receipt)],
            )
            .await
            .map_err(to_queue_error)?;
        if changed == 0 {
            Err(QueueError::StaleReceipt)
        } else {
            Ok(())
        }
    }

    fn bytes_used(&self) -> Option<u64> {
        Some(self.db.bytes_used())
    }

    async fn depth(&self, queue: QueueName) -> QueueResult<QueueDepth> {
        let now = self.now_ms();
        self.db
            .read(|conn| {
                conn.prepare_cached(
                    "SELECT
                        coalesce(sum(CASE WHEN visible_at_ms <= ?2 THEN 1 ELSE 0 END), 0),
                        coalesce(sum(CASE WHEN visible_at_ms > ?2 THEN 1 ELSE 0 END), 0)
                     FROM messages WHERE queue = ?1",
                )
                .and_then(|mut s| {
                    s.query_row(params![queue.as_str(), now], |r| {
                        Ok(QueueDepth {
                            visible: r.get::<_, i64>(0)? as u64,
                            in_flight: r.get::<_, i64>(1)? as u64,
                        })
                    })
                })
                .map_err(sql)
            })
            .map_err(to_queue_error)
    }
}

#[cfg(test)]
mod tests {
    use jobs::ports::SystemClock;

    use super::*;

    /// Messages sent before the schema-2 rebuild are still delivered, and deleted by
    /// their receipts, after it.
    #[tokio::test]
    async fn upgrading_from_schema_1_keeps_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        {
            let old = SqliteQueue {
                db: Db::open(&path, &MIGRATIONS[..1]).unwrap(),
                clock: clock.clone(),
                max_receive_count: 5,
                sent: Default::default(),
            };
            old.send(QueueName::Work, "first").await.unwrap();
            old.send(QueueName::Work, "second").await.unwrap();
        }
        let queue = SqliteQueue::open(&path, clock, 5).unwrap();
        queue.send(QueueName::Work, "third").await.unwrap();
        let received = queue
            .receive(QueueName::Work, 10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        let bodies: Vec<_> = received.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["first", "second", "third"]);
        for message in &received {
            queue
                .delete(QueueName::Work, &message.receipt)
                .await
                .unwrap();
        }
        assert_eq!(queue.depth(QueueName::Work).await.unwrap().visible, 0);
    }
}
