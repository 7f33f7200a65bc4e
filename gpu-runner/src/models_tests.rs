//! The manifest's rules and the sync's decisions, against an in-memory source that
//! counts what is asked of it. The same sync runs against S3 on moto in
//! crates/aws/tests/models.rs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use super::*;

#[derive(Default)]
struct Memory {
    objects: Mutex<HashMap<String, (Bytes, String)>>,
    ranges: AtomicUsize,
    bytes: AtomicU64,
}

impl Memory {
    fn put(&self, key: &str, body: &[u8]) {
        let etag = format!("\"{}\"", blake3::hash(body).to_hex());
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_string(), (Bytes::copy_from_slice(body), etag));
    }
}

#[async_trait]
impl ModelSource for Memory {
    fn describe(&self) -> String {
        "memory".into()
    }
    async fn stat(&self, key: &str) -> Result<Option<RemoteObject>, StoreError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(b, e)| RemoteObject {
                size: b.len() as u64,
                etag: e.clone(),
            }))
    }
    async fn read_range(
        &self,
        key: &str,
        first: u64,
        last: u64,
        etag: &str,
    ) -> Result<ByteStream, StoreError> {
        let (body, current) = self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or(StoreError::Conflict)?;
        if current != etag {
            return Err(StoreError::Conflict);
        }
        self.ranges.fetch_add(1, Ordering::Relaxed);
        let slice = body.slice(first as usize..=last as usize);
        self.bytes.fetch_add(slice.len() as u64, Ordering::Relaxed);
        // Two chunks, as a network body would come.
        let mid = slice.len() / 2;
        let chunks = vec![Ok(slice.slice(..mid)), Ok(slice.slice(mid..))];
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
    async fn read_small(&self, key: &str, _max: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(b, _)| b.clone()))
    }
}

