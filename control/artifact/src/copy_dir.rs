//! Copies a directory artifact, so the build never sees later changes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use walkdir::WalkDir;

use crate::tree_writer::{parse_entry_path, TreeWriter};
use crate::{ArtifactError, Limits};

/// Copies regular files, directories and inside-pointing symlinks from
/// `src` into the empty directory `dest`; anything else is refused.
/// Returns the regular-file bytes copied. Blocking.
pub(crate) fn copy(src: &Path, dest: &Path, limits: &Limits) -> Result<u64, ArtifactError> {
    let mut tree = TreeWriter::new(dest, limits, None);
    let walk = WalkDir::new(src)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for item in walk {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(src).to_path_buf();
            ArtifactError::io(path, e.into())
        })?;
        if item.depth() > limits.max_depth {
            return Err(ArtifactError::entry(
                item.path().display(),
                "path nested too deep",
            ));
        }
        let rel = item.path().strip_prefix(src).map_err(|_| {
            ArtifactError::entry(item.path().display(), "outside the source directory")
        })?;
        let Some(name) = rel.to_str() else {
            return Err(ArtifactError::entry(rel.display(), "path is not UTF-8"));
        };
        let Some(entry) = parse_entry_path(name, limits)? else {
            continue;
        };
        let meta = item
            .metadata()
            .map_err(|e| ArtifactError::io(item.path(), e.into()))?;
        let kind = item.file_type();
        if kind.is_dir() {
            tree.dir(&entry, meta.mode())?;
        } else if kind.is_file() {
            let mut input = open_nofollow(item.path())?;
            tree.file(&entry, meta.mode(), &mut input, None)?;
        } else if kind.is_symlink() {
            let target =
                std::fs::read_link(item.path()).map_err(|e| ArtifactError::io(item.path(), e))?;
            tree.symlink(&entry, &target)?;
        } else {
            return Err(ArtifactError::entry(
                name,
                "devices, FIFOs and sockets are not allowed",
            ));
        }
    }
    let total = tree.finish()?;
    tracing::debug!(src = %src.display(), dest = %dest.display(), total, "copied directory artifact");
    Ok(total)
}

/// Opens a file for reading without following a symlink swapped in
/// since the walk looked at it.
pub(crate) fn open_nofollow(path: &Path) -> Result<File, ArtifactError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| ArtifactError::io(path, e))
}
