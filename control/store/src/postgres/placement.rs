//! Placement on a shared Postgres: the candidates' rows are locked, the
//! best one chosen, its free memory lowered and the microVM inserted as
//! its PENDING row in one transaction, then announced to it.

use crate::placement::{choose, Candidate, PLACED_CHANNEL};
use crate::records::MicrovmRecord;
use crate::StoreError;

use super::microvms::insert_row;
use super::nodes::store_now;
use super::{to_i64, PostgresStore};

impl PostgresStore {
    pub(crate) async fn report_node_free(
        &self,
        free_mib: Option<u64>,
        reserved_mib: u64,
    ) -> Result<(), StoreError> {
        let me = self.identity.required()?;
        self.execute(
            "UPDATE nodes SET free_mib = $3, reserved_mib = $4 WHERE id = $1 AND epoch = $2",
            &[
                &me.0,
                &to_i64(me.1),
                &free_mib.map(to_i64),
                &to_i64(reserved_mib),
            ],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn place_microvm(
        &self,
        vm: &MicrovmRecord,
        memory_mib: u64,
        candidates: &[String],
    ) -> Result<String, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        super::microvms::check_live_quota(&self.quota, &*tx).await?;
        let now = store_now(&tx).await?;
        // FOR UPDATE: placements on one node take turns, so each sees the
        // memory the one before it took; a sweep skips a node held here.
        let rows = tx
            .query(
                "SELECT id, epoch, state, lease_expires_at - $2, free_mib, reserved_mib FROM nodes
                 WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&candidates, &now],
            )
            .await?;
        let found = rows
            .iter()
            .map(|r| {
                Ok(Candidate {
                    id: r.try_get(0)?,
                    epoch: u64::try_from(r.try_get::<_, i64>(1)?).unwrap_or(0),
                    state: r.try_get(2)?,
                    lease_left: r.try_get(3)?,
                    free_mib: crate::placement::stored_mib(r.try_get(4)?),
                    reserved_mib: crate::placement::stored_mib(r.try_get(5)?).unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let owner = choose(candidates, &found, memory_mib)?;
        let epoch = to_i64(owner.epoch);
        tx.execute(
            // An unknown free count (NULL) stays unknown.
            "UPDATE nodes SET free_mib = free_mib - LEAST(free_mib, $2),
                 reserved_mib = COALESCE(reserved_mib, 0) + $2
             WHERE id = $1",
            &[&owner.id, &to_i64(memory_mib)],
        )
        .await?;
        if insert_row(&*tx, vm, Some(&owner.id), Some(epoch)).await? == 0 {
            return Err(StoreError::microvm_exists(&vm.id));
        }
        // Delivered at commit, and only if it commits.
        tx.execute("SELECT pg_notify($1, $2)", &[&PLACED_CHANNEL, &owner.id])
            .await?;
        tx.commit().await?;
        Ok(owner.id.clone())
    }

    pub(crate) async fn pending_microvms(&self) -> Result<Vec<MicrovmRecord>, StoreError> {
        let me = self.identity.required()?;
        let sql = format!(
            "SELECT {} FROM microvms
             WHERE state = 'PENDING' AND owner_node = $1 AND owner_epoch = $2 ORDER BY seq",
            MicrovmRecord::COLUMNS
        );
        super::rows::all(
            self.query(&sql, &[&me.0, &to_i64(me.1)]).await?,
            MicrovmRecord::from_pg,
        )
    }
}
