//! The webhook store on SQLite, in the jobs database: endpoints, the outbox,
//! deliveries and attempts.
//!
//! The outbox is filled by a trigger on `jobs`: a status change into `running` or a
//! terminal status inserts an event row **in the transaction of the move itself**,
//! whichever process makes it (`dev`, or a runner subprocess), so no job can end
//! without its event being recorded. Only tenants with an endpoint get rows, so a
//! deployment without webhooks writes nothing more.
//!
//! A claim is one `UPDATE … RETURNING` in the single writer: it pushes the delivery's
//! `due_ms` past the lease and stamps a fresh token, so a second claim cannot take it
//! until the lease lapses, and only the token's holder can record the attempt.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jobs::model::{JobId, JobStatus};
use jobs::ports::{StoreError, StoreResult};
use jobs::webhooks::ports::{AttemptRecord, CreateEndpoint, WebhookStore};
use jobs::webhooks::{Attempt, Claimed, Delivery, DeliveryState, Endpoint, OutboxEvent};
use rusqlite::{OptionalExtension, params};

use super::{SqliteJobStore, from_json, int, text, to_json};
use crate::db::unavailable;

pub(super) const MIGRATION: &str = r#"
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant, id);
CREATE TABLE webhook_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TRIGGER webhook_outbox_on_status AFTER UPDATE OF status ON jobs
    WHEN old.status <> new.status
         AND new.status IN ('running', 'succeeded', 'failed', 'canceled', 'expired')
         AND EXISTS (SELECT 1 FROM webhook_endpoints WHERE tenant = new.tenant)
BEGIN
    INSERT INTO webhook_outbox (tenant, job_id, status) VALUES (new.tenant, new.id, new.status);
END;
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    state TEXT NOT NULL,
    due_ms INTEGER,
    ended_ms INTEGER,
    token TEXT,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (due_ms) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_ended ON webhook_deliveries (ended_ms) WHERE ended_ms IS NOT NULL;
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id);
CREATE TABLE webhook_attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, seq);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id);
"#;

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

