use std::io;

/// Why a layer could not be applied. Entry names are the layer's own
/// paths, as a user would find them in `tar tf`.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("unknown layer compression {0:?} (expected none, gzip or zstd)")]
    UnknownCompression(String),
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    #[error("layer entry {entry:?} escapes the image root")]
    Escape { entry: String },
    #[error("layer entry {entry:?} is a device node; images may not hold device nodes")]
    DeviceNode { entry: String },
    #[error("layer entry {entry:?} has an unsupported type ({kind})")]
    UnsupportedType { entry: String, kind: String },
    #[error("layer entry {entry:?}: {problem}")]
    Invalid { entry: String, problem: String },
    #[error("layer exceeds the limit on {what} ({limit})")]
    Limit { what: &'static str, limit: u64 },
    #[error("layer entry {entry:?}: cannot set extended attribute {name:?}: {source}")]
    Xattr {
        entry: String,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?}: {action}: {source}")]
    Io {
        entry: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

impl LayerError {
    pub(crate) fn io<'a>(
        entry: &'a str,
        action: &'static str,
    ) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            entry: entry.to_string(),
            action,
            source,
        }
    }

    pub(crate) fn invalid(entry: &str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            entry: entry.to_string(),
            problem: problem.into(),
        }
    }
}
