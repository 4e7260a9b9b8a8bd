//! Image snapshots in an S3-compatible object store (`--blob-store
//! s3://bucket[/prefix]`), so any node can run an image another node built.
//!
//! A snapshot is a handful of files (the RAM image, qcow2 disk layers, a
//! raw base), cut into [`CHUNK_SIZE`] chunks stored under their sha256
//! (`{prefix}chunks/{sha256}`): a chunk another version or node already
//! uploaded is not uploaded again, and a chunk of zeros is not stored at
//! all. The index (`{prefix}snapshots/{sha256}`, named by its own digest)
//! lists every file with its size, backing file and chunk digests; it goes
//! up last, so an index that exists implies its chunks do.
//!
//! [`BlobStore::publish`] uploads, [`BlobStore::fetch`] downloads into an
//! empty directory, checking the index before it writes anything and every
//! chunk's length and digest as it arrives.

mod fetch;
mod index;
mod location;
mod publish;
mod s3;
mod sparse;

use std::path::{Path, PathBuf};

pub use location::BlobLocation;

/// The bytes of one chunk (the last chunk of a file may be shorter).
pub const CHUNK_SIZE: u64 = 4 << 20;

/// Files a snapshot may hold.
pub const MAX_FILES: usize = 256;

/// Bytes an index object may have.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;

/// Chunks uploaded or downloaded at once.
const IN_FLIGHT: usize = 8;

/// One file of a snapshot to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackFile {
    /// Its name inside the snapshot (and the fetched directory).
    pub name: String,
    /// Where it is now.
    pub path: PathBuf,
    /// The `name` of the snapshot's file this one is a qcow2 overlay of.
    pub backing: Option<String>,
}

/// One file [`BlobStore::fetch`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedFile {
    /// Its name, in the destination directory.
    pub name: String,
    pub size: u64,
    /// The `name` of the fetched file it is an overlay of.
    pub backing: Option<String>,
}

/// What [`BlobStore::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The snapshot's name: the lowercase hex sha256 of its index object.
    pub digest: String,
    /// The files' logical size, holes included.
    pub bytes: u64,
    /// Chunks in the index, zero ones included.
    pub chunks: u64,
    /// Chunks sent, the others being zero or already in the store.
    pub chunks_uploaded: u64,
    /// Chunks of zeros, not stored.
    pub chunks_zero: u64,
    /// Bytes sent for the chunks.
    pub bytes_uploaded: u64,
}

/// Bounds on what a fetched index may make a node write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// The files' logical size, holes included.
    pub max_total_bytes: u64,
    /// What the fetch writes: the bytes of its stored (non-zero) chunks,
    /// e.g. the disk the caller can spare.
    pub max_written_bytes: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_total_bytes: 64 << 30,
            max_written_bytes: u64::MAX,
        }
    }
}

/// Why a blob store operation failed, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The request itself is wrong (a location, a name, a digest).
    #[error("{0}")]
    Invalid(String),
    /// S3 refused, failed or did not answer. `key` is the `s3://` URI of
    /// the object (or the bucket) concerned.
    #[error("S3 {op} {key}: {reason}")]
    S3 {
        op: &'static str,
        key: String,
        reason: String,
    },
    /// The snapshot's index is not in the store.
    #[error("snapshot {digest} is not in the object store ({key})")]
    NotFound { digest: String, key: String },
    /// What the store holds is not what it should: a bad or mismatched
    /// index, a chunk of the wrong length or digest, a missing chunk.
    #[error("{what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The snapshot is bigger than [`FetchLimits`] allow.
    #[error("{what} holds {bytes} bytes, more than the limit of {limit}")]
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
    },
}

impl BlobError {
    fn io(path: &Path) -> impl Fn(std::io::Error) -> BlobError + '_ {
        move |source| BlobError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A bucket (and prefix) holding snapshots.
#[derive(Debug, Clone)]
pub struct BlobStore {
    client: aws_sdk_s3::Client,
    location: BlobLocation,
}

impl BlobStore {
    /// A client for `location`, made like the `s3://` artifacts' one
    /// (endpoint, path style, TLS, timeouts).
    pub async fn new(location: BlobLocation, s3: &ember_artifact::S3Settings) -> Self {
        BlobStore {
            client: ember_artifact::s3_client(s3).await,
            location,
        }
    }

    pub fn location(&self) -> &BlobLocation {
        &self.location
    }

    /// Whether the bucket answers (HeadBucket): a missing bucket, refused
    /// credentials or an unreachable endpoint is reported at start.
    pub async fn check(&self) -> Result<(), BlobError> {
        s3::head_bucket(&self.client, &self.location.bucket).await
    }

    /// Uploads every file as chunks and then the index; returns the index
    /// digest, the snapshot's name for [`fetch`](Self::fetch).
    pub async fn publish(&self, files: &[PackFile]) -> Result<Published, BlobError> {
        publish::publish(self, files).await
    }

    /// Fetches the snapshot `digest` into `dest` (an existing, empty
    /// directory), verifying everything; returns the files written. On an
    /// error `dest` may hold partial files: the caller removes it.
    pub async fn fetch(
        &self,
        digest: &str,
        dest: &Path,
        limits: &FetchLimits,
    ) -> Result<Vec<FetchedFile>, BlobError> {
        fetch::fetch(self, digest, dest, limits).await
    }

    fn chunk_key(&self, digest: &str) -> String {
        format!("{}chunks/{digest}", self.location.prefix)
    }

    fn index_key(&self, digest: &str) -> String {
        format!("{}snapshots/{digest}", self.location.prefix)
    }

    /// `s3://bucket/key`, for messages.
    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.location.bucket)
    }
}

/// Runs `f` on the blocking pool; a panic there becomes an I/O error on
/// `path`.
async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(BlobError::io(path)(std::io::Error::other(e))))
}
