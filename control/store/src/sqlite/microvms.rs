//! MicroVMs: one row per `RunMicrovm`, kept after termination so `Get`
//! and `List` can still report how a VM ended.

use rusqlite::{params, Connection, OptionalExtension};

use crate::node::NodeId;
use crate::records::{fetch_limit, paginate, MicrovmRecord, MicrovmUpdate, Page};
use crate::StoreError;

use super::SqliteStore;

impl SqliteStore {
    pub(crate) fn insert_microvm(&self, vm: &MicrovmRecord) -> Result<(), StoreError> {
        let me = self
            .identity
            .writer()
            .map_err(|lost| StoreError::fenced_node(&lost))?;
        let (node, epoch) = owner_params(&me);
        let conn = self.conn();
        // One connection, one writer: the count and the insert cannot
        // interleave with another insert.
        self.check_live_quota(&conn)?;
        let inserted = insert_row(&conn, vm, node, epoch)?;
        if inserted == 1 {
            return Ok(());
        }
        if let Some(me) = &me {
            let current = conn
                .query_row(
                    "SELECT 1 FROM nodes WHERE id = ?1 AND epoch = ?2 AND state <> 'DEAD'",
                    params![me.0, me.1],
                    |_| Ok(()),
                )
                .optional()?;
            if current.is_none() {
                return Err(StoreError::fenced_node(me));
            }
        }
        Err(StoreError::microvm_exists(&vm.id))
    }

    /// [`crate::placement::check_quota`] against the rows of `conn`.
    pub(super) fn check_live_quota(&self, conn: &Connection) -> Result<(), StoreError> {
        let Some(max) = self.quota.get() else {
            return Ok(());
        };
        let live: u64 = conn.query_row(
            "SELECT COUNT(*) FROM microvms WHERE state <> 'TERMINATED'",
            [],
            |r| r.get(0),
        )?;
        crate::placement::check_quota(live, max)
    }

