//! Placement on SQLite: the file serves one node, so a microVM can be
//! placed only on this one, and only while it is READY with room.

use rusqlite::{params, OptionalExtension};

use crate::placement::{choose, Candidate};
use crate::records::MicrovmRecord;
use crate::StoreError;

use super::microvms::insert_row;
use super::nodes::now;
use super::SqliteStore;

impl SqliteStore {
    pub(crate) fn report_node_free(
        &self,
        free_mib: Option<u64>,
        reserved_mib: u64,
    ) -> Result<(), StoreError> {
        let me = self.identity.required()?;
        self.conn().execute(
            "UPDATE nodes SET free_mib = ?3, reserved_mib = ?4 WHERE id = ?1 AND epoch = ?2",
            params![me.0, me.1, free_mib, reserved_mib],
        )?;
        Ok(())
    }

    pub(crate) fn place_microvm(
        &self,
        vm: &MicrovmRecord,
        memory_mib: u64,
        candidates: &[String],
    ) -> Result<String, StoreError> {
        let me = self.identity.required()?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        self.check_live_quota(&tx)?;
        let now = now();
        let mut found = Vec::with_capacity(candidates.len());
        for id in candidates {
            let row = tx
                .query_row(
                    "SELECT id, epoch, state, lease_expires_at - ?2, free_mib, reserved_mib FROM nodes
                     WHERE id = ?1",
                    params![id, now],
                    |r| {
                        Ok(Candidate {
                            id: r.get(0)?,
                            epoch: r.get(1)?,
                            state: r.get(2)?,
                            lease_left: r.get(3)?,
                            free_mib: crate::placement::stored_mib(r.get(4)?),
                            reserved_mib: crate::placement::stored_mib(r.get(5)?).unwrap_or(0),
                        })
                    },
                )
                .optional()?;
            found.extend(row);
        }
        let owner = choose(candidates, &found, memory_mib)?;
        // Registering retires every other node of the file, so only this
        // one can be READY; checked all the same.
        if owner.id != me.0 || owner.epoch != me.1 {
            return Err(StoreError::Capacity(format!(
                "a SQLite store serves one node ({}), not {}",
                me.0, owner.id
            )));
        }
        tx.execute(
            "UPDATE nodes SET free_mib = MAX(free_mib - ?2, 0),
                 reserved_mib = COALESCE(reserved_mib, 0) + ?2
             WHERE id = ?1",
            params![owner.id, memory_mib],
        )?;
        if insert_row(&tx, vm, Some(&owner.id), Some(owner.epoch))? == 0 {
            return Err(StoreError::microvm_exists(&vm.id));
        }
        let owner = owner.id.clone();
        tx.commit()?;
        Ok(owner)
    }

    pub(crate) fn pending_microvms(&self) -> Result<Vec<MicrovmRecord>, StoreError> {
        let me = self.identity.required()?;
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM microvms
             WHERE state = 'PENDING' AND owner_node = ?1 AND owner_epoch = ?2 ORDER BY rowid",
            MicrovmRecord::COLUMNS
        ))?;
        let rows = stmt
            .query_map(params![me.0, me.1], MicrovmRecord::from_sqlite)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
