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
//!   fields only: the job body without progress, which lives in its own item and is
//!   never indexed), the asset-by-hash lookup, and the API key list.
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
//! | asset | `ASSET#{id}` | `ASSET` | `body`, `file_path`, `blob_key` | `gsi1pk = AHASH#{len}:{tenant}#{hash}`, `gsi1sk = {created ms}#{id}` |
//! | blob record | `BLOB#{len}:{tenant}#{hash}` | `BLOB` | `body` | — |
//! | API key | `KEY#{sha256}` | `KEY` | `body` | `gsi1pk = KEYS`, `gsi1sk = {key id}` |
//! | upload | `UPLOAD#{id}` | `UPLOAD` | `body`, `expires` (ms), `ttl` (a day after `expires`) | `gsi2pk = UPLOADS`, `gsi2sk = {id}` |
//! | tenant quota | `TENANT#{tenant}` | `QUOTA` | `body` | — |
//! | tenant usage | `TENANT#{tenant}` | `USAGE` | `active`, `stored` (bytes), `window` (epoch second), `in_window` | — |
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
//! - The stream counters that must hold across Lambda instances, and
//!   `serverless-comfyui keys create|list|revoke --table NAME` over the `KEY#` items.
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
use aws_sdk_dynamodb::operation::put_item::PutItemError;
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

type Item = HashMap<String, AttributeValue>;

/// The tenant index (jobs by tenant, assets by hash, API keys).
pub const GSI1: &str = "gsi1";
/// The sparse index of active jobs.
pub const GSI2: &str = "gsi2";
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
const TRANSACTION_TRIES: u32 = 5;

/// The `JobStore` on one DynamoDB table.
#[derive(Clone)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
    clock: Arc<dyn Clock>,
    list_read_budget: usize,
}

/// One item's part in a transaction that a condition refused, in request order.
struct Reason {
    /// This item's condition failed.
    failed: bool,
    /// The item as it was (`ReturnValuesOnConditionCheckFailure = ALL_OLD`).
    old: Option<Item>,
}

/// How a `TransactWriteItems` ended, when it reached DynamoDB.
enum Transacted {
    Done,
    Refused(Vec<Reason>),
}

impl Transacted {
    /// The refused item at `index`, with what it held.
    fn refused_at(&self, index: usize) -> Option<Option<&Item>> {
        match self {
            Transacted::Refused(reasons) => reasons
                .get(index)
                .filter(|r| r.failed)
                .map(|r| r.old.as_ref()),
            Transacted::Done => None,
        }
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

/// A composite key part that cannot collide: `{len}:{a}#{b}`.
fn pair(a: &str, b: &str) -> String {
    format!("{}:{a}#{b}", a.len())
}

fn job_pk(id: &JobId) -> String {
    format!("JOB#{}", id.as_str())
}

fn output_sk(attempt: u32, n: usize) -> String {
    format!("OUT#{attempt:05}#{n:04}")
}

fn to_json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Unavailable(format!("encode: {e}")))
}

fn from_json<T: DeserializeOwned>(raw: &str) -> StoreResult<T> {
    serde_json::from_str(raw).map_err(|e| StoreError::Unavailable(format!("decode: {e}")))
}

fn body_of<T: DeserializeOwned>(item: &Item) -> StoreResult<T> {
    match item.get("body") {
        Some(AttributeValue::S(raw)) => from_json(raw),
        _ => Err(StoreError::Unavailable("item without a body".into())),
    }
}

fn number(item: &Item, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(raw)) => raw.parse().ok(),
        _ => None,
    }
}