    pub(crate) fn microvm(&self, id: &str) -> Result<MicrovmRecord, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM microvms WHERE id = ?1",
            MicrovmRecord::COLUMNS
        );
        conn.query_row(&sql, [id], MicrovmRecord::from_sqlite)
            .optional()?
            .ok_or_else(|| StoreError::microvm_not_found(id))
    }

    /// MicroVMs in the order they were run, after the one with id `after`,
    /// optionally only those of one image (and version).
    pub(crate) fn list_microvms(
        &self,
        after: Option<&str>,
        image: Option<&str>,
        version: Option<u32>,
        limit: usize,
    ) -> Result<Page<MicrovmRecord, String>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM microvms
             WHERE seq > COALESCE((SELECT seq FROM microvms WHERE id = ?1), 0)
               AND (?2 IS NULL OR image = ?2) AND (?3 IS NULL OR version = ?3)
             ORDER BY seq LIMIT ?4",
            MicrovmRecord::COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(
                params![after, image, version, fetch_limit(limit)],
                MicrovmRecord::from_sqlite,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(rows, limit, |v| v.id.clone()))
    }

    /// The microVMs not yet TERMINATED this node owns: what a restarted
    /// daemon takes back.
    pub(crate) fn live_microvms(&self) -> Result<Vec<MicrovmRecord>, StoreError> {
        let me = self.identity.get().map(|(id, _)| id);
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM microvms WHERE state <> 'TERMINATED' AND owner_node IS ?1 ORDER BY seq",
            MicrovmRecord::COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map([me], MicrovmRecord::from_sqlite)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// A microVM not yet TERMINATED that runs from `image` (and
    /// `version`), if any: what keeps them from being deleted.
    pub(crate) fn first_live_microvm(
        &self,
        image: &str,
        version: Option<u32>,
    ) -> Result<Option<MicrovmRecord>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM microvms
             WHERE image = ?1 AND (?2 IS NULL OR version = ?2) AND state <> 'TERMINATED'
             ORDER BY seq LIMIT 1",
            MicrovmRecord::COLUMNS
        );
        Ok(conn
            .query_row(&sql, params![image, version], MicrovmRecord::from_sqlite)
            .optional()?)
    }

    pub(crate) fn count_live_microvms(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM microvms WHERE state <> 'TERMINATED'",
            [],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub(crate) fn update_microvm(&self, id: &str, u: &MicrovmUpdate<'_>) -> Result<(), StoreError> {
        let me = self.identity.writer_of(id)?;
        let (node, epoch) = owner_params(&me);
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE microvms SET state = ?2,
                 state_reason = CASE WHEN ?3 THEN ?4 ELSE state_reason END,
                 suspended_at = CASE WHEN ?5 THEN ?6 ELSE suspended_at END,
                 terminated_at = COALESCE(?7, terminated_at),
                 updated_at = ?8
             WHERE id = ?1 AND owner_node IS ?9 AND owner_epoch IS ?10",
            params![
                id,
                u.state,
                u.state_reason.is_some(),
                u.state_reason.flatten(),
                u.suspended_at.is_some(),
                u.suspended_at.flatten(),
                u.terminated_at,
                u.now,
                node,
                epoch
            ],
        )?;
        if changed == 0 {
            return Err(
                fenced(&conn, id, &me)?.unwrap_or_else(|| StoreError::microvm_not_found(id))
            );
        }
        Ok(())
    }

    /// Records the last inbound request, so idle timers survive a restart.
    pub(crate) fn set_microvm_last_active(&self, id: &str, at: f64) -> Result<(), StoreError> {
        let me = self.identity.writer_of(id)?;
        let (node, epoch) = owner_params(&me);
        let conn = self.conn();
        // MAX in the SET, not the WHERE: an older time still matches the
        // row, so only a row of another owner changes nothing.
        let changed = conn.execute(
            "UPDATE microvms SET last_active_at = MAX(last_active_at, ?2)
             WHERE id = ?1 AND owner_node IS ?3 AND owner_epoch IS ?4",
            params![id, at, node, epoch],
        )?;
        if changed == 0 {
            if let Some(e) = fenced(&conn, id, &me)? {
                return Err(e);
            }
        }
        Ok(())
    }

    /// A restarted daemon could not re-bind the old endpoint port.
    pub(crate) fn set_microvm_endpoint(
        &self,
        id: &str,
        endpoint: &str,
        proxy_addr: Option<&str>,
    ) -> Result<(), StoreError> {
        let me = self.identity.writer_of(id)?;
        let (node, epoch) = owner_params(&me);
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE microvms SET endpoint = ?2, proxy_addr = ?3
             WHERE id = ?1 AND owner_node IS ?4 AND owner_epoch IS ?5",
            params![id, endpoint, proxy_addr, node, epoch],
        )?;
        if changed == 0 {
            if let Some(e) = fenced(&conn, id, &me)? {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Inserts `vm` owned by `node` at `epoch`, only while that registration
/// is current, so no QEMU starts for a node declared dead or replaced.
/// Returns the rows written.
pub(super) fn insert_row(
    conn: &Connection,
    vm: &MicrovmRecord,
    node: Option<&str>,
    epoch: Option<u64>,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT OR IGNORE INTO microvms (id, image, version, image_arn, spec, state, state_reason,
             endpoint, proxy_addr, started_at, terminated_at, last_active_at, suspended_at,
             updated_at, owner_node, owner_epoch)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16
         WHERE ?15 IS NULL OR EXISTS (
             SELECT 1 FROM nodes WHERE id = ?15 AND epoch = ?16 AND state <> 'DEAD')",
        params![
            vm.id,
            vm.image,
            vm.version,
            vm.image_arn,
            vm.spec,
            vm.state,
            vm.state_reason,
            vm.endpoint,
            vm.proxy_addr,
            vm.started_at,
            vm.terminated_at,
            vm.last_active_at,
            vm.suspended_at,
            vm.updated_at,
            node,
            epoch
        ],
    )
}

/// The owner columns as this store writes and matches them: NULL before
/// it registered.
fn owner_params(me: &Option<NodeId>) -> (Option<&str>, Option<u64>) {
    (me.as_ref().map(|m| m.0.as_str()), me.as_ref().map(|m| m.1))
}

/// Why an owner write to `id` changed nothing: `Fenced` naming the
/// row's owner, or None if there is no such row (each write keeps its
/// own answer for a missing one).
fn fenced(
    conn: &Connection,
    id: &str,
    me: &Option<NodeId>,
) -> Result<Option<StoreError>, StoreError> {
    let owner: Option<(Option<String>, Option<u64>)> = conn
        .query_row(
            "SELECT owner_node, owner_epoch FROM microvms WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(
        owner
            .map(|(node, epoch)| StoreError::fenced_write(id, node.as_deref(), epoch, me.as_ref())),
    )
}
