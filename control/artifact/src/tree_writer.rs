//! Writes an untrusted tree (zip entries, a copied directory) into a fresh
//! directory without ever writing outside it.
//!
//! The writer is the only one writing under its root, so it knows exactly
//! which relative paths are directories it made. A path may only pass
//! through those: never through a symlink or a file an earlier entry made.
//! Leaves are created with `O_CREAT|O_EXCL|O_NOFOLLOW` as a second line of
//! defence, so a surprise on disk fails instead of being followed.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::{ArtifactError, Limits};

/// Bytes written per entry below which the per-entry ratio is not checked:
/// small text files legitimately compress far beyond any sane ratio.
const RATIO_FLOOR: u64 = 1024 * 1024;

/// A relative path split into checked components, with the name it had in
/// the input for error messages.
pub(crate) struct EntryPath {
    pub(crate) display: String,
    pub(crate) rel: PathBuf,
}

/// Parses an entry name ('/'-separated, relative) under the limits: no
/// absolute paths, no `..`, no NUL, bounded length and depth. Empty and `.`
/// components are dropped. `Ok(None)` for a name that denotes the root.
pub(crate) fn parse_entry_path(
    name: &str,
    limits: &Limits,
) -> Result<Option<EntryPath>, ArtifactError> {
    let reject = |reason: &str| Err(ArtifactError::entry(name, reason));
    if name.len() > limits.max_path_len {
        return reject("path too long");
    }
    if name.contains('\0') {
        return reject("NUL byte in path");
    }
    if name.starts_with('/') {
        return reject("absolute path");
    }
    let mut rel = PathBuf::new();
    let mut depth = 0;
    for part in name.split('/') {
        match part {
            "" | "." => continue,
            ".." => return reject("'..' in path"),
            _ => {
                depth += 1;
                if depth > limits.max_depth {
                    return reject("path nested too deep");
                }
                rel.push(part);
            }
        }
    }
    if depth == 0 {
        return Ok(None);
    }
    Ok(Some(EntryPath {
        display: name.to_string(),
        rel,
    }))
}

