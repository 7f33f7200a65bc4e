//! The `JobStore` on DynamoDB: the design (issue 13), and [`DynamoJobStore`], which
//! implements it and passes `testkit::conformance::job_store`, `tenant_quotas`,
//! `asset_records`, `stalled_runner_is_fenced` and `lease_protocol` on moto, like the
//! SQLite store.
//!
//! `docs/table-design.md` explains the same design for readers of the docs alone; keep
//! the two in step.
//!
//! # One table, on demand
//!
//! Keys `pk` (S) and `sk` (S); on-demand billing; TTL on the attribute `ttl` (epoch
//! seconds). Two global secondary indexes, both *overloaded* (several item kinds use
//! them under different key prefixes):
//!
//! - `gsi1` (`gsi1pk`, `gsi1sk`): the **tenant index** of jobs (projecting the list
//!   fields only, [`GSI1_ATTRIBUTES`]: the job body without progress, which lives in
//!   its own item and is never indexed, and not `enqueued`, so `mark_enqueued` writes
//!   no index entry), the asset-by-hash lookup, and the API key list.
//! - `gsi2` (`gsi2pk`, `gsi2sk`): the **sparse index of active jobs**. Only a job that
//!   is `queued`, `running` or `canceling` carries `gsi2pk`; the write that makes it
//!   terminal `REMOVE`s it, so the index holds the working set, not history. Pending
//!   uploads share it under `UPLOADS` (deleted when done, so it stays small).
//!
//! # Items
//!
//! A job is an **item collection** under `pk = JOB#{id}`, so one `Query` reads all of
//! it (what `GET /jobs/{id}` shows), and no item grows without bound:
//!
//! | item | `pk` | `sk` | attributes | index keys |
//! |---|---|---|---|---|
//! | job | `JOB#{id}` | `META` | `body` (the job as JSON, without outputs or `enqueued`), `status`, `rev`, `attempt`, `out_count`, `tenant`, `labels` (map), `reserved_until` (ms), `enqueued` (set only by `mark_enqueued`), `ttl` | `gsi1pk = TENANT#{tenant}`, `gsi1sk = {id}`; while active `gsi2pk = ACTIVE#{status}`, `gsi2sk = {id}` |
//! | progress | `JOB#{id}` | `PROGRESS` | `attempt`, `body`, `closed` (set by the write that ends the job) | — |
//! | output | `JOB#{id}` | `OUT#{attempt:05}#{n:04}` | `body`, `ttl` | — |
//! | idempotency | `IDEM#{len}:{tenant}#{key}` | `IDEM` | `body`, `expires` (ms), `ttl` | — |
//! | fleet | `FLEET` | `FLEET` | `body`, `rev` | — |
//! | worker | `WORKERS` | `W#{id}` | `body` | — |
//! | node catalogue pointer | `CATALOGUE` | `LATEST` | `body` (`jobs::catalogue::CatalogueRef`; the catalogue itself is in S3) | — |
//! | asset | `ASSET#{id}` | `ASSET` | `body`, `file_path`, `blob_key` | `gsi1pk = AHASH#{len}:{tenant}#{hash}`, `gsi1sk = {created ms}#{id}` |
//! | blob record | `BLOB#{len}:{tenant}#{hash}` | `BLOB` | `body` | — |
//! | API key | `KEY#{sha256}` | `KEY` | `body` | `gsi1pk = KEYS`, `gsi1sk = {key id}` |
//! | upload | `UPLOAD#{id}` | `UPLOAD` | `body`, `expires` (ms), `ttl` (a day after `expires`) | `gsi2pk = UPLOADS`, `gsi2sk = {id}` |
//! | tenant quota | `TENANT#{tenant}` | `QUOTA` | `body` | — |
//! | tenant usage | `TENANT#{tenant}` | `USAGE` | `active`, `stored` (bytes), `window` (epoch second), `in_window` | — |
//! | stream slot | `TENANT#{tenant}` | `STREAM#{n:05}` (n below the tenant's stream limit) | `holder`, `until` (ms), `ttl` | — |
//! | inline input | `INLINE#inputs/{job}.json` | `INLINE` | `bytes`, `content_type`, `ttl` (written by [`crate::inline`], not by this store) | — |
//!
//! (`{len}:` is the tenant's length: with it, no tenant and key pair can spell another's
//! partition key, whatever `#` they contain.)
//!
//! Why the split: DynamoDB bills a write by the size of the whole item, and the
//! progress item is the one written every few seconds while a job runs, so it is small
//! and alone; outputs get one item each so the 400 KB item limit never caps a job's
//! outputs, and the attempt in their sort key means a takeover's outputs never mix
//! with the fenced-out attempt's (the job's `body` names the finishing attempt; reads
//! take only its `OUT#{attempt}#` items, and only the first `out_count`). The
//! workflow itself lives in S3.
//!
//! # Access patterns (nothing Scans)
//!
//! | port method | DynamoDB |
//! |---|---|
//! | `create_job_within_quota` (and `create_job`, unlimited) | `TransactWriteItems`: `Put` job if `attribute_not_exists(pk)`; `Put` idempotency record if `attribute_not_exists(pk) OR expires <= :now`; `Update` of the tenant's `USAGE` item: `ADD active :1` if `active < :max`, and for the submit rate (a fixed one-second window) either `ADD in_window :1` if `window = :w AND in_window < :rate` (the window read is this second or later) or `SET window = :second, in_window = 1` if `window = :w` (it was older; `attribute_not_exists` if none). Each with `ReturnValuesOnConditionCheckFailure = ALL_OLD`. The window is read first (`GetItem`, eventually consistent: the condition pins what was read) only when the rate is limited. Refusals, from the cancellation reasons: the record's → `KeyTaken(old record)` (a replay is answered before any quota); the job's → `Conflict`; the usage item's → `OverQuota(ActiveJobs)` or `OverQuota(SubmitRate)` as its old item shows, or, when it shows room, a lost race on the window, retried (bounded) on that item. A `TransactionConflict` (another transaction on the usage item) is retried with backoff, bounded. Then the queue position (below). |
//! | `get_tenant_quota` / `put_tenant_quota` | `GetItem` / `PutItem` `TENANT#{t}` `QUOTA` |
//! | `acquire_stream_slot` / `release_stream_slot` | `Query TENANT#{t}` `begins_with(sk, STREAM#)` (consistent), then `PutItem STREAM#{n}` for a free `n` below the limit (or the holder's own) `IF attribute_not_exists(pk) OR until <= :now OR holder = :holder`; a lost race reads again (bounded). Exact: each of the `max` slot items has one holder at a time. Release: the same `Query`, `DeleteItem IF holder = :holder` |
//! | `tenant_usage` | `GetItem` `TENANT#{t}` `USAGE` (consistent; counters clamped at 0) |
//! | `get_job` | one `Query pk = JOB#{id}` (strongly consistent): the job and its outputs |
//! | `job_status` | `GetItem META`, eventually consistent, `ProjectionExpression status, attempt, ttl`: half a read unit (the item is under 4 KB), what a runner polls every second while its job runs, so a cancel lands within a second |
//! | `load_snapshot` | the same `Query` (job, progress, outputs), plus the position count while queued |
//! | `put_job` | the finishing attempt's outputs first (`BatchWriteItem` of `OUT#{attempt}#{n}`: harmless if the move then loses, since reads take only `out_count` items of the attempt the job names), then the move of `META`: `SET body, status, rev, attempt, out_count, labels, reserved_until, gsi2*` (or `REMOVE gsi2pk, gsi2sk` when terminal) `IF rev = :expected AND attribute_exists(gsi2pk)` (the stored job is active). Within a class (active to active) that is one `UpdateItem`; from active to terminal it is a `TransactWriteItems` with `ADD active :-1` on the tenant's `USAGE` item and `SET closed = true` on the job's `PROGRESS` item (so no late progress write lands on a finished job). If the stored job was terminal after all (`ALL_OLD` shows the expected `rev` without `gsi2pk`), the move is made again conditioned on `attribute_not_exists(gsi2pk)` (one `UpdateItem`, or with `ADD active :1` when it becomes active again). `enqueued` is never named, so no copy read before `mark_enqueued` can clear it. The revision is bumped by every move, so one condition on it covers status, owner and attempt; a refused condition (another `rev`) → `StoreError::Conflict`, never an SDK error. |
//! | `mark_enqueued` | `UpdateItem SET enqueued = true IF attribute_exists(pk)`; a refusal (unknown job) is Ok |
//! | `list_jobs` / `list_jobs_page` | `Query gsi1 TENANT#{tenant}`, `gsi1sk < :before`, newest first, label filters as a `FilterExpression` on `labels.#k = :v`. A filter is applied after `Limit`, so a filtered listing reads pages of 100 rows until the page is full or a read budget ([`LIST_READ_BUDGET`] rows examined, by `ScannedCount`) is spent; then it answers with a short page and `resume_before` = the `gsi1sk` of `LastEvaluatedKey`, which the API's cursor (MAC'd, as today) carries |
//! | `jobs_in_status` | `Query gsi2 ACTIVE#{status}`, oldest first, `Limit`. Terminal statuses are not indexed: asking for one is an error (`Unavailable`), never a Scan |
//! | `queue_position` | `Query gsi2 ACTIVE#queued`, `gsi2sk < :id`, `Select = COUNT`, `Limit = cap` (ids grow with time: older means ahead) |
//! | `count_unclaimed_queued` | the same partition with `FilterExpression attribute_not_exists(reserved_until) OR reserved_until <= :now`, paged until `cap` or the end |
//! | `put_progress` / `get_progress` | `UpdateItem PROGRESS IF attribute_not_exists(closed) AND (attribute_not_exists(attempt) OR attempt <= :attempt)` (a refusal means the job ended or a later attempt wrote: dropped, Ok) / `GetItem` (an item without `body` is no progress) |
//! | `get_fleet` / `put_fleet` | `GetItem` / `PutItem IF rev = :expected` (`attribute_not_exists(pk)` for 0) |
//! | workers | `PutItem` / `DeleteItem` / `Query pk = WORKERS` |
//! | `get_catalogue_ref` / `put_catalogue_ref` | `GetItem` (consistent, one read unit: once per submit) / `PutItem` (last writer wins) `CATALOGUE` `LATEST` |
//! | assets | `PutItem` / `GetItem` / `DeleteItem ReturnValues=ALL_OLD`; `find_asset`: `Query gsi1 AHASH#…`, newest first, the first with that `file_path` |
//! | `is_blob_referenced` | `Query gsi1 AHASH#{tenant}#{hash}`, `Select = COUNT`: `Limit 1` without a key, else `FilterExpression blob_key = :key`, paged until one is found (past a large read budget: answered "referenced", so bytes are kept, never lost) |
//! | `put_blob_record_if_absent` | `TransactWriteItems`: `Put BLOB` if `attribute_not_exists(pk)` (`ALL_OLD` on refusal gives the record that stands) and `ADD stored :size` on the tenant's `USAGE` item |
//! | `delete_blob_record` | `GetItem BLOB` (for its size; a transaction returns nothing), then `TransactWriteItems`: `Delete BLOB` if `body = :read` and `ADD stored :-size`; a record changed meanwhile is read again (bounded) |
//! | API keys | `PutItem` / `GetItem KEY#{hash}` / `Query gsi1 KEYS`; `delete_all_api_keys`: that `Query`, then `BatchWriteItem` deletes, again until none is listed (each key counted once) |
//! | uploads | `PutItem` / `GetItem` / `DeleteItem`; `expired_uploads`: `Query gsi2 UPLOADS`, by id (ULIDs: creation order), `FilterExpression expires <= :now`, until `limit` or a read budget of 10 pages |
//! | `delete_job` | `Query pk = JOB#{id}`, `BatchWriteItem` deletes of every item but `META`, then `DeleteItem META IF attribute_not_exists(gsi2pk)` (finished jobs only) |
//! | `job_assets` | the same `Query`; each `OUT#` item names its asset: `GetItem ASSET#{id}` |
//! | `count_jobs_by_status` | `Query gsi2 ACTIVE#{status}`, `Select = COUNT`, for the three active statuses |
//! | `expired_jobs`, `delete_expired_idempotency` | nothing: TTL (see "Not done yet") |
//! | `ping` | `GetItem FLEET` (half a read unit; `DescribeTable` has a low rate limit) |
//!
//! # Expiry
//!
//! Items that retention deletes carry `ttl` = their `expires_at` (jobs and outputs
//! share the job's, matching the S3 lifecycle rules on `outputs/` and `inputs/`). TTL
//! deletes *late* (up to days; moto never does), so reads filter expired jobs
//! themselves, on the store's clock, and the idempotency condition compares `expires`.
//!
//! # Not done yet
//!
//! - Retention: the tick's sweep (`jobs::retention`) finds nothing to do here, because
//!   finished jobs are in no index (`expired_jobs` answers empty, and
//!   `delete_expired_idempotency` 0: TTL deletes both). TTL removes a job's items and
//!   the S3 lifecycle its workflow and outputs, but not the asset records of its
//!   outputs (`ASSET#`) nor their `BLOB#` dedup records: the `webhooks` function,
//!   on the table's stream, releases them on each TTL deletion of an `OUT#` item
//!   (`stream::expired_output_asset`, then `jobs::assets::release_bytes`, as
//!   `jobs::retention` does). `count_jobs_by_status`
//!   counts only the active statuses (from the sparse index). `delete_job` and
//!   `job_assets` are complete (the collection, then `META` if still finished).
//! - The progress and worker items carry no `ttl` yet (progress does not know its
//!   job's retention; workers need a heartbeat grace to be chosen).
//! - `serverless-comfyui keys create|list|revoke --table NAME` over the `KEY#` items.
//! - One tenant's writes that change its usage (job creates, job ends, blob records)
//!   all touch its `USAGE` item: DynamoDB takes about 1,000 write units a second per
//!   item, and a transactional write costs two, so a tenant tops out near 500 of them
//!   a second (concurrent ones meet as `TransactionConflict`, retried with backoff).
//!   Sharding the counter would lift that; the default quota (1,000 submits a second)
//!   is above it.
//! - `is_blob_referenced` reads the tenant index, which lags: an asset recorded a
//!   fraction of a second before a delete's second check may be missed, and its
//!   bytes deleted (the SQLite store decides in one transaction). Closing it needs a
//!   reference count on the `BLOB` item, moved with each asset write.
//! - A listed job that has outputs costs one more `Query` (its collection): fine for
//!   pages of 20–100, worth projecting a short output summary into `META` later.
//! - A real GSI lags its table by a fraction of a second (moto's does not): a job
//!   just created may be missing from its tenant's list, or from the queued count,
//!   for that long. Every *decision* reads the base table (moves are conditional
//!   writes on `META`), so only views are affected.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, DeleteRequest, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, PutRequest, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, Select, TimeToLiveSpecification,
    TransactWriteItem, Update, WriteRequest,
};
use chrono::{DateTime, Utc};
use jobs::model::{
    ApiKeyRecord, Asset, BlobRecord, IdempotencyRecord, Job, JobId, JobStatus, OutputRecord,
    ProgressRecord, UploadRecord,
};
use jobs::ports::{
    Clock, CreateOutcome, Fleet, JobSnapshot, JobStatusRead, JobStore, ListQuery, ListedJobs,
    QUEUE_POSITION_CAP, StoreError, StoreResult, WorkerRecord,
};
use jobs::quota::{QuotaRefusal, TenantQuota, TenantUsage};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod items;
mod requests;
mod table;

