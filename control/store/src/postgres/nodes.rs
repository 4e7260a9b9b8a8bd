//! Nodes on a shared Postgres: leases run on Postgres' clock (hosts'
//! clocks may disagree; the database's is the one all of them read), and
//! any node sweeps the others whose lease ran out.

use std::sync::Arc;

use tokio_postgres::Row;

use crate::node::{
    dead_node_reason, lease_seconds, lost_build_reason, lost_microvm_reason, max_dead_per_sweep,
};
use crate::records::{DeadNode, LeaseRenewal, NodeRecord, SETTABLE_NODE_STATES};
use crate::StoreError;

use super::{node_lock, to_i64, PostgresStore};

/// The store's now, in unix seconds. `clock_timestamp()`, not `now()`:
/// the latter is the transaction's start, which a long wait for a lock
/// would leave behind.
const NOW: &str = "extract(epoch from clock_timestamp())::double precision";

/// The store's now, read inside `tx` so a transaction's rows agree on it.
pub(super) async fn store_now(tx: &deadpool_postgres::Transaction<'_>) -> Result<f64, StoreError> {
    Ok(tx
        .query_one(&format!("SELECT {NOW}"), &[])
        .await?
        .try_get(0)?)
}

fn unsigned(r: &Row, i: usize, what: &str) -> Result<u64, StoreError> {
    let v: i64 = r.try_get(i)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("a negative {what} ({v})")))
}

/// A dead node's unfinished builds end FAILED, with their versions and
/// images as a restart would leave them (`builds::recover_interrupted` in
/// emberd): the build VM died with the host, and nobody else would end
/// them. Returns their ids.
async fn fail_builds_of(
    tx: &deadpool_postgres::Transaction<'_>,
    node: &str,
    now: f64,
) -> Result<Vec<String>, StoreError> {
    let reason = lost_build_reason(node);
    let rows = tx
        .query(
            "UPDATE builds SET state = 'FAILED', state_reason = $2, updated_at = $3
             WHERE node = $1 AND state IN ('PENDING', 'IN_PROGRESS')
             RETURNING id, image, version",
            &[&node, &reason, &now],
        )
        .await?;
    let mut failed = Vec::with_capacity(rows.len());
    for row in rows {
        let (id, image, version): (String, String, i32) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        tx.execute(
            "UPDATE versions SET state = 'FAILED', state_reason = $3, updated_at = $4
             WHERE image = $1 AND version = $2",
            &[&image, &version, &reason, &now],
        )
        .await?;
        tx.execute(
            "UPDATE images SET updated_at = $3, state = CASE
                 WHEN $2 = 1 OR state = 'CREATING' THEN 'CREATE_FAILED' ELSE 'UPDATE_FAILED' END
             WHERE name = $1",
            &[&image, &version, &now],
        )
        .await?;
        failed.push(id);
    }
    failed.sort_unstable();
    Ok(failed)
}

