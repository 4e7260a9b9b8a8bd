//! The on-disk snapshot format.
//!
//! A snapshot directory holds the guest memory image, the VMM's device
//! state and the disk overlay, described by one manifest file. The manifest
//! is a single typed struct behind a fixed header (magic, format version,
//! payload length, CRC-32), so a truncated or corrupted directory is
//! rejected before any VMM process is started.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{Accel, VmConfig};
use crate::framed::FramedError;

pub const MANIFEST_FILE: &str = "snapshot.ember";
const MAGIC: [u8; 8] = *b"EMBERSNP";
pub const FORMAT_VERSION: u32 = 1;
/// A manifest is a few hundred bytes; anything big is not one of ours.
const MAX_MANIFEST: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: not a snapshot directory (no {MANIFEST_FILE})")]
    Missing { path: PathBuf },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: cannot be restored here: {reason}")]
    Incompatible { path: PathBuf, reason: String },
    #[error("{path}: snapshot format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One file of the snapshot, checked on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Name relative to the snapshot directory.
    pub name: String,
    pub size: u64,
    /// CRC-32 of the contents, for files small enough to check on every
    /// restore (device state); `None` for memory, checked by size only.
    pub crc32: Option<u32>,
}

/// How guest RAM is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MemoryImage {
    /// A raw image of guest RAM, mapped copy-on-write by every restore.
    File(FileRecord),
    /// RAM pages are inside the device-state stream.
    InStream,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub vm: VmConfig,
    pub accel: Accel,
    /// The VMM that wrote it; device state is only portable within one.
    pub vmm_version: String,
    pub created_unix_ms: u64,
    pub memory: MemoryImage,
    pub device_state: FileRecord,
    pub disk: FileRecord,
}

/// What a snapshot cost, for callers and benchmarks.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub dir: PathBuf,
    /// Bytes of memory image actually stored (allocated blocks; zero pages
    /// are holes).
    pub memory_bytes: u64,
    pub device_state_bytes: u64,
    pub disk_bytes: u64,
    pub duration_ms: u64,
}

impl SnapshotInfo {
    /// The sizes of the snapshot in `dir`, from its manifest; an error
    /// unless `dir` holds a whole snapshot. Its duration is unknown (0).
    pub fn read(dir: &Path) -> Result<Self, SnapshotError> {
        let manifest = SnapshotManifest::load(dir)?;
        let allocated = |name: &str| crate::qemu::files::allocated_bytes(&dir.join(name));
        let memory_bytes = match &manifest.memory {
            MemoryImage::File(rec) => allocated(&rec.name),
            MemoryImage::InStream => 0,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            memory_bytes,
            device_state_bytes: manifest.device_state.size,
            disk_bytes: allocated(&manifest.disk.name),
            duration_ms: 0,
        })
    }
}

impl SnapshotManifest {
    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        let path = dir.join(MANIFEST_FILE);
        let payload = serde_json::to_vec(self).map_err(|e| SnapshotError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        crate::framed::write(&path, MAGIC, FORMAT_VERSION, &payload)
            .map_err(|source| SnapshotError::Io { path, source })
    }

    /// Reads and checks the manifest and the presence and sizes of the
    /// files it names (and the CRC of those small enough).
    pub fn load(dir: &Path) -> Result<Self, SnapshotError> {
        let path = dir.join(MANIFEST_FILE);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::Missing {
                    path: dir.to_path_buf(),
                })
            }
            Err(source) => return Err(SnapshotError::Io { path, source }),
        };
        let payload = match crate::framed::read(file, MAGIC, FORMAT_VERSION, MAX_MANIFEST) {
            Ok(p) => p,
            Err(FramedError::Version(found)) => return Err(SnapshotError::Version { path, found }),
            Err(FramedError::Io(source)) => return Err(SnapshotError::Io { path, source }),
            Err(e) => {
                return Err(SnapshotError::Corrupt {
                    path,
                    reason: format!("manifest: {e}"),
                })
            }
        };
        let manifest: Self =
            serde_json::from_slice(&payload).map_err(|e| SnapshotError::Corrupt {
                path: path.clone(),
                reason: format!("manifest: {e}"),
            })?;
        manifest.check_files(dir)?;
        Ok(manifest)
    }

    fn check_files(&self, dir: &Path) -> Result<(), SnapshotError> {
        let mut records = vec![&self.device_state, &self.disk];
        if let MemoryImage::File(m) = &self.memory {
            records.push(m);
        }
        for rec in records {
            let path = resolve(dir, &rec.name).ok_or_else(|| SnapshotError::Corrupt {
                path: dir.to_path_buf(),
                reason: format!("manifest names an unsafe file {:?}", rec.name),
            })?;
            let meta = std::fs::metadata(&path).map_err(|source| SnapshotError::Io {
                path: path.clone(),
                source,
            })?;
            if meta.len() != rec.size {
                return Err(SnapshotError::Corrupt {
                    path,
                    reason: format!("size {} but the manifest says {}", meta.len(), rec.size),
                });
            }
            if let Some(want) = rec.crc32 {
                let got = crc32_file(&path)?;
                if got != want {
                    return Err(SnapshotError::Corrupt {
                        path,
                        reason: "checksum mismatch".into(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Joins a manifest file name onto the snapshot dir, refusing anything
/// that could leave it.
pub fn resolve(dir: &Path, name: &str) -> Option<PathBuf> {
    let ok = !name.is_empty()
        && !name.contains('/')
        && !name.contains('\\')
        && name != "."
        && name != "..";
    ok.then(|| dir.join(name))
}

pub fn crc32_file(path: &Path) -> Result<u32, SnapshotError> {
    let mut f = std::fs::File::open(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path) -> SnapshotManifest {
        std::fs::write(dir.join("state"), b"device").unwrap();
        std::fs::write(dir.join("disk"), b"disk").unwrap();
        SnapshotManifest {
            vm: VmConfig::new("t", Path::new("/k"), Path::new("/i"), Path::new("/r")),
            accel: Accel::Tcg,
            vmm_version: "test".into(),
            created_unix_ms: 1,
            memory: MemoryImage::InStream,
            device_state: FileRecord {
                name: "state".into(),
                size: 6,
                crc32: Some(crc32fast::hash(b"device")),
            },
            disk: FileRecord {
                name: "disk".into(),
                size: 4,
                crc32: None,
            },
        }
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(dir.path());
        m.write(dir.path()).unwrap();
        assert_eq!(SnapshotManifest::load(dir.path()).unwrap(), m);

        std::fs::write(dir.path().join("state"), b"devicX").unwrap();
        assert!(matches!(
            SnapshotManifest::load(dir.path()),
            Err(SnapshotError::Corrupt { .. })
        ));
        std::fs::write(dir.path().join("state"), b"device").unwrap();

        let path = dir.path().join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(
            SnapshotManifest::load(dir.path()),
            Err(SnapshotError::Corrupt { .. })
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(SnapshotManifest::load(dir.path()).is_err());
    }

    #[test]
    fn missing_directory_and_unsafe_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            SnapshotManifest::load(&dir.path().join("nope")),
            Err(SnapshotError::Missing { .. })
        ));
        let mut m = manifest(dir.path());
        m.disk.name = "../disk".into();
        m.write(dir.path()).unwrap();
        assert!(SnapshotManifest::load(dir.path()).is_err());
    }
}
