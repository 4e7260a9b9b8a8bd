//! The jail's file tree, planned in the parent: which folders to make in
//! the jail's empty root, which symlinks, and what to bind where. The
//! child only replays the plan (it may not allocate), see `spawn.rs`.
//!
//! Every path keeps its host name inside the jail, so the paths on QEMU's
//! command line and in qcow2 backing-file headers work unchanged. A path
//! that runs through symlinks on the host (`/lib -> usr/lib`) gets the same
//! symlinks in the jail, and only its final target is bound.

use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use super::JailError;

/// Symlinks followed while mirroring one path, as the kernel's own limit.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read-only, no devices, no set-uid, no execution.
    ReadOnly,
    /// Read-only program files: executable.
    Program,
    /// The VM's own folder: writable, nothing executable.
    Writable,
    /// A device node (read-write, as the host's).
    Device,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Dir(PathBuf),
    Symlink {
        link: PathBuf,
        target: PathBuf,
    },
    Bind {
        path: PathBuf,
        is_dir: bool,
        access: Access,
    },
}

impl Step {
    pub fn path(&self) -> &Path {
        match self {
            Step::Dir(p) => p,
            Step::Symlink { link, .. } => link,
            Step::Bind { path, .. } => path,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct MountPlan {
    /// In the order the child replays them: folders before what is in them.
    steps: Vec<Step>,
}

impl MountPlan {
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Makes `path` (file or folder) visible in the jail under its own
    /// name with `access`.
    pub fn add(&mut self, path: &Path, access: Access) -> Result<(), JailError> {
        if !path.is_absolute() {
            return Err(unsafe_path(path, "must be absolute"));
        }
        let mut pending = normal(path)?;
        for _ in 0..MAX_SYMLINKS {
            match self.mirror_once(&pending, access)? {
                None => return Ok(()),
                Some(next) => pending = next,
            }
        }
        Err(unsafe_path(path, "too many levels of symlinks"))
    }

    /// Walks `path` from the root, making folders and symlinks; returns the
    /// path to continue with after a symlink, or `None` once bound.
    fn mirror_once(&mut self, path: &Path, access: Access) -> Result<Option<PathBuf>, JailError> {
        let mut host = PathBuf::from("/");
        let parts: Vec<_> = path.components().skip(1).collect();
        for (i, part) in parts.iter().enumerate() {
            host.push(part);
            let last = i + 1 == parts.len();
            let meta = host
                .symlink_metadata()
                .map_err(JailError::io(format!("jail: look up {}", host.display())))?;
            let covered = self.covered(&host);
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&host)
                    .map_err(JailError::io(format!("jail: read link {}", host.display())))?;
                if !covered && !self.has(&host) {
                    self.steps.push(Step::Symlink {
                        link: host.clone(),
                        target: target.clone(),
                    });
                }
                let base = host.parent().unwrap_or(Path::new("/"));
                let mut next = if target.is_absolute() {
                    target
                } else {
                    base.join(target)
                };
                for rest in &parts[i + 1..] {
                    next.push(rest);
                }
                return normal(&next).map(Some);
            }
            if last {
                if !covered {
                    self.bind(&host, meta.is_dir(), access, &meta)?;
                }
                return Ok(None);
            }
            if !meta.is_dir() {
                return Err(unsafe_path(&host, "is not a folder"));
            }
            if !covered && !self.has(&host) {
                self.steps.push(Step::Dir(host.clone()));
            }
        }
        // The root itself: nothing to bind.
        Ok(None)
    }

    fn bind(
        &mut self,
        path: &Path,
        is_dir: bool,
        access: Access,
        meta: &std::fs::Metadata,
    ) -> Result<(), JailError> {
        let file_type = meta.file_type();
        match access {
            Access::Device if !file_type.is_char_device() => {
                return Err(unsafe_path(path, "is not a character device"))
            }
            Access::Device => {}
            _ if file_type.is_char_device() || file_type.is_block_device() => {
                return Err(unsafe_path(
                    path,
                    "is a device; only named devices enter a jail",
                ))
            }
            _ if !(is_dir || file_type.is_file()) => {
                return Err(unsafe_path(path, "is neither a file nor a folder"))
            }
            _ => {}
        }
        // The bind replaces whatever was planned at that path and, for a
        // folder, below it (the bind would hide it).
        self.steps
            .retain(|s| !(s.path() == path || is_dir && s.path().starts_with(path)));
        self.steps.push(Step::Bind {
            path: path.to_path_buf(),
            is_dir,
            access,
        });
        Ok(())
    }

    fn has(&self, path: &Path) -> bool {
        self.steps.iter().any(|s| s.path() == path)
    }

    /// Below a folder bound whole: the host's own content is there already.
    fn covered(&self, path: &Path) -> bool {
        self.steps.iter().any(|s| {
            matches!(s, Step::Bind { path: d, is_dir: true, .. } if path.starts_with(d) && path != d)
        })
    }
}

/// `path` with `.` and `..` resolved lexically (after a symlink target was
/// spliced in, `..` means the folder above on the host too, since every
/// symlink on the way was followed as on the host).
fn normal(path: &Path) -> Result<PathBuf, JailError> {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return Err(unsafe_path(path, "has a prefix")),
        }
    }
    Ok(out)
}

