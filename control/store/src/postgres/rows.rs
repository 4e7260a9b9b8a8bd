//! Rows of Postgres' answers as the store's records.

use tokio_postgres::Row;

use crate::records::{BuildRecord, ImageRecord, MicrovmRecord, VersionRecord};
use crate::StoreError;

fn version(r: &Row, i: usize) -> Result<u32, StoreError> {
    let v: i32 = r.try_get(i)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("a negative version number ({v})")))
}

fn size(r: &Row, i: usize) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = r.try_get(i)?;
    v.map(|v| u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("a negative size ({v})"))))
        .transpose()
}

impl ImageRecord {
    pub(crate) fn from_pg(r: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            name: r.try_get(0)?,
            arn: r.try_get(1)?,
            state: r.try_get(2)?,
            created_at: r.try_get(3)?,
            updated_at: r.try_get(4)?,
        })
    }
}

impl VersionRecord {
    pub(crate) fn from_pg(r: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            image: r.try_get(0)?,
            version: version(r, 1)?,
            spec: r.try_get(2)?,
            state: r.try_get(3)?,
            status: r.try_get(4)?,
            state_reason: r.try_get(5)?,
            snapshot_dir: r.try_get(6)?,
            created_at: r.try_get(7)?,
            updated_at: r.try_get(8)?,
            snapshot_node: r.try_get(9)?,
            snapshot_blob: r.try_get(10)?,
            snapshot_class: r.try_get(11)?,
        })
    }
}

impl BuildRecord {
    pub(crate) fn from_pg(r: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.try_get(0)?,
            image: r.try_get(1)?,
            version: version(r, 2)?,
            state: r.try_get(3)?,
            state_reason: r.try_get(4)?,
            log_path: r.try_get(5)?,
            memory_bytes: size(r, 6)?,
            disk_bytes: size(r, 7)?,
            code_bytes: size(r, 8)?,
            created_at: r.try_get(9)?,
            updated_at: r.try_get(10)?,
            node: r.try_get(11)?,
        })
    }
}

impl MicrovmRecord {
    pub(crate) fn from_pg(r: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.try_get(0)?,
            image: r.try_get(1)?,
            version: version(r, 2)?,
            image_arn: r.try_get(3)?,
            spec: r.try_get(4)?,
            state: r.try_get(5)?,
            state_reason: r.try_get(6)?,
            endpoint: r.try_get(7)?,
            proxy_addr: r.try_get(8)?,
            started_at: r.try_get(9)?,
            terminated_at: r.try_get(10)?,
            last_active_at: r.try_get(11)?,
            suspended_at: r.try_get(12)?,
            updated_at: r.try_get(13)?,
            owner_node: r.try_get(14)?,
        })
    }
}

/// Maps every row, stopping at the first that does not fit.
pub(super) fn all<T>(
    rows: Vec<Row>,
    map: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(map).collect()
}
