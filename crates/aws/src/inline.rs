//! Small job inputs kept in the DynamoDB table instead of S3: [`InlineInputs`], a
//! `BlobStore` that wraps the S3 one.
//!
//! **Why.** Every job writes its workflow once (`submit`) and reads it once per attempt
//! (the runner). On S3 that is a PUT ($0.005 per 1,000) and a GET ($0.0004 per 1,000):
//! the largest per-job charge after the runner's own writes. A DynamoDB item of up to
//! [`INLINE_MAX_BYTES`] costs at most 4 write units ($0.0025 per 1,000 at $0.625 per
//! million) and one strongly consistent read unit ($0.000125 per 1,000).
//!
//! **The threshold, 4 KiB.** Write units are billed per started KiB and an S3 PUT costs
//! as much as 8 of them, so inlining pays up to about 8 KiB on requests alone; at 4 KiB
//! it costs at most half the PUT, the read stays one read unit (4 KiB), and the item's
//! storage ($0.25 per GB-month against S3's $0.023, for the retention's 7 days by
//! default) stays below $0.0003 per 1,000 jobs. Larger inputs go to S3 as before, so the
//! 400 KB item limit never caps a workflow. Most API-format workflows are 1-4 KiB (the
//! project's examples: 0.2-1.1 KiB).
//!
//! **What is inlined.** Only keys under `jobs::blob_keys::INPUTS`, written whole with
//! `put`, up to the threshold. Every other key, and every streamed write, goes to the
//! wrapped store untouched.
//!
//! **The item.** `pk = INLINE#{key}`, `sk = INLINE`, `bytes` (binary), `content_type`,
//! and `ttl` = the write time plus the retention (the S3 lifecycle rule on `inputs/`
//! expires the large ones on the same schedule). It lives in its own partition, not in
//! the job's item collection, so the job's `Query` (what every status poll reads) does
//! not grow with its workflow.
//!
//! **Reads** look for the item first (a `GetItem`, consistent), then at S3. A large
//! write deletes the item after its S3 PUT, so the newest write wins either way. An
//! input key is written once per job (its id is fresh), so the window a crash leaves
//! between those two writes (a stale small input shadowing a large rewrite) cannot
//! arise from the product's own writes.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use jobs::blob_keys::INPUTS;
use jobs::ports::{
    BlobRead, BlobStore, BlobWriteError, ByteStream, SignedAccess, SignedRequest, StoreError,
    StoreResult,
};

/// The largest input kept in the table (see the module docs for the figure's reason).
pub const INLINE_MAX_BYTES: usize = 4 * 1024;

/// A `BlobStore` that keeps small job inputs in the DynamoDB table and everything
/// else in the wrapped store (S3).
#[derive(Clone)]
pub struct InlineInputs {
    inner: Arc<dyn BlobStore>,
    client: Client,
    table: String,
    /// `None`: a reader (the runner), which never inlines what it writes.
    retention: Option<chrono::Duration>,
}

impl InlineInputs {
    /// `retention`: how long an inlined input is kept (the table's TTL deletes it
    /// after; the job's own retention).
    pub fn new(
        inner: Arc<dyn BlobStore>,
        client: Client,
        table: impl Into<String>,
        retention: chrono::Duration,
    ) -> Self {
        InlineInputs {
            inner,
            client,
            table: table.into(),
            retention: Some(retention),
        }
    }

    /// One that reads inlined inputs but writes every blob to `inner`: for a process
    /// that never writes inputs and has no retention to give them (the runner).
    pub fn reading(inner: Arc<dyn BlobStore>, client: Client, table: impl Into<String>) -> Self {
        InlineInputs {
            inner,
            client,
            table: table.into(),
            retention: None,
        }
    }

    fn key(blob_key: &str) -> std::collections::HashMap<String, AttributeValue> {
        std::collections::HashMap::from([
            (
                "pk".to_string(),
                AttributeValue::S(format!("INLINE#{blob_key}")),
            ),
            ("sk".to_string(), AttributeValue::S("INLINE".into())),
        ])
    }

