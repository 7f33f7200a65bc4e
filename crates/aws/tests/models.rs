//! The runner's model sync (`gpu_runner::models`) over S3 on moto_server, with the real
//! SDK client: the first sync downloads in ranged parts, the second downloads nothing,
//! a changed object downloads again, a truncated local file is replaced. Requests and
//! bytes are counted at the `ModelSource` seam, around the S3 implementation.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use aws::S3Models;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use bytes::Bytes;
use futures::StreamExt;
use gpu_runner::aws_env::{ModelsSettings, S3ModelSource, sync_models};
use gpu_runner::models::{ModelSource, RemoteObject, SyncOptions};
use jobs::ports::{ByteStream, StoreError};

const MIB: usize = 1024 * 1024;

/// Counts ranged reads and the bytes they bring.
struct Counting {
    inner: S3ModelSource,
    ranges: Arc<AtomicUsize>,
    bytes: Arc<AtomicU64>,
}

#[async_trait]
impl ModelSource for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn stat(&self, key: &str) -> Result<Option<RemoteObject>, StoreError> {
        self.inner.stat(key).await
    }
    async fn read_range(
        &self,
        key: &str,
        first: u64,
        last: u64,
        etag: &str,
    ) -> Result<ByteStream, StoreError> {
        self.ranges.fetch_add(1, Ordering::SeqCst);
        let bytes = self.bytes.clone();
        let stream = self.inner.read_range(key, first, last, etag).await?;
        Ok(Box::pin(stream.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        })))
    }
    async fn read_small(&self, key: &str, max_bytes: u64) -> Result<Option<Bytes>, StoreError> {
        self.inner.read_small(key, max_bytes).await
    }
}

fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

async fn put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(SdkByteStream::from(body))
        .send()
        .await
        .expect("put object");
}

