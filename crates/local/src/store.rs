//! The JobStore on SQLite.
//!
//! Each item is a JSON document (the same serde types DynamoDB items carry) plus the
//! few columns queries need: status, revision, tenant, the reservation deadline, and a
//! labels table for `metadata[k]=v` filters. Every job write is conditioned on the
//! revision read, exactly like the DynamoDB adapter's `ConditionExpression`.

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jobs::model::{
    ApiKeyRecord, Asset, BlobRecord, IdempotencyRecord, Job, JobId, JobStatus, ProgressRecord,
    UploadRecord,
};
use jobs::ports::{
    CreateOutcome, Fleet, JobSnapshot, JobStatusRead, JobStore, ListQuery, ListedJobs,
    QUEUE_POSITION_CAP, StoreError, StoreResult, WorkerRecord,
};
use jobs::quota::{QuotaRefusal, TenantQuota, TenantUsage};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params, params_from_iter};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::{Db, run_cached, unavailable};

mod listing;
mod migrations;
mod webhooks;

pub use listing::LIST_SCAN_BUDGET;
use listing::filtered_page;
use migrations::MIGRATIONS;

/// Live event-stream slots: tenant -> holder -> until.
type StreamSlots =
    std::collections::HashMap<String, std::collections::HashMap<String, DateTime<Utc>>>;

pub struct SqliteJobStore {
    db: Db,
    /// Label entries a filtered listing examines at most per request.
    list_scan_budget: usize,
    /// Live event-stream slots: tenant -> holder -> until. In memory, not in the
    /// database: locally one process (`dev`) serves every stream, through one store,
    /// so a count in its memory is exact; a restart ends every stream anyway.
    stream_slots: std::sync::Mutex<StreamSlots>,
}

fn to_json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Unavailable(format!("encode: {e}")))
}

fn from_json<T: DeserializeOwned>(raw: &str) -> StoreResult<T> {
    serde_json::from_str(raw).map_err(|e| StoreError::Unavailable(format!("decode: {e}")))
}

/// Queued jobs before `id`, counted up to `cap`.
fn queue_position(conn: &rusqlite::Connection, id: &JobId, cap: u64) -> StoreResult<u64> {
    conn.prepare_cached(
        "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE status = 'queued' AND id < ?1 LIMIT ?2)",
    )
    .and_then(|mut s| s.query_row(params![id.as_str(), cap as i64], |r| r.get::<_, i64>(0)))
    .map(|n| n as u64)
    .map_err(unavailable)
}

/// All queued jobs, counted up to `cap`, from the trigger-kept count.
fn queued_count(conn: &rusqlite::Connection, cap: u64) -> StoreResult<u64> {
    conn.prepare_cached("SELECT n FROM queued_jobs WHERE id = 1")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map(|n| (n.max(0) as u64).min(cap))
        .map_err(unavailable)
}