/// A signed counter (usage items are adjusted by `ADD`, so they may dip below zero
/// around a lost item; readers clamp).
fn signed(item: &Item, name: &str) -> i64 {
    match item.get(name) {
        Some(AttributeValue::N(raw)) => raw.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A tenant's partition: its quota and usage items (the key's rest is the whole
/// tenant, so no tenant spells another's).
fn tenant_pk(tenant: &str) -> String {
    format!("TENANT#{tenant}")
}

fn blob_pk(tenant: &str, hash: &str) -> String {
    format!("BLOB#{}", pair(tenant, hash))
}

/// A short randomized pause before retrying a conflicted transaction.
async fn backoff(attempt: u32) {
    use std::hash::{BuildHasher, Hasher};
    let jitter = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % 10;
    let ms = (10u64 << attempt.min(5)) + jitter;
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

fn sort_key(item: &Item) -> &str {
    match item.get("sk") {
        Some(AttributeValue::S(sk)) => sk,
        _ => "",
    }
}

fn is_condition_failure(reason_code: Option<&str>) -> bool {
    reason_code == Some("ConditionalCheckFailed")
}

impl DynamoJobStore {
    /// `clock` decides what has expired: TTL deletes late, so reads filter.
    pub fn new(client: Client, table: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        DynamoJobStore {
            client,
            table: table.into(),
            clock,
            list_read_budget: LIST_READ_BUDGET,
        }
    }

    /// Sets the rows a label-filtered listing examines per page (tests use a small one).
    pub fn with_list_read_budget(mut self, rows: usize) -> Self {
        self.list_read_budget = rows.max(1);
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn unavailable(&self, op: &str, err: &(dyn std::error::Error + 'static)) -> StoreError {
        StoreError::Unavailable(crate::error::describe(op, &self.table, err))
    }

    /// The job's `META` item, whole (for `create_job`).
    fn job_item(&self, job: &Job) -> StoreResult<Item> {
        let mut item = key(job_pk(&job.id), "META");
        for (name, value) in job_attributes(job)? {
            if let Some(value) = value {
                item.insert(name.to_string(), value);
            }
        }
        Ok(item)
    }

    /// A job from its `META` item (outputs not attached), or None if it has expired.
    fn job_from_meta(&self, item: &Item) -> StoreResult<Option<Job>> {
        let mut job: Job = body_of(item)?;
        job.enqueued = matches!(item.get("enqueued"), Some(AttributeValue::Bool(true)));
        Ok((job.expires_at > self.clock.now()).then_some(job))
    }

    /// Every item of a job's collection, in key order (consistent).
    async fn collection(&self, id: &JobId) -> StoreResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(job_pk(id)))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.unavailable("Query job", &e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// The job (with its outputs) and its progress record, from one collection read.
    async fn read_job(&self, id: &JobId) -> StoreResult<Option<(Job, Option<ProgressRecord>)>> {
        let items = self.collection(id).await?;
        let Some(meta) = items.iter().find(|i| sort_key(i) == "META") else {
            return Ok(None);
        };
        let Some(mut job) = self.job_from_meta(meta)? else {
            return Ok(None);
        };
        let count = number(meta, "out_count").unwrap_or(0) as usize;
        let prefix = format!("OUT#{:05}#", job.attempt);
        job.outputs = items
            .iter()
            .filter(|i| sort_key(i).starts_with(&prefix))
            .take(count)
            .map(body_of::<OutputRecord>)
            .collect::<StoreResult<_>>()?;
        let progress = items
            .iter()
            .find(|i| sort_key(i) == "PROGRESS" && i.contains_key("body"))
            .map(body_of)
            .transpose()?;
        Ok(Some((job, progress)))
    }

    /// A job read from an index (which holds only `META` items), outputs attached.
    async fn attach_outputs(&self, item: &Item) -> StoreResult<Option<Job>> {
        let Some(job) = self.job_from_meta(item)? else {
            return Ok(None);
        };
        if number(item, "out_count").unwrap_or(0) == 0 {
            return Ok(Some(job));
        }
        Ok(self.read_job(&job.id).await?.map(|(job, _)| job))
    }

    async fn write_outputs(&self, job: &Job) -> StoreResult<()> {
        let mut requests = Vec::new();
        for (i, output) in job.outputs.iter().enumerate() {
            let mut item = key(job_pk(&job.id), &output_sk(job.attempt, i));
            item.insert("body".into(), s(to_json(output)?));
            item.insert("ttl".into(), n(job.expires_at.timestamp()));
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(|e| self.unavailable("BatchWriteItem outputs", &e))?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        self.batch_write("BatchWriteItem outputs", requests).await
    }

    /// Jobs in an active `status` (one partition of the sparse index) older than
    /// `below` (or all), unclaimed at `unclaimed_at` if given, counted up to `cap`
    /// (and a bounded number of pages).
    async fn count_active(
        &self,
        status: JobStatus,
        below: Option<&JobId>,
        unclaimed_at: Option<DateTime<Utc>>,
        cap: u64,
    ) -> StoreResult<u64> {
        let mut total = 0u64;
        let mut start = None;
        let mut condition = "gsi2pk = :q".to_string();
        if below.is_some() {
            condition.push_str(" AND gsi2sk < :id");
        }
        for _ in 0..READ_BUDGET_PAGES * 10 {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI2)
                .select(Select::Count)
                .key_condition_expression(&condition)
                .expression_attribute_values(":q", s(format!("ACTIVE#{}", status.as_str())))
                .set_exclusive_start_key(start);
            if let Some(id) = below {
                query = query.expression_attribute_values(":id", s(id.as_str()));
            }
            if let Some(now) = unclaimed_at {
                query = query
                    .filter_expression("attribute_not_exists(#ru) OR #ru <= :now")
                    .expression_attribute_names("#ru", "reserved_until")
                    .expression_attribute_values(":now", n(now.timestamp_millis()));
            } else {
                query = query.limit((cap - total).clamp(1, i32::MAX as u64) as i32);
            }
            let out = query
                .send()
                .await
                .map_err(|e| self.unavailable("Query active count", &e))?;
            total += out.count.max(0) as u64;
            start = out.last_evaluated_key;
            if total >= cap || start.is_none() {
                break;
            }
        }
        Ok(total.min(cap))
    }

    async fn get_item(&self, pk: String, sk: &str) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.unavailable("GetItem", &e))?;
        Ok(out.item)
    }

    async fn get_body<T: DeserializeOwned>(&self, pk: String, sk: &str) -> StoreResult<Option<T>> {
        self.get_item(pk, sk)
            .await?
            .as_ref()
            .map(body_of)
            .transpose()
    }

    async fn put_body<T: Serialize>(
        &self,
        pk: String,
        sk: &str,
        value: &T,
        extra: Vec<(&str, AttributeValue)>,
    ) -> StoreResult<()> {
        let mut item = key(pk, sk);
        item.insert("body".into(), s(to_json(value)?));
        for (name, value) in extra {
            item.insert(name.to_string(), value);
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| self.unavailable("PutItem", &e))?;
        Ok(())
    }

    async fn delete_item(&self, pk: String, sk: &str) -> StoreResult<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| self.unavailable("DeleteItem", &e))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    /// The items of one index partition (bounded by the read budget).
    async fn query_index(
        &self,
        index: &str,
        pk_name: &str,
        pk: String,
        descending: bool,
    ) -> StoreResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        for _ in 0..READ_BUDGET_PAGES {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(format!("{pk_name} = :pk"))
                .expression_attribute_values(":pk", s(pk.clone()))
                .scan_index_forward(!descending)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.unavailable("Query index", &e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(items)
    }

    /// Sends a transaction. One that another transaction held an item of
    /// (`TransactionConflict`) is retried a bounded number of times; one that a
    /// condition refused is answered with each item's reason, never as an error.
    async fn transact(&self, op: &str, items: Vec<TransactWriteItem>) -> StoreResult<Transacted> {
        for attempt in 0..TRANSACTION_TRIES {
            let err = match self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await
            {
                Ok(_) => return Ok(Transacted::Done),
                Err(e) => e,
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) =
                err.as_service_error()
            {
                let reasons = cancel.cancellation_reasons();
                if reasons.iter().any(|r| is_condition_failure(r.code())) {
                    return Ok(Transacted::Refused(
                        reasons
                            .iter()
                            .map(|r| Reason {
                                failed: is_condition_failure(r.code()),
                                old: r.item().cloned(),
                            })
                            .collect(),
                    ));
                }
                if reasons
                    .iter()
                    .any(|r| r.code() == Some("TransactionConflict"))
                    && attempt + 1 < TRANSACTION_TRIES
                {
                    backoff(attempt).await;
                    continue;
                }
            }
            return Err(self.unavailable(op, &err));
        }
        unreachable!("the last try returns")
    }

    /// `BatchWriteItem` in chunks of 25; unprocessed items (throttling) are retried a
    /// bounded number of times.
    async fn batch_write(&self, op: &str, requests: Vec<WriteRequest>) -> StoreResult<()> {
        for chunk in requests.chunks(25) {
            let mut pending = HashMap::from([(self.table.clone(), chunk.to_vec())]);
            for _ in 0..5 {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(pending))
                    .send()
                    .await
                    .map_err(|e| self.unavailable(op, &e))?;
                pending = out.unprocessed_items.unwrap_or_default();
                if pending.values().all(Vec::is_empty) {
                    break;
                }
            }
            if !pending.values().all(Vec::is_empty) {
                return Err(StoreError::Unavailable(format!(
                    "{op} on {}: throttled",
                    self.table
                )));
            }
        }
        Ok(())
    }

    /// `ADD {counter} :delta` on the tenant's usage item, unconditioned: the part of a
    /// transaction that keeps the counter in step with the write beside it.
    fn usage_delta(
        &self,
        tenant: &str,
        counter: &str,
        delta: i64,
    ) -> StoreResult<TransactWriteItem> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant), "USAGE")))
            .update_expression("ADD #c :d")
            .expression_attribute_names("#c", counter)
            .expression_attribute_values(":d", n(delta))
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems usage", &e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Part of the write that ends a job: marks its progress item `closed`, so that a
    /// runner's late progress write (it had not yet seen the cancel) is refused and the
    /// finished job's progress stays as it was. Creates a bare item if none was written.
    fn close_progress(&self, id: &JobId) -> StoreResult<TransactWriteItem> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(id), "PROGRESS")))
            .update_expression("SET #closed = :t")
            .expression_attribute_names("#closed", "closed")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems progress", &e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// The admission of one more active job: `ADD active 1` on the tenant's usage item,
    /// conditioned on the quota. The submit rate is a fixed one-second window kept in
    /// the same item (`window`, the epoch second; `in_window`, jobs recorded in it);
    /// an update cannot branch, so the branch is chosen on `seen` (the item as last
    /// read) and the condition pins the window it saw: a lost race is refused and
    /// retried on the item the refusal returns. A window ahead of `now` (another
    /// instance's clock) is taken as the current one, so windows never go back.
    fn admission(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
        quota: &TenantQuota,
        seen: Option<&Item>,
    ) -> StoreResult<TransactWriteItem> {
        let mut adds = vec!["#active :one"];
        let mut sets = Vec::new();
        let mut conditions = Vec::new();
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant), "USAGE")))
            .expression_attribute_names("#active", "active")
            .expression_attribute_values(":one", n(1))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if quota.max_active_jobs != u32::MAX {
            conditions.push("(attribute_not_exists(#active) OR #active < :max)");
            update = update.expression_attribute_values(":max", n(quota.max_active_jobs));
        }
        if quota.submits_per_second != u32::MAX {
            let second = now.timestamp();
            update = update
                .expression_attribute_names("#window", "window")
                .expression_attribute_names("#in_window", "in_window");
            let window = seen
                .and_then(|item| item.get("window"))
                .and_then(|w| match w {
                    AttributeValue::N(raw) => raw.parse::<i64>().ok(),
                    _ => None,
                });
            match window {
                Some(w) if w >= second => {
                    adds.push("#in_window :one");
                    conditions.push("#window = :w AND #in_window < :rate");
                    update = update
                        .expression_attribute_values(":w", n(w))
                        .expression_attribute_values(":rate", n(quota.submits_per_second));
                }
                Some(w) => {
                    sets.push("#window = :second, #in_window = :one");
                    conditions.push("#window = :w");
                    update = update
                        .expression_attribute_values(":w", n(w))
                        .expression_attribute_values(":second", n(second));
                }
                None => {
                    sets.push("#window = :second, #in_window = :one");
                    conditions.push("attribute_not_exists(#window)");
                    update = update.expression_attribute_values(":second", n(second));
                }
            }
        }
        let mut expression = String::new();
        if !sets.is_empty() {
            expression.push_str(&format!("SET {} ", sets.join(", ")));
        }
        expression.push_str(&format!("ADD {}", adds.join(", ")));
        let update = update
            .update_expression(expression)
            .set_condition_expression((!conditions.is_empty()).then(|| conditions.join(" AND ")))
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems admission", &e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// One move of a job: `META` replaced if its `rev` is `expected_rev` and its class
    /// (active: it carries `gsi2pk`) is `was_active`; when the class changes, the
    /// tenant's `active` count moves in the same `TransactWriteItems`, else it is one
    /// `UpdateItem`. Ok(false): the revision matched but the class did not (the caller
    /// guessed wrong); a revision that moved is `Conflict`.
    async fn move_job(&self, job: &Job, expected_rev: u64, was_active: bool) -> StoreResult<bool> {
        let mut sets = Vec::new();
        let mut removes = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for (name, value) in job_attributes(job)? {
            names.insert(format!("#{name}"), name.to_string());
            match value {
                Some(value) => {
                    sets.push(format!("#{name} = :{name}"));
                    values.insert(format!(":{name}"), value);
                }
                None => removes.push(format!("#{name}")),
            }
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        values.insert(":expected".into(), n(expected_rev));
        let condition = if was_active {
            "#rev = :expected AND attribute_exists(#gsi2pk)"
        } else {
            "#rev = :expected AND attribute_not_exists(#gsi2pk)"
        };
        let is_active = !job.status.is_terminal();
        // The stored job at `expected_rev` (so the move is not lost) in the other class.
        let other_class = |old: Option<&Item>| match old {
            Some(old) if number(old, "rev") == Some(expected_rev) => Ok(false),
            _ => Err(StoreError::Conflict),
        };
        if is_active == was_active {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(job_pk(&job.id), "META")))
                .update_expression(expression)
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            return match result {
                Ok(_) => Ok(true),
                Err(e) => match e.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(ccf)) => {
                        other_class(ccf.item())
                    }
                    _ => Err(self.unavailable("UpdateItem job", &e)),
                },
            };
        }
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(&job.id), "META")))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems job", &e))?;
        let delta = if is_active { 1 } else { -1 };
        let mut items = vec![
            TransactWriteItem::builder().update(update).build(),
            self.usage_delta(&job.tenant, "active", delta)?,
        ];
        if !is_active {
            items.push(self.close_progress(&job.id)?);
        }
        match self.transact("TransactWriteItems job", items).await? {
            Transacted::Done => Ok(true),
            refused => match refused.refused_at(0) {
                Some(old) => other_class(old),
                None => Err(StoreError::Unavailable(format!(
                    "TransactWriteItems job on {}: refused without a reason",
                    self.table
                ))),
            },
        }
    }

    /// The quota limit that `usage` (the tenant's usage item as a refusal returned it)
    /// leaves no room under, if any; None means the refusal was a lost race.
    fn refusal(usage: &Item, now: DateTime<Utc>, quota: &TenantQuota) -> Option<QuotaRefusal> {
        if quota.max_active_jobs != u32::MAX
            && signed(usage, "active") >= i64::from(quota.max_active_jobs)
        {
            return Some(QuotaRefusal::ActiveJobs {
                limit: quota.max_active_jobs,
            });
        }
        if quota.submits_per_second != u32::MAX
            && usage.contains_key("window")
            && signed(usage, "window") >= now.timestamp()
            && signed(usage, "in_window") >= i64::from(quota.submits_per_second)
        {
            return Some(QuotaRefusal::SubmitRate {
                limit: quota.submits_per_second,
            });
        }
        None
    }

    /// The idempotency record's `Put`, if its key is free (or its record expired).
    fn idempotency_put(
        &self,
        record: &IdempotencyRecord,
        now: DateTime<Utc>,
    ) -> StoreResult<TransactWriteItem> {
        let mut item = key(
            format!("IDEM#{}", pair(&record.tenant, &record.key)),
            "IDEM",
        );
        item.insert("body".into(), s(to_json(record)?));
        item.insert("expires".into(), n(record.expires_at.timestamp_millis()));
        item.insert("ttl".into(), n(record.expires_at.timestamp()));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR #expires <= :now")
            .expression_attribute_names("#expires", "expires")
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems", &e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }
}

