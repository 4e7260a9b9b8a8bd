//! MicroVMs: one row per `RunMicrovm`, kept after termination.

use crate::node::NodeId;
use crate::records::{fetch_limit, paginate, MicrovmRecord, MicrovmUpdate, Page};
use crate::StoreError;
use tokio_postgres::GenericClient;

use super::rows::all;
use super::{to_i32, to_i64, PostgresStore};

impl PostgresStore {
    pub(crate) async fn insert_microvm(&self, vm: &MicrovmRecord) -> Result<(), StoreError> {
        let me = self
            .identity
            .writer()
            .map_err(|lost| StoreError::fenced_node(&lost))?;
        let (node, epoch) = owner_params(&me);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        check_live_quota(&self.quota, &*tx).await?;
        let inserted = insert_row(&*tx, vm, node, epoch).await?;
        tx.commit().await?;
        if inserted == 1 {
            return Ok(());
        }
        if let Some(me) = &me {
            let current = self
                .query_opt(
                    "SELECT 1 FROM nodes WHERE id = $1 AND epoch = $2 AND state <> 'DEAD'",
                    &[&me.0, &to_i64(me.1)],
                )
                .await?;
            if current.is_none() {
                return Err(StoreError::fenced_node(me));
            }
        }
        Err(StoreError::microvm_exists(&vm.id))
    }

    pub(crate) async fn microvm(&self, id: &str) -> Result<MicrovmRecord, StoreError> {
        let sql = format!(
            "SELECT {} FROM microvms WHERE id = $1",
            MicrovmRecord::COLUMNS
        );
        match self.query_opt(&sql, &[&id]).await? {
            Some(row) => MicrovmRecord::from_pg(&row),
            None => Err(StoreError::microvm_not_found(id)),
        }
    }

    pub(crate) async fn list_microvms(
        &self,
        after: Option<&str>,
        image: Option<&str>,
        version: Option<u32>,
        limit: usize,
    ) -> Result<Page<MicrovmRecord, String>, StoreError> {
        let sql = format!(
            "SELECT {} FROM microvms
             WHERE seq > COALESCE((SELECT seq FROM microvms WHERE id = $1), 0)
               AND ($2::text IS NULL OR image = $2) AND ($3::integer IS NULL OR version = $3)
             ORDER BY seq LIMIT $4",
            MicrovmRecord::COLUMNS
        );
        let version = version.map(to_i32).transpose()?;
        let rows = self
            .query(&sql, &[&after, &image, &version, &fetch_limit(limit)])
            .await?;
        Ok(paginate(all(rows, MicrovmRecord::from_pg)?, limit, |v| {
            v.id.clone()
        }))
    }

    pub(crate) async fn live_microvms(&self) -> Result<Vec<MicrovmRecord>, StoreError> {
        let me = self.identity.get().map(|(id, _)| id);
        let sql = format!(
            "SELECT {} FROM microvms
             WHERE state <> 'TERMINATED' AND owner_node IS NOT DISTINCT FROM $1::text
             ORDER BY seq",
            MicrovmRecord::COLUMNS
        );
        all(self.query(&sql, &[&me]).await?, MicrovmRecord::from_pg)
    }

