//! Where a download lands: an unnamed temporary file in the build's folder
//! (it vanishes when dropped) that refuses to grow past the download limit,
//! whichever protocol the bytes come over.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{ArtifactError, Limits};

pub(crate) struct Spool {
    file: File,
    dir: PathBuf,
    uri: String,
    received: u64,
    limit: u64,
}

impl Spool {
    /// Refuses at once when the sender already declared more than the
    /// limit; the declared length is never trusted beyond that.
    pub(crate) fn new(
        dir: &Path,
        uri: &str,
        limits: &Limits,
        declared: Option<u64>,
    ) -> Result<Self, ArtifactError> {
        let limit = limits.max_download_bytes;
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large(uri, limit));
        }
        Ok(Spool {
            file: tempfile::tempfile_in(dir).map_err(|e| ArtifactError::io(dir, e))?,
            dir: dir.to_path_buf(),
            uri: uri.to_string(),
            received: 0,
            limit,
        })
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        self.received += chunk.len() as u64;
        if self.received > self.limit {
            return Err(too_large(&self.uri, self.limit));
        }
        // Small blocking writes to a local file; a chunk is a few KiB.
        self.file
            .write_all(chunk)
            .map_err(|e| ArtifactError::io(&self.dir, e))
    }

    /// The whole download, rewound.
    pub(crate) fn finish(mut self) -> Result<File, ArtifactError> {
        self.file
            .flush()
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(|e| ArtifactError::io(&self.dir, e))?;
        tracing::debug!(uri = %self.uri, received = self.received, "downloaded artifact");
        Ok(self.file)
    }
}

fn too_large(uri: &str, limit: u64) -> ArtifactError {
    ArtifactError::DownloadTooLarge {
        url: uri.to_string(),
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn limits(max: u64) -> Limits {
        Limits {
            max_download_bytes: max,
            ..Limits::default()
        }
    }

    #[test]
    fn bytes_past_the_limit_or_a_declared_excess_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = limits(10);
        assert!(matches!(
            Spool::new(dir.path(), "s3://b/k", &l, Some(11)),
            Err(ArtifactError::DownloadTooLarge { limit: 10, .. })
        ));
        let mut spool = Spool::new(dir.path(), "s3://b/k", &l, Some(1)).unwrap();
        spool.push(b"0123456789").unwrap();
        assert!(matches!(
            spool.push(b"x"),
            Err(ArtifactError::DownloadTooLarge { .. })
        ));
        let mut spool = Spool::new(dir.path(), "s3://b/k", &l, None).unwrap();
        spool.push(b"hello").unwrap();
        let mut back = String::new();
        spool.finish().unwrap().read_to_string(&mut back).unwrap();
        assert_eq!(back, "hello");
        // Unnamed: nothing is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
