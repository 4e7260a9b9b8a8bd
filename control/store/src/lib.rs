//! emberd's state: images, their versions and builds, tags and
//! idempotency records, in one embedded SQLite database.
//!
//! Nothing lives only in memory: a killed daemon finds everything here on
//! restart. Every multi-row change is one transaction, so a crash never
//! leaves an image without its version or a version without its build.
//! States are stored as the API's enum strings; the service owns their
//! meaning, the store only keeps them consistent.

mod counts;
pub use counts::Counted;
mod idempotency;
pub use idempotency::{Claim, IDEMPOTENCY_MAX_RECORDS, IDEMPOTENCY_WINDOW_SECS};
mod images;
pub use images::Page;
mod microvms;
pub use microvms::{MicrovmRecord, MicrovmUpdate};
mod records;
mod schema;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use records::{BuildRecord, ImageRecord, NewImage, NewVersion, VersionRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("state database at {path}: {message}")]
    Open { path: String, message: String },
}

/// The database handle. Statements are short, so one connection behind a
/// mutex serves the whole daemon.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database file and brings its schema
    /// up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::init(conn)
    }

    /// A private in-memory database, for tests of code built on the store.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        schema::migrate(&conn)?;
        idempotency::drop_claims(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (transactions roll back on drop), so a poisoned lock is usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
