//! The SQLite schema, as the ordered list of migrations `Db` applies. Append only:
//! a database records how many it has run, so an edited or reordered entry would
//! never run on an existing database.

pub(super) const MIGRATIONS: &[&str] = &[
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
    super::webhooks::MIGRATION,
    // The pointer to the latest node catalogue (jobs::catalogue): one row.
    r#"
CREATE TABLE catalogue_ref (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    body TEXT NOT NULL
);
"#,
];