    fn unavailable(&self, op: &str, err: &(dyn std::error::Error + 'static)) -> StoreError {
        StoreError::Unavailable(crate::error::describe(op, &self.table, err))
    }

    /// The inlined bytes of `key`, if it is an input key and inlined.
    async fn inlined(&self, key: &str) -> StoreResult<Option<Bytes>> {
        if !key.starts_with(INPUTS) {
            return Ok(None);
        }
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.unavailable("GetItem inline input", &e))?;
        Ok(match out.item.as_ref().and_then(|i| i.get("bytes")) {
            Some(AttributeValue::B(blob)) => Some(Bytes::copy_from_slice(blob.as_ref())),
            _ => None,
        })
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        if !key.starts_with(INPUTS) {
            return Ok(());
        }
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(key)))
            .send()
            .await
            .map_err(|e| self.unavailable("DeleteItem inline input", &e))?;
        Ok(())
    }
}

#[async_trait]
impl BlobStore for InlineInputs {
    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, key))]
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> StoreResult<()> {
        let retention = match self.retention {
            Some(r) if key.starts_with(INPUTS) && bytes.len() <= INLINE_MAX_BYTES => r,
            _ => {
                self.inner.put(key, bytes, content_type).await?;
                // A large rewrite must not be shadowed by an older small one.
                return self.forget(key).await;
            }
        };
        let ttl = (Utc::now() + retention).timestamp();
        let mut item = Self::key(key);
        item.insert("bytes".into(), AttributeValue::B(Blob::new(bytes.to_vec())));
        item.insert(
            "content_type".into(),
            AttributeValue::S(content_type.into()),
        );
        item.insert("ttl".into(), AttributeValue::N(ttl.to_string()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| self.unavailable("PutItem inline input", &e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        match self.inlined(key).await? {
            Some(bytes) => Ok(Some(bytes)),
            None => self.inner.get(key).await,
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.forget(key).await?;
        self.inner.delete(key).await
    }

    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        max_bytes: u64,
    ) -> Result<u64, BlobWriteError> {
        let written = self.inner.put_stream(key, body, max_bytes).await?;
        self.forget(key).await?;
        Ok(written)
    }

    async fn read(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<Option<BlobRead>> {
        let Some(bytes) = self.inlined(key).await? else {
            return self.inner.read(key, range).await;
        };
        let size = bytes.len() as u64;
        let part = match range {
            None => bytes,
            Some((first, last)) if first < size && first <= last => {
                bytes.slice(first as usize..=(last.min(size - 1) as usize))
            }
            Some(_) => Bytes::new(),
        };
        Ok(Some(BlobRead {
            size,
            stream: Box::pin(futures::stream::iter([Ok(part)])),
        }))
    }

    async fn size(&self, key: &str) -> StoreResult<Option<u64>> {
        match self.inlined(key).await? {
            Some(bytes) => Ok(Some(bytes.len() as u64)),
            None => self.inner.size(key).await,
        }
    }

    async fn rename(&self, from: &str, to: &str) -> StoreResult<()> {
        match self.inlined(from).await? {
            Some(bytes) => {
                self.put(to, bytes, "application/octet-stream").await?;
                self.forget(from).await
            }
            None => self.inner.rename(from, to).await,
        }
    }

    async fn presign(
        &self,
        key: &str,
        access: SignedAccess,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<SignedRequest> {
        // Inputs are never served by URL; every other key is the wrapped store's.
        self.inner.presign(key, access, expires_at).await
    }

    async fn bytes_used(&self) -> StoreResult<Option<u64>> {
        self.inner.bytes_used().await
    }

    async fn expire_prefix(
        &self,
        prefix: &str,
        older_than: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<usize> {
        self.inner.expire_prefix(prefix, older_than, limit).await
    }

    async fn reclaim(&self) -> StoreResult<()> {
        self.inner.reclaim().await
    }
}