fn unsafe_path(path: &Path, reason: &str) -> JailError {
    JailError::UnsafeFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binds(plan: &MountPlan) -> Vec<(PathBuf, Access)> {
        plan.steps()
            .iter()
            .filter_map(|s| match s {
                Step::Bind { path, access, .. } => Some((path.clone(), *access)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn symlinked_paths_get_their_links_and_only_the_target_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("real/lib")).unwrap();
        std::fs::write(root.join("real/lib/libx.so.1.2"), b"x").unwrap();
        std::os::unix::fs::symlink("real", root.join("alias")).unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", root.join("real/lib/libx.so.1")).unwrap();
        let mut plan = MountPlan::default();
        plan.add(&root.join("alias/lib/libx.so.1"), Access::Program)
            .unwrap();
        assert_eq!(
            binds(&plan),
            [(root.join("real/lib/libx.so.1.2"), Access::Program)]
        );
        let links: Vec<_> = plan
            .steps()
            .iter()
            .filter_map(|s| match s {
                Step::Symlink { link, target } => Some((link.clone(), target.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            links,
            [
                (root.join("alias"), PathBuf::from("real")),
                (
                    root.join("real/lib/libx.so.1"),
                    PathBuf::from("libx.so.1.2")
                ),
            ]
        );
        // Folders come before what is in them.
        let dirs: Vec<_> = plan.steps().iter().map(Step::path).collect();
        let pos = |p: &Path| dirs.iter().position(|d| *d == p).unwrap();
        assert!(pos(&root.join("real/lib")) < pos(&root.join("real/lib/libx.so.1.2")));
    }

    #[test]
    fn a_bound_folder_covers_what_is_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::write(root.join("lib/a"), b"a").unwrap();
        let mut plan = MountPlan::default();
        plan.add(&root.join("lib/a"), Access::ReadOnly).unwrap();
        plan.add(&root.join("lib"), Access::Program).unwrap();
        plan.add(&root.join("lib/a"), Access::ReadOnly).unwrap();
        assert_eq!(binds(&plan), [(root.join("lib"), Access::Program)]);
    }

    #[test]
    fn devices_only_where_asked_for() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut plan = MountPlan::default();
        assert!(plan.add(Path::new("/dev/null"), Access::ReadOnly).is_err());
        plan.add(Path::new("/dev/null"), Access::Device).unwrap();
        assert!(plan.add(file.path(), Access::Device).is_err());
        plan.add(file.path(), Access::ReadOnly).unwrap();
        assert!(plan.add(Path::new("relative"), Access::ReadOnly).is_err());
        assert!(plan
            .add(Path::new("/nonexistent/x"), Access::ReadOnly)
            .is_err());
    }
}
