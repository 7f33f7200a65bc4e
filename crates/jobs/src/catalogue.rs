//! The node catalogue: what node classes, inputs and model files the runners' ComfyUI
//! offers, so that submit can refuse a graph ComfyUI would refuse before any GPU starts.
//!
//! - **Publishing** ([`publish`]): a runner reads its ComfyUI's `GET /object_info` at
//!   boot and publishes it (so does `serverless-comfyui catalogue publish`, from a file
//!   or a URL, to seed a deploy before its first GPU). The JSON is stored once per
//!   content (`catalogues/<blake3 hex>.json`, [`crate::blob_keys::catalogue`]): every
//!   runner of one image publishes the same bytes. Then a small pointer in the store
//!   moves to it ([`CatalogueRef`]: hash, size, when, from where; last writer wins:
//!   the runner that booted last names the catalogue).
//! - **Checking** ([`Catalogues::check`]): submit reads the pointer (one small read)
//!   and reuses the catalogue it parsed before while the hash is unchanged, so a
//!   submit Lambda reads and parses the megabytes once per warm instance, not per
//!   request. The check itself is ComfyUI's own ([`comfyui_graph`]); a refusal is 422
//!   `invalid_workflow` whose `details` are ComfyUI's 400 body (`error`, `node_errors`),
//!   as the v2 proxy passes them, plus the catalogue's hash.
//! - **No catalogue yet** (a fresh deploy), or one that cannot be read: submit accepts
//!   and says so in the job's `progress.message`; ComfyUI still checks at run time.
//!   Failing open is deliberate: the catalogue is an early warning, not the authority.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use comfyui_graph::ObjectInfo;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::DomainError;
use crate::model::SCHEMA_VERSION;
use crate::ports::{BlobStore, Clock, JobStore, Ports};

/// The largest catalogue accepted (a ComfyUI with many custom nodes and models
/// answers a few MB).
pub const MAX_CATALOGUE_BYTES: usize = 32 << 20;
/// A publisher's `source` is cut to this many bytes.
pub const MAX_SOURCE_BYTES: usize = 256;
/// At most this many nodes are listed in a refusal's `details.node_errors`, and at
/// most about this many bytes of them; the rest are counted in
/// `details.omitted_node_errors`.
pub const MAX_REPORTED_NODES: usize = 50;
pub const MAX_REPORTED_BYTES: usize = 32 << 10;
/// What a job accepted without a check says in its `progress.message`.
pub const UNCHECKED_MESSAGE: &str = "graph not checked before queueing: no node catalogue has been published yet (ComfyUI checks it when the job runs)";

/// The pointer to the latest catalogue: one small item in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogueRef {
    pub v: u32,
    /// `blake3:<hex>` of the stored JSON.
    pub hash: String,
    pub size_bytes: u64,
    /// How many node classes it lists.
    pub classes: u64,
    pub published_at: DateTime<Utc>,
    /// Who published it: a runner (`runner:<worker id> <ComfyUI URL>`), or the CLI
    /// (`file:<path>`, `url:<ComfyUI URL>`).
    pub source: String,
}

/// Parses, stores (once per content) and points the store at a catalogue.
/// Takes the store, the blob store and the clock rather than [`Ports`]: the CLI
/// publishes to a deployed stack without its queues.
pub async fn publish(
    store: &dyn JobStore,
    blobs: &dyn BlobStore,
    clock: &dyn Clock,
    json: &[u8],
    source: &str,
) -> Result<CatalogueRef, DomainError> {
    if json.len() > MAX_CATALOGUE_BYTES {
        return Err(DomainError::unprocessable(
            "invalid_catalogue",
            format!("the catalogue is larger than {MAX_CATALOGUE_BYTES} bytes"),
        ));
    }
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| DomainError::unprocessable("invalid_catalogue", format!("not JSON: {e}")))?;
    // Stored compact, so the same catalogue served with other whitespace hashes the same.
    let bytes = Bytes::from(serde_json::to_vec(&value).map_err(|_| DomainError::unavailable())?);
    let parsed = ObjectInfo::from_value(value)
        .map_err(|e| DomainError::unprocessable("invalid_catalogue", e.to_string()))?;
    let hash = format!("blake3:{}", blake3::hash(&bytes).to_hex());
    let key = crate::blob_keys::catalogue(&hash);
    // Written each time, not after a look: the key is the content, so a rewrite stores
    // the same bytes, and a runner's role need not tell a missing object from a
    // forbidden one (S3 answers 403 to a HEAD without ListBucket).
    blobs.put(&key, bytes.clone(), "application/json").await?;
    let pointer = CatalogueRef {
        v: SCHEMA_VERSION,
        hash,
        size_bytes: bytes.len() as u64,
        classes: parsed.len() as u64,
        published_at: clock.now(),
        source: crate::validate::clip(source, MAX_SOURCE_BYTES),
    };
    store.put_catalogue_ref(&pointer).await?;
    tracing::info!(hash = %pointer.hash, classes = pointer.classes, source = %pointer.source, "node catalogue published");
    Ok(pointer)
}