/// Every attribute a job write sets (`None`: removed), `enqueued` excepted.
fn job_attributes(job: &Job) -> StoreResult<Vec<(&'static str, Option<AttributeValue>)>> {
    let mut body = job.clone();
    body.outputs = Vec::new();
    let active = !job.status.is_terminal();
    let labels = job
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), s(v.clone())))
        .collect::<HashMap<_, _>>();
    Ok(vec![
        ("body", Some(s(to_json(&body)?))),
        ("status", Some(s(job.status.as_str()))),
        ("rev", Some(n(job.rev))),
        ("attempt", Some(n(job.attempt))),
        ("out_count", Some(n(job.outputs.len()))),
        ("tenant", Some(s(job.tenant.clone()))),
        ("labels", Some(AttributeValue::M(labels))),
        (
            "reserved_until",
            job.reserved_until.map(|t| n(t.timestamp_millis())),
        ),
        ("ttl", Some(n(job.expires_at.timestamp()))),
        ("gsi1pk", Some(s(format!("TENANT#{}", job.tenant)))),
        ("gsi1sk", Some(s(job.id.as_str()))),
        (
            "gsi2pk",
            active.then(|| s(format!("ACTIVE#{}", job.status.as_str()))),
        ),
        ("gsi2sk", active.then(|| s(job.id.as_str()))),
    ])
}

/// Creates the table as the deployment template does (for tests and local tooling):
/// on-demand, both indexes projecting all attributes of the items that carry their
/// keys, TTL on `ttl`.
pub async fn create_table(client: &Client, table: &str) -> Result<(), aws_sdk_dynamodb::Error> {
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("name and type are set")
    };
    let schema = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("name and type are set")
    };
    let index = |name: &str, pk: &str, sk: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(schema(pk, KeyType::Hash))
            .key_schema(schema(sk, KeyType::Range))
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .expect("index fields are set")
    };
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(
            ["pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk"]
                .into_iter()
                .map(attr)
                .collect(),
        ))
        .key_schema(schema("pk", KeyType::Hash))
        .key_schema(schema("sk", KeyType::Range))
        .global_secondary_indexes(index(GSI1, "gsi1pk", "gsi1sk"))
        .global_secondary_indexes(index(GSI2, "gsi2pk", "gsi2sk"))
        .send()
        .await?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("ttl")
                .enabled(true)
                .build()
                .expect("ttl fields are set"),
        )
        .send()
        .await?;
    Ok(())
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
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(())
            }
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
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(())
            }
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
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(PutItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(self.unavailable("PutItem fleet", &e)),
        }
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
