//! A small SQLite handle: one writer connection, a few reader connections, migrations.
//!
//! SQLite in WAL mode lets readers run while one writer writes, also across processes
//! (the `dev` server and its runner subprocesses share the files). `synchronous=NORMAL`
//! makes each commit durable across a process crash, not across a power cut: the
//! README says so. Statements are short (microseconds), so they run on the calling
//! task rather than hopping to a blocking thread.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jobs::ports::StoreError;
use rusqlite::{Connection, OpenFlags};

pub(crate) struct Db {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

const READERS: usize = 4;

pub(crate) fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Several processes share the files: wait for a lock rather than fail.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl Db {
    /// Opens (creating if needed) the database and applies the migrations not yet
    /// applied, tracked in `PRAGMA user_version`.
    pub(crate) fn open(path: &Path, migrations: &[&str]) -> Result<Db, StoreError> {
        let mut writer = open_connection(path).map_err(unavailable)?;
        let tx = writer
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let applied: usize = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(unavailable)?;
        if applied > migrations.len() {
            return Err(StoreError::Unavailable(format!(
                "{} was written by a newer version (schema {applied}, this build knows {}); upgrade serverless-comfyui",
                path.display(),
                migrations.len()
            )));
        }
        for (index, migration) in migrations.iter().enumerate().skip(applied) {
            tx.execute_batch(migration).map_err(unavailable)?;
            tx.pragma_update(None, "user_version", index + 1)
                .map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(unavailable)?;
        Ok(Db {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn)
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Prefer a free reader; otherwise wait on one in turn.
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.readers.len() {
            let slot = &self.readers[(start + offset) % self.readers.len()];
            if let Ok(conn) = slot.try_lock() {
                return f(&conn);
            }
        }
        let conn = self.readers[start % self.readers.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(&conn)
    }
}
