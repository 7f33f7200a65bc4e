//! Models at boot: the `models.yaml` manifest, and its sync from object storage into
//! the instance's model cache, before the runner takes a job.
//!
//! **The manifest** maps object keys (under the bucket's `models/` prefix) to ComfyUI
//! model folders:
//!
//! ```yaml
//! models:
//!   - key: models/checkpoints/v1-5-pruned-emaonly.safetensors
//!     folder: checkpoints
//!   - key: models/loras/detail.safetensors
//!     folder: loras
//!     name: detail-v2.safetensors   # optional: the file name ComfyUI sees
//! ```
//!
//! `folder` is one of [`MODEL_FOLDERS`] (those `gpu-runner/docker/extra_model_paths.yaml`
//! points ComfyUI at); `name` defaults to the key's last segment and must be a bare file
//! name. At most [`MAX_MODELS`] entries; two entries may not land on the same file.
//!
//! **The cache** (an instance disk path mounted into the task, so a second task or a
//! warm-pool instance does not download again):
//!
//! ```text
//! {cache}/models/{folder}/{name}      what ComfyUI reads (extra_model_paths.yaml)
//! {cache}/.sync/{folder}/{name}.json  the sidecar: key, size and ETag of that file
//! {cache}/.sync/tmp/*.part            downloads in progress
//! ```
//!
//! ComfyUI finds the files through the `extra_model_paths.yaml` the image ships (base
//! path `{cache}/models`), not symlinks: one static file, nothing to keep in step with
//! the manifest, and the image's own `models/` folder still works.
//!
//! **The sync** ([`sync`]): for each entry, `stat` the object; a file already there with
//! the object's size and a sidecar naming the same key and ETag is kept. Anything else
//! downloads in ranged parts of [`SyncOptions::part_size`] in parallel (at most
//! [`SyncOptions::concurrency`] requests at once, across all files), each part written
//! at its offset into a temporary file, streamed chunk by chunk (a large model is never
//! held in memory). Each part reads with `If-Match` on the ETag, so an object replaced
//! mid-download fails the file instead of mixing versions. When every part is in, the
//! file is flushed and renamed over the old one, then the sidecar is written: a crash
//! at any point leaves either the old complete file or a file without a current
//! sidecar, which the next sync downloads again. Every request has a timeout, and a
//! body that stalls longer than [`SyncOptions::stall_timeout`] fails its file. Progress
//! is logged every few seconds. A file that fails is reported (and logged); the others
//! still sync.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use jobs::ports::{ByteStream, StoreError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::error::RunnerError;

/// The folders a manifest entry may name: those `extra_model_paths.yaml` maps.
pub const MODEL_FOLDERS: &[&str] = &[
    "checkpoints",
    "clip",
    "clip_vision",
    "configs",
    "controlnet",
    "diffusion_models",
    "unet",
    "embeddings",
    "loras",
    "style_models",
    "text_encoders",
    "upscale_models",
    "vae",
];

/// The key prefix every model lives under (the runner's task role reads only there).
pub const KEY_PREFIX: &str = jobs::blob_keys::MODELS;
/// Entries in one manifest at most.
pub const MAX_MODELS: usize = 1000;
/// The manifest's size at most.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// `.part` files untouched this long are left by a dead sync and removed.
const STALE_PART: Duration = Duration::from_secs(3600);
/// How often progress is logged while downloading.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A remote object's size and ETag (opaque; compared for equality only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteObject {
    pub size: u64,
    pub etag: String,
}

/// Where models come from. The S3 implementation is `aws::S3Models` (feature `aws`).
#[async_trait]
pub trait ModelSource: Send + Sync + 'static {
    /// For logs: `s3://bucket`.
    fn describe(&self) -> String;
    /// Size and ETag, or `None` when there is no such object.
    async fn stat(&self, key: &str) -> Result<Option<RemoteObject>, StoreError>;
    /// Bytes `first..=last`, only while the object's ETag is `etag`
    /// (`StoreError::Conflict` once it changed).
    async fn read_range(
        &self,
        key: &str,
        first: u64,
        last: u64,
        etag: &str,
    ) -> Result<ByteStream, StoreError>;
    /// The whole object, refused past `max_bytes`; `None` when absent.
    async fn read_small(&self, key: &str, max_bytes: u64) -> Result<Option<Bytes>, StoreError>;
}