    pub(crate) async fn first_live_microvm(
        &self,
        image: &str,
        version: Option<u32>,
    ) -> Result<Option<MicrovmRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM microvms
             WHERE image = $1 AND ($2::integer IS NULL OR version = $2) AND state <> 'TERMINATED'
             ORDER BY seq LIMIT 1",
            MicrovmRecord::COLUMNS
        );
        let version = version.map(to_i32).transpose()?;
        self.query_opt(&sql, &[&image, &version])
            .await?
            .map(|row| MicrovmRecord::from_pg(&row))
            .transpose()
    }

    pub(crate) async fn count_live_microvms(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .query_one(
                "SELECT COUNT(*) FROM microvms WHERE state <> 'TERMINATED'",
                &[],
            )
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub(crate) async fn update_microvm(
        &self,
        id: &str,
        u: &MicrovmUpdate<'_>,
    ) -> Result<(), StoreError> {
        let me = self.identity.writer_of(id)?;
        let (node, epoch) = owner_params(&me);
        let changed = self
            .execute(
                "UPDATE microvms SET state = $2,
                     state_reason = CASE WHEN $3 THEN $4 ELSE state_reason END,
                     suspended_at = CASE WHEN $5 THEN $6 ELSE suspended_at END,
                     terminated_at = COALESCE($7, terminated_at),
                     updated_at = $8
                 WHERE id = $1 AND owner_node IS NOT DISTINCT FROM $9::text
                   AND owner_epoch IS NOT DISTINCT FROM $10::bigint",
                &[
                    &id,
                    &u.state,
                    &u.state_reason.is_some(),
                    &u.state_reason.flatten(),
                    &u.suspended_at.is_some(),
                    &u.suspended_at.flatten(),
                    &u.terminated_at,
                    &u.now,
                    &node,
                    &epoch,
                ],
            )
            .await?;
        if changed == 0 {
            return Err(self
                .fenced(id, &me)
                .await?
                .unwrap_or_else(|| StoreError::microvm_not_found(id)));
        }
        Ok(())
    }

    pub(crate) async fn set_microvm_last_active(
        &self,
        id: &str,
        at: f64,
    ) -> Result<(), StoreError> {
        let me = self.identity.writer_of(id)?;
        let (node, epoch) = owner_params(&me);
        // GREATEST in the SET, not the WHERE: an older time still matches
        // the row, so only a row of another owner changes nothing.
        let changed = self
            .execute(
                "UPDATE microvms SET last_active_at = GREATEST(last_active_at, $2)
                 WHERE id = $1 AND owner_node IS NOT DISTINCT FROM $3::text
                   AND owner_epoch IS NOT DISTINCT FROM $4::bigint",
                &[&id, &at, &node, &epoch],
            )
            .await?;
        if changed == 0 {
            if let Some(e) = self.fenced(id, &me).await? {
                return Err(e);
            }
        }
        Ok(())
    }

    pub(crate) async fn set_microvm_endpoint(
        &self,
        id: &str,
        endpoint: &str,
        proxy_addr: Option<&str>,
    ) -> Result<(), StoreError> {
        let me = self.identity.writer_of(id)?;
        let (node, epoch) = owner_params(&me);
        let changed = self
            .execute(
                "UPDATE microvms SET endpoint = $2, proxy_addr = $3
                 WHERE id = $1 AND owner_node IS NOT DISTINCT FROM $4::text
                   AND owner_epoch IS NOT DISTINCT FROM $5::bigint",
                &[&id, &endpoint, &proxy_addr, &node, &epoch],
            )
            .await?;
        if changed == 0 {
            if let Some(e) = self.fenced(id, &me).await? {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Why an owner write to `id` changed nothing: `Fenced` naming the
    /// row's owner, or None if there is no such row (each write keeps its
    /// own answer for a missing one).
    async fn fenced(
        &self,
        id: &str,
        me: &Option<NodeId>,
    ) -> Result<Option<StoreError>, StoreError> {
        let Some(row) = self
            .query_opt(
                "SELECT owner_node, owner_epoch FROM microvms WHERE id = $1",
                &[&id],
            )
            .await?
        else {
            return Ok(None);
        };
        let node: Option<String> = row.try_get(0)?;
        let epoch: Option<i64> = row.try_get(1)?;
        let epoch = epoch.map(|e| u64::try_from(e).unwrap_or(0));
        Ok(Some(StoreError::fenced_write(
            id,
            node.as_deref(),
            epoch,
            me.as_ref(),
        )))
    }
}

/// Inserts `vm` owned by `node` at `epoch`, only while that registration
/// is current, so no QEMU starts for a node declared dead or replaced.
/// FOR SHARE: a sweep declaring the node dead at this moment either waits
/// for this row (and terminates it) or commits first (and this insert
/// sees the new epoch and writes nothing). Returns the rows written.
/// Serialises the inserts of every node (a transaction-scoped advisory
/// lock) while a quota is set, and refuses one beyond it
/// ([`crate::placement::check_quota`]). Taken before any node row is
/// locked, in every transaction that inserts, so the order never inverts.
pub(super) async fn check_live_quota<C: GenericClient + Sync>(
    quota: &crate::placement::LiveQuota,
    tx: &C,
) -> Result<(), StoreError> {
    let Some(max) = quota.get() else {
        return Ok(());
    };
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&QUOTA_LOCK])
        .await?;
    let row = tx
        .query_one(
            "SELECT COUNT(*) FROM microvms WHERE state <> 'TERMINATED'",
            &[],
        )
        .await?;
    let live = u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0);
    crate::placement::check_quota(live, max)
}

/// The quota's advisory lock key: "emberq" in ASCII.
const QUOTA_LOCK: i64 = 0x656d_6265_7271;

pub(super) async fn insert_row<C: GenericClient + Sync>(
    client: &C,
    vm: &MicrovmRecord,
    node: Option<&str>,
    epoch: Option<i64>,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "INSERT INTO microvms (id, image, version, image_arn, spec, state, state_reason,
                 endpoint, proxy_addr, started_at, terminated_at, last_active_at, suspended_at,
                 updated_at, owner_node, owner_epoch)
             SELECT $1::text, $2::text, $3::integer, $4::text, $5::text, $6::text, $7::text,
                 $8::text, $9::text, $10::double precision, $11::double precision,
                 $12::double precision, $13::double precision, $14::double precision,
                 $15::text, $16::bigint
             WHERE $15::text IS NULL OR EXISTS (
                 SELECT 1 FROM nodes WHERE id = $15 AND epoch = $16 AND state <> 'DEAD'
                 FOR SHARE)
             ON CONFLICT (id) DO NOTHING",
            &[
                &vm.id,
                &vm.image,
                &to_i32(vm.version)?,
                &vm.image_arn,
                &vm.spec,
                &vm.state,
                &vm.state_reason,
                &vm.endpoint,
                &vm.proxy_addr,
                &vm.started_at,
                &vm.terminated_at,
                &vm.last_active_at,
                &vm.suspended_at,
                &vm.updated_at,
                &node,
                &epoch,
            ],
        )
        .await?)
}

/// The owner columns as this store writes and matches them: NULL before
/// it registered.
fn owner_params(me: &Option<NodeId>) -> (Option<&str>, Option<i64>) {
    (
        me.as_ref().map(|m| m.0.as_str()),
        me.as_ref().map(|m| to_i64(m.1)),
    )
}
