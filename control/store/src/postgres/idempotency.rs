//! `clientToken` records, shared by every host on the database: one token
//! sent to several hosts at once is claimed by exactly one of them.

use crate::records::{Claim, IDEMPOTENCY_MAX_RECORDS, IDEMPOTENCY_WINDOW_SECS};
use crate::StoreError;

use super::PostgresStore;

impl PostgresStore {
    pub(crate) async fn claim_idempotency(
        &self,
        operation: &str,
        token: &str,
        params_hash: &str,
        now: f64,
    ) -> Result<Claim, StoreError> {
        // Pruning runs on its own, skipping rows other claims hold, so two
        // hosts pruning at once neither wait for nor deadlock on each other.
        self.execute(
            "DELETE FROM idempotency WHERE ctid IN (
                 SELECT ctid FROM idempotency WHERE created_at < $1 FOR UPDATE SKIP LOCKED)",
            &[&(now - IDEMPOTENCY_WINDOW_SECS)],
        )
        .await?;
        self.execute(
            "DELETE FROM idempotency WHERE ctid IN (
                 SELECT ctid FROM idempotency ORDER BY created_at DESC OFFSET $1
                 FOR UPDATE SKIP LOCKED)",
            &[&(IDEMPOTENCY_MAX_RECORDS - 1)],
        )
        .await?;
        // The insert is the claim, atomic on its own: a concurrent insert
        // of the same key makes this one wait for it to commit, then do
        // nothing, and the read after it sees the winner's row.
        // The claim names its node, so only that node's next registration
        // (or the sweep that declares it dead) drops it if unanswered.
        let node = self.identity.get().map(|(id, _)| id);
        let inserted = self
            .execute(
                "INSERT INTO idempotency
                     (operation, token, params_hash, reply, created_at, pending, node)
                 VALUES ($1, $2, $3, '', $4, TRUE, $5) ON CONFLICT (operation, token) DO NOTHING",
                &[&operation, &token, &params_hash, &now, &node],
            )
            .await?;
        if inserted == 1 {
            return Ok(Claim::Claimed);
        }
        let row = self
            .query_opt(
                "SELECT params_hash, reply, pending FROM idempotency
                 WHERE operation = $1 AND token = $2",
                &[&operation, &token],
            )
            .await?;
        // Released or pruned between the insert and the read: free again.
        let Some(row) = row else {
            return Box::pin(self.claim_idempotency(operation, token, params_hash, now)).await;
        };
        let (params_hash, reply, pending): (String, String, bool) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        Ok(if pending {
            Claim::InFlight { params_hash }
        } else {
            Claim::Answered { params_hash, reply }
        })
    }

    pub(crate) async fn record_idempotent_reply(
        &self,
        operation: &str,
        token: &str,
        params_hash: &str,
        reply: &str,
        now: f64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO idempotency (operation, token, params_hash, reply, created_at, pending)
                 VALUES ($1, $2, $3, $4, $5, FALSE)
                 ON CONFLICT (operation, token) DO UPDATE SET params_hash = EXCLUDED.params_hash,
                     reply = EXCLUDED.reply, created_at = EXCLUDED.created_at, pending = FALSE",
            &[&operation, &token, &params_hash, &reply, &now],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn release_idempotency(
        &self,
        operation: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM idempotency WHERE operation = $1 AND token = $2 AND pending",
            &[&operation, &token],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn idempotent_reply(
        &self,
        operation: &str,
        token: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.query_opt(
            "SELECT params_hash, reply FROM idempotency
                 WHERE operation = $1 AND token = $2 AND NOT pending",
            &[&operation, &token],
        )
        .await?
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .transpose()
    }
}