impl PostgresStore {
    pub(crate) async fn register_node(
        &self,
        node_id: &str,
        lease_ms: u64,
    ) -> Result<u64, StoreError> {
        // Held to the end, so two registrations of this store take turns.
        let mut lock = self.node_lock.lock().await;
        // Registering again (after a lost lease) keeps the lock this
        // session already holds; taking it twice would stack a second hold.
        if lock.as_ref().map(|l| l.node_id.as_str()) != Some(node_id) {
            let taken =
                node_lock::claim(&self.config, &self.tls, node_id, Arc::clone(&self.placed))
                    .await?;
            *lock = Some(taken);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = store_now(&tx).await?;
        // A restart keeps a drain (and why it was asked for): only an
        // operator un-drains a node. A DEAD node comes back READY.
        let row = tx
            .query_one(
                "INSERT INTO nodes (id, epoch, state, state_reason, lease_expires_at, registered_at)
                 VALUES ($1, 1, 'READY', NULL, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET epoch = nodes.epoch + 1,
                     state = CASE WHEN nodes.state = 'DRAINING' THEN 'DRAINING' ELSE 'READY' END,
                     state_reason = CASE WHEN nodes.state = 'DRAINING' THEN nodes.state_reason END,
                     lease_expires_at = EXCLUDED.lease_expires_at,
                     registered_at = EXCLUDED.registered_at
                 RETURNING epoch",
                &[&node_id, &(now + lease_seconds(lease_ms)), &now],
            )
            .await?;
        let epoch = unsigned(&row, 0, "epoch")?;
        // Rows no node owns predate nodes (or were written unregistered):
        // the first node to register takes them.
        tx.execute(
            "UPDATE microvms SET owner_node = $1, owner_epoch = $2
             WHERE state <> 'TERMINATED' AND (owner_node = $1 OR owner_node IS NULL)",
            &[&node_id, &to_i64(epoch)],
        )
        .await?;
        // Claims this node left pending died with its last run: nobody
        // will answer them. Other nodes' may still be acted on.
        tx.execute(
            "DELETE FROM idempotency WHERE pending AND (node = $1 OR node IS NULL)",
            &[&node_id],
        )
        .await?;
        tx.commit().await?;
        self.identity.set(node_id, epoch);
        Ok(epoch)
    }

    pub(crate) async fn renew_node_lease(&self, lease_ms: u64) -> Result<LeaseRenewal, StoreError> {
        let me = self.identity.required()?;
        let renewed = self
            .query_opt(
                &format!(
                    "UPDATE nodes SET lease_expires_at = {NOW} + $3
                     WHERE id = $1 AND epoch = $2 AND state <> 'DEAD' RETURNING state"
                ),
                &[&me.0, &to_i64(me.1), &lease_seconds(lease_ms)],
            )
            .await?;
        if let Some(row) = renewed {
            return Ok(LeaseRenewal::Renewed {
                state: row.try_get(0)?,
            });
        }
        let row = self
            .query_opt("SELECT state, epoch FROM nodes WHERE id = $1", &[&me.0])
            .await?;
        let (state, epoch) = match row {
            Some(r) => (r.try_get(0)?, unsigned(&r, 1, "epoch")?),
            None => ("DEAD".to_string(), 0),
        };
        self.identity.forget(&me);
        Ok(LeaseRenewal::Lost { state, epoch })
    }

    pub(crate) async fn sweep_expired_nodes(&self) -> Result<Vec<DeadNode>, StoreError> {
        let me = self.identity.get().map(|(id, _)| id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = store_now(&tx).await?;
        // At most half the nodes per pass: a sweeper that sees most of the
        // cluster expired more likely has a wrong view (a clock jump, an
        // outage everyone shared) than a dead fleet, and the next pass
        // takes more if they really are gone.
        let counts = tx
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE state <> 'DEAD'),
                     COUNT(*) FILTER (WHERE state <> 'DEAD' AND lease_expires_at < $1
                                      AND ($2::text IS NULL OR id <> $2))
                 FROM nodes",
                &[&now, &me],
            )
            .await?;
        let (live, expired): (i64, i64) = (counts.try_get(0)?, counts.try_get(1)?);
        let at_most = max_dead_per_sweep(live);
        if expired > at_most {
            tracing::warn!(
                live,
                expired,
                at_most,
                "more nodes' leases expired than one sweep declares dead; the oldest first"
            );
        }
        // SKIP LOCKED: a node another sweeper (or a registration) holds is
        // that one's to handle, so no node is declared dead twice.
        let expired = tx
            .query(
                "SELECT id, lease_expires_at FROM nodes
                 WHERE state <> 'DEAD' AND lease_expires_at < $1
                   AND ($2::text IS NULL OR id <> $2)
                 ORDER BY lease_expires_at, id LIMIT $3 FOR UPDATE SKIP LOCKED",
                &[&now, &me, &at_most],
            )
            .await?;
        let mut dead = Vec::with_capacity(expired.len());
        for row in expired {
            let id: String = row.try_get(0)?;
            let expires: f64 = row.try_get(1)?;
            let bumped = tx
                .query_one(
                    "UPDATE nodes SET state = 'DEAD', epoch = epoch + 1, state_reason = $2
                     WHERE id = $1 RETURNING epoch",
                    &[&id, &dead_node_reason(&id, now - expires)],
                )
                .await?;
            let epoch = unsigned(&bumped, 0, "epoch")?;
            // The new owner_epoch is what refuses the old owner's late
            // writes, should its emberd still be running somewhere.
            let vms = tx
                .query(
                    "UPDATE microvms SET state = 'TERMINATED', state_reason = $2,
                         terminated_at = $3, updated_at = $3, owner_epoch = $4
                     WHERE owner_node = $1 AND state <> 'TERMINATED' RETURNING id",
                    &[&id, &lost_microvm_reason(&id), &now, &to_i64(epoch)],
                )
                .await?;
            let mut terminated_microvms = vms
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<Vec<String>, _>>()?;
            terminated_microvms.sort_unstable();
            tx.execute(
                "DELETE FROM idempotency WHERE pending AND node = $1",
                &[&id],
            )
            .await?;
            let failed_builds = fail_builds_of(&tx, &id, now).await?;
            dead.push(DeadNode {
                id,
                epoch,
                terminated_microvms,
                failed_builds,
            });
        }
        tx.commit().await?;
        for d in &dead {
            tracing::warn!(
                node = %d.id,
                epoch = d.epoch,
                microvms = d.terminated_microvms.len(),
                "declared a node dead: its lease expired"
            );
        }
        Ok(dead)
    }

    pub(crate) async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT n.id, n.epoch, n.state, n.state_reason, n.lease_expires_at,
                         n.lease_expires_at - {NOW}, n.registered_at,
                         (SELECT COUNT(*) FROM microvms m
                          WHERE m.owner_node = n.id AND m.state <> 'TERMINATED'),
                         n.address, n.free_mib, n.compat_class
                     FROM nodes n ORDER BY n.id"
                ),
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRecord {
                    id: r.try_get(0)?,
                    epoch: unsigned(r, 1, "epoch")?,
                    state: r.try_get(2)?,
                    state_reason: r.try_get(3)?,
                    lease_expires_at: r.try_get(4)?,
                    lease_left_seconds: r.try_get(5)?,
                    registered_at: r.try_get(6)?,
                    live_microvms: unsigned(r, 7, "count")?,
                    address: r.try_get(8)?,
                    free_mib: crate::placement::stored_mib(r.try_get(9)?),
                    compat_class: r.try_get(10)?,
                })
            })
            .collect()
    }

    pub(crate) async fn set_node_state(
        &self,
        node_id: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        if !SETTABLE_NODE_STATES.contains(&state) {
            return Err(StoreError::node_state_not_settable(state));
        }
        let changed = self
            .execute(
                "UPDATE nodes SET state = $2, state_reason = $3 WHERE id = $1 AND state <> 'DEAD'",
                &[&node_id, &state, &reason],
            )
            .await?;
        if changed == 1 {
            return Ok(());
        }
        let exists = self
            .query_opt("SELECT 1 FROM nodes WHERE id = $1", &[&node_id])
            .await?;
        Err(match exists {
            Some(_) => StoreError::node_dead(node_id),
            None => StoreError::node_not_found(node_id),
        })
    }

    pub(crate) async fn set_node_compat_class(&self, class: &str) -> Result<(), StoreError> {
        let me = self.identity.required()?;
        self.execute(
            "UPDATE nodes SET compat_class = $2 WHERE id = $1",
            &[&me.0, &class],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn set_node_address(&self, address: Option<&str>) -> Result<(), StoreError> {
        let me = self.identity.required()?;
        self.execute(
            "UPDATE nodes SET address = $2 WHERE id = $1",
            &[&me.0, &address],
        )
        .await?;
        Ok(())
    }
}