/// One manifest entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub key: String,
    pub folder: String,
    #[serde(default)]
    pub name: Option<String>,
}

impl ModelEntry {
    /// The file name in its folder.
    pub fn file_name(&self) -> &str {
        self.name
            .as_deref()
            .unwrap_or_else(|| self.key.rsplit('/').next().unwrap_or(&self.key))
    }
}

/// `models.yaml`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsManifest {
    #[serde(default)]
    pub models: Vec<ModelEntry>,
}

fn bad(msg: String) -> RunnerError {
    RunnerError::Config(format!("models manifest: {msg}"))
}

impl ModelsManifest {
    pub fn parse(text: &str) -> Result<Self, RunnerError> {
        let manifest: ModelsManifest = if text.trim().is_empty() {
            ModelsManifest::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| bad(e.to_string()))?
        };
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), RunnerError> {
        if self.models.len() > MAX_MODELS {
            return Err(bad(format!(
                "{} entries; at most {MAX_MODELS}",
                self.models.len()
            )));
        }
        let mut targets = HashSet::new();
        for entry in &self.models {
            let key = &entry.key;
            let rest = key.strip_prefix(KEY_PREFIX).unwrap_or("");
            if rest.is_empty()
                || key.len() > 1024
                || key.ends_with('/')
                || key
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(bad(format!(
                    "key {key:?} must be an object key under {KEY_PREFIX} (no empty, . or .. segments)"
                )));
            }
            if !MODEL_FOLDERS.contains(&entry.folder.as_str()) {
                return Err(bad(format!(
                    "{key}: folder {:?} is not one of {}",
                    entry.folder,
                    MODEL_FOLDERS.join(", ")
                )));
            }
            let name = entry.file_name();
            if name.is_empty()
                || name.len() > 255
                || name.starts_with('.')
                || name.contains(['/', '\\', '\0'])
            {
                return Err(bad(format!(
                    "{key}: file name {name:?} must be a bare name, not hidden"
                )));
            }
            if !targets.insert((entry.folder.clone(), name.to_string())) {
                return Err(bad(format!("two entries write {}/{name}", entry.folder)));
            }
        }
        Ok(())
    }
}

/// How the sync behaves.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Bytes per ranged request.
    pub part_size: u64,
    /// Requests in flight at most, across all files.
    pub concurrency: usize,
    /// Deadline of each `stat` and of each request's answer (headers).
    pub request_timeout: Duration,
    /// A body that sends nothing for this long fails its file.
    pub stall_timeout: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            part_size: 64 * 1024 * 1024,
            concurrency: 8,
            request_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub files: usize,
    pub downloaded: usize,
    pub up_to_date: usize,
    pub bytes_downloaded: u64,
    /// `"{key}: why"` for each file that did not sync.
    pub failed: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Sidecar {
    key: String,
    size: u64,
    etag: String,
}

struct Paths {
    file: PathBuf,
    sidecar: PathBuf,
}

fn paths(cache: &Path, entry: &ModelEntry) -> Paths {
    let name = entry.file_name();
    Paths {
        file: cache.join("models").join(&entry.folder).join(name),
        sidecar: cache
            .join(".sync")
            .join(&entry.folder)
            .join(format!("{name}.json")),
    }
}

/// The folder ComfyUI reads models from, under the cache.
pub fn models_dir(cache: &Path) -> PathBuf {
    cache.join("models")
}

/// Reads the manifest from the source; `None` when there is none.
pub async fn fetch_manifest(
    source: &dyn ModelSource,
    key: &str,
    timeout: Duration,
) -> Result<Option<ModelsManifest>, RunnerError> {
    let raw = tokio::time::timeout(timeout, source.read_small(key, MAX_MANIFEST_BYTES))
        .await
        .map_err(|_| RunnerError::Config(format!("{key}: no answer within {timeout:?}")))?
        .map_err(|e| RunnerError::Config(format!("{key}: {e}")))?;
    let Some(raw) = raw else { return Ok(None) };
    let text =
        std::str::from_utf8(&raw).map_err(|_| RunnerError::Config(format!("{key}: not UTF-8")))?;
    ModelsManifest::parse(text).map(Some)
}

