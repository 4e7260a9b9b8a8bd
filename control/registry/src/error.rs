use std::path::PathBuf;

use crate::Digest;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },
    #[error("image {reference} not found: the registry has no such repository, tag or digest")]
    NotFound { reference: String },
    #[error("registry {registry} refused access to {repository}: {reason}")]
    Unauthorized {
        registry: String,
        repository: String,
        reason: String,
    },
    #[error("request to {url} failed: {}", causes(source))]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("{what} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("the image has {count} layers, more than the limit of {limit}")]
    TooManyLayers { count: usize, limit: usize },
    #[error("{what} has unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{reference} has no linux/amd64 image")]
    NoPlatform { reference: String },
    #[error("bad manifest: {reason}")]
    BadManifest { reason: String },
    #[error("bad image config: {reason}")]
    BadConfig { reason: String },
    #[error("registry credentials in {}: {reason}", path.display())]
    Credentials { path: PathBuf, reason: String },
    #[error("registry CA file {}: {reason}", path.display())]
    RegistryCa { path: PathBuf, reason: String },
    #[error("registry host {host} is refused: it is (or resolves to) a loopback, private or link-local address; an operator allows one with emberd's --private-registry HOST:PORT (HTTPS) or --insecure-registry HOST:PORT (plain HTTP)")]
    RefusedHost { host: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// reqwest's own message is "error sending request"; the reason (refused,
/// unknown issuer, timed out) is further down the chain.
fn causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
