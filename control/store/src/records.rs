//! Plain rows, as the service reads and writes them.

use rusqlite::Row;

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub name: String,
    pub arn: String,
    pub state: String,
    pub created_at: f64,
    pub updated_at: f64,
}

impl ImageRecord {
    pub(crate) const COLUMNS: &'static str = "name, arn, state, created_at, updated_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            name: r.get(0)?,
            arn: r.get(1)?,
            state: r.get(2)?,
            created_at: r.get(3)?,
            updated_at: r.get(4)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionRecord {
    pub image: String,
    pub version: u32,
    /// The build request as the service serialised it (its own typed
    /// struct); the store does not look inside.
    pub spec: String,
    pub state: String,
    pub status: String,
    pub state_reason: Option<String>,
    /// Where the finished snapshot lives, once the build succeeded.
    pub snapshot_dir: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

impl VersionRecord {
    pub(crate) const COLUMNS: &'static str =
        "image, version, spec, state, status, state_reason, snapshot_dir, created_at, updated_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
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
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildRecord {
    pub id: String,
    pub image: String,
    pub version: u32,
    pub state: String,
    pub state_reason: Option<String>,
    pub log_path: String,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub code_bytes: Option<u64>,
    pub created_at: f64,
    pub updated_at: f64,
}

impl BuildRecord {
    pub(crate) const COLUMNS: &'static str = "id, image, version, state, state_reason, log_path, \
         memory_bytes, disk_bytes, code_bytes, created_at, updated_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
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
        })
    }
}

/// A new image with its first version and build, created together.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub name: String,
    pub arn: String,
    pub state: String,
    pub tags: Vec<(String, String)>,
    pub version: NewVersion,
}

/// A version and its (first) build, created together.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub spec: String,
    pub state: String,
    pub status: String,
    pub build_id: String,
    pub build_state: String,
    pub log_path: String,
    pub now: f64,
}