/// The latest catalogue: its pointer and its stored JSON, if one was published.
pub async fn latest_json(ports: &Ports) -> Result<Option<(CatalogueRef, Bytes)>, DomainError> {
    let Some(pointer) = ports.store.get_catalogue_ref().await? else {
        return Ok(None);
    };
    let key = crate::blob_keys::catalogue(&pointer.hash);
    Ok(ports.blobs.get(&key).await?.map(|b| (pointer, b)))
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// ComfyUI would run the whole graph.
    Passed,
    /// No catalogue to check against (or it could not be read): accepted unchecked.
    Unchecked,
}

/// The parsed latest catalogue, kept between requests while its hash is unchanged.
#[derive(Default)]
pub struct Catalogues {
    parsed: Mutex<Option<(String, Arc<ObjectInfo>)>>,
}

impl Catalogues {
    /// The latest catalogue, parsed; `None` when there is none, or it cannot be read.
    pub async fn latest(
        &self,
        ports: &Ports,
    ) -> Result<Option<(String, Arc<ObjectInfo>)>, DomainError> {
        let Some(pointer) = ports.store.get_catalogue_ref().await? else {
            return Ok(None);
        };
        if let Some((hash, parsed)) = self.lock().as_ref()
            && *hash == pointer.hash
        {
            return Ok(Some((hash.clone(), parsed.clone())));
        }
        let key = crate::blob_keys::catalogue(&pointer.hash);
        let Some(bytes) = ports.blobs.get(&key).await? else {
            tracing::warn!(hash = %pointer.hash, "the latest node catalogue's blob is missing; graphs go unchecked");
            return Ok(None);
        };
        let parsed = match ObjectInfo::from_slice(&bytes) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::warn!(hash = %pointer.hash, error = %e, "the latest node catalogue cannot be read; graphs go unchecked");
                return Ok(None);
            }
        };
        *self.lock() = Some((pointer.hash.clone(), parsed.clone()));
        Ok(Some((pointer.hash, parsed)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Arc<ObjectInfo>)>> {
        self.parsed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a graph against the latest catalogue: 422 `invalid_workflow` with
    /// ComfyUI's `error` and `node_errors` in `details` when ComfyUI would refuse it.
    pub async fn check(
        &self,
        ports: &Ports,
        graph: &Map<String, Value>,
    ) -> Result<Verdict, DomainError> {
        let Some((hash, catalogue)) = self.latest(ports).await? else {
            return Ok(Verdict::Unchecked);
        };
        match comfyui_graph::check(catalogue.as_ref(), graph) {
            None => Ok(Verdict::Passed),
            Some(body) => Err(refusal(body, &hash)),
        }
    }
}

/// The 422 for ComfyUI's 400 `body`, bounded in size.
fn refusal(body: Value, hash: &str) -> DomainError {
    let Value::Object(mut body) = body else {
        return DomainError::unavailable();
    };
    let mut error = body.remove("error").unwrap_or(Value::Null);
    clip_strings(&mut error, crate::validate::MAX_MESSAGE_BYTES);
    let all = match body.remove("node_errors") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let total = all.len();
    let mut listed = Map::new();
    let mut budget = MAX_REPORTED_BYTES;
    for (id, mut entry) in all {
        clip_strings(&mut entry, crate::validate::MAX_MESSAGE_BYTES);
        let size = serde_json::to_vec(&entry)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if listed.len() >= MAX_REPORTED_NODES || size > budget {
            break;
        }
        budget -= size;
        listed.insert(id, entry);
    }
    let message = summary(&error, &listed);
    let mut details = json!({"error": error, "node_errors": listed, "catalogue": hash});
    if listed_len(&details) < total {
        details["omitted_node_errors"] = json!(total - listed_len(&details));
    }
    DomainError::unprocessable("invalid_workflow", message).with_details(details)
}

fn listed_len(details: &Value) -> usize {
    details["node_errors"].as_object().map_or(0, Map::len)
}

/// One line a person can act on: the first node's first error, as ComfyUI words it.
fn summary(error: &Value, node_errors: &Map<String, Value>) -> String {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let first = node_errors.iter().next().and_then(|(id, entry)| {
        let e = entry.get("errors")?.get(0)?;
        Some(format!(
            "node {id} ({}): {}: {}",
            text(entry, "class_type"),
            text(e, "message"),
            text(e, "details")
        ))
    });
    let head = text(error, "message");
    let line = match first {
        Some(first) => format!("ComfyUI would refuse this workflow ({head}); {first}"),
        None => format!(
            "ComfyUI would refuse this workflow: {head} {}",
            text(error, "details")
        ),
    };
    crate::validate::clip(line.trim_end(), crate::validate::MAX_MESSAGE_BYTES)
}

/// Values echoed back (a wrong combo value can be a long string) are cut.
fn clip_strings(v: &mut Value, max: usize) {
    match v {
        Value::String(s) if s.len() > max => *s = crate::validate::clip(s, max),
        Value::Array(a) => a.iter_mut().for_each(|x| clip_strings(x, max)),
        Value::Object(m) => m.values_mut().for_each(|x| clip_strings(x, max)),
        _ => {}
    }
}
