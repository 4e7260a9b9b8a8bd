//! Nodes on SQLite: a file on one host serves one node, so registering
//! takes over every live microVM and retires any other node row (a host
//! whose `--node-id` changed keeps its VMs), and nothing is ever swept.

use rusqlite::{params, OptionalExtension};

use crate::node::{lease_seconds, replaced_node_reason};
use crate::records::{DeadNode, LeaseRenewal, NodeRecord, SETTABLE_NODE_STATES};
use crate::StoreError;

use super::SqliteStore;

/// The store's clock is this host's: one host uses the file.
pub(super) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl SqliteStore {
    pub(crate) fn register_node(&self, node_id: &str, lease_ms: u64) -> Result<u64, StoreError> {
        let now = now();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        // A restart keeps a drain (and why it was asked for): only an
        // operator un-drains a node. A DEAD node comes back READY.
        let epoch: u64 = tx.query_row(
            "INSERT INTO nodes (id, epoch, state, state_reason, lease_expires_at, registered_at)
             VALUES (?1, 1, 'READY', NULL, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET epoch = epoch + 1,
                 state = CASE WHEN state = 'DRAINING' THEN 'DRAINING' ELSE 'READY' END,
                 state_reason = CASE WHEN state = 'DRAINING' THEN state_reason END,
                 lease_expires_at = excluded.lease_expires_at,
                 registered_at = excluded.registered_at
             RETURNING epoch",
            params![node_id, now + lease_seconds(lease_ms), now],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE nodes SET state = 'DEAD', epoch = epoch + 1, state_reason = ?2
             WHERE id <> ?1 AND state <> 'DEAD'",
            params![node_id, replaced_node_reason(node_id)],
        )?;
        tx.execute(
            "UPDATE microvms SET owner_node = ?1, owner_epoch = ?2 WHERE state <> 'TERMINATED'",
            params![node_id, epoch],
        )?;
        tx.execute(
            "DELETE FROM idempotency WHERE pending = 1 AND (node = ?1 OR node IS NULL)",
            [node_id],
        )?;
        tx.commit()?;
        self.identity.set(node_id, epoch);
        Ok(epoch)
    }

    pub(crate) fn renew_node_lease(&self, lease_ms: u64) -> Result<LeaseRenewal, StoreError> {
        let me = self.identity.required()?;
        let conn = self.conn();
        let renewed: Option<String> = match conn
            .query_row(
                "UPDATE nodes SET lease_expires_at = ?3
                 WHERE id = ?1 AND epoch = ?2 AND state <> 'DEAD' RETURNING state",
                params![me.0, me.1, now() + lease_seconds(lease_ms)],
                |r| r.get(0),
            )
            .optional()
        {
            Ok(renewed) => renewed,
            // A SQLite file serves one node, so no other can declare this
            // one dead: a renewal the file cannot take now (a full disk)
            // is answered from what it holds instead of fencing the node.
            Err(e) => {
                tracing::warn!(node = %me.0, "the lease's renewal was not written ({e}); it stands");
                conn.query_row(
                    "SELECT state FROM nodes WHERE id = ?1 AND epoch = ?2 AND state <> 'DEAD'",
                    params![me.0, me.1],
                    |r| r.get(0),
                )
                .optional()?
            }
        };
        if let Some(state) = renewed {
            return Ok(LeaseRenewal::Renewed { state });
        }
        let (state, epoch) = conn
            .query_row(
                "SELECT state, epoch FROM nodes WHERE id = ?1",
                [&me.0],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or_else(|| ("DEAD".to_string(), 0));
        self.identity.forget(&me);
        Ok(LeaseRenewal::Lost { state, epoch })
    }

    pub(crate) fn sweep_expired_nodes(&self) -> Result<Vec<DeadNode>, StoreError> {
        Ok(Vec::new())
    }

    pub(crate) fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT n.id, n.epoch, n.state, n.state_reason, n.lease_expires_at,
                 n.lease_expires_at - ?1, n.registered_at,
                 (SELECT COUNT(*) FROM microvms m
                  WHERE m.owner_node = n.id AND m.state <> 'TERMINATED'),
                 n.address, n.free_mib, n.compat_class
             FROM nodes n ORDER BY n.id",
        )?;
        let rows = stmt
            .query_map([now()], |r| {
                Ok(NodeRecord {
                    id: r.get(0)?,
                    epoch: r.get(1)?,
                    state: r.get(2)?,
                    state_reason: r.get(3)?,
                    lease_expires_at: r.get(4)?,
                    lease_left_seconds: r.get(5)?,
                    registered_at: r.get(6)?,
                    live_microvms: r.get(7)?,
                    address: r.get(8)?,
                    free_mib: crate::placement::stored_mib(r.get(9)?),
                    compat_class: r.get(10)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub(crate) fn set_node_state(
        &self,
        node_id: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        if !SETTABLE_NODE_STATES.contains(&state) {
            return Err(StoreError::node_state_not_settable(state));
        }
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE nodes SET state = ?2, state_reason = ?3 WHERE id = ?1 AND state <> 'DEAD'",
            params![node_id, state, reason],
        )?;
        if changed == 1 {
            return Ok(());
        }
        let exists = conn
            .query_row("SELECT 1 FROM nodes WHERE id = ?1", [node_id], |_| Ok(()))
            .optional()?;
        Err(match exists {
            Some(()) => StoreError::node_dead(node_id),
            None => StoreError::node_not_found(node_id),
        })
    }

    pub(crate) fn set_node_compat_class(&self, class: &str) -> Result<(), StoreError> {
        let me = self.identity.required()?;
        self.conn().execute(
            "UPDATE nodes SET compat_class = ?2 WHERE id = ?1",
            params![me.0, class],
        )?;
        Ok(())
    }

    pub(crate) fn set_node_address(&self, address: Option<&str>) -> Result<(), StoreError> {
        let me = self.identity.required()?;
        self.conn().execute(
            "UPDATE nodes SET address = ?2 WHERE id = ?1",
            params![me.0, address],
        )?;
        Ok(())
    }
}
