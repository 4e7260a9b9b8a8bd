//! Code artifacts: fetching and unpacking a build's (hostile) input, and
//! turning Dockerfile `COPY`/`ADD` sources into tar streams for a build VM.
//!
//! [`validate_uri`] checks a `codeArtifact.uri` at the API edge (syntax,
//! file roots, the addresses an http host resolves to: [`SourcePolicy`]);
//! [`fetch`] copies or unpacks it into a fresh directory under [`Limits`];
//! [`Context`] then answers the builder's questions about that tree.

mod address;
mod context;
mod copy_dir;
mod copy_tar;
mod download;
mod error;
mod fetch;
mod ignore;
mod pattern;
mod policy;
mod s3;
mod source;
mod spool;
mod tree_writer;
mod unzip;

pub use address::{classify, AddressClass};
pub use context::{Context, Entry, EntryKind, Selected};
pub use copy_tar::{Compression, CopyTar};
pub use error::ArtifactError;
pub use fetch::fetch;
pub use policy::SourcePolicy;
pub use s3::{check_bucket as check_s3_bucket, client as s3_client, S3Settings, MAX_KEY_LEN};
pub use source::{parse_uri, validate_uri, ArtifactSource, HOST_LOOKUP_TIMEOUT, MAX_URI_LEN};

const MIB: u64 = 1024 * 1024;

/// Bounds on what an artifact may make Ember do. Every one of them is
/// enforced on the bytes actually seen, never on sizes an archive declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes an `http(s)` or `s3` download may have.
    pub max_download_bytes: u64,
    /// Files, directories and symlinks in the unpacked tree.
    pub max_entries: usize,
    /// Regular-file bytes in the unpacked tree.
    pub max_total_bytes: u64,
    /// Bytes of one regular file.
    pub max_file_bytes: u64,
    /// Inflated/compressed ratio, per zip entry (above 1 MiB) and overall.
    pub max_ratio: u64,
    /// Bytes in an entry's relative path.
    pub max_path_len: usize,
    /// Components in an entry's relative path.
    pub max_depth: usize,
    /// Where the artifact may come from, checked again at fetch time.
    pub sources: SourcePolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_download_bytes: 512 * MIB,
            max_entries: 20_000,
            max_total_bytes: 2048 * MIB,
            max_file_bytes: 1024 * MIB,
            max_ratio: 200,
            max_path_len: 4096,
            max_depth: 64,
            sources: SourcePolicy::default(),
        }
    }
}