struct Progress {
    done: AtomicU64,
    total: AtomicU64,
}

/// Brings the cache in line with the manifest (see the module docs).
pub async fn sync(
    source: Arc<dyn ModelSource>,
    manifest: &ModelsManifest,
    cache: &Path,
    options: &SyncOptions,
) -> SyncReport {
    let started = Instant::now();
    remove_stale_parts(&cache.join(".sync").join("tmp")).await;
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let progress = Arc::new(Progress {
        done: AtomicU64::new(0),
        total: AtomicU64::new(0),
    });
    let ticker = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PROGRESS_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let (done, total) = (
                    progress.done.load(Ordering::Relaxed),
                    progress.total.load(Ordering::Relaxed),
                );
                if total > 0 {
                    tracing::info!(
                        done_bytes = done,
                        total_bytes = total,
                        "model sync progress"
                    );
                }
            }
        })
    };
    let outcomes: Vec<(String, Result<Option<u64>, String>)> =
        futures::stream::iter(manifest.models.iter().cloned())
            .map(|entry| {
                let (source, permits, progress) =
                    (source.clone(), permits.clone(), progress.clone());
                async move {
                    let result =
                        sync_one(&*source, &entry, cache, options, &permits, &progress).await;
                    (entry.key, result)
                }
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
    ticker.abort();
    let mut report = SyncReport {
        files: manifest.models.len(),
        ..SyncReport::default()
    };
    for (key, outcome) in outcomes {
        match outcome {
            Ok(None) => report.up_to_date += 1,
            Ok(Some(bytes)) => {
                report.downloaded += 1;
                report.bytes_downloaded += bytes;
            }
            Err(why) => {
                tracing::error!(key = %key, error = %why, "model did not sync");
                report.failed.push(format!("{key}: {why}"));
            }
        }
    }
    report.failed.sort();
    tracing::info!(
        source = %source.describe(),
        files = report.files,
        downloaded = report.downloaded,
        up_to_date = report.up_to_date,
        bytes = report.bytes_downloaded,
        failed = report.failed.len(),
        elapsed_s = started.elapsed().as_secs_f64(),
        "model sync done"
    );
    report
}

async fn remove_stale_parts(tmp: &Path) {
    let Ok(mut dir) = tokio::fs::read_dir(tmp).await else {
        return;
    };
    while let Ok(Some(item)) = dir.next_entry().await {
        let stale = item
            .metadata()
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_PART);
        if stale {
            let _ = tokio::fs::remove_file(item.path()).await;
        }
    }
}

async fn read_sidecar(path: &Path) -> Option<Sidecar> {
    let raw = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&raw).ok()
}

