//! `serverless-comfyui catalogue`: the node catalogue submit checks graphs against
//! (`jobs::catalogue`).
//!
//! Runners publish their ComfyUI's `/object_info` by themselves each time it starts;
//! `publish` does it by hand, so a fresh deploy checks graphs before its first GPU
//! starts: from a file (`curl http://comfyui:8188/object_info > object_info.json`) or
//! straight from a ComfyUI URL. `show` prints the pointer to the latest catalogue.
//!
//! ```sh
//! serverless-comfyui catalogue publish --comfyui-url http://127.0.0.1:8188
//! serverless-comfyui catalogue publish --file object_info.json \
//!     --table my-stack-Jobs --bucket my-stack-bucket
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use jobs::catalogue::MAX_CATALOGUE_BYTES;
use jobs::ports::{BlobStore, JobStore, SystemClock};
use local::DataDir;

use crate::keys::DataDirArg;

/// How long reading a ComfyUI's `/object_info` may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Subcommand)]
pub enum CatalogueCommand {
    /// Publish a ComfyUI's `/object_info` as the latest node catalogue.
    Publish {
        /// A saved `/object_info` answer.
        #[arg(
            long,
            conflicts_with = "comfyui_url",
            required_unless_present = "comfyui_url"
        )]
        file: Option<PathBuf>,
        /// A running ComfyUI (its `/object_info` is read).
        #[arg(long)]
        comfyui_url: Option<String>,
        #[command(flatten)]
        target: TargetArg,
    },
    /// Show the latest catalogue's hash, size, time and source.
    Show {
        #[command(flatten)]
        target: TargetArg,
    },
}

/// Where the catalogue goes: a `dev` data directory, or a deployed stack's table and
/// bucket.
#[derive(Debug, clap::Args)]
pub struct TargetArg {
    #[command(flatten)]
    store: DataDirArg,
    /// The deployed stack's bucket (with `--table`): the catalogue's JSON goes there.
    #[cfg(feature = "aws")]
    #[arg(long, env = "SERVERLESS_COMFYUI_BUCKET", requires = "table")]
    bucket: Option<String>,
}

impl TargetArg {
    async fn open(&self) -> anyhow::Result<(Arc<dyn JobStore>, Option<Arc<dyn BlobStore>>)> {
        #[cfg(feature = "aws")]
        if self.store.table.is_some() {
            let store = self.store.open().await?;
            let blobs = match &self.bucket {
                Some(bucket) => {
                    let clients = aws::Clients::load().await;
                    Some(Arc::new(aws::S3BlobStore::new(clients.s3, bucket.clone()))
                        as Arc<dyn BlobStore>)
                }
                None => None,
            };
            return Ok((store, blobs));
        }
        let dir = DataDir::open(&self.store.data_dir)?;
        let ports = dir
            .ports(Arc::new(SystemClock), "http://127.0.0.1")
            .with_context(|| format!("opening {}", self.store.data_dir.display()))?;
        Ok((ports.store, Some(ports.blobs)))
    }
}

/// A ComfyUI's `/object_info`, bounded in time and size.
async fn fetch(url: &str) -> anyhow::Result<(Vec<u8>, String)> {
    let base = url.trim_end_matches('/');
    let endpoint = format!("{base}/object_info");
    let client = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?;
    let mut response = client
        .get(&endpoint)
        .send()
        .await
        .with_context(|| format!("GET {endpoint}"))?;
    if !response.status().is_success() {
        bail!("GET {endpoint}: HTTP {}", response.status());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > MAX_CATALOGUE_BYTES {
            bail!("GET {endpoint}: larger than {MAX_CATALOGUE_BYTES} bytes");
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, format!("url:{base}")))
}

/// Runs a `catalogue` subcommand, printing to stdout.
pub async fn run(command: CatalogueCommand) -> anyhow::Result<()> {
    match command {
        CatalogueCommand::Publish {
            file,
            comfyui_url,
            target,
        } => {
            let (json, source) = match (file, comfyui_url) {
                (Some(path), _) => {
                    let meta = std::fs::metadata(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    if meta.len() > MAX_CATALOGUE_BYTES as u64 {
                        bail!(
                            "{}: larger than {MAX_CATALOGUE_BYTES} bytes",
                            path.display()
                        );
                    }
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    (bytes, format!("file:{}", path.display()))
                }
                (None, Some(url)) => fetch(&url).await?,
                (None, None) => bail!("give --file or --comfyui-url"),
            };
            let (store, blobs) = target.open().await?;
            let Some(blobs) = blobs else {
                bail!("--table needs --bucket: the catalogue's JSON is stored in the bucket");
            };
            let pointer = jobs::catalogue::publish(
                store.as_ref(),
                blobs.as_ref(),
                &SystemClock,
                &json,
                &source,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            print(&pointer);
        }
        CatalogueCommand::Show { target } => {
            let (store, _) = target.open().await?;
            match store.get_catalogue_ref().await? {
                Some(pointer) => print(&pointer),
                None => println!(
                    "no node catalogue yet: graphs are accepted unchecked (publish one, or start a runner)"
                ),
            }
        }
    }
    Ok(())
}

fn print(p: &jobs::catalogue::CatalogueRef) {
    println!(
        "catalogue {}\n  node classes  {}\n  bytes         {}\n  published at  {}\n  source        {}",
        p.hash,
        p.classes,
        p.size_bytes,
        p.published_at.to_rfc3339(),
        p.source
    );
}
