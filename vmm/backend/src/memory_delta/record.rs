//! `memory.base`: which pages of a compacted `memory.ram` come from which
//! base file, behind the crate's framed header (magic, version, CRC).

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io, sync_dir, MemoryDeltaError, PAGE};
use crate::framed::FramedError;

const MAGIC: [u8; 8] = *b"EMBERMDL";
pub(super) const FORMAT_VERSION: u32 = 1;
/// Alternating pages of 1 TiB of RAM would not fit; real deltas are a few
/// KiB, and the bound keeps a damaged file from exhausting memory.
const MAX_DELTA_FILE: u64 = 16 << 20;

/// The contents of `memory.base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DeltaRecord {
    pub(super) page_size: u64,
    /// Size of the VM's `memory.ram`; a different size means a different file.
    pub(super) vm_size: u64,
    pub(super) base: BaseIdentity,
    /// `[first_page, page_count]`, ascending and disjoint.
    pub(super) ranges: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BaseIdentity {
    pub(super) path: PathBuf,
    pub(super) size: u64,
    /// For the error message only: a copied base has a new mtime but the
    /// same content, and the content is what matters.
    pub(super) mtime_ns: i64,
    /// CRC-32 of the base's bytes in `ranges`, in order: exactly the bytes
    /// that will be copied, so any change that matters is caught.
    pub(super) ranges_crc32: u32,
}

pub(super) fn write_record(
    dir: &Path,
    path: &Path,
    record: &DeltaRecord,
) -> Result<(), MemoryDeltaError> {
    let payload = serde_json::to_vec(record).map_err(|e| MemoryDeltaError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    crate::framed::write(path, MAGIC, FORMAT_VERSION, &payload).map_err(io(path))?;
    // The rename must be durable before any hole is punched.
    sync_dir(dir)
}

/// Reads and validates `memory.base`; `None` if it does not exist.
pub(super) fn read_record(path: &Path) -> Result<Option<DeltaRecord>, MemoryDeltaError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let corrupt = |reason: String| MemoryDeltaError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let payload = match crate::framed::read(file, MAGIC, FORMAT_VERSION, MAX_DELTA_FILE) {
        Ok(p) => p,
        Err(FramedError::Version(found)) => {
            return Err(MemoryDeltaError::Version {
                path: path.to_path_buf(),
                found,
            })
        }
        Err(FramedError::Io(e)) => return Err(io(path)(e)),
        Err(e) => return Err(corrupt(e.to_string())),
    };
    let record: DeltaRecord =
        serde_json::from_slice(&payload).map_err(|e| corrupt(e.to_string()))?;
    validate(&record).map_err(corrupt)?;
    Ok(Some(record))
}

fn validate(record: &DeltaRecord) -> Result<(), String> {
    if record.page_size != PAGE {
        return Err(format!("page size {} (expected {PAGE})", record.page_size));
    }
    let limit = record.vm_size.min(record.base.size).div_ceil(PAGE);
    let mut next = 0u64;
    for &(page, count) in &record.ranges {
        let end = page.checked_add(count).filter(|_| count > 0);
        match end {
            Some(end) if page >= next && end <= limit => next = end,
            _ => return Err(format!("bad page range {page}+{count}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_delta::DELTA_FILE;

    fn record(ranges: Vec<(u64, u64)>) -> DeltaRecord {
        DeltaRecord {
            page_size: PAGE,
            vm_size: 10 * PAGE + 100,
            base: BaseIdentity {
                path: "/b".into(),
                size: 11 * PAGE,
                mtime_ns: 0,
                ranges_crc32: 0,
            },
            ranges,
        }
    }

    #[test]
    fn validate_rejects_overlapping_out_of_range_and_empty_ranges() {
        assert!(validate(&record(vec![(0, 2), (2, 3), (10, 1)])).is_ok());
        assert!(validate(&record(vec![(0, 2), (1, 1)])).is_err());
        assert!(validate(&record(vec![(3, 1), (0, 1)])).is_err());
        assert!(validate(&record(vec![(10, 2)])).is_err());
        assert!(validate(&record(vec![(4, 0)])).is_err());
        assert!(validate(&record(vec![(u64::MAX, 2)])).is_err());
    }

    #[test]
    pub(super) fn read_record_round_trips_and_bounds_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DELTA_FILE);
        assert!(read_record(&path).unwrap().is_none());
        let r = record(vec![(1, 4)]);
        write_record(dir.path(), &path, &r).unwrap();
        assert_eq!(read_record(&path).unwrap(), Some(r));
        std::fs::write(&path, vec![0u8; MAX_DELTA_FILE as usize + 10]).unwrap();
        assert!(matches!(
            read_record(&path),
            Err(MemoryDeltaError::Corrupt { .. })
        ));
    }
}