pub(crate) use items::condition_failed;
use items::*;
pub use table::create_table;

type Item = HashMap<String, AttributeValue>;

/// The tenant index (jobs by tenant, assets by hash, API keys).
pub const GSI1: &str = "gsi1";
/// The sparse index of active jobs.
pub const GSI2: &str = "gsi2";
/// The non-key attributes the tenant index projects: what its reads use (a job's
/// `body`, `out_count` and `labels`; an asset's `body`, `file_path` and `blob_key`; an
/// API key's `body`). Not `enqueued`: recording an enqueue writes only the base item.
/// template.yaml's `gsi1` says the same.
pub const GSI1_ATTRIBUTES: [&str; 5] = ["body", "out_count", "labels", "file_path", "blob_key"];
/// Pages a filtered read may spend before answering with what it has.
const READ_BUDGET_PAGES: usize = 10;
/// Rows a label-filtered tenant listing examines before it answers with a short page
/// and where to go on (`ListedJobs::resume_before`), like the SQLite store's budget.
pub const LIST_READ_BUDGET: usize = 5_000;
/// Rows one filtered listing page asks for (a filter is applied after `Limit`).
const LIST_PAGE_ROWS: usize = 100;
/// Tries of a transaction cancelled because another transaction held one of its items
/// (`TransactionConflict`: per-tenant usage items are shared by a tenant's writes), and
/// of an admission or blob-record delete that lost a race on what it read.
/// With [`backoff_delay`], the tries span about 1.3 s at most: a contended submit still
/// answers well inside a Lambda's timeout, and one that gives up answers 503 with
/// `Retry-After`.
const TRANSACTION_TRIES: u32 = 7;

