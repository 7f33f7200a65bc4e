//! The `JobStore` on DynamoDB: the design (issue 13), and [`DynamoJobStore`], which
//! implements it and passes `jobs::conformance::job_store`,
//! `stalled_runner_is_fenced` and `lease_protocol` on moto, like the SQLite store.
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
//!   terminal `REMOVE`s it, so the index holds the working set, not history.
//!
//! # Items
//!
//! A job is an **item collection** under `pk = JOB#{id}`, so one `Query` reads all of
//! it (what `GET /jobs/{id}` shows), and no item grows without bound:
//!
//! | item | `pk` | `sk` | attributes | index keys |
//! |---|---|---|---|---|
//! | job | `JOB#{id}` | `META` | `body` (the job as JSON, without outputs or `enqueued`), `status`, `rev`, `attempt`, `out_count`, `tenant`, `labels` (map), `reserved_until` (ms), `enqueued` (set only by `mark_enqueued`), `ttl` | `gsi1pk = TENANT#{tenant}`, `gsi1sk = {id}`; while active `gsi2pk = ACTIVE#{status}`, `gsi2sk = {id}` |
//! | progress | `JOB#{id}` | `PROGRESS` | `attempt`, `body` | — |
//! | output | `JOB#{id}` | `OUT#{attempt:05}#{n:04}` | `body`, `ttl` | — |
//! | idempotency | `IDEM#{len}:{tenant}#{key}` | `IDEM` | `body`, `expires` (ms), `ttl` | — |
//! | fleet | `FLEET` | `FLEET` | `body`, `rev` | — |
//! | worker | `WORKERS` | `W#{id}` | `body` | — |
//! | asset | `ASSET#{id}` | `ASSET` | `body`, `file_path` | `gsi1pk = AHASH#{len}:{tenant}#{hash}`, `gsi1sk = {created ms}#{id}` |
//! | blob record | `BLOB#{len}:{tenant}#{hash}` | `BLOB` | `body` | — |
//! | API key | `KEY#{sha256}` | `KEY` | `body` | `gsi1pk = KEYS`, `gsi1sk = {key id}` |
//! | upload | `UPLOAD#{id}` | `UPLOAD` | `body`, `ttl` | — |
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
//! | `create_job` | `TransactWriteItems`: `Put` job if `attribute_not_exists(pk)`; `Put` idempotency record if `attribute_not_exists(pk) OR expires <= :now`, with `ReturnValuesOnConditionCheckFailure = ALL_OLD`. A cancellation on the record → `KeyTaken(old record)` from the cancellation reason; on the job → `Conflict`. Then the queue position (below). |
//! | `get_job` | one `Query pk = JOB#{id}` (strongly consistent): the job and its outputs |
//! | `load_snapshot` | the same `Query` (job, progress, outputs), plus the position count while queued |
//! | `put_job` | the finishing attempt's outputs first (`BatchWriteItem` of `OUT#{attempt}#{n}`: harmless if the move then loses, since reads take only `out_count` items of the attempt the job names), then one `UpdateItem` of `META`: `SET body, status, rev, attempt, out_count, labels, reserved_until, gsi2*` (or `REMOVE gsi2pk, gsi2sk` when terminal) `IF rev = :expected`. `enqueued` is never named, so no copy read before `mark_enqueued` can clear it. The revision is bumped by every move, so one condition on it covers status, owner and attempt; a refused condition is `ConditionalCheckFailed` → `StoreError::Conflict`, never an SDK error. |
//! | `mark_enqueued` | `UpdateItem SET enqueued = true IF attribute_exists(pk)`; a refusal (unknown job) is Ok |
//! | `list_jobs` | `Query gsi1 TENANT#{tenant}`, `gsi1sk < :before`, newest first, label filters as a `FilterExpression` on `labels.#k = :v`. A filter is applied after `Limit`, so the adapter pages until the page is full or a read budget (10 pages) is spent; the API's cursor (MAC'd, as today) carries the last id returned |
//! | `jobs_in_status` | `Query gsi2 ACTIVE#{status}`, oldest first, `Limit`. Terminal statuses are not indexed: asking for one is an error (`Unavailable`), never a Scan |
//! | `queue_position` | `Query gsi2 ACTIVE#queued`, `gsi2sk < :id`, `Select = COUNT`, `Limit = cap` (ids grow with time: older means ahead) |
//! | `count_unclaimed_queued` | the same partition with `FilterExpression attribute_not_exists(reserved_until) OR reserved_until <= :now`, paged until `cap` or the end |
//! | `put_progress` / `get_progress` | `UpdateItem PROGRESS IF attribute_not_exists(attempt) OR attempt <= :attempt` (a refusal means a later attempt wrote: dropped, Ok) / `GetItem` |
//! | `get_fleet` / `put_fleet` | `GetItem` / `PutItem IF rev = :expected` (`attribute_not_exists(pk)` for 0) |
//! | workers | `PutItem` / `DeleteItem` / `Query pk = WORKERS` |
//! | assets | `PutItem` / `GetItem` / `DeleteItem ReturnValues=ALL_OLD`; `find_asset`: `Query gsi1 AHASH#…`, newest first, the first with that `file_path` |
//! | blob records | `PutItem IF attribute_not_exists(pk)`; `ALL_OLD` on refusal gives the record that stands |
//! | API keys | `PutItem` / `GetItem KEY#{hash}` / `Query gsi1 KEYS` |
//! | uploads | `PutItem` / `GetItem` / `DeleteItem` |
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
//! - The progress and worker items carry no `ttl` yet (progress does not know its
//!   job's retention; workers need a heartbeat grace to be chosen).
//! - The stream and quota counters that must hold across Lambda instances (one
//!   `UpdateItem ADD` per counter item, conditioned on the cap), and
//!   `serverless-comfyui keys create|list|revoke --table NAME` over the `KEY#` items.
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
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, Put, PutRequest, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, Select, TimeToLiveSpecification,
    TransactWriteItem, WriteRequest,
};
use chrono::{DateTime, Utc};
use jobs::model::{
    ApiKeyRecord, Asset, BlobRecord, IdempotencyRecord, Job, JobId, JobStatus, OutputRecord,
    ProgressRecord, UploadRecord,
};
use jobs::ports::{
    Clock, CreateOutcome, Fleet, JobSnapshot, JobStore, ListQuery, QUEUE_POSITION_CAP, StoreError,
    StoreResult, WorkerRecord,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

type Item = HashMap<String, AttributeValue>;

/// The tenant index (jobs by tenant, assets by hash, API keys).
pub const GSI1: &str = "gsi1";
/// The sparse index of active jobs.
pub const GSI2: &str = "gsi2";
/// Pages a filtered read may spend before answering with what it has.
const READ_BUDGET_PAGES: usize = 10;

/// The `JobStore` on one DynamoDB table.
#[derive(Clone)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
    clock: Arc<dyn Clock>,
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
        }
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
            .find(|i| sort_key(i) == "PROGRESS")
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
        for chunk in requests.chunks(25) {
            let mut pending = HashMap::from([(self.table.clone(), chunk.to_vec())]);
            // Unprocessed items (throttling) are retried a bounded number of times.
            for _ in 0..5 {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(pending))
                    .send()
                    .await
                    .map_err(|e| self.unavailable("BatchWriteItem outputs", &e))?;
                pending = out.unprocessed_items.unwrap_or_default();
                if pending.values().all(Vec::is_empty) {
                    break;
                }
            }
            if !pending.values().all(Vec::is_empty) {
                return Err(StoreError::Unavailable(format!(
                    "BatchWriteItem outputs on {}: throttled",
                    self.table
                )));
            }
        }
        Ok(())
    }

    /// Queued jobs older than `below` (or all), unclaimed at `unclaimed_at` if given,
    /// counted up to `cap`.
    async fn count_queued(
        &self,
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
                .expression_attribute_values(":q", s("ACTIVE#queued"))
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
                .map_err(|e| self.unavailable("Query queued", &e))?;
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
    async fn create_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyRecord>,
        now: DateTime<Utc>,
    ) -> StoreResult<CreateOutcome> {
        let job_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.job_item(job)?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems", &e))?;
        let mut request = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(job_put).build());
        if let Some(record) = idempotency {
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
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .build()
                .map_err(|e| self.unavailable("TransactWriteItems", &e))?;
            request = request.transact_items(TransactWriteItem::builder().put(put).build());
        }
        if let Err(e) = request.send().await {
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) =
                e.as_service_error()
            {
                let reasons = cancel.cancellation_reasons();
                if let Some(taken) = reasons.get(1)
                    && is_condition_failure(taken.code())
                    && let Some(old) = taken.item()
                {
                    return Ok(CreateOutcome::KeyTaken(body_of(old)?));
                }
                if reasons
                    .first()
                    .is_some_and(|r| is_condition_failure(r.code()))
                {
                    return Err(StoreError::Conflict);
                }
            }
            return Err(self.unavailable("TransactWriteItems", &e));
        }
        let queue_position = if job.status == JobStatus::Queued {
            self.count_queued(Some(&job.id), None, QUEUE_POSITION_CAP)
                .await?
        } else {
            0
        };
        Ok(CreateOutcome::Created { queue_position })
    }

    async fn get_job(&self, id: &JobId) -> StoreResult<Option<Job>> {
        Ok(self.read_job(id).await?.map(|(job, _)| job))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, job = %job.id.as_str()))]
    async fn put_job(&self, job: &Job, expected_rev: u64) -> StoreResult<()> {
        self.write_outputs(job).await?;
        let mut sets = Vec::new();
        let mut removes = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for (i, (name, value)) in job_attributes(job)?.into_iter().enumerate() {
            names.insert(format!("#a{i}"), name.to_string());
            match value {
                Some(value) => {
                    sets.push(format!("#a{i} = :v{i}"));
                    values.insert(format!(":v{i}"), value);
                }
                None => removes.push(format!("#a{i}")),
            }
        }
        let mut update = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            update.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        names.insert("#rev".into(), "rev".into());
        values.insert(":expected".into(), n(expected_rev));
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(&job.id), "META")))
            .update_expression(update)
            .condition_expression("#rev = :expected")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(self.unavailable("UpdateItem job", &e)),
        }
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
        for _ in 0..READ_BUDGET_PAGES {
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
                .limit(query.limit.clamp(1, 1000) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.unavailable("Query tenant jobs", &e))?;
            for item in out.items.unwrap_or_default() {
                if jobs.len() < query.limit
                    && let Some(job) = self.attach_outputs(&item).await?
                {
                    jobs.push(job);
                }
            }
            start = out.last_evaluated_key;
            if jobs.len() >= query.limit || start.is_none() {
                break;
            }
        }
        Ok(jobs)
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
        self.count_queued(Some(id), None, cap).await
    }

    async fn count_unclaimed_queued(&self, now: DateTime<Utc>, cap: u64) -> StoreResult<u64> {
        self.count_queued(None, Some(now), cap).await
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
            Some(self.count_queued(Some(id), None, position_cap).await?)
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
            .condition_expression("attribute_not_exists(#attempt) OR #attempt <= :a")
            .expression_attribute_names("#body", "body")
            .expression_attribute_names("#attempt", "attempt")
            .expression_attribute_values(":b", s(to_json(record)?))
            .expression_attribute_values(":a", n(record.attempt))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // A later attempt's progress is there: this one is stale, dropped.
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
        self.get_body(job_pk(id), "PROGRESS").await
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
        self.get_body(format!("BLOB#{}", pair(tenant, hash)), "BLOB")
            .await
    }

    async fn put_blob_record_if_absent(
        &self,
        record: &BlobRecord,
    ) -> StoreResult<(BlobRecord, bool)> {
        let mut item = key(
            format!("BLOB#{}", pair(&record.tenant, &record.hash)),
            "BLOB",
        );
        item.insert("body".into(), s(to_json(record)?));
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok((record.clone(), true)),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(ccf)) => match ccf.item() {
                    Some(old) => Ok((body_of(old)?, false)),
                    None => Err(StoreError::Conflict),
                },
                _ => Err(self.unavailable("PutItem blob record", &e)),
            },
        }
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

    async fn put_upload(&self, upload: &UploadRecord) -> StoreResult<()> {
        self.put_body(
            format!("UPLOAD#{}", upload.id),
            "UPLOAD",
            upload,
            vec![("ttl", n(upload.expires_at.timestamp()))],
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

    async fn ping(&self) -> StoreResult<()> {
        self.get_item("FLEET".into(), "FLEET").await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "dynamodb"
    }
}
