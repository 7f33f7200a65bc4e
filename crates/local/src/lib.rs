//! # local — the ports on one machine
//!
//! `serverless-comfyui dev` runs the same domain code as AWS, over these adapters:
//!
//! | port | here | on AWS |
//! |---|---|---|
//! | `JobStore` | [`SqliteJobStore`]: SQLite in WAL mode | DynamoDB |
//! | `BlobStore` | [`FileBlobStore`]: files under the data dir | S3 |
//! | `Queue` | [`SqliteQueue`]: SQLite tables with SQS semantics | SQS |
//!
//! Everything lives in one data directory ([`DataDir`], default `./.serverless-comfyui/`)
//! that survives restarts. Local must not be kinder than AWS: the store and the queue
//! are separate database files, so no transaction can span them, and the tests run the
//! queue through [`faults::FaultyQueue`], which duplicates, reorders and redelivers
//! messages the way SQS may.
//!
//! Durability: SQLite runs with `synchronous=NORMAL` in WAL mode, so a commit survives
//! a process crash but not a power cut.

mod blobs;
mod db;
pub mod faults;
pub mod launcher;
mod queue;
pub mod serve;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use blobs::{FileBlobStore, INLINE_MAX, SIGNED_PATH, UrlSigner};
use jobs::ports::{Clock, StoreError};
use jobs::service::Ports;
pub use queue::SqliteQueue;
pub use store::SqliteJobStore;

/// Receives before a work message is dead-lettered. Far above the job's max attempts,
/// because duplicates, hand-backs and pushed-back copies all count as receives.
pub const MAX_RECEIVE_COUNT: u32 = 20;

/// The files of one local installation.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory if needed.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(|e| {
            StoreError::Unavailable(format!("cannot create data dir {}: {e}", root.display()))
        })?;
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn jobs_db(&self) -> PathBuf {
        self.root.join("jobs.sqlite")
    }

    pub fn queue_db(&self) -> PathBuf {
        self.root.join("queue.sqlite")
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Where blobs of at most [`INLINE_MAX`] bytes live.
    pub fn small_blobs_db(&self) -> PathBuf {
        self.root.join("blobs.sqlite")
    }

    /// The signer for blob URLs, keyed by this directory's secret.
    pub fn signer(&self) -> Result<UrlSigner, StoreError> {
        Ok(UrlSigner::new(self.secret()?))
    }

    /// A 32-byte secret for MACs (list cursors, signed URLs), created on first use and
    /// kept, so cursors and URLs stay valid across restarts.
    pub fn secret(&self) -> Result<Vec<u8>, StoreError> {
        let path = self.root.join("secret.key");
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => return Ok(bytes),
            Ok(_) => {
                return Err(StoreError::Unavailable(format!(
                    "{} is corrupt (expected 32 bytes); delete it to mint a new one",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Unavailable(format!("{}: {e}", path.display()))),
        }
        let secret: [u8; 32] = rand::random();
        let tmp = self.root.join(format!(".secret.{}.tmp", ulid::Ulid::new()));
        std::fs::write(&tmp, secret)
            .and_then(|()| restrict_permissions(&tmp))
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", tmp.display())))?;
        // If another process won the race, use its secret.
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::Unavailable(format!("{}: {e}", path.display()))),
        }
        let _ = std::fs::remove_file(&tmp);
        std::fs::read(&path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))
    }

    /// The local adapters for every port, over this directory. Signed blob URLs start
    /// with `public_base` (the `dev` server's origin).
    pub fn ports(&self, clock: Arc<dyn Clock>, public_base: &str) -> Result<Ports, StoreError> {
        Ok(self.ports_and_blobs(clock, public_base)?.0)
    }

    /// The ports, and the file blob store behind `ports.blobs` itself, for the server
    /// that honours its signed URLs ([`serve::blob_routes`]).
    pub fn ports_and_blobs(
        &self,
        clock: Arc<dyn Clock>,
        public_base: &str,
    ) -> Result<(Ports, Arc<FileBlobStore>), StoreError> {
        let store: Arc<dyn jobs::ports::JobStore> =
            Arc::new(SqliteJobStore::open(&self.jobs_db())?);
        let queue = SqliteQueue::open(&self.queue_db(), clock.clone(), MAX_RECEIVE_COUNT)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let blobs = Arc::new(
            FileBlobStore::open(
                &self.blobs(),
                &self.small_blobs_db(),
                self.signer()?,
                public_base,
            )?
            .with_upload_records(store.clone()),
        );
        let ports = Ports {
            store,
            blobs: blobs.clone(),
            queue: Arc::new(queue),
            clock,
        };
        Ok((ports, blobs))
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) -> std::io::Result<()> {
    Ok(())
}