#[async_trait]
impl WebhookStore for SqliteJobStore {
    async fn create_endpoint(
        &self,
        endpoint: &Endpoint,
        max: usize,
    ) -> StoreResult<CreateEndpoint> {
        let (id, tenant, body) = (
            endpoint.id.clone(),
            endpoint.tenant.clone(),
            to_json(endpoint)?,
        );
        self.db
            .write(move |tx| {
                let n: i64 = tx
                    .prepare_cached("SELECT count(*) FROM webhook_endpoints WHERE tenant = ?1")
                    .and_then(|mut s| s.query_row([&tenant], |r| r.get(0)))
                    .map_err(unavailable)?;
                if n as usize >= max {
                    return Ok(CreateEndpoint::TooMany);
                }
                tx.prepare_cached(
                    "INSERT INTO webhook_endpoints (id, tenant, body) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![id, tenant, body]))
                .map_err(unavailable)?;
                Ok(CreateEndpoint::Created)
            })
            .await
    }

    async fn list_endpoints(&self, tenant: &str, limit: usize) -> StoreResult<Vec<Endpoint>> {
        self.read_all(
            "SELECT body FROM webhook_endpoints WHERE tenant = ?1 ORDER BY id LIMIT ?2",
            vec![text(tenant), int(limit as i64)],
        )
    }

    async fn get_endpoint(&self, tenant: &str, id: &str) -> StoreResult<Option<Endpoint>> {
        self.read_one(
            "SELECT body FROM webhook_endpoints WHERE id = ?1 AND tenant = ?2",
            vec![text(id), text(tenant)],
        )
    }

    async fn delete_endpoint(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.db
            .write(move |tx| {
                let n = tx
                    .prepare_cached("DELETE FROM webhook_endpoints WHERE id = ?1 AND tenant = ?2")
                    .and_then(|mut s| s.execute([&id, &tenant]))
                    .map_err(unavailable)?;
                if n == 0 {
                    return Ok(false);
                }
                for sql in [
                    "DELETE FROM webhook_deliveries WHERE endpoint_id = ?1",
                    "DELETE FROM webhook_attempts WHERE endpoint_id = ?1",
                ] {
                    tx.prepare_cached(sql)
                        .and_then(|mut s| s.execute([&id]))
                        .map_err(unavailable)?;
                }
                Ok(true)
            })
            .await
    }

    async fn pending_events(&self, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        let rows: Vec<(i64, String, String, String)> = self.db.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, tenant, job_id, status FROM webhook_outbox ORDER BY seq LIMIT ?1",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })?;
        rows.into_iter()
            .map(|(seq, tenant, job_id, status)| {
                Ok(OutboxEvent {
                    id: seq.to_string(),
                    tenant,
                    job_id: JobId::parse(&job_id).ok_or_else(|| {
                        StoreError::Unavailable(format!("bad job id in the outbox: {job_id:?}"))
                    })?,
                    status: JobStatus::parse(&status).ok_or_else(|| {
                        StoreError::Unavailable(format!("bad status in the outbox: {status:?}"))
                    })?,
                })
            })
            .collect()
    }

    async fn fan_out(&self, event: &OutboxEvent, deliveries: &[Delivery]) -> StoreResult<()> {
        let seq: i64 = event
            .id
            .parse()
            .map_err(|_| StoreError::Unavailable(format!("bad outbox id {:?}", event.id)))?;
        let rows = deliveries
            .iter()
            .map(|d| {
                Ok((
                    d.id.clone(),
                    d.tenant.clone(),
                    d.endpoint_id.clone(),
                    d.next_attempt_at.map(ms),
                    to_json(d)?,
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.db
            .write(move |tx| {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO webhook_deliveries (id, tenant, endpoint_id, state, due_ms, body) \
                         VALUES (?1, ?2, ?3, 'pending', ?4, ?5)",
                    )
                    .map_err(unavailable)?;
                for (id, tenant, endpoint_id, due, body) in &rows {
                    insert
                        .execute(params![id, tenant, endpoint_id, due, body])
                        .map_err(unavailable)?;
                }
                tx.prepare_cached("DELETE FROM webhook_outbox WHERE seq = ?1")
                    .and_then(|mut s| s.execute([seq]))
                    .map_err(unavailable)?;
                Ok(())
            })
            .await
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>> {
        // Most rounds find nothing due: a read answers that without taking the writer.
        let any_due: Option<i64> = self.db.read(|conn| {
            conn.prepare_cached(
                "SELECT 1 FROM webhook_deliveries WHERE state = 'pending' AND due_ms <= ?1 LIMIT 1",
            )
            .and_then(|mut s| s.query_row([ms(now)], |r| r.get(0)).optional())
            .map_err(unavailable)
        })?;
        if any_due.is_none() {
            return Ok(Vec::new());
        }
        let token = ulid::Ulid::new().to_string();
        let (now_ms, until_ms) = (
            ms(now),
            ms(now) + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2),
        );
        let bodies: Vec<String> = {
            let token = token.clone();
            self.db
                .write(move |tx| {
                    let mut stmt = tx
                        .prepare_cached(
                            "UPDATE webhook_deliveries SET due_ms = ?1, token = ?2 WHERE id IN \
                             (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND due_ms <= ?3 \
                              ORDER BY due_ms LIMIT ?4) RETURNING body",
                        )
                        .map_err(unavailable)?;
                    let rows = stmt
                        .query_map(params![until_ms, token, now_ms, limit as i64], |r| r.get(0))
                        .map_err(unavailable)?;
                    rows.collect::<rusqlite::Result<Vec<String>>>()
                        .map_err(unavailable)
                })
                .await?
        };
        bodies
            .iter()
            .map(|b| {
                Ok(Claimed {
                    delivery: from_json(b)?,
                    token: token.clone(),
                })
            })
            .collect()
    }

    async fn record_attempt(&self, token: &str, record: &AttemptRecord) -> StoreResult<()> {
        let id = record.attempt.delivery_id.clone();
        let endpoint_id = record.attempt.endpoint_id.clone();
        let token = token.to_string();
        let attempt_body = to_json(&record.attempt)?;
        let state = record.state;
        let next = record.attempt.next_attempt_at;
        let attempts = record.attempt.attempt;
        let ended_ms = (state != DeliveryState::Pending).then(|| ms(record.attempt.at));
        self.db
            .write(move |tx| {
                let body: Option<String> = tx
                    .prepare_cached("SELECT body FROM webhook_deliveries WHERE id = ?1 AND token = ?2")
                    .and_then(|mut s| s.query_row([&id, &token], |r| r.get(0)).optional())
                    .map_err(unavailable)?;
                let Some(body) = body else {
                    return Err(StoreError::Conflict);
                };
                let mut delivery: Delivery = from_json(&body)?;
                delivery.state = state;
                delivery.attempts = attempts;
                delivery.next_attempt_at = next;
                let body = to_json(&delivery)?;
                tx.prepare_cached(
                    "UPDATE webhook_deliveries SET state = ?1, due_ms = ?2, ended_ms = ?3, token = NULL, body = ?4 \
                     WHERE id = ?5",
                )
                .and_then(|mut s| s.execute(params![state.as_str(), next.map(ms), ended_ms, body, id]))
                .map_err(unavailable)?;
                tx.prepare_cached(
                    "INSERT INTO webhook_attempts (delivery_id, endpoint_id, body) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![id, endpoint_id, attempt_body]))
                .map_err(unavailable)?;
                Ok(())
            })
            .await
    }

    async fn get_delivery(&self, id: &str) -> StoreResult<Option<Delivery>> {
        self.read_one(
            "SELECT body FROM webhook_deliveries WHERE id = ?1",
            vec![text(id)],
        )
    }

    async fn list_attempts(
        &self,
        tenant: &str,
        endpoint_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<Attempt>> {
        self.read_all(
            "SELECT a.body FROM webhook_attempts a JOIN webhook_endpoints e ON e.id = a.endpoint_id \
             WHERE a.endpoint_id = ?1 AND e.tenant = ?2 ORDER BY a.seq DESC LIMIT ?3",
            vec![text(endpoint_id), text(tenant), int(limit as i64)],
        )
    }

    async fn delete_finished_deliveries(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<usize> {
        let before = ms(before);
        self.db
            .write(move |tx| {
                let ids: Vec<String> = {
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT id FROM webhook_deliveries WHERE ended_ms IS NOT NULL AND ended_ms < ?1 \
                             ORDER BY ended_ms LIMIT ?2",
                        )
                        .map_err(unavailable)?;
                    let rows = stmt
                        .query_map(params![before, limit as i64], |r| r.get(0))
                        .map_err(unavailable)?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(unavailable)?
                };
                for id in &ids {
                    for sql in [
                        "DELETE FROM webhook_attempts WHERE delivery_id = ?1",
                        "DELETE FROM webhook_deliveries WHERE id = ?1",
                    ] {
                        tx.prepare_cached(sql)
                            .and_then(|mut s| s.execute([id]))
                            .map_err(unavailable)?;
                    }
                }
                Ok(ids.len())
            })
            .await
    }
}