/// `Ok(None)`: already current. `Ok(Some(bytes))`: downloaded.
async fn sync_one(
    source: &dyn ModelSource,
    entry: &ModelEntry,
    cache: &Path,
    options: &SyncOptions,
    permits: &Semaphore,
    progress: &Progress,
) -> Result<Option<u64>, String> {
    let remote = tokio::time::timeout(options.request_timeout, source.stat(&entry.key))
        .await
        .map_err(|_| format!("no answer within {:?}", options.request_timeout))?
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no such object".to_string())?;
    let at = paths(cache, entry);
    let local_size = tokio::fs::metadata(&at.file).await.ok().map(|m| m.len());
    let wanted = Sidecar {
        key: entry.key.clone(),
        size: remote.size,
        etag: remote.etag.clone(),
    };
    if local_size == Some(remote.size) && read_sidecar(&at.sidecar).await.as_ref() == Some(&wanted)
    {
        tracing::debug!(key = %entry.key, "model up to date");
        return Ok(None);
    }
    tracing::info!(key = %entry.key, bytes = remote.size, file = %at.file.display(), "downloading a model");
    progress.total.fetch_add(remote.size, Ordering::Relaxed);
    let tmp_dir = cache.join(".sync").join("tmp");
    for dir in [
        &tmp_dir,
        at.file.parent().unwrap_or(cache),
        at.sidecar.parent().unwrap_or(cache),
    ] {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let part_path = tmp_dir.join(format!("{}.part", ulid::Ulid::new()));
    let result = download(
        source, entry, &remote, &part_path, options, permits, progress,
    )
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&part_path).await;
        return Err(e);
    }
    // The old sidecar goes first: between the rename and the new sidecar, a crash
    // leaves a file the next sync downloads again, never a stale file marked current.
    let _ = tokio::fs::remove_file(&at.sidecar).await;
    if let Err(e) = tokio::fs::rename(&part_path, &at.file).await {
        let _ = tokio::fs::remove_file(&part_path).await;
        return Err(format!("rename into {}: {e}", at.file.display()));
    }
    let sidecar_tmp = tmp_dir.join(format!("{}.json", ulid::Ulid::new()));
    let body = serde_json::to_vec(&wanted).map_err(|e| e.to_string())?;
    tokio::fs::write(&sidecar_tmp, body)
        .await
        .map_err(|e| format!("sidecar: {e}"))?;
    tokio::fs::rename(&sidecar_tmp, &at.sidecar)
        .await
        .map_err(|e| format!("sidecar: {e}"))?;
    tracing::info!(key = %entry.key, bytes = remote.size, "model downloaded");
    Ok(Some(remote.size))
}

async fn download(
    source: &dyn ModelSource,
    entry: &ModelEntry,
    remote: &RemoteObject,
    part_path: &Path,
    options: &SyncOptions,
    permits: &Semaphore,
    progress: &Progress,
) -> Result<(), String> {
    let file = tokio::fs::File::create(part_path)
        .await
        .map_err(|e| format!("{}: {e}", part_path.display()))?;
    file.set_len(remote.size)
        .await
        .map_err(|e| format!("{}: {e}", part_path.display()))?;
    drop(file);
    let part_size = options.part_size.max(1);
    let ranges: Vec<(u64, u64)> = (0..remote.size.div_ceil(part_size))
        .map(|i| {
            let first = i * part_size;
            (first, (first + part_size).min(remote.size) - 1)
        })
        .collect();
    // Every part of a file runs at once; the shared permits bound the requests.
    let results = futures::future::join_all(ranges.into_iter().map(|(first, last)| async move {
        let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
        download_part(
            source, entry, remote, part_path, first, last, options, progress,
        )
        .await
    }))
    .await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(part_path)
        .await
        .map_err(|e| e.to_string())?;
    file.sync_all().await.map_err(|e| e.to_string())?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn download_part(
    source: &dyn ModelSource,
    entry: &ModelEntry,
    remote: &RemoteObject,
    part_path: &Path,
    first: u64,
    last: u64,
    options: &SyncOptions,
    progress: &Progress,
) -> Result<(), String> {
    let mut body = tokio::time::timeout(
        options.request_timeout,
        source.read_range(&entry.key, first, last, &remote.etag),
    )
    .await
    .map_err(|_| format!("no answer within {:?}", options.request_timeout))?
    .map_err(|e| match e {
        StoreError::Conflict => "the object changed during the download".to_string(),
        e => e.to_string(),
    })?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(part_path)
        .await
        .map_err(|e| e.to_string())?;
    file.seek(std::io::SeekFrom::Start(first))
        .await
        .map_err(|e| e.to_string())?;
    let expected = last - first + 1;
    let mut written = 0u64;
    loop {
        let chunk = tokio::time::timeout(options.stall_timeout, body.next())
            .await
            .map_err(|_| format!("the download stalled for {:?}", options.stall_timeout))?;
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|e| e.to_string())?;
        written += chunk.len() as u64;
        if written > expected {
            return Err(format!("bytes {first}-{last}: more than asked for"));
        }
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
        progress
            .done
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    if written != expected {
        return Err(format!(
            "bytes {first}-{last}: {written} of {expected} bytes arrived"
        ));
    }
    file.flush().await.map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
#[path = "models_tests.rs"]
mod tests;
