//! `clientToken` records: a request claims its token before it acts, so a
//! concurrent retry waits for the first answer instead of acting again.

use rusqlite::{Connection, OptionalExtension};

use crate::records::{Claim, IDEMPOTENCY_MAX_RECORDS, IDEMPOTENCY_WINDOW_SECS};
use crate::StoreError;

use super::SqliteStore;

impl SqliteStore {
    /// Claims `(operation, token)` in one transaction, pruning records that
    /// fell out of the window (or beyond the cap) first.
    pub(crate) fn claim_idempotency(
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
        // The claim names its node, so only that node's next registration
        // drops it if it is never answered.
        let node = self.identity.get().map(|(id, _)| id);
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO idempotency
                 (operation, token, params_hash, reply, created_at, pending, node)
             VALUES (?1, ?2, ?3, '', ?4, 1, ?5)",
            (operation, token, params_hash, now, node),
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
    pub(crate) fn record_idempotent_reply(
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
    pub(crate) fn release_idempotency(
        &self,
        operation: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM idempotency WHERE operation = ?1 AND token = ?2 AND pending = 1",
            (operation, token),
        )?;
        Ok(())
    }

    /// The recorded answer for `(operation, token)`, with the hash of the
    /// parameters it was made with; a claim still in flight is no answer.
    pub(crate) fn idempotent_reply(
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