const MANIFEST: &str = "
models:
  - key: models/checkpoints/base.safetensors
    folder: checkpoints
  - key: models/loras/detail.safetensors
    folder: loras
    name: detail-v2.safetensors
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_downloads_once_and_then_only_what_changed_or_broke() {
    let client = common::clients().await.s3;
    let bucket = common::unique("models");
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    let base = pattern(3 * MIB + 123, 1);
    let lora = pattern(MIB / 2, 2);
    put(
        &client,
        &bucket,
        "models/checkpoints/base.safetensors",
        base.clone(),
    )
    .await;
    put(
        &client,
        &bucket,
        "models/loras/detail.safetensors",
        lora.clone(),
    )
    .await;
    put(
        &client,
        &bucket,
        "models/models.yaml",
        MANIFEST.as_bytes().to_vec(),
    )
    .await;

    let cache = tempfile::tempdir().unwrap();
    let ranges = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let source: Arc<dyn ModelSource> = Arc::new(Counting {
        inner: S3ModelSource(S3Models::new(client.clone(), &bucket)),
        ranges: ranges.clone(),
        bytes: bytes.clone(),
    });
    let settings = ModelsSettings {
        cache: cache.path().to_path_buf(),
        manifest_key: "models/models.yaml".into(),
    };
    let options = SyncOptions {
        part_size: MIB as u64,
        concurrency: 3,
        ..SyncOptions::default()
    };
    let base_path = cache.path().join("models/checkpoints/base.safetensors");
    let lora_path = cache.path().join("models/loras/detail-v2.safetensors");

    let first = sync_models(source.clone(), &settings, &options)
        .await
        .unwrap();
    assert_eq!((first.downloaded, first.up_to_date), (2, 0), "{first:?}");
    assert_eq!(std::fs::read(&base_path).unwrap(), base);
    assert_eq!(std::fs::read(&lora_path).unwrap(), lora);
    // 3 MiB + 123 bytes in 1 MiB parts: four ranged GETs; the LoRA: one.
    assert_eq!(ranges.load(Ordering::SeqCst), 5);
    assert_eq!(
        bytes.load(Ordering::SeqCst),
        (base.len() + lora.len()) as u64
    );

    let second = sync_models(source.clone(), &settings, &options)
        .await
        .unwrap();
    assert_eq!((second.downloaded, second.up_to_date), (0, 2), "{second:?}");
    assert_eq!(ranges.load(Ordering::SeqCst), 5, "no byte downloaded again");

    // Replaced in the bucket with the same size: a new ETag, downloaded again.
    let lora2 = pattern(MIB / 2, 7);
    put(
        &client,
        &bucket,
        "models/loras/detail.safetensors",
        lora2.clone(),
    )
    .await;
    let third = sync_models(source.clone(), &settings, &options)
        .await
        .unwrap();
    assert_eq!((third.downloaded, third.up_to_date), (1, 1), "{third:?}");
    assert_eq!(std::fs::read(&lora_path).unwrap(), lora2);
    assert_eq!(ranges.load(Ordering::SeqCst), 6);

    // A truncated local file (a crash, a full disk) is replaced.
    std::fs::write(&base_path, &base[..1000]).unwrap();
    let fourth = sync_models(source.clone(), &settings, &options)
        .await
        .unwrap();
    assert_eq!((fourth.downloaded, fourth.up_to_date), (1, 1), "{fourth:?}");
    assert_eq!(std::fs::read(&base_path).unwrap(), base);
    assert_eq!(ranges.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_manifest_syncs_nothing_and_a_missing_model_is_a_reason_to_refuse() {
    let client = common::clients().await.s3;
    let bucket = common::unique("models");
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    let cache = tempfile::tempdir().unwrap();
    let source: Arc<dyn ModelSource> =
        Arc::new(S3ModelSource(S3Models::new(client.clone(), &bucket)));
    let settings = ModelsSettings {
        cache: cache.path().to_path_buf(),
        manifest_key: "models/models.yaml".into(),
    };
    let none = sync_models(source.clone(), &settings, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(none.files, 0);

    put(
        &client,
        &bucket,
        "models/models.yaml",
        MANIFEST.as_bytes().to_vec(),
    )
    .await;
    put(
        &client,
        &bucket,
        "models/checkpoints/base.safetensors",
        pattern(1000, 3),
    )
    .await;
    let why = sync_models(source.clone(), &settings, &SyncOptions::default())
        .await
        .unwrap_err();
    assert!(
        why.contains("1 of 2 models did not sync")
            && why.contains("models/loras/detail.safetensors"),
        "{why}"
    );

    put(
        &client,
        &bucket,
        "models/models.yaml",
        b"models:\n  - key: elsewhere/x\n    folder: vae\n".to_vec(),
    )
    .await;
    let why = sync_models(source, &settings, &SyncOptions::default())
        .await
        .unwrap_err();
    assert!(why.contains("under models/"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_read_of_a_changed_object_is_refused() {
    let client = common::clients().await.s3;
    let bucket = common::unique("models");
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    let models = S3Models::new(client.clone(), &bucket);
    put(
        &client,
        &bucket,
        "models/vae/a.safetensors",
        pattern(2000, 1),
    )
    .await;
    let old = models
        .stat("models/vae/a.safetensors")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.size, 2000);
    let mut part = models
        .read_range("models/vae/a.safetensors", 100, 199, &old.etag)
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = part.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, pattern(2000, 1)[100..200]);
    put(
        &client,
        &bucket,
        "models/vae/a.safetensors",
        pattern(2000, 2),
    )
    .await;
    assert!(matches!(
        models
            .read_range("models/vae/a.safetensors", 0, 99, &old.etag)
            .await,
        Err(StoreError::Conflict)
    ));
    assert!(models.stat("models/vae/none").await.unwrap().is_none());
    // A key that is only a prefix of an object's key is no object.
    assert!(models.stat("models/vae/a").await.unwrap().is_none());
    assert!(
        models
            .read_small("models/vae/a.safetensors", 100)
            .await
            .is_err(),
        "over the cap"
    );
}
