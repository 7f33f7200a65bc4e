//! `InlineInputs` (small job inputs in the table, the rest in S3) on moto: the blob
//! conformance checks through it, and where each input lands.

mod common;

use std::sync::Arc;

use aws::dynamodb::create_table;
use aws::inline::INLINE_MAX_BYTES;
use aws::{InlineInputs, S3BlobStore};
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use futures::StreamExt;
use jobs::ports::BlobStore;
use testkit::conformance;

struct Fixture {
    store: InlineInputs,
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    bucket: String,
    table: String,
}

async fn fixture() -> Fixture {
    let clients = common::clients().await;
    let bucket = common::unique("b");
    clients
        .s3
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    let table = common::unique("t");
    create_table(&clients.dynamodb, &table)
        .await
        .expect("create table");
    let s3_store = Arc::new(S3BlobStore::new(clients.s3.clone(), bucket.clone()));
    Fixture {
        store: InlineInputs::new(
            s3_store,
            clients.dynamodb.clone(),
            table.clone(),
            chrono::Duration::days(7),
        ),
        s3: clients.s3,
        dynamodb: clients.dynamodb,
        bucket,
        table,
    }
}

impl Fixture {
    async fn in_s3(&self, key: &str) -> bool {
        self.s3
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .is_ok()
    }

    async fn in_table(&self, key: &str) -> Option<i64> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("INLINE#{key}")))
            .key("sk", AttributeValue::S("INLINE".into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item?;
        match item.get("ttl") {
            Some(AttributeValue::N(ttl)) => ttl.parse().ok(),
            _ => Some(0),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_inputs_keep_every_blob_promise() {
    let f = fixture().await;
    conformance::blob_store(Arc::new(f.store.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_input_lives_in_the_table_and_a_large_one_in_s3() {
    let f = fixture().await;
    let small_key = jobs::blob_keys::input(&"job-small");
    let small = Bytes::from(vec![b'{'; INLINE_MAX_BYTES]);
    f.store
        .put(&small_key, small.clone(), "application/json")
        .await
        .unwrap();
    assert!(!f.in_s3(&small_key).await, "no S3 PUT for a small input");
    let ttl = f.in_table(&small_key).await.expect("an item");
    let week = (chrono::Utc::now() + chrono::Duration::days(7)).timestamp();
    assert!((week - ttl).abs() < 60, "expires with the retention");
    assert_eq!(f.store.get(&small_key).await.unwrap(), Some(small.clone()));
    assert_eq!(
        f.store.size(&small_key).await.unwrap(),
        Some(INLINE_MAX_BYTES as u64)
    );
    let read = f
        .store
        .read(&small_key, Some((1, 3)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.size, INLINE_MAX_BYTES as u64);
    let part: Vec<Bytes> = read.stream.map(|c| c.unwrap()).collect().await;
    assert_eq!(part.concat(), b"{{{".to_vec());

    // One byte over: S3, and the table holds nothing (a rewrite removes the small one).
    let large = Bytes::from(vec![b'['; INLINE_MAX_BYTES + 1]);
    f.store
        .put(&small_key, large.clone(), "application/json")
        .await
        .unwrap();
    assert!(f.in_s3(&small_key).await);
    assert_eq!(f.in_table(&small_key).await, None);
    assert_eq!(f.store.get(&small_key).await.unwrap(), Some(large));

    // Small again: the table's copy wins over the older S3 object.
    f.store
        .put(&small_key, small.clone(), "application/json")
        .await
        .unwrap();
    assert_eq!(f.store.get(&small_key).await.unwrap(), Some(small));

    f.store.delete(&small_key).await.unwrap();
    assert_eq!(f.in_table(&small_key).await, None);
    assert!(!f.in_s3(&small_key).await);
    assert_eq!(f.store.get(&small_key).await.unwrap(), None);

    // Other prefixes are S3's, however small.
    let output = jobs::blob_keys::output(&"job-small", 1, "9", "a.png");
    f.store
        .put(&output, Bytes::from_static(b"png"), "image/png")
        .await
        .unwrap();
    assert!(f.in_s3(&output).await);
    assert_eq!(f.in_table(&output).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_reads_inlined_inputs_but_never_inlines() {
    let f = fixture().await;
    let key = jobs::blob_keys::input(&"job-read");
    f.store
        .put(&key, Bytes::from_static(b"{}"), "application/json")
        .await
        .unwrap();
    let reader = InlineInputs::reading(
        Arc::new(S3BlobStore::new(f.s3.clone(), f.bucket.clone())),
        f.dynamodb.clone(),
        f.table.clone(),
    );
    assert_eq!(
        reader.get(&key).await.unwrap(),
        Some(Bytes::from_static(b"{}"))
    );
    let other = jobs::blob_keys::input(&"job-written-by-a-reader");
    reader
        .put(&other, Bytes::from_static(b"{}"), "application/json")
        .await
        .unwrap();
    assert!(f.in_s3(&other).await);
    assert_eq!(f.in_table(&other).await, None);
}