fn body(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn options() -> SyncOptions {
    SyncOptions {
        part_size: 1000,
        concurrency: 3,
        ..SyncOptions::default()
    }
}

const MANIFEST: &str = "
models:
  - key: models/checkpoints/base.safetensors
    folder: checkpoints
  - key: models/loras/detail.safetensors
    folder: loras
    name: detail-v2.safetensors
";

#[tokio::test]
async fn the_sync_downloads_once_then_only_what_changed_or_broke() {
    let source = Arc::new(Memory::default());
    let base = body(4500, 1);
    let lora = body(999, 2);
    source.put("models/checkpoints/base.safetensors", &base);
    source.put("models/loras/detail.safetensors", &lora);
    let manifest = ModelsManifest::parse(MANIFEST).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let base_path = cache.path().join("models/checkpoints/base.safetensors");
    let lora_path = cache.path().join("models/loras/detail-v2.safetensors");

    let first = sync(source.clone(), &manifest, cache.path(), &options()).await;
    assert_eq!((first.downloaded, first.up_to_date), (2, 0), "{first:?}");
    assert!(first.failed.is_empty());
    assert_eq!(first.bytes_downloaded, 5499);
    assert_eq!(std::fs::read(&base_path).unwrap(), base);
    assert_eq!(std::fs::read(&lora_path).unwrap(), lora);
    // 4500 bytes in parts of 1000: five ranged reads; 999 bytes: one.
    assert_eq!(source.ranges.load(Ordering::Relaxed), 6);
    assert_eq!(source.bytes.load(Ordering::Relaxed), 5499);
    // Nothing half-written is left.
    let tmp = cache.path().join(".sync/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

    let second = sync(source.clone(), &manifest, cache.path(), &options()).await;
    assert_eq!((second.downloaded, second.up_to_date), (0, 2), "{second:?}");
    assert_eq!(
        source.ranges.load(Ordering::Relaxed),
        6,
        "nothing read again"
    );

    // A changed object (same size, new ETag) downloads again; the other stays.
    let lora2 = body(999, 9);
    source.put("models/loras/detail.safetensors", &lora2);
    let third = sync(source.clone(), &manifest, cache.path(), &options()).await;
    assert_eq!((third.downloaded, third.up_to_date), (1, 1), "{third:?}");
    assert_eq!(std::fs::read(&lora_path).unwrap(), lora2);
    assert_eq!(source.bytes.load(Ordering::Relaxed), 5499 + 999);

    // A truncated file (a crash, a full disk) is replaced.
    std::fs::write(&base_path, &base[..100]).unwrap();
    let fourth = sync(source.clone(), &manifest, cache.path(), &options()).await;
    assert_eq!((fourth.downloaded, fourth.up_to_date), (1, 1), "{fourth:?}");
    assert_eq!(std::fs::read(&base_path).unwrap(), base);

    // A file of the right size whose sidecar is gone (a crash between the rename and
    // the sidecar) is not trusted.
    std::fs::remove_file(cache.path().join(".sync/checkpoints/base.safetensors.json")).unwrap();
    let fifth = sync(source.clone(), &manifest, cache.path(), &options()).await;
    assert_eq!(fifth.downloaded, 1, "{fifth:?}");
}

#[tokio::test]
async fn a_missing_object_fails_alone() {
    let source = Arc::new(Memory::default());
    source.put("models/checkpoints/base.safetensors", &body(10, 1));
    let manifest = ModelsManifest::parse(MANIFEST).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let report = sync(source, &manifest, cache.path(), &options()).await;
    assert_eq!(report.downloaded, 1);
    assert_eq!(
        report.failed,
        ["models/loras/detail.safetensors: no such object"]
    );
}

#[test]
fn bad_manifests_are_refused_with_the_reason() {
    let cases = [
        (
            "models:\n  - key: checkpoints/a.safetensors\n    folder: checkpoints\n",
            "under models/",
        ),
        (
            "models:\n  - key: models/../a\n    folder: checkpoints\n",
            "under models/",
        ),
        (
            "models:\n  - key: models/a.ckpt\n    folder: weights\n",
            "not one of",
        ),
        (
            "models:\n  - key: models/a.ckpt\n    folder: vae\n    name: ../x\n",
            "bare name",
        ),
        (
            "models:\n  - key: models/a.ckpt\n    folder: vae\n    name: .hidden\n",
            "bare name",
        ),
        (
            "models:\n  - key: models/a/x.ckpt\n    folder: vae\n  - key: models/b/x.ckpt\n    folder: vae\n",
            "two entries",
        ),
        (
            "models:\n  - key: models/a.ckpt\n    folder: vae\n    sha: 1\n",
            "unknown field",
        ),
        ("models: 3\n", "invalid type"),
    ];
    for (text, why) in cases {
        let err = ModelsManifest::parse(text).unwrap_err().to_string();
        assert!(err.contains(why), "{text:?}: {err}");
    }
    assert_eq!(
        ModelsManifest::parse("").unwrap(),
        ModelsManifest::default()
    );
    let ok = ModelsManifest::parse(MANIFEST).unwrap();
    assert_eq!(ok.models[0].file_name(), "base.safetensors");
    assert_eq!(ok.models[1].file_name(), "detail-v2.safetensors");
}

#[test]
fn the_example_manifest_parses() {
    let text = include_str!("../../examples/models.yaml");
    let manifest = ModelsManifest::parse(text).unwrap();
    assert!(!manifest.models.is_empty());
}

#[test]
fn every_folder_is_one_comfyui_reads() {
    let yaml = include_str!("../docker/extra_model_paths.yaml");
    for folder in MODEL_FOLDERS {
        assert!(
            yaml.lines()
                .any(|l| l.trim() == *folder || l.trim().starts_with(&format!("{folder}:"))),
            "{folder} is not in extra_model_paths.yaml"
        );
    }
    assert!(yaml.contains("base_path: /cache/models"));
}
