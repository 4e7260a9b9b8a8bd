//! Entry paths, and resolving them within the root the way securejoin
//! does: a symlink met on the way is followed, but as if the root were `/`.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::{LayerError, Limits};

/// The kernel's own bound on symlinks followed in one lookup.
const MAX_SYMLINKS: u32 = 40;

/// An entry's path inside the image: its normal components, no `.`, no
/// `..`, no leading `/`. Empty for the root itself (`./`).
pub(crate) struct EntryPath {
    pub display: String,
    pub components: Vec<OsString>,
}

impl EntryPath {
    pub fn parse(raw: &[u8], limits: &Limits) -> Result<Self, LayerError> {
        let display = String::from_utf8_lossy(raw).into_owned();
        if raw.len() > limits.max_path_len {
            return Err(LayerError::Limit {
                what: "path length",
                limit: limits.max_path_len as u64,
            });
        }
        let components = normal_components(raw, &display)?;
        Ok(Self {
            display,
            components,
        })
    }

    pub fn name(&self) -> Option<&OsStr> {
        self.components.last().map(OsString::as_os_str)
    }

    pub fn parent(&self) -> &[OsString] {
        let n = self.components.len().saturating_sub(1);
        &self.components[..n]
    }
}

/// The components of a path inside the image; `..` anywhere is refused
/// rather than clamped, since no honest layer writes one.
pub(crate) fn normal_components(raw: &[u8], display: &str) -> Result<Vec<OsString>, LayerError> {
    let mut components = Vec::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(name) => components.push(name.to_os_string()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(LayerError::Escape {
                    entry: display.to_string(),
                })
            }
        }
    }
    Ok(components)
}

/// Whether missing directories on the way are created or end the lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    Create,
    Stop,
}

/// Resolves the directory `components` names, within `root`. With
/// `Missing::Stop`, `None` when it does not exist or is not a directory
/// (nothing below it to look at); with `Missing::Create`, missing
/// directories are made (0755) and a non-directory on the way is an error.
pub(crate) fn resolve_dir(
    root: &Path,
    components: &[OsString],
    missing: Missing,
    entry: &str,
) -> Result<Option<PathBuf>, LayerError> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        if name.is_empty() || name == "." {
            continue;
        }
        let candidate = join(root, &resolved).join(&name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(LayerError::invalid(
                        entry,
                        "too many levels of symbolic links",
                    ));
                }
                let target = std::fs::read_link(&candidate)
                    .map_err(LayerError::io(entry, "reading a symlink on the way"))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for part in target.components().rev() {
                    match part {
                        Component::Normal(n) => pending.push_front(n.to_os_string()),
                        Component::ParentDir => pending.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(meta) if meta.is_dir() => resolved.push(name),
            Ok(_) if missing == Missing::Stop => return Ok(None),
            Ok(_) => {
                return Err(LayerError::invalid(
                    entry,
                    format!("{} is not a directory", display(&resolved, &name)),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if missing == Missing::Stop {
                    return Ok(None);
                }
                create_dir(&candidate)
                    .map_err(LayerError::io(entry, "creating a parent directory"))?;
                resolved.push(name);
            }
            Err(e) => return Err(LayerError::io(entry, "looking up a parent directory")(e)),
        }
    }
    Ok(Some(join(root, &resolved)))
}

/// Like `resolve_dir` with `Missing::Create`, which always yields a path.
pub(crate) fn make_dir(
    root: &Path,
    components: &[OsString],
    entry: &str,
) -> Result<PathBuf, LayerError> {
    resolve_dir(root, components, Missing::Create, entry)?
        .ok_or_else(|| LayerError::invalid(entry, "parent directory vanished"))
}

fn create_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o755).create(path)?;
    // The umask may have taken bits off; parents made for an entry are 0755.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

fn join(root: &Path, resolved: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(resolved);
    path
}

fn display(resolved: &[OsString], name: &OsStr) -> String {
    let mut path = PathBuf::from("/");
    path.extend(resolved);
    path.push(name);
    path.display().to_string()
}

/// Removes whatever is at `path`, never following it: a directory with
/// everything in it, anything else by unlinking. Missing is fine.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