/// Whether a symlink at `link` (relative to the root) with `target` stays
/// inside the root.
///
/// The target must be some `..` (no more than the link's depth) followed by
/// plain names. A `..` after a name is refused: if that name is itself a
/// symlink (`s -> .`), the kernel resolves `s/..` differently from the
/// lexical reading, and `s/s/../..` would climb out. With the rule, every
/// link resolves inside the root by induction over the links it goes through.
pub(crate) fn symlink_stays_inside(link: &Path, target: &Path) -> bool {
    if target.as_os_str().is_empty() || target.is_absolute() {
        return false;
    }
    let mut depth = link.components().count().saturating_sub(1);
    let mut descended = false;
    for part in target.components() {
        match part {
            Component::Normal(_) => {
                depth += 1;
                descended = true;
            }
            Component::CurDir => {}
            Component::ParentDir if descended => return false,
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Keeps what has been written and how much may still be written.
pub(crate) struct TreeWriter<'a> {
    root: PathBuf,
    limits: &'a Limits,
    /// Caps total bytes by the input's size (`max_ratio` overall), if known.
    overall_cap: Option<(u64, u64)>,
    dirs: HashSet<PathBuf>,
    leaves: HashSet<PathBuf>,
    dir_modes: HashMap<PathBuf, u32>,
    entries: usize,
    total_bytes: u64,
}

impl<'a> TreeWriter<'a> {
    /// `root` must exist and be empty; `compressed_len` is the archive's
    /// size on disk when the input is compressed.
    pub(crate) fn new(root: &Path, limits: &'a Limits, compressed_len: Option<u64>) -> Self {
        let overall_cap = compressed_len.map(|len| {
            (
                len.saturating_mul(limits.max_ratio).max(RATIO_FLOOR),
                limits.max_ratio,
            )
        });
        let mut dirs = HashSet::new();
        dirs.insert(PathBuf::new());
        TreeWriter {
            root: root.to_path_buf(),
            limits,
            overall_cap,
            dirs,
            leaves: HashSet::new(),
            dir_modes: HashMap::new(),
            entries: 0,
            total_bytes: 0,
        }
    }

    fn count_entry(&mut self) -> Result<(), ArtifactError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArtifactError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Makes sure every parent of `entry` is a directory this writer made,
    /// creating the missing ones.
    fn prepare_parents(&mut self, entry: &EntryPath) -> Result<(), ArtifactError> {
        let mut prefix = PathBuf::new();
        let parents = entry
            .rel
            .parent()
            .map(|p| p.components().count())
            .unwrap_or(0);
        for part in entry.rel.components().take(parents) {
            prefix.push(part);
            if self.dirs.contains(&prefix) {
                continue;
            }
            if self.leaves.contains(&prefix) {
                return Err(ArtifactError::entry(
                    &entry.display,
                    "path goes through a symlink or file",
                ));
            }
            self.make_dir(&prefix, &entry.display)?;
        }
        Ok(())
    }

    fn make_dir(&mut self, rel: &Path, display: &str) -> Result<(), ArtifactError> {
        let path = self.root.join(rel);
        // Owner rwx while unpacking; the entry's own mode is applied at the end.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => ArtifactError::entry(display, "duplicate entry"),
                _ => ArtifactError::io(&path, e),
            })?;
        self.count_entry()?;
        self.dirs.insert(rel.to_path_buf());
        Ok(())
    }

    fn claim_leaf(&mut self, entry: &EntryPath) -> Result<(), ArtifactError> {
        if self.dirs.contains(&entry.rel) || !self.leaves.insert(entry.rel.clone()) {
            return Err(ArtifactError::entry(&entry.display, "duplicate entry"));
        }
        self.count_entry()
    }

    /// A directory entry; `mode` is applied when the tree is finished.
    pub(crate) fn dir(&mut self, entry: &EntryPath, mode: u32) -> Result<(), ArtifactError> {
        self.prepare_parents(entry)?;
        if self.leaves.contains(&entry.rel) || self.dir_modes.contains_key(&entry.rel) {
            return Err(ArtifactError::entry(&entry.display, "duplicate entry"));
        }
        if !self.dirs.contains(&entry.rel) {
            self.make_dir(&entry.rel, &entry.display)?;
        }
        self.dir_modes.insert(entry.rel.clone(), dir_mode(mode));
        Ok(())
    }

    /// A regular file, streamed from `data`. `compressed_size` enables the
    /// per-entry ratio check. Sizes are counted on the bytes read, and
    /// reading stops just past the first cap hit.
    pub(crate) fn file(
        &mut self,
        entry: &EntryPath,
        mode: u32,
        data: &mut dyn Read,
        compressed_size: Option<u64>,
    ) -> Result<u64, ArtifactError> {
        self.prepare_parents(entry)?;
        self.claim_leaf(entry)?;
        let limits = self.limits;
        let total_room = limits.max_total_bytes.saturating_sub(self.total_bytes);
        let ratio_room = compressed_size
            .map(|c| c.saturating_mul(limits.max_ratio).max(RATIO_FLOOR))
            .unwrap_or(u64::MAX);
        let overall_room = self
            .overall_cap
            .map(|(cap, _)| cap.saturating_sub(self.total_bytes))
            .unwrap_or(u64::MAX);
        let cap = limits
            .max_file_bytes
            .min(total_room)
            .min(ratio_room)
            .min(overall_room);

        let path = self.root.join(&entry.rel);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| ArtifactError::io(&path, e))?;
        let written = io::copy(&mut data.take(cap.saturating_add(1)), &mut out).map_err(|e| {
            ArtifactError::entry(&entry.display, format!("cannot read its data: {e}"))
        })?;
        if written > cap {
            return Err(self.which_cap(entry, written, ratio_room, overall_room));
        }
        out.flush().map_err(|e| ArtifactError::io(&path, e))?;
        out.set_permissions(fs::Permissions::from_mode(file_mode(mode)))
            .map_err(|e| ArtifactError::io(&path, e))?;
        self.total_bytes += written;
        Ok(written)
    }

    fn which_cap(
        &self,
        entry: &EntryPath,
        written: u64,
        ratio_room: u64,
        overall_room: u64,
    ) -> ArtifactError {
        let limits = self.limits;
        if written > limits.max_file_bytes {
            ArtifactError::EntryTooLarge {
                entry: entry.display.clone(),
                limit: limits.max_file_bytes,
            }
        } else if written > ratio_room {
            ArtifactError::EntryRatioTooHigh {
                entry: entry.display.clone(),
                limit: limits.max_ratio,
            }
        } else if written > overall_room {
            ArtifactError::RatioTooHigh {
                limit: limits.max_ratio,
            }
        } else {
            ArtifactError::TooLarge {
                limit: limits.max_total_bytes,
            }
        }
    }

    /// A symlink; its target must stay inside the root.
    pub(crate) fn symlink(
        &mut self,
        entry: &EntryPath,
        target: &Path,
    ) -> Result<(), ArtifactError> {
        if target.as_os_str().len() > self.limits.max_path_len {
            return Err(ArtifactError::entry(
                &entry.display,
                "symlink target too long",
            ));
        }
        if !symlink_stays_inside(&entry.rel, target) {
            return Err(ArtifactError::entry(
                &entry.display,
                format!(
                    "symlink to {} points outside the artifact",
                    target.display()
                ),
            ));
        }
        self.prepare_parents(entry)?;
        self.claim_leaf(entry)?;
        let path = self.root.join(&entry.rel);
        std::os::unix::fs::symlink(target, &path).map_err(|e| ArtifactError::io(&path, e))
    }

    /// Applies directory modes, deepest first so a read-only directory
    /// does not block its children. Returns the regular-file bytes written.
    pub(crate) fn finish(self) -> Result<u64, ArtifactError> {
        let mut modes: Vec<_> = self.dir_modes.into_iter().collect();
        modes.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
        for (rel, mode) in modes {
            let path = self.root.join(rel);
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(|e| ArtifactError::io(&path, e))?;
        }
        Ok(self.total_bytes)
    }
}

