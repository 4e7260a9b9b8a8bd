//! Rows of SQLite's answers as the store's records.

use rusqlite::Row;

use crate::records::{BuildRecord, ImageRecord, MicrovmRecord, VersionRecord};

impl ImageRecord {
    pub(crate) fn from_sqlite(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            name: r.get(0)?,
            arn: r.get(1)?,
            state: r.get(2)?,
            created_at: r.get(3)?,
            updated_at: r.get(4)?,
        })
    }
}

impl VersionRecord {
    pub(crate) fn from_sqlite(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            image: r.get(0)?,
            version: r.get(1)?,
            spec: r.get(2)?,
            state: r.get(3)?,
            status: r.get(4)?,
            state_reason: r.get(5)?,
            snapshot_dir: r.get(6)?,
            created_at: r.get(7)?,
            updated_at: r.get(8)?,
            snapshot_node: r.get(9)?,
            snapshot_blob: r.get(10)?,
            snapshot_class: r.get(11)?,
        })
    }
}

impl BuildRecord {
    pub(crate) fn from_sqlite(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            image: r.get(1)?,
            version: r.get(2)?,
            state: r.get(3)?,
            state_reason: r.get(4)?,
            log_path: r.get(5)?,
            memory_bytes: r.get(6)?,
            disk_bytes: r.get(7)?,
            code_bytes: r.get(8)?,
            created_at: r.get(9)?,
            updated_at: r.get(10)?,
            node: r.get(11)?,
        })
    }
}

impl MicrovmRecord {
    pub(crate) fn from_sqlite(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            image: r.get(1)?,
            version: r.get(2)?,
            image_arn: r.get(3)?,
            spec: r.get(4)?,
            state: r.get(5)?,
            state_reason: r.get(6)?,
            endpoint: r.get(7)?,
            proxy_addr: r.get(8)?,
            started_at: r.get(9)?,
            terminated_at: r.get(10)?,
            last_active_at: r.get(11)?,
            suspended_at: r.get(12)?,
            updated_at: r.get(13)?,
            owner_node: r.get(14)?,
        })
    }
}
