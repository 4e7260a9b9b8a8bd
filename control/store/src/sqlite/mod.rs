//! The SQLite backend: one file in the data dir, one connection behind a
//! mutex (statements are short), WAL so readers stay off the writer's back.

mod counts;
mod idempotency;
mod images;
mod microvms;
mod nodes;
mod placement;
mod rows;
mod schema;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use crate::node::Identity;
use crate::placement::LiveQuota;
use crate::StoreError;

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// The node this store registered as, for its owner writes.
    identity: Identity,
    pub(crate) quota: LiveQuota,
}

impl SqliteStore {
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
        // One daemon owns a SQLite file, so claims left at open are of one
        // that died, and nobody will answer them.
        idempotency::drop_claims(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
            identity: Identity::default(),
            quota: LiveQuota::default(),
        })
    }

    /// The node this store registered as, if it did.
    fn node(&self) -> Option<String> {
        self.identity.get().map(|(id, _)| id)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (transactions roll back on drop), so a poisoned lock is usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
