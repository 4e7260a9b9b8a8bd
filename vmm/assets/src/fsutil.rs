//! Small filesystem helpers shared by the asset builders.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::AssetError;

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn sha256_file(path: &Path) -> Result<String, AssetError> {
    let mut file = File::open(path).map_err(AssetError::io("open for hashing", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(AssetError::io("read for hashing", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn create_dir_all(path: &Path) -> Result<(), AssetError> {
    fs::create_dir_all(path).map_err(AssetError::io("create directory", path))
}

/// Writes `data` to `path` via a temp file in the same directory so readers
/// never observe a half-written file, even across a crash.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), AssetError> {
    let dir = parent(path)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(AssetError::io("create temp file", dir))?;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(AssetError::io("write temp file", tmp.path()))?;
    persist_readable(tmp, path)
}

/// Renames a finished temp file over `path`. Temp files start out 0600;
/// assets are made world-readable so a QEMU running as another user can
/// open them.
pub(crate) fn persist_readable(tmp: NamedTempFile, path: &Path) -> Result<(), AssetError> {
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(AssetError::io("chmod", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| AssetError::io("rename into place", path)(e.error))?;
    Ok(())
}

pub(crate) fn parent(path: &Path) -> Result<&Path, AssetError> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        _ => Ok(Path::new(".")),
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), AssetError> {
    let mut data = serde_json::to_vec_pretty(value).map_err(|source| AssetError::Manifest {
        path: path.to_path_buf(),
        source,
    })?;
    data.push(b'\n');
    write_atomic(path, &data)
}

/// Returns `Ok(None)` when the manifest is absent or unreadable JSON: both
/// simply mean "not cached", and the rebuild overwrites it.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let data = fs::read(path).ok()?;
    match serde_json::from_slice(&data) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring corrupt manifest");
            None
        }
    }
}

/// An exclusive advisory lock held until dropped, so concurrent processes
/// sharing one cache directory build each asset only once.
pub(crate) struct LockGuard {
    _file: File,
}

pub(crate) fn lock_exclusive(path: &Path) -> Result<LockGuard, AssetError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(AssetError::io("open lock file", path))?;
    loop {
        // SAFETY: the descriptor is owned by `file`, which outlives this call;
        // flock has no memory-safety preconditions beyond a valid fd.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(LockGuard { _file: file });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(AssetError::io("lock", path)(err));
        }
    }
}
