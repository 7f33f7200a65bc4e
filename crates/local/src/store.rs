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

mod webhooks;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    rev INTEGER NOT NULL,
    reserved_until_ms INTEGER,
    body TEXT NOT NULL
);
CREATE INDEX jobs_by_tenant ON jobs (tenant, id);
CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE TABLE job_labels (
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    k TEXT NOT NULL,
    v TEXT NOT NULL,
    PRIMARY KEY (job_id, k)
);
CREATE INDEX job_labels_by_value ON job_labels (tenant, k, v, job_id);
CREATE TABLE progress (
    job_id TEXT PRIMARY KEY,
    attempt INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE idempotency (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE TABLE fleet (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rev INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE assets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    hash TEXT NOT NULL,
    file_path TEXT,
    body TEXT NOT NULL
);
CREATE INDEX assets_by_hash ON assets (tenant, hash, file_path);
CREATE TABLE blobs (
    tenant TEXT NOT NULL,
    hash TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (tenant, hash)
);
CREATE TABLE api_keys (
    key_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
"#,
    // Small rows keyed by text: WITHOUT ROWID stores each in its primary-key b-tree
    // alone, so writing one touches fewer pages (no separate rowid table). Labels are
    // only ever looked up by value, so that one b-tree is all they need.
    r#"
CREATE TABLE job_labels_v3 (
    tenant TEXT NOT NULL,
    k TEXT NOT NULL,
    v TEXT NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (tenant, k, v, job_id)
) WITHOUT ROWID;
INSERT INTO job_labels_v3 (tenant, k, v, job_id) SELECT tenant, k, v, job_id FROM job_labels;
DROP TABLE job_labels;
ALTER TABLE job_labels_v3 RENAME TO job_labels;
CREATE TABLE idempotency_v3 (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
INSERT INTO idempotency_v3 (tenant, key, expires_at_ms, body)
    SELECT tenant, key, expires_at_ms, body FROM idempotency;
DROP TABLE idempotency;
ALTER TABLE idempotency_v3 RENAME TO idempotency;
"#,
    // `enqueued` moves out of the JSON body into a column that only `mark_enqueued`
    // sets, so recording it rewrites no body and no later `put_job` can clear it. Jobs
    // are stored WITHOUT ROWID, in their id's b-tree alone: a new job is one b-tree
    // insert fewer, and a read by id one descent instead of two (bodies are well under
    // the ~1 KB a 4 KiB page keeps inline). The queued-job count is kept by triggers,
    // so a submit learns its queue position without counting index entries.
    r#"
CREATE TABLE jobs_v4 (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    rev INTEGER NOT NULL,
    reserved_until_ms INTEGER,
    enqueued INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO jobs_v4 (id, tenant, status, rev, reserved_until_ms, enqueued, body)
    SELECT id, tenant, status, rev, reserved_until_ms,
           CASE WHEN json_extract(body, '$.enqueued') THEN 1 ELSE 0 END, body
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_v4 RENAME TO jobs;
CREATE INDEX jobs_by_tenant ON jobs (tenant, id);
CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE TABLE queued_jobs (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n INTEGER NOT NULL
);
INSERT INTO queued_jobs (id, n) VALUES (1, (SELECT count(*) FROM jobs WHERE status = 'queued'));
CREATE TRIGGER queued_jobs_on_insert AFTER INSERT ON jobs WHEN new.status = 'queued'
BEGIN
    UPDATE queued_jobs SET n = n + 1;
END;
CREATE TRIGGER queued_jobs_on_update AFTER UPDATE OF status ON jobs
    WHEN (old.status = 'queued') <> (new.status = 'queued')
BEGIN
    UPDATE queued_jobs SET n = n + (CASE WHEN new.status = 'queued' THEN 1 ELSE -1 END);
END;
CREATE TRIGGER queued_jobs_on_delete AFTER DELETE ON jobs WHEN old.status = 'queued'
BEGIN
    UPDATE queued_jobs SET n = n - 1;
END;
"#,
    // Quotas. Each tenant's usage is one row: its active jobs and stored bytes kept by
    // triggers (so no write path can forget them), and the one-second submit window
    // that `create_job_within_quota` advances. Quotas set by the operator are rows of
    // their own; a tenant without one gets the default.
    r#"
CREATE TABLE tenant_usage (
    tenant TEXT PRIMARY KEY,
    active_jobs INTEGER NOT NULL DEFAULT 0,
    stored_bytes INTEGER NOT NULL DEFAULT 0,
    window_s INTEGER NOT NULL DEFAULT 0,
    window_n INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO tenant_usage (tenant) SELECT tenant FROM jobs UNION SELECT tenant FROM blobs;
UPDATE tenant_usage SET
    active_jobs = (SELECT count(*) FROM jobs WHERE jobs.tenant = tenant_usage.tenant
                   AND status IN ('queued', 'running', 'canceling')),
    stored_bytes = (SELECT coalesce(sum(json_extract(body, '$.size_bytes')), 0) FROM blobs
                    WHERE blobs.tenant = tenant_usage.tenant);
CREATE TRIGGER tenant_active_on_insert AFTER INSERT ON jobs
    WHEN new.status IN ('queued', 'running', 'canceling')
BEGIN
    INSERT OR IGNORE INTO tenant_usage (tenant) VALUES (new.tenant);
    UPDATE tenant_usage SET active_jobs = active_jobs + 1 WHERE tenant = new.tenant;
END;
CREATE TRIGGER tenant_active_on_update AFTER UPDATE OF status ON jobs
    WHEN (old.status IN ('queued', 'running', 'canceling'))
         <> (new.status IN ('queued', 'running', 'canceling'))
BEGIN
    INSERT OR IGNORE INTO tenant_usage (tenant) VALUES (new.tenant);
    UPDATE tenant_usage SET active_jobs = active_jobs
        + (CASE WHEN new.status IN ('queued', 'running', 'canceling') THEN 1 ELSE -1 END)
        WHERE tenant = new.tenant;
END;
CREATE TRIGGER tenant_active_on_delete AFTER DELETE ON jobs
    WHEN old.status IN ('queued', 'running', 'canceling')
BEGIN
    UPDATE tenant_usage SET active_jobs = active_jobs - 1 WHERE tenant = old.tenant;
END;
CREATE TRIGGER tenant_bytes_on_insert AFTER INSERT ON blobs
BEGIN
    INSERT OR IGNORE INTO tenant_usage (tenant) VALUES (new.tenant);
    UPDATE tenant_usage SET stored_bytes = stored_bytes + json_extract(new.body, '$.size_bytes')
        WHERE tenant = new.tenant;
END;
CREATE TRIGGER tenant_bytes_on_delete AFTER DELETE ON blobs
BEGIN
    UPDATE tenant_usage SET stored_bytes = stored_bytes - json_extract(old.body, '$.size_bytes')
        WHERE tenant = old.tenant;
END;
CREATE TABLE tenant_quotas (
    tenant TEXT PRIMARY KEY,
    body TEXT NOT NULL
) WITHOUT ROWID;
"#,
    // Retention. A finished job's deadline is a column, set only once the job is
    // terminal, under a partial index: the sweep finds what expired without reading
    // live jobs. Assets name their job in a column (outputs of every attempt), and
    // idempotency records are indexed by expiry, for the same reason.
    r#"
ALTER TABLE jobs ADD COLUMN expires_ms INTEGER;
UPDATE jobs SET expires_ms =
    CAST((julianday(json_extract(body, '$.expires_at')) - 2440587.5) * 86400000 AS INTEGER)
    WHERE status IN ('succeeded', 'failed', 'canceled', 'expired');
CREATE INDEX jobs_by_expiry ON jobs (expires_ms) WHERE expires_ms IS NOT NULL;
ALTER TABLE assets ADD COLUMN job_id TEXT;
UPDATE assets SET job_id = json_extract(body, '$.job_id');
CREATE INDEX assets_by_job ON assets (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX idempotency_by_expiry ON idempotency (expires_at_ms);
"#,
    // Webhooks: endpoints, the outbox a trigger fills, deliveries and attempts.
    webhooks::MIGRATION,
    // The pointer to the latest node catalogue (jobs::catalogue): one row.
    r#"
CREATE TABLE catalogue_ref (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    body TEXT NOT NULL
);
"#,
];

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

/// Label entries one filtered list request examines at most (about 10 ms of index
/// steps). A filter that matches few of a tenant's many jobs then returns a short
/// page with a cursor instead of scanning on (every list page already costs a read).
pub const LIST_SCAN_BUDGET: usize = 5_000;

/// Candidates of a filtered listing, newest first, from the label index of one filter
/// (`?1` tenant, `?2` key, `?3` value, `?4` the cursor's id when `below`), each with
/// whether it matches the `others` filters that follow as key/value pairs.
fn candidates_sql(others: usize, below: bool) -> String {
    // Numbered after ?1-?4: SQLite numbers a bare `?` after the largest number seen
    // so far in the text, and the select list comes before the WHERE clause.
    let first = if below { 5 } else { 4 };
    let mut matches = String::from("1");
    for i in 0..others {
        let (k, v) = (first + 2 * i, first + 2 * i + 1);
        matches.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM job_labels o WHERE o.tenant = l.tenant AND o.k = ?{k} AND o.v = ?{v} AND o.job_id = l.job_id)"
        ));
    }
    let below = if below { " AND l.job_id < ?4" } else { "" };
    format!(
        "SELECT l.job_id, {matches} FROM job_labels l WHERE l.tenant = ?1 AND l.k = ?2 AND l.v = ?3{below} ORDER BY l.job_id DESC"
    )
}

/// A filtered page, driven by the label index of the filter with the fewest entries
/// (counted up to the budget): candidates come newest first from that index, every
/// other filter is a primary-key probe of `job_labels`, and only matching jobs are
/// read. Stops at `limit` jobs or after `budget` candidates, whichever comes first.
fn filtered_page(
    conn: &rusqlite::Connection,
    query: &ListQuery,
    budget: usize,
) -> StoreResult<ListedJobs> {
    let before = query.before.as_ref().map(|id| id.as_str().to_string());
    let below = if before.is_some() {
        " AND job_id < ?4"
    } else {
        ""
    };
    let bind_before = |args: &mut Vec<Value>| {
        if let Some(before) = &before {
            args.push(text(before));
        }
    };
    // The most selective filter drives the scan.
    let count_sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM job_labels WHERE tenant = ?1 AND k = ?2 AND v = ?3{below} LIMIT {budget})"
    );
    let mut driver = 0;
    let mut fewest = i64::MAX;
    for (i, (k, v)) in query.metadata.iter().enumerate() {
        let mut args = vec![text(&query.tenant), text(k), text(v)];
        bind_before(&mut args);
        let n: i64 = conn
            .prepare_cached(&count_sql)
            .and_then(|mut s| s.query_row(params_from_iter(args), |r| r.get(0)))
            .map_err(unavailable)?;
        if n < fewest {
            fewest = n;
            driver = i;
        }
    }
    let (k, v) = &query.metadata[driver];
    let mut args = vec![text(&query.tenant), text(k), text(v)];
    bind_before(&mut args);
    for (i, (k, v)) in query.metadata.iter().enumerate() {
        if i != driver {
            args.push(text(k));
            args.push(text(v));
        }
    }
    let sql = candidates_sql(query.metadata.len() - 1, before.is_some());
    let mut ids = Vec::new();
    let mut resume_before = None;
    {
        let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
        let mut rows = stmt.query(params_from_iter(args)).map_err(unavailable)?;
        let mut examined = 0;
        while let Some(row) = rows.next().map_err(unavailable)? {
            let id: String = row.get(0).map_err(unavailable)?;
            let matched: bool = row.get(1).map_err(unavailable)?;
            examined += 1;
            if matched {
                ids.push(id.clone());
                if ids.len() >= query.limit {
                    break;
                }
            }
            if examined >= budget {
                resume_before = Some(id);
                break;
            }
        }
    }
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids.iter().filter_map(|id| JobId::parse(id)) {
        if let Some(job) = job_by_id(conn, &id)? {
            jobs.push(job);
        }
    }
    Ok(ListedJobs {
        jobs,
        resume_before: resume_before.and_then(|id| JobId::parse(&id)),
    })
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
mod tests {
    use chrono::TimeZone;
    use jobs::model::IdempotencyRecord;

    use super::*;

    fn at(hours: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, hours, 0, 0).unwrap()
    }

    /// Opens `path` at an older schema and writes a job the way that schema's build
    /// did: `enqueued` inside the JSON body, labels and idempotency records in the
    /// tables of the time (whose columns did not change before schema 4).
    fn write_as_old_schema(
        path: &Path,
        schema: usize,
        job: &Job,
        record: Option<&IdempotencyRecord>,
    ) {
        drop(Db::open(path, &MIGRATIONS[..schema]).unwrap());
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut body = serde_json::to_value(job).unwrap();
        body["enqueued"] = job.enqueued.into();
        conn.execute(
            "INSERT INTO jobs (id, tenant, status, rev, reserved_until_ms, body) VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
            params![job.id.as_str(), job.tenant, job.status.as_str(), job.rev as i64, body.to_string()],
        )
        .unwrap();
        for (k, v) in &job.metadata {
            conn.execute(
                "INSERT INTO job_labels (job_id, tenant, k, v) VALUES (?1, ?2, ?3, ?4)",
                params![job.id.as_str(), job.tenant, k, v],
            )
            .unwrap();
        }
        if let Some(record) = record {
            conn.execute(
                "INSERT INTO idempotency (tenant, key, expires_at_ms, body) VALUES (?1, ?2, ?3, ?4)",
                params![
                    record.tenant,
                    record.key,
                    record.expires_at.timestamp_millis(),
                    to_json(record).unwrap()
                ],
            )
            .unwrap();
        }
    }

    /// A data dir written before the WITHOUT ROWID rebuild (schema 2) keeps its labels
    /// and idempotency records through the upgrade.
    #[tokio::test]
    async fn upgrading_from_schema_2_keeps_labels_and_idempotency_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let now = at(0);
        let job = testkit::conformance::sample_job("t1", now, &[("team", "a")]);
        let record = IdempotencyRecord {
            v: 1,
            tenant: "t1".into(),
            key: "key-1".into(),
            fingerprint: "f".into(),
            job_id: job.id.clone(),
            created_at: now,
            expires_at: now + chrono::Duration::hours(24),
        };
        write_as_old_schema(&path, 2, &job, Some(&record));
        let store = SqliteJobStore::open(&path).unwrap();
        assert_eq!(
            store.get_idempotency("t1", "key-1").await.unwrap(),
            Some(record)
        );
        let listed = store
            .list_jobs(&ListQuery {
                tenant: "t1".into(),
                metadata: vec![("team".into(), "a".into())],
                before: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(listed.iter().map(|j| &j.id).collect::<Vec<_>>(), [&job.id]);
    }

    /// Schema 4 takes `enqueued` out of the body and starts counting queued jobs:
    /// both must carry over what a schema 3 data dir holds.
    #[tokio::test]
    async fn upgrading_from_schema_3_keeps_enqueued_flags_and_counts_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let mut sent = testkit::conformance::sample_job("t1", at(0), &[]);
        sent.enqueued = true;
        let unsent = testkit::conformance::sample_job("t1", at(1), &[]);
        let mut running = testkit::conformance::sample_job("t1", at(2), &[]);
        running.status = JobStatus::Running;
        running.enqueued = true;
        for job in [&sent, &unsent, &running] {
            write_as_old_schema(&path, 3, job, None);
        }
        let store = SqliteJobStore::open(&path).unwrap();
        for job in [&sent, &unsent, &running] {
            let read = store.get_job(&job.id).await.unwrap().unwrap();
            assert_eq!(read.enqueued, job.enqueued, "{}", job.id);
        }
        // Two jobs were queued before the upgrade: a new one is third in line.
        let next = testkit::conformance::sample_job("t1", at(3), &[]);
        assert_eq!(
            store.create_job(&next, None, at(3)).await.unwrap(),
            CreateOutcome::Created { queue_position: 2 }
        );
    }

    fn pragma(store: &SqliteJobStore, name: &str) -> i64 {
        store
            .db
            .read(|conn| {
                conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                    .map_err(unavailable)
            })
            .unwrap()
    }

    /// A data dir from before retention (schema 5, written without incremental vacuum):
    /// its finished jobs get their deadline column and its output assets their job, so
    /// the sweep finds them; the file is converted to incremental vacuum at open, so a
    /// sweep's deletes can be given back to the filesystem.
    #[tokio::test]
    async fn upgrading_from_schema_5_finds_expired_jobs_and_can_reclaim_space() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let mut finished = testkit::conformance::sample_job("t1", at(0), &[]);
        finished.status = JobStatus::Succeeded;
        finished.expires_at = at(1);
        let mut live = testkit::conformance::sample_job("t1", at(0), &[]);
        live.expires_at = at(1);
        let output = Asset {
            v: jobs::model::SCHEMA_VERSION,
            id: "asset_out".into(),
            tenant: "t1".into(),
            hash: format!("blake3:{}", "ab".repeat(32)),
            size_bytes: 3,
            content_type: "image/png".into(),
            file_path: Some("o.png".into()),
            tags: vec![],
            created_at: at(0),
            blob_key: "outputs/x".into(),
            job_id: Some(finished.id.clone()),
        };
        {
            // As an older build wrote it: the default auto_vacuum (none).
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            for migration in &MIGRATIONS[..5] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            for job in [&finished, &live] {
                conn.execute(
                    "INSERT INTO jobs (id, tenant, status, rev, body) VALUES (?1, ?2, ?3, 1, ?4)",
                    params![
                        job.id.as_str(),
                        job.tenant,
                        job.status.as_str(),
                        to_json(job).unwrap()
                    ],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO assets (id, tenant, hash, file_path, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![output.id, output.tenant, output.hash, output.file_path, to_json(&output).unwrap()],
            )
            .unwrap();
            let mode: i64 = conn
                .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, 0, "written without incremental vacuum");
        }
        let store = SqliteJobStore::open(&path).unwrap();
        assert_eq!(pragma(&store, "auto_vacuum"), 2, "converted at open");
        let expired = store.expired_jobs(at(2), 10).await.unwrap();
        assert_eq!(
            expired.iter().map(|j| &j.id).collect::<Vec<_>>(),
            [&finished.id],
            "the finished job's deadline was carried over; the live one has none"
        );
        assert_eq!(
            store.job_assets(&finished.id, 10).await.unwrap(),
            vec![output]
        );

        // Space freed by deletes goes back in bounded steps.
        let mut many = Vec::new();
        for i in 0..2000u32 {
            let mut job =
                testkit::conformance::sample_job("t1", at(0), &[("pad", &"x".repeat(200))]);
            job.status = JobStatus::Succeeded;
            job.metadata.insert("i".into(), i.to_string());
            store.create_job(&job, None, at(0)).await.unwrap();
            many.push(job.id);
        }
        for id in &many {
            assert!(store.delete_job(id).await.unwrap());
        }
        let free = pragma(&store, "freelist_count");
        assert!(free > 0, "deletes left free pages");
        store.reclaim().await.unwrap();
        let after = pragma(&store, "freelist_count");
        assert!(
            after < free && free - after <= i64::from(crate::db::RECLAIM_PAGES),
            "one bounded step: {free} -> {after}"
        );
        while pragma(&store, "freelist_count") > 0 {
            store.reclaim().await.unwrap();
        }
    }

    /// A filtered listing over many jobs that match one filter but not the other stops
    /// at the read budget with a short page and a place to go on; following it finds
    /// exactly the matching jobs, newest first.
    #[tokio::test]
    async fn a_filtered_list_stops_at_the_read_budget_and_continues_correctly() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        store.list_scan_budget = 50;
        let mut wanted = Vec::new();
        for _ in 0..5 {
            let job = testkit::conformance::sample_job("t1", at(0), &[("x", "1"), ("y", "1")]);
            store.create_job(&job, None, at(0)).await.unwrap();
            wanted.push(job.id);
        }
        wanted.reverse();
        for i in 0..200 {
            let labels: &[(&str, &str)] = if i % 2 == 0 {
                &[("x", "1"), ("y", "0")]
            } else {
                &[("x", "0"), ("y", "1")]
            };
            let job = testkit::conformance::sample_job("t1", at(0), labels);
            store.create_job(&job, None, at(0)).await.unwrap();
        }
        let filters = vec![
            ("x".to_string(), "1".to_string()),
            ("y".to_string(), "1".to_string()),
        ];
        let mut found = Vec::new();
        let mut before = None;
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages < 10, "the listing does not end");
            let page = store
                .list_jobs_page(&ListQuery {
                    tenant: "t1".into(),
                    metadata: filters.clone(),
                    before: before.clone(),
                    limit: 10,
                })
                .await
                .unwrap();
            found.extend(page.jobs.iter().map(|j| j.id.clone()));
            match page.resume_before {
                Some(at) => {
                    assert!(
                        page.jobs.is_empty(),
                        "the 100 newest candidates do not match"
                    );
                    before = Some(at);
                }
                None => break,
            }
        }
        assert_eq!(
            pages, 3,
            "two pages stop at the budget of 50, the third finds all"
        );
        assert_eq!(found, wanted);
        // With room enough, one page.
        store.list_scan_budget = LIST_SCAN_BUDGET;
        let page = store
            .list_jobs_page(&ListQuery {
                tenant: "t1".into(),
                metadata: filters,
                before: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(page.resume_before, None);
        assert_eq!(
            page.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
            wanted
        );
    }

    /// The candidates come from the label index in its order: no table scan and no
    /// sort, whatever the number of filters.
    #[test]
    fn filtered_listing_reads_the_label_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        for (others, below) in [(0, false), (1, true), (15, true)] {
            let plan: Vec<String> = store
                .db
                .read(|conn| {
                    let mut stmt = conn
                        .prepare(&format!(
                            "EXPLAIN QUERY PLAN {}",
                            candidates_sql(others, below)
                        ))
                        .map_err(unavailable)?;
                    let mut args = vec![text("t"), text("k"), text("v")];
                    if below {
                        args.push(text("job_x"));
                    }
                    for _ in 0..others {
                        args.push(text("k"));
                        args.push(text("v"));
                    }
                    stmt.query_map(params_from_iter(args), |r| r.get::<_, String>(3))
                        .map_err(unavailable)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(unavailable)
                })
                .unwrap();
            let text = plan.join("\n");
            assert!(text.contains("SEARCH l USING PRIMARY KEY"), "{text}");
            assert!(!text.contains("SCAN"), "{text}");
            assert!(!text.contains("TEMP B-TREE"), "{text}");
        }
    }

    /// The queued-job count follows every way a job enters or leaves `queued`.
    #[tokio::test]
    async fn the_queued_count_follows_inserts_status_changes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        let count = || store.db.read(|conn| queued_count(conn, u64::MAX)).unwrap();
        let mut a = testkit::conformance::sample_job("t1", at(0), &[]);
        let b = testkit::conformance::sample_job("t1", at(0), &[]);
        let mut c = testkit::conformance::sample_job("t1", at(0), &[]);
        c.status = JobStatus::Running;
        for job in [&a, &b, &c] {
            store.create_job(job, None, at(0)).await.unwrap();
        }
        assert_eq!(count(), 2);
        // Queued -> running, and a write that keeps a job queued.
        a.status = JobStatus::Running;
        a.rev += 1;
        store.put_job(&a, a.rev - 1).await.unwrap();
        let mut b2 = b.clone();
        b2.rev += 1;
        store.put_job(&b2, b.rev).await.unwrap();
        assert_eq!(count(), 1);
        // Running -> queued (a hand-back).
        a.status = JobStatus::Queued;
        a.rev += 1;
        store.put_job(&a, a.rev - 1).await.unwrap();
        assert_eq!(count(), 2);
        store
            .db
            .execute("DELETE FROM jobs WHERE id = ?1", vec![text(a.id.as_str())])
            .await
            .unwrap();
        assert_eq!(count(), 1);
        // The count agrees with the jobs themselves.
        let queued = store.jobs_in_status(JobStatus::Queued, 100).await.unwrap();
        assert_eq!(queued.len() as u64, count());
    }
}
