//! `S3BlobStore` against moto_server, with the real SDK client (path-style): the
//! shared blob conformance checks, multipart streaming, and presigned URLs used over
//! HTTP.
//!
//! Where moto is kinder than S3: **it checks no signature at all** (tampered or expired
//! presigned URLs still answer 200), so the tests here only show that a presigned URL
//! reaches the right object with the right overrides; the signatures themselves are
//! unit-tested against botocore's in `src/s3.rs`. Moto also does not enforce a signed
//! `Content-Length` mismatch; S3 does.

mod common;

use std::sync::Arc;

use aws::S3BlobStore;
use aws::s3::MIN_PART_SIZE;
use bytes::Bytes;
use chrono::{Duration, Utc};
use futures::StreamExt;
use jobs::ports::{BlobStore, BlobWriteError, ByteStream, SignedAccess, SignedMethod};
use testkit::conformance;

async fn fresh_store() -> (S3BlobStore, aws_sdk_s3::Client) {
    let client = common::clients().await.s3;
    let bucket = common::unique("b");
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    (
        S3BlobStore::new(client.clone(), bucket).with_part_size(MIN_PART_SIZE),
        client,
    )
}

fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// `bytes` in 1 MiB chunks, then `tail` (an error, say).
fn chunked(bytes: &[u8], tail: Option<std::io::Error>) -> ByteStream {
    let mut chunks: Vec<Result<Bytes, std::io::Error>> = bytes
        .chunks(1024 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    if let Some(e) = tail {
        chunks.push(Err(e));
    }
    Box::pin(futures::stream::iter(chunks))
}

async fn open_uploads(client: &aws_sdk_s3::Client, bucket: &str) -> usize {
    client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .expect("list uploads")
        .uploads()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_store_conformance() {
    let (store, _) = fresh_store().await;
    conformance::blob_store(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_stream_goes_up_in_parts_and_reads_back_in_ranges() {
    let (store, client) = fresh_store().await;
    // Two full 5 MiB parts and a short last one.
    let body = pattern(2 * MIN_PART_SIZE + 123_457, 3);
    let written = store
        .put_stream(
            "outputs/j/1/big.bin",
            chunked(&body, None),
            body.len() as u64,
        )
        .await
        .unwrap();
    assert_eq!(written, body.len() as u64);
    assert_eq!(
        store.size("outputs/j/1/big.bin").await.unwrap(),
        Some(written)
    );
    let head = client
        .head_object()
        .bucket(store.bucket())
        .key("outputs/j/1/big.bin")
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap_or_default().ends_with("-3\""),
        "a multipart object of three parts, got etag {:?}",
        head.e_tag()
    );
    let first = MIN_PART_SIZE as u64 - 2;
    let read = store
        .read("outputs/j/1/big.bin", Some((first, first + 4)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.size, written, "a ranged read reports the whole size");
    let bytes: Vec<u8> = read.stream.map(|c| c.unwrap().to_vec()).concat().await;
    assert_eq!(
        bytes,
        &body[first as usize..first as usize + 5],
        "a range across parts"
    );
    assert_eq!(
        store.get("outputs/j/1/big.bin").await.unwrap().as_deref(),
        Some(&body[..])
    );
    assert_eq!(open_uploads(&client, store.bucket()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_broken_multipart_stream_leaves_the_old_blob_and_no_upload() {
    let (store, client) = fresh_store().await;
    let key = "assets/kept";
    store
        .put(key, Bytes::from_static(b"old"), "text/plain")
        .await
        .unwrap();
    let body = pattern(3 * MIN_PART_SIZE, 9);
    // Refused after two parts went up: the limit falls inside the third.
    let refused = store
        .put_stream(key, chunked(&body, None), 2 * MIN_PART_SIZE as u64 + 10)
        .await;
    assert!(
        matches!(refused, Err(BlobWriteError::TooLarge { .. })),
        "{refused:?}"
    );
    assert_eq!(store.get(key).await.unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(open_uploads(&client, store.bucket()).await, 0, "aborted");
    // The client's stream breaks after a part went up.
    let broken = store
        .put_stream(
            key,
            chunked(
                &body[..MIN_PART_SIZE + 10],
                Some(std::io::Error::other("client gone")),
            ),
            u64::MAX,
        )
        .await;
    assert!(matches!(broken, Err(BlobWriteError::Body(_))), "{broken:?}");
    assert_eq!(store.get(key).await.unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(open_uploads(&client, store.bucket()).await, 0, "aborted");
    assert_eq!(
        store.get("assets/never").await.unwrap(),
        None,
        "nothing appears at a key whose write failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_reach_the_object_with_their_overrides() {
    let (store, _) = fresh_store().await;
    let key = "outputs/job/1/fox cub.png";
    store
        .put(
            key,
            Bytes::from_static(b"png bytes"),
            "application/octet-stream",
        )
        .await
        .unwrap();
    let expires = Utc::now() + Duration::minutes(5);
    let get = SignedAccess::Get {
        content_type: Some("image/png".into()),
    };
    let url = store.presign(key, get, expires).await.unwrap().url;
    assert!(
        url.starts_with(&common::moto().endpoint),
        "path-style on moto: {url}"
    );
    assert!(url.contains("X-Amz-Signature="));
    let http = reqwest::Client::new();
    let got = http.get(&url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/png");
    assert_eq!(
        got.headers()["content-disposition"],
        "inline; filename=\"fox_cub.png\""
    );
    assert_eq!(&got.bytes().await.unwrap()[..], b"png bytes");

    let put = store
        .presign(
            "uploads/u1",
            SignedAccess::PutExact { size_bytes: 5 },
            expires,
        )
        .await
        .unwrap();
    assert_eq!(put.method, SignedMethod::Put);
    let mut request = http.put(&put.url).body("hello");
    for (name, value) in &put.headers {
        request = request.header(name, value);
    }
    let put = request.send().await.unwrap();
    assert_eq!(
        put.status(),
        200,
        "{}",
        put.text().await.unwrap_or_default()
    );
    assert_eq!(store.size("uploads/u1").await.unwrap(), Some(5));
}