/// Permission bits of a file: setuid/setgid/sticky stripped, and always
/// owner-readable so emberd can hash and copy what it unpacked.
pub(crate) fn file_mode(mode: u32) -> u32 {
    (mode & 0o777) | 0o400
}

/// Permission bits of a directory: like [`file_mode`], and always owner
/// rwx so emberd can walk and remove what it unpacked.
pub(crate) fn dir_mode(mode: u32) -> u32 {
    (mode & 0o777) | 0o700
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths() {
        let l = Limits::default();
        assert_eq!(
            parse_entry_path("a/./b//c", &l).unwrap().unwrap().rel,
            PathBuf::from("a/b/c")
        );
        assert!(parse_entry_path("./", &l).unwrap().is_none());
        for bad in ["../x", "/etc/x", "a/../../x", "a/../b", "a\0b"] {
            assert!(parse_entry_path(bad, &l).is_err(), "{bad:?}");
        }
        let deep = "a/".repeat(65);
        assert!(parse_entry_path(&deep, &l).is_err());
    }

    #[test]
    fn symlink_targets() {
        assert!(symlink_stays_inside(Path::new("a/link"), Path::new("../b")));
        assert!(symlink_stays_inside(
            Path::new("a/link"),
            Path::new("./c/d")
        ));
        assert!(!symlink_stays_inside(
            Path::new("a/link"),
            Path::new("s/s/../..")
        ));
        assert!(!symlink_stays_inside(
            Path::new("a/link"),
            Path::new("../../b")
        ));
        assert!(!symlink_stays_inside(Path::new("link"), Path::new("/etc")));
        assert!(!symlink_stays_inside(Path::new("link"), Path::new("..")));
        assert!(!symlink_stays_inside(Path::new("link"), Path::new("")));
    }
}
