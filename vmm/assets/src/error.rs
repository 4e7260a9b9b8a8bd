use std::path::PathBuf;

/// Everything that can go wrong while fetching or building guest assets.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("package {package}: {reason}")]
    Package { package: String, reason: String },
    #[error("kernel image {path}: {reason}")]
    KernelImage { path: PathBuf, reason: String },
    #[error("kernel module {path}: compressed modules are not supported")]
    CompressedModule { path: PathBuf },
    #[error("kernel module {module} is missing from the package")]
    ModuleMissing { module: String },
    #[error("kernel module {module} needs {dependency}, which is not in the selected set")]
    ModuleDependencyMissing { module: String, dependency: String },
    #[error("kernel module {path} has no depends= entry in .modinfo")]
    ModinfoMissing { path: PathBuf },
    #[error("kernel modules have a dependency cycle among: {0}")]
    ModuleCycle(String),
    #[error("cpio entry {name}: {reason}")]
    Cpio { name: String, reason: String },
    #[error("building {image} needs root (debootstrap)")]
    NeedsRoot { image: &'static str },
    #[error("manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl AssetError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| AssetError::Io {
            context,
            path,
            source,
        }
    }
}
