use std::path::PathBuf;

/// Everything that can go wrong while fetching, unpacking or reading a code
/// artifact. Messages name the offending URI, entry or pattern, because they
/// end up in front of the person who uploaded the artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("invalid code artifact URI: {0}")]
    InvalidUri(String),
    #[error(
        "{uri}: artifacts are fetched from public addresses only, and this host is not one \
         (emberd --allow-private-artifact-hosts lifts this)"
    )]
    RefusedHost { uri: String },
    #[error("{uri} is not a file or folder under an artifact root (emberd --artifact-root)")]
    OutsideArtifactRoots { uri: String },
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("destination {0} already exists")]
    DestinationExists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("downloading {url}: {source}")]
    Download {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("codeArtifact {uri}: {reason}")]
    S3 { uri: String, reason: String },
    #[error("downloading {url}: the server answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("downloading {url}: the artifact is larger than {limit} bytes")]
    DownloadTooLarge { url: String, limit: u64 },
    #[error("the code artifact is not a readable zip archive: {0}")]
    BadZip(#[source] zip::result::ZipError),
    #[error("artifact entry {entry:?} rejected: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    #[error("the artifact has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("artifact entry {entry:?} is larger than {limit} bytes")]
    EntryTooLarge { entry: String, limit: u64 },
    #[error("the artifact unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("artifact entry {entry:?} inflates more than {limit}:1 (possible zip bomb)")]
    EntryRatioTooHigh { entry: String, limit: u64 },
    #[error("the artifact inflates more than {limit}:1 overall (possible zip bomb)")]
    RatioTooHigh { limit: u64 },
    #[error("no Dockerfile at the artifact's root")]
    NoDockerfile,
    #[error("the Dockerfile is larger than {limit} bytes")]
    DockerfileTooLarge { limit: u64 },
    #[error("the Dockerfile is not valid UTF-8")]
    DockerfileNotUtf8,
    #[error("invalid pattern {pattern:?}: {reason}")]
    BadPattern {
        pattern: String,
        reason: &'static str,
    },
    #[error("source {pattern:?} points outside the build context")]
    SourceEscapes { pattern: String },
    #[error("source {pattern:?} matches no file in the build context")]
    NoMatch { pattern: String },
    #[error("symlink {path} points outside the build context")]
    SymlinkEscapes { path: PathBuf },
    #[error("invalid COPY destination {dest:?}: {reason}")]
    BadDestination { dest: String, reason: &'static str },
    #[error("{path} changed while it was being read")]
    Changed { path: PathBuf },
    #[error("unpacking task failed: {0}")]
    Task(String),
}

impl ArtifactError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ArtifactError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn entry(entry: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        ArtifactError::UnsafeEntry {
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }
}
