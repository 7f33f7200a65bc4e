//! # local — the ports on one machine
//!
//! `serverless-comfyui dev` runs the same domain code as AWS, over these adapters:
//!
//! | port | here | on AWS |
//! |---|---|---|
//! | `JobStore` | [`SqliteJobStore`]: SQLite in WAL mode | DynamoDB |
//! | `BlobStore` | [`FileBlobStore`]: files under the data dir | S3 |
//! | `Queue` | [`SqliteQueue`]: SQLite tables with SQS semantics | SQS |
//! | `WebhookStore` | [`SqliteJobStore`]: tables in the jobs database | DynamoDB (+ its stream) |
//! | `WebhookSender` | [`webhook_http::HttpSender`]: reqwest, inner addresses refused at connect | the same, in a consumer |
//!
//! Everything lives in one data directory ([`DataDir`], default `./.serverless-comfyui/`)
//! that survives restarts. Local must not be kinder than AWS: the store and the queue
//! are separate database files, so no transaction can span them, and the tests run the
//! queue through `jobs::faults::FaultyQueue`, which duplicates, reorders and redelivers
//! messages the way SQS may.
//!
//! Durability: SQLite runs with `synchronous=NORMAL` in WAL mode, so a commit survives
//! a process crash but not a power cut.

mod blobs;
mod db;
pub mod launcher;
mod queue;
pub mod serve;
mod store;
/// The webhook sender lives in `jobs` (feature `webhook-http`), shared with the
/// `webhooks` Lambda; re-exported under its old name.
pub use jobs::webhooks::http as webhook_http;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use blobs::{FileBlobStore, INLINE_MAX, SIGNED_PATH, UrlSigner};
use jobs::ports::{Clock, StoreError};
use jobs::service::Ports;
use jobs::webhooks::ports::WebhookStore;
pub use queue::SqliteQueue;
pub use store::SqliteJobStore;

/// Receives before a work message is dead-lettered. Far above the job's max attempts,
/// because duplicates, hand-backs and pushed-back copies all count as receives.
pub const MAX_RECEIVE_COUNT: u32 = 20;

/// The ports, the file blob store behind `ports.blobs`, and the webhook store.
pub type LocalPorts = (Ports, Arc<FileBlobStore>, Arc<dyn WebhookStore>);

/// The files of one local installation.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory if needed, readable by this user alone (0700): it holds
    /// every tenant's jobs, blobs and the MAC secret. A data dir an older build left
    /// open is tightened too; a directory that holds none of our files is left as it is.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let existed = root.is_dir();
        private::create_dir_all(root).map_err(|e| {
            StoreError::Unavailable(format!("cannot create data dir {}: {e}", root.display()))
        })?;
        if existed && root.join("jobs.sqlite").is_file() {
            private::restrict_dir(root).map_err(|e| {
                StoreError::Unavailable(format!("cannot restrict {}: {e}", root.display()))
            })?;
        }
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
        let (ports, blobs, _) = self.ports_blobs_and_webhooks(clock, public_base)?;
        Ok((ports, blobs))
    }

    /// [`Self::ports_and_blobs`], and the webhook store: the same SQLite store as
    /// `ports.store`, since the job's own moves fill its outbox.
    pub fn ports_blobs_and_webhooks(
        &self,
        clock: Arc<dyn Clock>,
        public_base: &str,
    ) -> Result<LocalPorts, StoreError> {
        let sqlite = Arc::new(SqliteJobStore::open(&self.jobs_db())?);
        let store: Arc<dyn jobs::ports::JobStore> = sqlite.clone();
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
        Ok((ports, blobs, sqlite))
    }
}

use private::restrict_file as restrict_permissions;

/// Files and directories only this user may read: directories 0700, files 0600,
/// whatever the umask (on Unix; elsewhere the platform's defaults).
pub(crate) mod private {
    use std::path::Path;

    /// `create_dir_all`, new directories 0700.
    pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(path)
    }

    /// Async [`create_dir_all`].
    pub async fn create_dir_all_async(path: &Path) -> std::io::Result<()> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || create_dir_all(&path))
            .await
            .map_err(std::io::Error::other)?
    }

    pub fn restrict_dir(path: &Path) -> std::io::Result<()> {
        set_mode(path, 0o700)
    }

    pub fn restrict_file(path: &Path) -> std::io::Result<()> {
        set_mode(path, 0o600)
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    #[cfg(not(unix))]
    fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
        Ok(())
    }

    /// Options that create a file 0600 (truncating one that exists).
    pub fn create_options() -> std::fs::OpenOptions {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
    }

    /// `std::fs::write`, a new file 0600.
    pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        create_options().open(path)?.write_all(bytes)
    }

    /// Makes sure a database file exists and is 0600 before SQLite opens it: SQLite
    /// creates its `-wal` and `-shm` files with the database file's permissions.
    pub fn prepare_database(path: &Path) -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path)?;
        restrict_file(path)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use bytes::Bytes;
    use jobs::ports::SystemClock;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Nothing in a data dir is readable by other users, whatever the umask: the
    /// directory is 0700, the databases (with their WAL and shared-memory files) and
    /// blob files 0600.
    #[tokio::test]
    async fn the_data_dir_and_its_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nested").join("data");
        let data = DataDir::open(&root).unwrap();
        let ports = data
            .ports(Arc::new(SystemClock), "http://127.0.0.1")
            .unwrap();
        ports
            .blobs
            .put("a/b/large", Bytes::from(vec![7u8; INLINE_MAX + 1]), "x")
            .await
            .unwrap();
        ports.store.ping().await.unwrap();
        assert_eq!(mode(&root), 0o700, "the data dir");
        assert_eq!(mode(&root.join("secret.key")), 0o600);
        for db in ["jobs.sqlite", "queue.sqlite", "blobs.sqlite"] {
            assert_eq!(mode(&root.join(db)), 0o600, "{db}");
            let wal = root.join(format!("{db}-wal"));
            if wal.exists() {
                assert_eq!(mode(&wal), 0o600, "{db}-wal");
            }
        }
        assert_eq!(mode(&root.join("blobs")), 0o700);
        assert_eq!(mode(&root.join("blobs/a/b/large")), 0o600);

        // A data dir an older build left world-readable is tightened on open.
        drop(ports);
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            root.join("jobs.sqlite"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let data = DataDir::open(&root).unwrap();
        let _ports = data
            .ports(Arc::new(SystemClock), "http://127.0.0.1")
            .unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("jobs.sqlite")), 0o600);
    }
}