/// Holds a new job of `tenant` to its quota, inside the transaction that records it:
/// refuses past the active-job limit, else counts it in the current one-second window
/// (refusing past the rate). The active count itself moves by trigger on the insert.
fn admit(
    tx: &rusqlite::Connection,
    tenant: &str,
    now: DateTime<Utc>,
    quota: &TenantQuota,
) -> StoreResult<Option<QuotaRefusal>> {
    if *quota == TenantQuota::UNLIMITED {
        return Ok(None);
    }
    let second = now.timestamp();
    let (active, window_s, window_n): (i64, i64, i64) = tx
        .prepare_cached(
            "SELECT active_jobs, window_s, window_n FROM tenant_usage WHERE tenant = ?1",
        )
        .and_then(|mut s| {
            s.query_row([tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(unavailable)?
        .unwrap_or((0, 0, 0));
    if active >= i64::from(quota.max_active_jobs) {
        return Ok(Some(QuotaRefusal::ActiveJobs {
            limit: quota.max_active_jobs,
        }));
    }
    let in_window = if window_s == second { window_n } else { 0 };
    if in_window >= i64::from(quota.submits_per_second) {
        return Ok(Some(QuotaRefusal::SubmitRate {
            limit: quota.submits_per_second,
        }));
    }
    tx.prepare_cached(
        "INSERT INTO tenant_usage (tenant, window_s, window_n) VALUES (?1, ?2, ?3)
         ON CONFLICT (tenant) DO UPDATE SET window_s = ?2, window_n = ?3",
    )
    .and_then(|mut s| s.execute(params![tenant, second, in_window + 1]))
    .map_err(unavailable)?;
    Ok(None)
}

/// A job's row: its JSON body and, kept apart from it, the `enqueued` flag. Every
/// query that reads jobs selects `body, enqueued`.
fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, bool)> {
    Ok((row.get(0)?, row.get(1)?))
}

fn decode_job((body, enqueued): (String, bool)) -> StoreResult<Job> {
    let mut job: Job = from_json(&body)?;
    job.enqueued = enqueued;
    Ok(job)
}

/// One job by id, on a connection the caller holds.
fn job_by_id(conn: &rusqlite::Connection, id: &JobId) -> StoreResult<Option<Job>> {
    conn.prepare_cached("SELECT body, enqueued FROM jobs WHERE id = ?1")
        .and_then(|mut s| s.query_row([id.as_str()], job_from_row).optional())
        .map_err(unavailable)?
        .map(decode_job)
        .transpose()
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn int(n: i64) -> Value {
    Value::Integer(n)
}

fn reserved_ms(job: &Job) -> Option<i64> {
    job.reserved_until.map(|t| t.timestamp_millis())
}

/// The retention deadline the sweep reads: only a finished job has one.
fn expires_ms(job: &Job) -> Option<i64> {
    job.status
        .is_terminal()
        .then(|| job.expires_at.timestamp_millis())
}

impl SqliteJobStore {
    /// Reads every JSON body a query returns.
    fn read_all<T: DeserializeOwned>(&self, sql: &str, args: Vec<Value>) -> StoreResult<Vec<T>> {
        let bodies: Vec<String> = self.db.read(|conn| {
            let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
            let rows = stmt
                .query_map(params_from_iter(args), |r| r.get(0))
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
                .map_err(unavailable)
        })?;
        bodies.iter().map(|b| from_json(b)).collect()
    }

    /// Reads every job a query (selecting `body, enqueued`) returns.
    fn read_jobs(&self, sql: &str, args: Vec<Value>) -> StoreResult<Vec<Job>> {
        let rows = self.db.read(|conn| {
            let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
            let rows = stmt
                .query_map(params_from_iter(args), job_from_row)
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })?;
        rows.into_iter().map(decode_job).collect()
    }

    /// Reads one JSON body by a query, if a row matches.
    fn read_one<T: DeserializeOwned>(
        &self,
        sql: &'static str,
        args: Vec<Value>,
    ) -> StoreResult<Option<T>> {
        let body: Option<String> = self.db.read(|conn| {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.query_row(params_from_iter(args), |r| r.get(0)).optional())
                .map_err(unavailable)
        })?;
        body.as_deref().map(from_json).transpose()
    }

    /// Opens `path` (created if missing), migrating it to the current schema.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Ok(SqliteJobStore {
            db: Db::open(path, MIGRATIONS)?,
            list_scan_budget: LIST_SCAN_BUDGET,
            stream_slots: Default::default(),
        })
    }
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn create_job_within_quota(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyRecord>,
        now: DateTime<Utc>,
        quota: &TenantQuota,
    ) -> StoreResult<CreateOutcome> {
        let quota = *quota;
        let body = to_json(job)?;
        let record_body = idempotency.map(to_json).transpose()?;
        let job = job.clone();
        let idempotency = idempotency.cloned();
        self.db.write(move |tx| {
            if let Some(record) = &idempotency {
                let existing: Option<(String, i64)> = tx
                    .prepare_cached(
                        "SELECT body, expires_at_ms FROM idempotency WHERE tenant = ?1 AND key = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![record.tenant, record.key], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .optional()
                    })
                    .map_err(unavailable)?;
                if let Some((existing, expires_ms)) = existing
                    && expires_ms > now.timestamp_millis()
                {
                    return Ok(CreateOutcome::KeyTaken(from_json(&existing)?));
                }
            }
            // After the replay check (a replay is answered, never refused) and before
            // any write: a refused job leaves nothing, its key included.
            if let Some(refusal) = admit(tx, &job.tenant, now, &quota)? {
                return Ok(CreateOutcome::OverQuota(refusal));
            }
            if let (Some(record), Some(record_body)) = (&idempotency, &record_body) {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO idempotency (tenant, key, expires_at_ms, body) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        record.tenant,
                        record.key,
                        record.expires_at.timestamp_millis(),
                        record_body
                    ])
                })
                .map_err(unavailable)?;
            }
            // Read before the insert: every job queued now was recorded before this one.
            let queue_position = if job.status == JobStatus::Queued {
                queued_count(tx, QUEUE_POSITION_CAP)?
            } else {
                0
            };
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO jobs (id, tenant, status, rev, reserved_until_ms, body, enqueued, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        job.id.as_str(),
                        job.tenant,
                        job.status.as_str(),
                        job.rev as i64,
                        reserved_ms(&job),
                        body,
                        job.enqueued,
                        expires_ms(&job)
                    ])
                })
                .map_err(unavailable)?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            {
                let mut label = tx
                    .prepare_cached(
                        "INSERT INTO job_labels (job_id, tenant, k, v) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(unavailable)?;
                for (k, v) in &job.metadata {
                    label
                        .execute(params![job.id.as_str(), job.tenant, k, v])
                        .map_err(unavailable)?;
                }
            }
            Ok(CreateOutcome::Created { queue_position })
        })
        .await
    }

    async fn get_job(&self, id: &JobId) -> StoreResult<Option<Job>> {
        self.db.read(|conn| job_by_id(conn, id))
    }

    async fn job_status(&self, id: &JobId) -> StoreResult<Option<JobStatusRead>> {
        // The status column and one field of the body: no job decoded.
        let row: Option<(String, i64)> = self.db.read(|conn| {
            conn.prepare_cached(
                "SELECT status, json_extract(body, '$.attempt') FROM jobs WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(unavailable)
        })?;
        row.map(|(status, attempt)| {
            Ok(JobStatusRead {
                status: JobStatus::parse(&status).ok_or_else(|| {
                    StoreError::Unavailable(format!("unknown job status {status:?}"))
                })?,
                attempt: u32::try_from(attempt)
                    .map_err(|_| StoreError::Unavailable(format!("bad attempt {attempt}")))?,
            })
        })
        .transpose()
    }

    async fn mark_enqueued(&self, id: &JobId) -> StoreResult<()> {
        self.db
            .execute(
                "UPDATE jobs SET enqueued = 1 WHERE id = ?1 AND enqueued = 0",
                vec![text(id.as_str())],
            )
            .await
            .map(|_| ())
    }

    async fn put_job(&self, job: &Job, expected_rev: u64) -> StoreResult<()> {
        let body = to_json(job)?;
        let changed = self
            .db
            .execute(
                "UPDATE jobs SET status = ?1, rev = ?2, reserved_until_ms = ?3, body = ?4, expires_ms = ?7 WHERE id = ?5 AND rev = ?6",
                vec![
                    text(job.status.as_str()),
                    int(job.rev as i64),
                    reserved_ms(job).map_or(Value::Null, int),
                    Value::Text(body),
                    text(job.id.as_str()),
                    int(expected_rev as i64),
                    expires_ms(job).map_or(Value::Null, int),
                ],
            )
            .await?;
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    async fn list_jobs(&self, query: &ListQuery) -> StoreResult<Vec<Job>> {
        Ok(self.list_jobs_page(query).await?.jobs)
    }

    async fn list_jobs_page(&self, query: &ListQuery) -> StoreResult<ListedJobs> {
        let query = query.clone();
        let budget = self.list_scan_budget;
        self.db
            .scan(move |conn| {
                if !query.metadata.is_empty() {
                    return filtered_page(conn, &query, budget);
                }
                // Unfiltered: every row of the tenant's index matches, so `limit`
                // bounds the read.
                let mut sql = String::from("SELECT body, enqueued FROM jobs WHERE tenant = ?1");
                let mut args = vec![text(&query.tenant)];
                if let Some(before) = &query.before {
                    sql.push_str(" AND id < ?2");
                    args.push(text(before.as_str()));
                }
                sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", query.limit));
                let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
                let rows = stmt
                    .query_map(params_from_iter(args), job_from_row)
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(unavailable)?;
                Ok(ListedJobs {
                    jobs: rows
                        .into_iter()
                        .map(decode_job)
                        .collect::<StoreResult<_>>()?,
                    resume_before: None,
                })
            })
            .await
    }

    async fn jobs_in_status(&self, status: JobStatus, limit: usize) -> StoreResult<Vec<Job>> {
        self.read_jobs(
            "SELECT body, enqueued FROM jobs WHERE status = ?1 ORDER BY id LIMIT ?2",
            vec![text(status.as_str()), int(limit as i64)],
        )
    }

    async fn queue_position(&self, id: &JobId, cap: u64) -> StoreResult<u64> {
        self.db.read(|conn| queue_position(conn, id, cap))
    }

    async fn load_snapshot(
        &self,
        id: &JobId,
        position_cap: u64,
    ) -> StoreResult<Option<JobSnapshot>> {
        // One read transaction: one WAL read lock, one consistent view.
        self.db.read(|conn| {
            run_cached(conn, "BEGIN").map_err(unavailable)?;
            let result = (|| {
                let Some(job) = job_by_id(conn, id)? else {
                    return Ok(None);
                };
                let progress: Option<String> = conn
                    .prepare_cached("SELECT body FROM progress WHERE job_id = ?1")
                    .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional())
                    .map_err(unavailable)?;
                let queue_position = if job.status == JobStatus::Queued {
                    Some(queue_position(conn, id, position_cap)?)
                } else {
                    None
                };
                Ok(Some(JobSnapshot {
                    job,
                    progress: progress.as_deref().map(from_json).transpose()?,
                    queue_position,
                }))
            })();
            let _ = run_cached(conn, "COMMIT");
            result
        })
    }

    async fn count_unclaimed_queued(&self, now: DateTime<Utc>, cap: u64) -> StoreResult<u64> {
        self.db.read(|conn| {
            conn.prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE status = 'queued' \
                 AND (reserved_until_ms IS NULL OR reserved_until_ms <= ?1) LIMIT ?2)",
            )
            .and_then(|mut s| {
                s.query_row(params![now.timestamp_millis(), cap as i64], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map(|n| n as u64)
            .map_err(unavailable)
        })
    }

    async fn get_idempotency(
        &self,
        tenant: &str,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        let body: Option<String> = self.db.read(|conn| {
            conn.prepare_cached("SELECT body FROM idempotency WHERE tenant = ?1 AND key = ?2")
                .and_then(|mut s| s.query_row(params![tenant, key], |r| r.get(0)).optional())
                .map_err(unavailable)
        })?;
        body.as_deref().map(from_json).transpose()
    }

    async fn put_progress(&self, id: &JobId, record: &ProgressRecord) -> StoreResult<()> {
        let body = to_json(record)?;
        self.db
            .execute(
                // Dropped once the job has ended: a runner's late write (it had not yet
                // seen the cancel) must not change a finished job's progress.
                "INSERT INTO progress (job_id, attempt, body) SELECT ?1, ?2, ?3
                 WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = ?1
                     AND status IN ('succeeded', 'failed', 'canceled', 'expired'))
                 ON CONFLICT (job_id) DO UPDATE SET attempt = excluded.attempt, body = excluded.body
                 WHERE excluded.attempt >= progress.attempt",
                vec![
                    text(id.as_str()),
                    int(record.attempt.into()),
                    Value::Text(body),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn get_progress(&self, id: &JobId) -> StoreResult<Option<ProgressRecord>> {
        let body: Option<String> = self.db.read(|conn| {
            conn.prepare_cached("SELECT body FROM progress WHERE job_id = ?1")
                .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional())
                .map_err(unavailable)
        })?;
        body.as_deref().map(from_json).transpose()
    }

    async fn get_fleet(&self) -> StoreResult<Fleet> {
        let body: Option<String> = self.db.read(|conn| {
            conn.prepare_cached("SELECT body FROM fleet WHERE id = 1")
                .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                .map_err(unavailable)
        })?;
        Ok(body
            .as_deref()
            .map(from_json)
            .transpose()?
            .unwrap_or_default())
    }

    async fn put_fleet(&self, fleet: &Fleet, expected_rev: u64) -> StoreResult<()> {
        let body = to_json(fleet)?;
        let changed = if expected_rev == 0 {
            self.db
                .execute(
                    "INSERT OR IGNORE INTO fleet (id, rev, body) VALUES (1, ?1, ?2)",
                    vec![int(fleet.rev as i64), Value::Text(body)],
                )
                .await?
        } else {
            self.db
                .execute(
                    "UPDATE fleet SET rev = ?1, body = ?2 WHERE id = 1 AND rev = ?3",
                    vec![
                        int(fleet.rev as i64),
                        Value::Text(body),
                        int(expected_rev as i64),
                    ],
                )
                .await?
        };
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    async fn get_catalogue_ref(&self) -> StoreResult<Option<jobs::catalogue::CatalogueRef>> {
        self.read_one("SELECT body FROM catalogue_ref WHERE id = 1", vec![])
    }

    async fn put_catalogue_ref(&self, pointer: &jobs::catalogue::CatalogueRef) -> StoreResult<()> {
        self.db
            .execute(
                "INSERT OR REPLACE INTO catalogue_ref (id, body) VALUES (1, ?1)",
                vec![Value::Text(to_json(pointer)?)],
            )
            .await?;
        Ok(())
    }

    async fn put_worker(&self, worker: &WorkerRecord) -> StoreResult<()> {
        let body = to_json(worker)?;
        self.db
            .execute(
                "INSERT OR REPLACE INTO workers (id, body) VALUES (?1, ?2)",
                vec![text(&worker.id), Value::Text(body)],
            )
            .await
            .map(|_| ())
    }

    async fn delete_worker(&self, id: &str) -> StoreResult<()> {
        self.db
            .execute("DELETE FROM workers WHERE id = ?1", vec![text(id)])
            .await
            .map(|_| ())
    }

    async fn list_workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        self.read_all("SELECT body FROM workers ORDER BY id", vec![])
    }

    async fn put_asset(&self, asset: &Asset) -> StoreResult<()> {
        let body = to_json(asset)?;
        self.db
            .execute(
                "INSERT OR REPLACE INTO assets (id, tenant, hash, file_path, body, job_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                vec![
                    text(&asset.id),
                    text(&asset.tenant),
                    text(&asset.hash),
                    asset.file_path.as_deref().map_or(Value::Null, text),
                    Value::Text(body),
                    asset.job_id.as_ref().map_or(Value::Null, |j| text(j.as_str())),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn get_asset(&self, id: &str) -> StoreResult<Option<Asset>> {
        self.read_one("SELECT body FROM assets WHERE id = ?1", vec![text(id)])
    }

    async fn delete_asset(&self, id: &str) -> StoreResult<bool> {
        let n = self
            .db
            .execute("DELETE FROM assets WHERE id = ?1", vec![text(id)])
            .await?;
        Ok(n == 1)
    }

    async fn find_asset(
        &self,
        tenant: &str,
        hash: &str,
        file_path: Option<&str>,
    ) -> StoreResult<Option<Asset>> {
        match file_path {
            Some(path) => self.read_one(
                "SELECT body FROM assets WHERE tenant = ?1 AND hash = ?2 AND file_path = ?3 ORDER BY id DESC LIMIT 1",
                vec![text(tenant), text(hash), text(path)],
            ),
            None => self.read_one(
                "SELECT body FROM assets WHERE tenant = ?1 AND hash = ?2 ORDER BY id DESC LIMIT 1",
                vec![text(tenant), text(hash)],
            ),
        }
    }

    async fn get_blob_record(&self, tenant: &str, hash: &str) -> StoreResult<Option<BlobRecord>> {
        self.read_one(
            "SELECT body FROM blobs WHERE tenant = ?1 AND hash = ?2",
            vec![text(tenant), text(hash)],
        )
    }

    async fn put_blob_record_if_absent(
        &self,
        record: &BlobRecord,
    ) -> StoreResult<(BlobRecord, bool)> {
        let body = to_json(record)?;
        let (tenant, hash) = (record.tenant.clone(), record.hash.clone());
        let standing: String = self
            .db
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO blobs (tenant, hash, body) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![tenant, hash, body]))
                .map_err(unavailable)?;
                conn.prepare_cached("SELECT body FROM blobs WHERE tenant = ?1 AND hash = ?2")
                    .and_then(|mut s| s.query_row(params![tenant, hash], |r| r.get(0)))
                    .map_err(unavailable)
            })
            .await?;
        let standing: BlobRecord = from_json(&standing)?;
        let created = standing == *record;
        Ok((standing, created))
    }

    async fn is_blob_referenced(
        &self,
        tenant: &str,
        hash: &str,
        blob_key: Option<&str>,
    ) -> StoreResult<bool> {
        let (tenant, hash) = (tenant.to_string(), hash.to_string());
        let blob_key = blob_key.map(str::to_string);
        // The (tenant, hash) prefix of `assets_by_hash` narrows it to one blob's assets.
        self.db.read(move |conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM assets WHERE tenant = ?1 AND hash = ?2 \
                 AND (?3 IS NULL OR json_extract(body, '$.blob_key') = ?3))",
            )
            .and_then(|mut s| s.query_row(params![tenant, hash, blob_key], |r| r.get(0)))
            .map_err(unavailable)
        })
    }

    async fn delete_blob_record(&self, tenant: &str, hash: &str) -> StoreResult<bool> {
        let n = self
            .db
            .execute(
                "DELETE FROM blobs WHERE tenant = ?1 AND hash = ?2",
                vec![text(tenant), text(hash)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn expired_jobs(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Job>> {
        self.read_jobs(
            "SELECT body, enqueued FROM jobs WHERE expires_ms IS NOT NULL AND expires_ms <= ?1 \
             ORDER BY expires_ms LIMIT ?2",
            vec![int(now.timestamp_millis()), int(limit as i64)],
        )
    }

    async fn delete_job(&self, id: &JobId) -> StoreResult<bool> {
        let id = id.clone();
        self.db
            .write(move |tx| {
                // Labels are keyed by (tenant, k, v, job_id): find them by the job's
                // own metadata rather than scanning the index.
                let Some(job) = job_by_id(tx, &id)? else {
                    return Ok(false);
                };
                {
                    let mut label = tx
                        .prepare_cached(
                            "DELETE FROM job_labels WHERE tenant = ?1 AND k = ?2 AND v = ?3 AND job_id = ?4",
                        )
                        .map_err(unavailable)?;
                    for (k, v) in &job.metadata {
                        label
                            .execute(params![job.tenant, k, v, id.as_str()])
                            .map_err(unavailable)?;
                    }
                }
                tx.prepare_cached("DELETE FROM progress WHERE job_id = ?1")
                    .and_then(|mut s| s.execute([id.as_str()]))
                    .map_err(unavailable)?;
                // The triggers on `jobs` keep the queued count and tenant usage right.
                let n = tx
                    .prepare_cached("DELETE FROM jobs WHERE id = ?1")
                    .and_then(|mut s| s.execute([id.as_str()]))
                    .map_err(unavailable)?;
                Ok(n == 1)
            })
            .await
    }

    async fn job_assets(&self, id: &JobId, limit: usize) -> StoreResult<Vec<Asset>> {
        self.read_all(
            "SELECT body FROM assets WHERE job_id = ?1 ORDER BY id LIMIT ?2",
            vec![text(id.as_str()), int(limit as i64)],
        )
    }

    async fn delete_expired_idempotency(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<usize> {
        self.db
            .execute(
                "DELETE FROM idempotency WHERE (tenant, key) IN (SELECT tenant, key FROM idempotency \
                 WHERE expires_at_ms <= ?1 ORDER BY expires_at_ms LIMIT ?2)",
                vec![int(now.timestamp_millis()), int(limit as i64)],
            )
            .await
    }

    async fn count_jobs_by_status(&self) -> StoreResult<Vec<(JobStatus, u64)>> {
        // One covering-index scan; health asks for it only for authenticated callers.
        let rows: Vec<(String, i64)> = self
            .db
            .scan(|conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT status, count(*) FROM jobs GROUP BY status")
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(unavailable)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(unavailable)
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| JobStatus::parse(&s).map(|s| (s, n.max(0) as u64)))
            .collect())
    }

    async fn bytes_used(&self) -> StoreResult<Option<u64>> {
        Ok(Some(self.db.bytes_used()))
    }

    async fn reclaim(&self) -> StoreResult<()> {
        self.db.reclaim(crate::db::RECLAIM_PAGES).await.map(|_| ())
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()> {
        let body = to_json(key)?;
        self.db
            .execute(
                "INSERT OR REPLACE INTO api_keys (key_hash, id, body) VALUES (?1, ?2, ?3)",
                vec![text(&key.key_hash), text(&key.id), Value::Text(body)],
            )
            .await
            .map(|_| ())
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        self.read_one(
            "SELECT body FROM api_keys WHERE key_hash = ?1",
            vec![text(key_hash)],
        )
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        self.read_all("SELECT body FROM api_keys ORDER BY id", vec![])
    }

    async fn delete_all_api_keys(&self) -> StoreResult<usize> {
        self.db.execute("DELETE FROM api_keys", vec![]).await
    }

    async fn put_upload(&self, upload: &UploadRecord) -> StoreResult<()> {
        let body = to_json(upload)?;
        self.db
            .execute(
                "INSERT OR REPLACE INTO uploads (id, body) VALUES (?1, ?2)",
                vec![text(&upload.id), Value::Text(body)],
            )
            .await
            .map(|_| ())
    }

    async fn get_upload(&self, id: &str) -> StoreResult<Option<UploadRecord>> {
        self.read_one("SELECT body FROM uploads WHERE id = ?1", vec![text(id)])
    }

    async fn delete_upload(&self, id: &str) -> StoreResult<()> {
        self.db
            .execute("DELETE FROM uploads WHERE id = ?1", vec![text(id)])
            .await
            .map(|_| ())
    }

    async fn expired_uploads(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<UploadRecord>> {
        // Pending uploads are few (each lives an hour), so a scan of them is cheap;
        // julianday() reads the RFC 3339 timestamps whatever their fractional digits.
        self.read_all(
            "SELECT body FROM uploads \
             WHERE julianday(json_extract(body, '$.expires_at')) <= julianday(?1) \
             ORDER BY id LIMIT ?2",
            vec![
                text(&now.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                int(limit as i64),
            ],
        )
    }

    async fn get_tenant_quota(&self, tenant: &str) -> StoreResult<Option<TenantQuota>> {
        self.read_one(
            "SELECT body FROM tenant_quotas WHERE tenant = ?1",
            vec![text(tenant)],
        )
    }

    async fn put_tenant_quota(&self, tenant: &str, quota: &TenantQuota) -> StoreResult<()> {
        self.db
            .execute(
                "INSERT OR REPLACE INTO tenant_quotas (tenant, body) VALUES (?1, ?2)",
                vec![text(tenant), text(&to_json(quota)?)],
            )
            .await
            .map(|_| ())
    }

    async fn acquire_stream_slot(
        &self,
        tenant: &str,
        holder: &str,
        max: u32,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut all = self.stream_slots.lock().unwrap_or_else(|e| e.into_inner());
        let slots = all.entry(tenant.to_string()).or_default();
        slots.retain(|_, held_until| *held_until > now);
        if !slots.contains_key(holder) && slots.len() >= max as usize {
            return Ok(false);
        }
        slots.insert(holder.to_string(), until);
        Ok(true)
    }

    async fn release_stream_slot(&self, tenant: &str, holder: &str) -> StoreResult<()> {
        let mut all = self.stream_slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slots) = all.get_mut(tenant) {
            slots.remove(holder);
            if slots.is_empty() {
                all.remove(tenant);
            }
        }
        Ok(())
    }

    async fn tenant_usage(&self, tenant: &str) -> StoreResult<TenantUsage> {
        let tenant = tenant.to_string();
        self.db.read(move |conn| {
            conn.prepare_cached(
                "SELECT active_jobs, stored_bytes FROM tenant_usage WHERE tenant = ?1",
            )
            .and_then(|mut s| {
                s.query_row([&tenant], |r| {
                    Ok(TenantUsage {
                        active_jobs: r.get::<_, i64>(0)?.max(0) as u64,
                        stored_bytes: r.get::<_, i64>(1)?.max(0) as u64,
                    })
                })
                .optional()
            })
            .map(Option::unwrap_or_default)
            .map_err(unavailable)
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db.read(|conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests;
