//! `clientToken` records: a request claims its token before it acts, so a
//! concurrent retry waits for the first answer instead of acting again.

use rusqlite::{Connection, OptionalExtension};

use crate::{Store, StoreError};

/// How long a token is remembered: AWS documents a retried request as
/// idempotent for a day, not forever.
pub const IDEMPOTENCY_WINDOW_SECS: f64 = 24.0 * 3600.0;
/// At most this many records are kept, the oldest pruned first, so a
/// caller minting tokens cannot grow the database without bound.
pub const IDEMPOTENCY_MAX_RECORDS: i64 = 10_000;

/// What claiming `(operation, token)` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The token was free and is now this caller's: act, then record the
    /// reply or release the claim.
    Claimed,
    /// Another request with this token is still acting.
    InFlight { params_hash: String },
    /// A request with this token was answered.
    Answered { params_hash: String, reply: String },
}

impl Store {
    /// Claims `(operation, token)` in one transaction, pruning records that
    /// fell out of the window (or beyond the cap) first.
    pub fn claim_idempotency(
        &self,
        operation: &str,
        token: &str,
        params_hash: &str,
        now: f64,
    ) -> Result<Claim, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM idempotency WHERE created_at < ?1",
            [now - IDEMPOTENCY_WINDOW_SECS],
        )?;
        tx.execute(
            "DELETE FROM idempotency WHERE rowid IN (
                 SELECT rowid FROM idempotency ORDER BY created_at DESC LIMIT -1 OFFSET ?1)",
            [IDEMPOTENCY_MAX_RECORDS - 1],
        )?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO idempotency (operation, token, params_hash, reply, created_at, pending)
             VALUES (?1, ?2, ?3, '', ?4, 1)",
            (operation, token, params_hash, now),
        )?;
        let claim = if inserted == 1 {
            Claim::Claimed
        } else {
            let (params_hash, reply, pending): (String, String, bool) = tx.query_row(
                "SELECT params_hash, reply, pending FROM idempotency WHERE operation = ?1 AND token = ?2",
                (operation, token),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            if pending {
                Claim::InFlight { params_hash }
            } else {
                Claim::Answered { params_hash, reply }
            }
        };
        tx.commit()?;
        Ok(claim)
    }

    /// Turns this caller's claim into the answer replayed to retries.
    pub fn record_idempotent_reply(
        &self,
        operation: &str,
        token: &str,
        params_hash: &str,
        reply: &str,
        now: f64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO idempotency (operation, token, params_hash, reply, created_at, pending)
             VALUES (?1, ?2, ?3, ?4, ?5, 0)",
            (operation, token, params_hash, reply, now),
        )?;
        Ok(())
    }

    /// Gives up a claim whose request failed, so a retry acts afresh.
    /// An answered record is kept.
    pub fn release_idempotency(&self, operation: &str, token: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM idempotency WHERE operation = ?1 AND token = ?2 AND pending = 1",
            (operation, token),
        )?;
        Ok(())
    }

    /// The recorded answer for `(operation, token)`, with the hash of the
    /// parameters it was made with; a claim still in flight is no answer.
    pub fn idempotent_reply(
        &self,
        operation: &str,
        token: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT params_hash, reply FROM idempotency
                 WHERE operation = ?1 AND token = ?2 AND pending = 0",
                (operation, token),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }
}

/// Claims belong to requests of a running daemon: at open, any left are
/// of one that died, and nobody will answer them.
pub(crate) fn drop_claims(conn: &Connection) -> Result<(), StoreError> {
    conn.execute("DELETE FROM idempotency WHERE pending = 1", [])?;
    Ok(())
}
