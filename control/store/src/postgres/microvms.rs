//! MicroVMs: one row per `RunMicrovm`, kept after termination.

use crate::records::{fetch_limit, paginate, MicrovmRecord, MicrovmUpdate, Page};
use crate::StoreError;

use super::rows::all;
use super::{to_i32, PostgresStore};

impl PostgresStore {
    pub(crate) async fn insert_microvm(&self, vm: &MicrovmRecord) -> Result<(), StoreError> {
        let inserted = self
            .execute(
                "INSERT INTO microvms (id, image, version, image_arn, spec, state, state_reason,
                     endpoint, proxy_addr, started_at, terminated_at, last_active_at, suspended_at,
                     updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
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
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::microvm_exists(&vm.id));
        }
        Ok(())
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
        let sql = format!(
            "SELECT {} FROM microvms WHERE state <> 'TERMINATED' ORDER BY seq",
            MicrovmRecord::COLUMNS
        );
        all(self.query(&sql, &[]).await?, MicrovmRecord::from_pg)
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
        let changed = self
            .execute(
                "UPDATE microvms SET state = $2,
                     state_reason = CASE WHEN $3 THEN $4 ELSE state_reason END,
                     suspended_at = CASE WHEN $5 THEN $6 ELSE suspended_at END,
                     terminated_at = COALESCE($7, terminated_at),
                     updated_at = $8
                 WHERE id = $1",
                &[
                    &id,
                    &u.state,
                    &u.state_reason.is_some(),
                    &u.state_reason.flatten(),
                    &u.suspended_at.is_some(),
                    &u.suspended_at.flatten(),
                    &u.terminated_at,
                    &u.now,
                ],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::microvm_not_found(id));
        }
        Ok(())
    }

    pub(crate) async fn set_microvm_last_active(
        &self,
        id: &str,
        at: f64,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE microvms SET last_active_at = GREATEST(last_active_at, $2) WHERE id = $1",
            &[&id, &at],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn set_microvm_endpoint(
        &self,
        id: &str,
        endpoint: &str,
        proxy_addr: Option<&str>,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE microvms SET endpoint = $2, proxy_addr = $3 WHERE id = $1",
            &[&id, &endpoint, &proxy_addr],
        )
        .await?;
        Ok(())
    }
}
