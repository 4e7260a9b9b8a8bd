//! What a launch leaves in the VM's runtime directory so that another
//! backend instance (a restarted daemon) can take the VM over: which
//! process runs it, how it was configured, how its memory is backed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cgroup::VmCgroup;
use super::vm::Memory;
use crate::backend::{Accel, VmConfig};
use crate::framed::{self, FramedError};

pub(super) const RECORD_FILE: &str = "runtime.ember";
const MAGIC: [u8; 8] = *b"EMBERRUN";
const FORMAT_VERSION: u32 = 1;
/// A record is a few hundred bytes (more with many disk checkpoints).
const MAX_RECORD: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable runtime record: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RuntimeRecord {
    pub pid: u32,
    /// The process's start time (clock ticks after boot, /proc/PID/stat):
    /// with the pid, it names one process even after pid reuse.
    pub start_ticks: u64,
    pub vm: VmConfig,
    pub memory: Memory,
    pub accel: Accel,
    /// The QEMU that runs the VM, which a later snapshot must record.
    pub qemu_version: String,
    pub started_unix_ms: u64,
    /// Disk layers frozen by `checkpoint_disk`, oldest first.
    #[serde(default)]
    pub checkpoints: Vec<PathBuf>,
    /// The VM's cgroup, removed when the VM ends.
    #[serde(default)]
    pub cgroup: Option<VmCgroup>,
    /// The uid and gid QEMU runs as, when not root.
    #[serde(default)]
    pub run_as: Option<(u32, u32)>,
}

impl RuntimeRecord {
    pub fn write(&self, dir: &Path) -> Result<(), RecordError> {
        let path = dir.join(RECORD_FILE);
        let payload = serde_json::to_vec(self).map_err(|e| RecordError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        framed::write(&path, MAGIC, FORMAT_VERSION, &payload)
            .map_err(|source| RecordError::Io { path, source })
    }

    pub fn load(dir: &Path) -> Result<Self, RecordError> {
        let path = dir.join(RECORD_FILE);
        let file = std::fs::File::open(&path).map_err(|source| RecordError::Io {
            path: path.clone(),
            source,
        })?;
        let corrupt = |reason: String| RecordError::Corrupt {
            path: path.clone(),
            reason,
        };
        let payload = match framed::read(file, MAGIC, FORMAT_VERSION, MAX_RECORD) {
            Ok(p) => p,
            Err(FramedError::Io(source)) => {
                return Err(RecordError::Io {
                    path: path.clone(),
                    source,
                })
            }
            Err(e) => return Err(corrupt(e.to_string())),
        };
        serde_json::from_slice(&payload).map_err(|e| corrupt(e.to_string()))
    }
}

/// The start time of process `pid`, or `None` when there is no such
/// process (or it is a zombie: it runs nothing any more).
pub(super) fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Field 22 of /proc/PID/stat; fields count after the `(comm)`, which may
/// itself contain spaces and parentheses.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

pub(super) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_come_from_field_22_and_zombies_have_none() {
        let stat =
            "42 (qemu (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 98765 1000";
        assert_eq!(parse_start_ticks(stat), Some(98765));
        let zombie = stat.replace(") S ", ") Z ");
        assert_eq!(parse_start_ticks(&zombie), None);
        assert_eq!(parse_start_ticks("garbage"), None);
        let me = process_start_ticks(std::process::id());
        assert!(me.is_some());
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let rec = RuntimeRecord {
            pid: 7,
            start_ticks: 9,
            vm: VmConfig::new("t", Path::new("/k"), Path::new("/i"), Path::new("/r")),
            memory: Memory::OwnFile,
            accel: Accel::Tcg,
            qemu_version: "QEMU 7.2".into(),
            started_unix_ms: 1,
            checkpoints: vec![PathBuf::from("/l1")],
            cgroup: None,
            run_as: Some((5, 6)),
        };
        rec.write(dir.path()).unwrap();
        assert_eq!(RuntimeRecord::load(dir.path()).unwrap(), rec);
        std::fs::write(dir.path().join(RECORD_FILE), b"EMBERRUN").unwrap();
        assert!(matches!(
            RuntimeRecord::load(dir.path()),
            Err(RecordError::Corrupt { .. })
        ));
    }
}
