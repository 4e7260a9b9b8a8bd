//! Blobs on disk by digest, shared by every pull that uses the folder.

use std::io::Write;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use crate::{Digest, RegistryError};

/// A folder of verified blobs, `sha256/<hex>`. A file appears there only
/// once its content matched its name, so whatever is there can be used.
#[derive(Clone, Debug)]
pub struct BlobCache {
    dir: PathBuf,
}

impl BlobCache {
    /// Uses (and creates) `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let dir = dir.into().join("sha256");
        std::fs::create_dir_all(&dir).map_err(|e| RegistryError::io(&dir, e))?;
        Ok(Self { dir })
    }

    /// Where the blob is (or would be).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        // `Digest` is 64 hex digits: the name cannot leave the folder.
        self.dir.join(digest.hex())
    }

    /// The blob's path if it is cached with the expected size.
    pub(crate) fn lookup(&self, digest: &Digest, size: u64) -> Option<PathBuf> {
        let path = self.path(digest);
        let meta = std::fs::metadata(&path).ok()?;
        (meta.is_file() && meta.len() == size).then_some(path)
    }

    /// A temp file in the cache's folder, to be filled and then published.
    pub(crate) fn writer(&self, digest: &Digest) -> Result<BlobWriter, RegistryError> {
        let file = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&self.dir)
            .map_err(|e| RegistryError::io(&self.dir, e))?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            written: 0,
            target: self.path(digest),
            expected: digest.clone(),
        })
    }
}

/// A blob being downloaded; dropped unpublished, its temp file vanishes.
pub(crate) struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    written: u64,
    target: PathBuf,
    expected: Digest,
}

impl BlobWriter {
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), RegistryError> {
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        // Chunks are a few KiB, written to a local file.
        self.file
            .write_all(chunk)
            .map_err(|e| RegistryError::io(self.file.path(), e))
    }

    /// Checks the digest and renames the file into place. Concurrent
    /// downloads of one blob each publish identical bytes with an atomic
    /// rename, so a reader sees one whole copy or the other.
    pub(crate) fn publish(mut self, what: &str) -> Result<PathBuf, RegistryError> {
        let actual = Digest::from_hasher(self.hasher);
        if actual != self.expected {
            return Err(RegistryError::DigestMismatch {
                what: what.to_string(),
                expected: self.expected,
                actual,
            });
        }
        let temp_path = self.file.path().to_path_buf();
        self.file
            .flush()
            .and_then(|()| self.file.as_file().sync_all())
            .map_err(|e| RegistryError::io(&temp_path, e))?;
        self.file
            .persist(&self.target)
            .map_err(|e| RegistryError::io(&temp_path, e.error))?;
        Ok(self.target)
    }
}