/// The `JobStore` on one DynamoDB table.
#[derive(Clone)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
    clock: Arc<dyn Clock>,
    list_read_budget: usize,
}

#[async_trait]
impl JobStore for DynamoJobStore {
    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, job = %job.id.as_str()))]
    async fn create_job_within_quota(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyRecord>,
        now: DateTime<Utc>,
        quota: &TenantQuota,
    ) -> StoreResult<CreateOutcome> {
        let job_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.job_item(job)?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems", &e))?;
        let counts = !job.status.is_terminal();
        // The rate window's branch is chosen on the usage item as read (eventually
        // consistent is enough: the condition pins what was read).
        let mut seen = if counts && quota.submits_per_second != u32::MAX {
            self.client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key(tenant_pk(&job.tenant), "USAGE")))
                .send()
                .await
                .map_err(|e| self.unavailable("GetItem usage", &e))?
                .item
        } else {
            None
        };
        for _ in 0..TRANSACTION_TRIES {
            let mut items = vec![TransactWriteItem::builder().put(job_put.clone()).build()];
            if let Some(record) = idempotency {
                items.push(self.idempotency_put(record, now)?);
            }
            if counts {
                items.push(self.admission(&job.tenant, now, quota, seen.as_ref())?);
            }
            let usage_at = items.len() - 1;
            let refused = match self.transact("TransactWriteItems create", items).await? {
                Transacted::Done => {
                    let queue_position = if job.status == JobStatus::Queued {
                        self.count_active(
                            JobStatus::Queued,
                            Some(&job.id),
                            None,
                            QUEUE_POSITION_CAP,
                        )
                        .await?
                    } else {
                        0
                    };
                    return Ok(CreateOutcome::Created { queue_position });
                }
                refused => refused,
            };
            // The replay is answered first: it names a job that exists.
            if idempotency.is_some()
                && let Some(Some(old)) = refused.refused_at(1)
            {
                return Ok(CreateOutcome::KeyTaken(body_of(old)?));
            }
            if refused.refused_at(0).is_some() {
                return Err(StoreError::Conflict);
            }
            let usage = match refused.refused_at(usage_at) {
                Some(old) if counts => old.cloned().unwrap_or_default(),
                _ => {
                    return Err(StoreError::Unavailable(format!(
                        "TransactWriteItems create on {}: refused without a reason",
                        self.table
                    )));
                }
            };
            if let Some(refusal) = Self::refusal(&usage, now, quota) {
                // Whatever reasons DynamoDB listed, a replay still wins.
                if let Some(record) = idempotency
                    && let Some(taken) = self.get_idempotency(&record.tenant, &record.key).await?
                    && taken.expires_at > now
                {
                    return Ok(CreateOutcome::KeyTaken(taken));
                }
                return Ok(CreateOutcome::OverQuota(refusal));
            }
            // Lost a race on the window: go again on the item as the refusal returned it.
            seen = Some(usage);
        }
        Err(StoreError::Unavailable(format!(
            "create job on {}: the tenant's usage item kept changing",
            self.table
        )))
    }

    async fn get_tenant_quota(&self, tenant: &str) -> StoreResult<Option<TenantQuota>> {
        self.get_body(tenant_pk(tenant), "QUOTA").await
    }

    async fn put_tenant_quota(&self, tenant: &str, quota: &TenantQuota) -> StoreResult<()> {
        self.put_body(tenant_pk(tenant), "QUOTA", quota, vec![])
            .await
    }

    async fn tenant_usage(&self, tenant: &str) -> StoreResult<TenantUsage> {
        let item = self
            .get_item(tenant_pk(tenant), "USAGE")
            .await?
            .unwrap_or_default();
        Ok(TenantUsage {
            active_jobs: signed(&item, "active").max(0) as u64,
            stored_bytes: signed(&item, "stored").max(0) as u64,
        })
    }

    async fn acquire_stream_slot(
        &self,
        tenant: &str,
        holder: &str,
        max: u32,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        for _ in 0..TRANSACTION_TRIES {
            let held = self.stream_slots(tenant).await?;
            let live = |item: &Item| signed(item, "until") > now.timestamp_millis();
            // Its own slot is renewed; else a free (absent or expired) one is taken.
            let own = held.iter().find(
                |(_, item)| matches!(item.get("holder"), Some(AttributeValue::S(h)) if h == holder),
            );
            let index = match own {
                Some((index, _)) => *index,
                None => {
                    let taken: Vec<u32> = held
                        .iter()
                        .filter(|(_, item)| live(item))
                        .map(|(index, _)| *index)
                        .collect();
                    let free: Vec<u32> = (0..max).filter(|i| !taken.contains(i)).collect();
                    if free.is_empty() {
                        return Ok(false);
                    }
                    // Spread concurrent takers over the free slots: fewer lost races.
                    free[rand_index(free.len())]
                }
            };
            let mut item = key(tenant_pk(tenant), &stream_sk(index));
            item.insert("holder".into(), s(holder));
            item.insert("until".into(), n(until.timestamp_millis()));
            item.insert("ttl".into(), n(until.timestamp() + 3600));
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression(
                    "attribute_not_exists(pk) OR #until <= :now OR #holder = :holder",
                )
                .expression_attribute_names("#until", "until")
                .expression_attribute_names("#holder", "holder")
                .expression_attribute_values(":now", n(now.timestamp_millis()))
                .expression_attribute_values(":holder", s(holder))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(true),
                // Another holder took it since the read: read again.
                Err(e) if condition_failed(&e) => {}
                Err(e) => return Err(self.unavailable("PutItem stream slot", &e)),
            }
        }
        // Lost every race: the slots are contended, which is what "full" means.
        Ok(false)
    }

    async fn release_stream_slot(&self, tenant: &str, holder: &str) -> StoreResult<()> {
        for (index, item) in self.stream_slots(tenant).await? {
            if !matches!(item.get("holder"), Some(AttributeValue::S(h)) if h == holder) {
                continue;
            }
            let result = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(tenant_pk(tenant), &stream_sk(index))))
                .condition_expression("#holder = :holder")
                .expression_attribute_names("#holder", "holder")
                .expression_attribute_values(":holder", s(holder))
                .send()
                .await;
            if let Err(e) = result
                && !condition_failed(&e)
            {
                return Err(self.unavailable("DeleteItem stream slot", &e));
            }
        }
        Ok(())
    }

    async fn get_job(&self, id: &JobId) -> StoreResult<Option<Job>> {
        Ok(self.read_job(id).await?.map(|(job, _)| job))
    }

    async fn job_status(&self, id: &JobId) -> StoreResult<Option<JobStatusRead>> {
        // Eventually consistent and projected: half a read unit, polled every second
        // by a runner while its job runs.
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(id), "META")))
            .consistent_read(false)
            .projection_expression("#status, #attempt, #ttl")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#attempt", "attempt")
            .expression_attribute_names("#ttl", "ttl")
            .send()
            .await
            .map_err(|e| self.unavailable("GetItem status", &e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        // TTL deletes late: a job past its retention is gone, as `get_job` says (`ttl`
        // is `expires_at` in whole seconds: only a second past it is surely expired).
        if number(&item, "ttl").is_some_and(|ttl| (ttl as i64) < self.clock.now().timestamp()) {
            return Ok(None);
        }
        let status = match item.get("status") {
            Some(AttributeValue::S(raw)) => JobStatus::parse(raw),
            _ => None,
        }
        .ok_or_else(|| StoreError::Unavailable("job item without a known status".into()))?;
        let attempt = number(&item, "attempt")
            .and_then(|a| u32::try_from(a).ok())
            .ok_or_else(|| StoreError::Unavailable("job item without an attempt".into()))?;
        Ok(Some(JobStatusRead { status, attempt }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, job = %job.id.as_str()))]
    async fn put_job(&self, job: &Job, expected_rev: u64) -> StoreResult<()> {
        self.write_outputs(job).await?;
        // Guess that the stored job is active: every job starts so, and a terminal
        // one is seldom written again. A wrong guess costs one refused write.
        if self.move_job(job, expected_rev, true).await?
            || self.move_job(job, expected_rev, false).await?
        {
            return Ok(());
        }
        // Same revision yet neither class: it moved between the two writes.
        Err(StoreError::Conflict)
    }

    async fn mark_enqueued(&self, id: &JobId) -> StoreResult<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(id), "META")))
            .update_expression("SET #enqueued = :t")
            .expression_attribute_names("#enqueued", "enqueued")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // An unknown job is left alone.
            Err(e) if condition_failed(&e) => Ok(()),
            Err(e) => Err(self.unavailable("UpdateItem enqueued", &e)),
        }
    }

    async fn list_jobs(&self, query: &ListQuery) -> StoreResult<Vec<Job>> {
        Ok(self.list_jobs_page(query).await?.jobs)
    }

    async fn list_jobs_page(&self, query: &ListQuery) -> StoreResult<ListedJobs> {
        let mut condition = "gsi1pk = :t".to_string();
        let mut values = HashMap::from([(":t".to_string(), s(format!("TENANT#{}", query.tenant)))]);
        if let Some(before) = &query.before {
            condition.push_str(" AND gsi1sk < :before");
            values.insert(":before".into(), s(before.as_str()));
        }
        let mut names = HashMap::new();
        if !query.metadata.is_empty() {
            names.insert("#labels".to_string(), "labels".to_string());
        }
        let mut filters = Vec::new();
        for (i, (k, v)) in query.metadata.iter().enumerate() {
            names.insert(format!("#k{i}"), k.clone());
            values.insert(format!(":l{i}"), s(v.clone()));
            filters.push(format!("#labels.#k{i} = :l{i}"));
        }
        let mut jobs = Vec::new();
        let mut start = None;
        let mut examined = 0usize;
        loop {
            // A filter applies after `Limit`: filtered pages read wider, within the budget.
            let rows = if filters.is_empty() {
                query.limit.saturating_sub(jobs.len())
            } else {
                LIST_PAGE_ROWS.min(self.list_read_budget.saturating_sub(examined))
            };
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI1)
                .key_condition_expression(&condition)
                .set_filter_expression((!filters.is_empty()).then(|| filters.join(" AND ")))
                .set_expression_attribute_names((!names.is_empty()).then(|| names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(false)
                .limit(rows.clamp(1, 1000) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.unavailable("Query tenant jobs", &e))?;
            examined += out.scanned_count.max(0) as usize;
            for item in out.items.unwrap_or_default() {
                if jobs.len() < query.limit
                    && let Some(job) = self.attach_outputs(&item).await?
                {
                    jobs.push(job);
                }
            }
            start = out.last_evaluated_key;
            let Some(last) = &start else { break };
            if jobs.len() >= query.limit {
                break;
            }
            if examined >= self.list_read_budget {
                // A short page; the listing goes on below the last row examined.
                let resume_before = match last.get("gsi1sk") {
                    Some(AttributeValue::S(id)) => JobId::parse(id),
                    _ => None,
                };
                return Ok(ListedJobs {
                    jobs,
                    resume_before,
                });
            }
        }
        Ok(ListedJobs {
            jobs,
            resume_before: None,
        })
    }

    async fn jobs_in_status(&self, status: JobStatus, limit: usize) -> StoreResult<Vec<Job>> {
        if status.is_terminal() {
            return Err(StoreError::Unavailable(format!(
                "jobs_in_status({status}): terminal statuses are not indexed"
            )));
        }
        let mut jobs = Vec::new();
        let mut start = None;
        while jobs.len() < limit {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI2)
                .key_condition_expression("gsi2pk = :s")
                .expression_attribute_values(":s", s(format!("ACTIVE#{}", status.as_str())))
                .limit((limit - jobs.len()).clamp(1, 1000) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.unavailable("Query active jobs", &e))?;
            for item in out.items.unwrap_or_default() {
                if let Some(job) = self.attach_outputs(&item).await? {
                    jobs.push(job);
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(jobs)
    }

    async fn queue_position(&self, id: &JobId, cap: u64) -> StoreResult<u64> {
        self.count_active(JobStatus::Queued, Some(id), None, cap)
            .await
    }

    async fn count_unclaimed_queued(&self, now: DateTime<Utc>, cap: u64) -> StoreResult<u64> {
        self.count_active(JobStatus::Queued, None, Some(now), cap)
            .await
    }

    async fn load_snapshot(
        &self,
        id: &JobId,
        position_cap: u64,
    ) -> StoreResult<Option<JobSnapshot>> {
        let Some((job, progress)) = self.read_job(id).await? else {
            return Ok(None);
        };
        let queue_position = if job.status == JobStatus::Queued {
            Some(
                self.count_active(JobStatus::Queued, Some(id), None, position_cap)
                    .await?,
            )
        } else {
            None
        };
        Ok(Some(JobSnapshot {
            job,
            progress,
            queue_position,
        }))
    }

    async fn get_idempotency(
        &self,
        tenant: &str,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        self.get_body(format!("IDEM#{}", pair(tenant, key)), "IDEM")
            .await
    }

    async fn put_progress(&self, id: &JobId, record: &ProgressRecord) -> StoreResult<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(id), "PROGRESS")))
            .update_expression("SET #body = :b, #attempt = :a")
            .condition_expression(
                "attribute_not_exists(#closed) AND (attribute_not_exists(#attempt) OR #attempt <= :a)",
            )
            .expression_attribute_names("#body", "body")
            .expression_attribute_names("#attempt", "attempt")
            .expression_attribute_names("#closed", "closed")
            .expression_attribute_values(":b", s(to_json(record)?))
            .expression_attribute_values(":a", n(record.attempt))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // The job has ended, or a later attempt's progress is there: this one is
            // stale, dropped.
            Err(e) if condition_failed(&e) => Ok(()),
            Err(e) => Err(self.unavailable("UpdateItem progress", &e)),
        }
    }

    async fn get_progress(&self, id: &JobId) -> StoreResult<Option<ProgressRecord>> {
        // A job that ended before any progress was written has a bare `closed` item.
        match self.get_item(job_pk(id), "PROGRESS").await? {
            Some(item) if item.contains_key("body") => body_of(&item).map(Some),
            _ => Ok(None),
        }
    }

    async fn get_fleet(&self) -> StoreResult<Fleet> {
        Ok(self
            .get_body("FLEET".into(), "FLEET")
            .await?
            .unwrap_or_default())
    }

    async fn put_fleet(&self, fleet: &Fleet, expected_rev: u64) -> StoreResult<()> {
        let mut item = key("FLEET".into(), "FLEET");
        item.insert("body".into(), s(to_json(fleet)?));
        item.insert("rev".into(), n(fleet.rev));
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        request = if expected_rev == 0 {
            request.condition_expression("attribute_not_exists(pk)")
        } else {
            request
                .condition_expression("#rev = :expected")
                .expression_attribute_names("#rev", "rev")
                .expression_attribute_values(":expected", n(expected_rev))
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) if condition_failed(&e) => Err(StoreError::Conflict),
            Err(e) => Err(self.unavailable("PutItem fleet", &e)),
        }
    }

    async fn get_catalogue_ref(&self) -> StoreResult<Option<jobs::catalogue::CatalogueRef>> {
        self.get_body("CATALOGUE".into(), "LATEST").await
    }

    async fn put_catalogue_ref(&self, pointer: &jobs::catalogue::CatalogueRef) -> StoreResult<()> {
        self.put_body("CATALOGUE".into(), "LATEST", pointer, vec![])
            .await
    }

    async fn put_worker(&self, worker: &WorkerRecord) -> StoreResult<()> {
        self.put_body(
            "WORKERS".into(),
            &format!("W#{}", worker.id),
            worker,
            vec![],
        )
        .await
    }

    async fn delete_worker(&self, id: &str) -> StoreResult<()> {
        self.delete_item("WORKERS".into(), &format!("W#{id}"))
            .await?;
        Ok(())
    }

    async fn list_workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        let mut workers = Vec::new();
        let mut start = None;
        for _ in 0..READ_BUDGET_PAGES {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s("WORKERS"))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.unavailable("Query workers", &e))?;
            for item in out.items.unwrap_or_default() {
                workers.push(body_of(&item)?);
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(workers)
    }

    async fn put_asset(&self, asset: &Asset) -> StoreResult<()> {
        let mut extra = vec![
            (
                "gsi1pk",
                s(format!("AHASH#{}", pair(&asset.tenant, &asset.hash))),
            ),
            (
                "gsi1sk",
                s(format!(
                    "{:015}#{}",
                    asset.created_at.timestamp_millis(),
                    asset.id
                )),
            ),
        ];
        // Its own attribute, so `is_blob_referenced` filters on it server-side.
        extra.push(("blob_key", s(asset.blob_key.clone())));
        if let Some(path) = &asset.file_path {
            extra.push(("file_path", s(path.clone())));
        }
        self.put_body(format!("ASSET#{}", asset.id), "ASSET", asset, extra)
            .await
    }

    async fn get_asset(&self, id: &str) -> StoreResult<Option<Asset>> {
        self.get_body(format!("ASSET#{id}"), "ASSET").await
    }

    async fn delete_asset(&self, id: &str) -> StoreResult<bool> {
        self.delete_item(format!("ASSET#{id}"), "ASSET").await
    }

    async fn find_asset(
        &self,
        tenant: &str,
        hash: &str,
        file_path: Option<&str>,
    ) -> StoreResult<Option<Asset>> {
        let items = self
            .query_index(
                GSI1,
                "gsi1pk",
                format!("AHASH#{}", pair(tenant, hash)),
                true,
            )
            .await?;
        for item in &items {
            let asset: Asset = body_of(item)?;
            if asset.file_path.as_deref() == file_path {
                return Ok(Some(asset));
            }
        }
        Ok(None)
    }

    async fn get_blob_record(&self, tenant: &str, hash: &str) -> StoreResult<Option<BlobRecord>> {
        self.get_body(blob_pk(tenant, hash), "BLOB").await
    }

    async fn put_blob_record_if_absent(
        &self,
        record: &BlobRecord,
    ) -> StoreResult<(BlobRecord, bool)> {
        let mut item = key(blob_pk(&record.tenant, &record.hash), "BLOB");
        item.insert("body".into(), s(to_json(record)?));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems blob record", &e))?;
        // The record and the tenant's stored bytes move together.
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            self.usage_delta(&record.tenant, "stored", record.size_bytes as i64)?,
        ];
        let refused = match self
            .transact("TransactWriteItems blob record", items)
            .await?
        {
            Transacted::Done => return Ok((record.clone(), true)),
            refused => refused,
        };
        match refused.refused_at(0) {
            Some(Some(old)) => Ok((body_of(old)?, false)),
            _ => Err(StoreError::Conflict),
        }
    }

    async fn is_blob_referenced(
        &self,
        tenant: &str,
        hash: &str,
        blob_key: Option<&str>,
    ) -> StoreResult<bool> {
        let mut start = None;
        for _ in 0..READ_BUDGET_PAGES * 10 {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI1)
                .select(Select::Count)
                .key_condition_expression("gsi1pk = :pk")
                .expression_attribute_values(":pk", s(format!("AHASH#{}", pair(tenant, hash))))
                .set_exclusive_start_key(start);
            query = match blob_key {
                Some(blob_key) => query
                    .filter_expression("#blob_key = :blob_key")
                    .expression_attribute_names("#blob_key", "blob_key")
                    .expression_attribute_values(":blob_key", s(blob_key)),
                None => query.limit(1),
            };
            let out = query
                .send()
                .await
                .map_err(|e| self.unavailable("Query assets by hash", &e))?;
            if out.count > 0 {
                return Ok(true);
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(false);
            }
        }
        // Too many assets over one hash to look through: keep the bytes (at worst a
        // leak, never a lost blob).
        tracing::warn!(table = %self.table, tenant, hash, "is_blob_referenced: read budget spent; answering referenced");
        Ok(true)
    }

    async fn delete_blob_record(&self, tenant: &str, hash: &str) -> StoreResult<bool> {
        // A transaction returns nothing on success: read the record for its size, then
        // delete it only as read, with its bytes, in one transaction.
        for _ in 0..TRANSACTION_TRIES {
            let Some(item) = self.get_item(blob_pk(tenant, hash), "BLOB").await? else {
                return Ok(false);
            };
            let record: BlobRecord = body_of(&item)?;
            let body = item.get("body").cloned().unwrap_or_else(|| s(""));
            let delete = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key(blob_pk(tenant, hash), "BLOB")))
                .condition_expression("#body = :body")
                .expression_attribute_names("#body", "body")
                .expression_attribute_values(":body", body)
                .build()
                .map_err(|e| self.unavailable("TransactWriteItems blob record", &e))?;
            let items = vec![
                TransactWriteItem::builder().delete(delete).build(),
                self.usage_delta(tenant, "stored", -(record.size_bytes as i64))?,
            ];
            if let Transacted::Done = self
                .transact("TransactWriteItems blob record", items)
                .await?
            {
                return Ok(true);
            }
            // Replaced or deleted meanwhile: read again.
        }
        Err(StoreError::Unavailable(format!(
            "delete blob record on {}: the record kept changing",
            self.table
        )))
    }

    async fn put_api_key(&self, record: &ApiKeyRecord) -> StoreResult<()> {
        self.put_body(
            format!("KEY#{}", record.key_hash),
            "KEY",
            record,
            vec![("gsi1pk", s("KEYS")), ("gsi1sk", s(record.id.clone()))],
        )
        .await
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        self.get_body(format!("KEY#{key_hash}"), "KEY").await
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        let items = self
            .query_index(GSI1, "gsi1pk", "KEYS".into(), false)
            .await?;
        items.iter().map(body_of).collect()
    }

    async fn delete_all_api_keys(&self) -> StoreResult<usize> {
        // The index lags its table: a key deleted in one round may be listed again in
        // the next, so each key is counted once, by its table key.
        let mut deleted = std::collections::HashSet::new();
        for _ in 0..READ_BUDGET_PAGES {
            let items = self
                .query_index(GSI1, "gsi1pk", "KEYS".into(), false)
                .await?;
            let fresh: Vec<Item> = items
                .into_iter()
                .filter(|item| match item.get("pk") {
                    Some(AttributeValue::S(pk)) => !deleted.contains(pk),
                    _ => false,
                })
                .collect();
            if fresh.is_empty() {
                break;
            }
            let mut requests = Vec::new();
            for item in &fresh {
                let (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) =
                    (item.get("pk"), item.get("sk"))
                else {
                    continue;
                };
                let delete = DeleteRequest::builder()
                    .set_key(Some(key(pk.clone(), sk)))
                    .build()
                    .map_err(|e| self.unavailable("BatchWriteItem keys", &e))?;
                requests.push(WriteRequest::builder().delete_request(delete).build());
                deleted.insert(pk.clone());
            }
            self.batch_write("BatchWriteItem keys", requests).await?;
        }
        Ok(deleted.len())
    }

    async fn put_upload(&self, upload: &UploadRecord) -> StoreResult<()> {
        // In the sparse index under `UPLOADS`, by id (ULIDs: creation order), for the
        // sweep. TTL a day after expiry: the sweep deletes the staged bytes first, TTL
        // is only the backstop for a record the sweep never reached.
        self.put_body(
            format!("UPLOAD#{}", upload.id),
            "UPLOAD",
            upload,
            vec![
                ("expires", n(upload.expires_at.timestamp_millis())),
                ("gsi2pk", s("UPLOADS")),
                ("gsi2sk", s(upload.id.clone())),
                (
                    "ttl",
                    n((upload.expires_at + chrono::Duration::days(1)).timestamp()),
                ),
            ],
        )
        .await
    }

    async fn get_upload(&self, id: &str) -> StoreResult<Option<UploadRecord>> {
        self.get_body(format!("UPLOAD#{id}"), "UPLOAD").await
    }

    async fn delete_upload(&self, id: &str) -> StoreResult<()> {
        self.delete_item(format!("UPLOAD#{id}"), "UPLOAD").await?;
        Ok(())
    }

    async fn expired_uploads(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<UploadRecord>> {
        let mut uploads = Vec::new();
        let mut start = None;
        for _ in 0..READ_BUDGET_PAGES {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI2)
                .key_condition_expression("gsi2pk = :u")
                .filter_expression("#expires <= :now")
                .expression_attribute_names("#expires", "expires")
                .expression_attribute_values(":u", s("UPLOADS"))
                .expression_attribute_values(":now", n(now.timestamp_millis()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.unavailable("Query uploads", &e))?;
            for item in out.items.unwrap_or_default() {
                if uploads.len() < limit {
                    uploads.push(body_of(&item)?);
                }
            }
            start = out.last_evaluated_key;
            if uploads.len() >= limit || start.is_none() {
                break;
            }
        }
        Ok(uploads)
    }

    async fn expired_jobs(&self, _now: DateTime<Utc>, _limit: usize) -> StoreResult<Vec<Job>> {
        // A finished job is in no index (the active index drops it, and nothing Scans):
        // DynamoDB's TTL removes its items (`ttl` = its `expires_at`), and the S3
        // lifecycle its workflow and outputs. See "Not done yet" for what that leaves.
        Ok(Vec::new())
    }

    async fn delete_job(&self, id: &JobId) -> StoreResult<bool> {
        let items = self.collection(id).await?;
        let Some(meta) = items.iter().find(|item| sort_key(item) == "META") else {
            return Ok(false);
        };
        if meta.contains_key("gsi2pk") {
            // Only finished jobs are deleted; an active one holds the tenant's count.
            return Err(StoreError::Conflict);
        }
        // Everything else first, `META` last: a sweep stopped half way finds the job
        // again and finishes.
        let mut requests = Vec::new();
        for item in items.iter().filter(|item| sort_key(item) != "META") {
            let delete = DeleteRequest::builder()
                .set_key(Some(key(job_pk(id), sort_key(item))))
                .build()
                .map_err(|e| self.unavailable("BatchWriteItem job items", &e))?;
            requests.push(WriteRequest::builder().delete_request(delete).build());
        }
        self.batch_write("BatchWriteItem job items", requests)
            .await?;
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(id), "META")))
            .condition_expression("attribute_not_exists(gsi2pk)")
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception())
                {
                    StoreError::Conflict
                } else {
                    self.unavailable("DeleteItem job", &e)
                }
            })?;
        Ok(true)
    }

    async fn job_assets(&self, id: &JobId, limit: usize) -> StoreResult<Vec<Asset>> {
        // Every attempt's output items name their asset.
        let mut assets = Vec::new();
        for item in self.collection(id).await? {
            if assets.len() >= limit {
                break;
            }
            if !sort_key(&item).starts_with("OUT#") {
                continue;
            }
            let output: OutputRecord = body_of(&item)?;
            if let Some(asset) = self.get_asset(&output.asset_id).await? {
                assets.push(asset);
            }
        }
        Ok(assets)
    }

    async fn delete_expired_idempotency(
        &self,
        _now: DateTime<Utc>,
        _limit: usize,
    ) -> StoreResult<usize> {
        // Records carry `ttl`: DynamoDB deletes them, and until it does the create
        // condition (`expires <= :now`) treats them as gone.
        Ok(0)
    }

    async fn count_jobs_by_status(&self) -> StoreResult<Vec<(JobStatus, u64)>> {
        // The active statuses, from the sparse index (bounded); finished jobs are in no
        // index, so they are left out rather than Scanned for.
        let mut counts = Vec::new();
        for status in [JobStatus::Queued, JobStatus::Running, JobStatus::Canceling] {
            let total = self.count_active(status, None, None, u64::MAX).await?;
            if total > 0 {
                counts.push((status, total));
            }
        }
        Ok(counts)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.get_item("FLEET".into(), "FLEET").await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "dynamodb"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_spread_over_a_growing_window() {
        for attempt in 0..TRANSACTION_TRIES {
            let window = 20u64 << attempt.min(5);
            let delays: Vec<u64> = (0..400)
                .map(|_| backoff_delay(attempt).as_millis() as u64)
                .collect();
            assert!(delays.iter().all(|d| *d <= window), "within the window");
            let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
            // Spread over most of the window, not a few ms around one value.
            assert!(
                max - min >= window / 2,
                "attempt {attempt}: {min}..{max} ms of {window}"
            );
        }
        let total: u64 = (0..TRANSACTION_TRIES - 1).map(|a| 20u64 << a.min(5)).sum();
        assert!(total <= 1_500, "the tries stay bounded: {total} ms at most");
    }
}
