//! Item encoding: attribute values, keys, JSON bodies, numbers, and the
//! transaction outcome a refused condition is read from.

use super::*;

/// One item's part in a transaction that a condition refused, in request order.
pub(super) struct Reason {
    /// This item's condition failed.
    pub(super) failed: bool,
    /// The item as it was (`ReturnValuesOnConditionCheckFailure = ALL_OLD`).
    pub(super) old: Option<Item>,
}

/// How a `TransactWriteItems` ended, when it reached DynamoDB.
pub(super) enum Transacted {
    Done,
    Refused(Vec<Reason>),
}

impl Transacted {
    /// The refused item at `index`, with what it held.
    pub(super) fn refused_at(&self, index: usize) -> Option<Option<&Item>> {
        match self {
            Transacted::Refused(reasons) => reasons
                .get(index)
                .filter(|r| r.failed)
                .map(|r| r.old.as_ref()),
            Transacted::Done => None,
        }
    }
}

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

/// A composite key part that cannot collide: `{len}:{a}#{b}`.
pub(super) fn pair(a: &str, b: &str) -> String {
    format!("{}:{a}#{b}", a.len())
}

pub(super) fn job_pk(id: &JobId) -> String {
    format!("JOB#{}", id.as_str())
}

pub(super) fn output_sk(attempt: u32, n: usize) -> String {
    format!("OUT#{attempt:05}#{n:04}")
}

pub(super) fn to_json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Unavailable(format!("encode: {e}")))
}

pub(super) fn from_json<T: DeserializeOwned>(raw: &str) -> StoreResult<T> {
    serde_json::from_str(raw).map_err(|e| StoreError::Unavailable(format!("decode: {e}")))
}

pub(super) fn body_of<T: DeserializeOwned>(item: &Item) -> StoreResult<T> {
    match item.get("body") {
        Some(AttributeValue::S(raw)) => from_json(raw),
        _ => Err(StoreError::Unavailable("item without a body".into())),
    }
}

pub(super) fn number(item: &Item, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(raw)) => raw.parse().ok(),
        _ => None,
    }
}

/// A signed counter (usage items are adjusted by `ADD`, so they may dip below zero
/// around a lost item; readers clamp).
pub(super) fn signed(item: &Item, name: &str) -> i64 {
    match item.get(name) {
        Some(AttributeValue::N(raw)) => raw.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A tenant's partition: its quota and usage items (the key's rest is the whole
/// tenant, so no tenant spells another's).
/// The sort key of a tenant's stream slot `index` (beside its `QUOTA` and `USAGE`).
pub(super) fn stream_sk(index: u32) -> String {
    format!("STREAM#{index:05}")
}

/// A pseudo-random index below `len` (no need for a real generator: it only spreads
/// concurrent takers over free slots).
pub(super) fn rand_index(len: usize) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    nanos % len.max(1)
}

pub(super) fn tenant_pk(tenant: &str) -> String {
    format!("TENANT#{tenant}")
}

pub(super) fn blob_pk(tenant: &str, hash: &str) -> String {
    format!("BLOB#{}", pair(tenant, hash))
}

/// A short randomized pause before retrying a conflicted transaction.
pub(super) async fn backoff(attempt: u32) {
    tokio::time::sleep(backoff_delay(attempt)).await;
}

/// "Full jitter": uniformly random in `[0, 20 ms << attempt]` (capped at 640 ms).
/// Transactions that met on a tenant's usage item (concurrent submits) then spread
/// over the whole window and seldom meet again; with a fixed delay and a few ms of
/// jitter they retried in step and met again (a 503 seen with 8 concurrent submits).
pub(super) fn backoff_delay(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let window_ms = 20u64 << attempt.min(5);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    std::time::Duration::from_millis(random % (window_ms + 1))
}

pub(super) fn sort_key(item: &Item) -> &str {
    match item.get("sk") {
        Some(AttributeValue::S(sk)) => sk,
        _ => "",
    }
}

pub(super) fn is_condition_failure(reason_code: Option<&str>) -> bool {
    reason_code == Some("ConditionalCheckFailed")
}

/// Every attribute a job write sets (`None`: removed), `enqueued` excepted.
pub(super) fn job_attributes(
    job: &Job,
) -> StoreResult<Vec<(&'static str, Option<AttributeValue>)>> {
    let mut body = job.clone();
    body.outputs = Vec::new();
    // The revision and the lease's end live in attributes of their own, outside `body`:
    // a lease renewal changes only those two, so it rewrites no attribute the tenant
    // index projects (one write unit, not two). A job read from that index is a view:
    // it carries neither (`rev` 0, no `lease_until`); decisions read the table.
    body.rev = 0;
    body.lease_until = None;
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
        ("lease_until", job.lease_until.map(|t| s(exact_time(t)))),
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

/// An instant as RFC 3339 with every digit it has, so it reads back equal.
fn exact_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Puts back what [`job_attributes`] keeps outside `body`: the revision and the
/// lease's end. An item without them (the tenant index projects neither; or written
/// before they moved out of `body`) keeps what its `body` says.
pub(super) fn restore_job_attributes(job: &mut Job, item: &Item) -> StoreResult<()> {
    if let Some(AttributeValue::N(rev)) = item.get("rev") {
        job.rev = rev.parse().map_err(|_| {
            StoreError::Unavailable(format!("job {}: unreadable rev {rev}", job.id))
        })?;
    }
    if let Some(AttributeValue::S(until)) = item.get("lease_until") {
        let until = chrono::DateTime::parse_from_rfc3339(until).map_err(|_| {
            StoreError::Unavailable(format!("job {}: unreadable lease_until {until}", job.id))
        })?;
        job.lease_until = Some(until.with_timezone(&chrono::Utc));
    }
    Ok(())
}

/// Whether a single-item write failed only because its `ConditionExpression` was
/// false: the domain's "someone else moved first", never an outage. One test for
/// every operation's error type (they all carry the service's error code).
pub(crate) fn condition_failed<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    err.as_service_error().and_then(|e| e.code()) == Some("ConditionalCheckFailedException")
}
