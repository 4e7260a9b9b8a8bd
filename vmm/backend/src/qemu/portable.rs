//! A snapshot as it travels to another host: its own files plus every
//! file of its disk's backing chain, renamed so the set lives in one
//! folder and names its backing files relative to it. After the copy,
//! [`relink`] points each qcow2 file at its backing file by that name, so
//! the folder restores wherever it lands (and keeps working if moved).

use std::path::{Path, PathBuf};

use super::qcow2;
use crate::backend::PortableFile;
use crate::snapshot::SnapshotManifest;
use crate::VmmError;

/// The files `dir`'s snapshot needs on another host, its disk's backing
/// chain renamed `layer-00.qcow2`, `layer-01.qcow2`, …, the base last
/// (`.raw` when it is a raw image).
pub(super) fn portable_files(dir: &Path) -> Result<Vec<PortableFile>, VmmError> {
    let manifest = SnapshotManifest::load(dir)?;
    let bad = |reason: String| VmmError::Tool {
        tool: "snapshot",
        message: format!("{}: {reason}", dir.display()),
    };
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(VmmError::io(format!("list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(VmmError::io(format!("list {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // A temporary file of an interrupted write is not the snapshot's.
        if name.starts_with('.') {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(VmmError::io(format!("stat {}", entry.path().display())))?;
        if !kind.is_file() {
            return Err(bad(format!("{name} is not a regular file")));
        }
        files.push(PortableFile {
            name,
            path: entry.path(),
            backing: None,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let disk = dir.join(&manifest.disk.name);
    let chain = qcow2::backing_chain(&disk)?;
    let names: Vec<String> = chain
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let ext = match qcow2::detect_format(path) {
                Ok("qcow2") => "qcow2",
                _ => "raw",
            };
            format!("layer-{i:02}.{ext}")
        })
        .collect();
    if let Some(first) = names.first() {
        let Some(top) = files.iter_mut().find(|f| f.name == manifest.disk.name) else {
            return Err(bad(format!("its disk {} is missing", manifest.disk.name)));
        };
        top.backing = Some(first.clone());
    }
    for (i, (path, name)) in chain.iter().zip(&names).enumerate() {
        if files.iter().any(|f| &f.name == name) {
            return Err(bad(format!("it already has a file named {name}")));
        }
        files.push(PortableFile {
            name: name.clone(),
            path: path.clone(),
            backing: names.get(i + 1).cloned(),
        });
    }
    Ok(files)
}

/// Points every file of `files` (in `dir`) that has a backing file at it,
/// by its name relative to `dir`, and checks the chain of `dir`'s
/// snapshot disk then stays inside `dir`.
pub(super) fn relink(dir: &Path, files: &[PortableFile]) -> Result<(), VmmError> {
    for file in files {
        let Some(backing) = &file.backing else {
            continue;
        };
        qcow2::rebase_header_relative(&dir.join(&file.name), backing)?;
    }
    let manifest = SnapshotManifest::load(dir)?;
    let chain: Vec<PathBuf> = qcow2::backing_chain(&dir.join(&manifest.disk.name))?;
    if let Some(outside) = chain.iter().find(|p| p.parent() != Some(dir)) {
        return Err(VmmError::UnsafeBacking {
            path: dir.to_path_buf(),
            reason: format!("its disk's chain leaves the folder: {}", outside.display()),
        });
    }
    Ok(())
}

/// Deepest folder [`relocate`] walks into below the folder it is given.
const MAX_RELOCATE_DEPTH: usize = 8;

/// Points every disk image under `dir` whose backing file is under
/// `from` at the same file under `to`: what a folder of images moved from
/// `from` to `to` needs. A build's layers name their backing files by
/// absolute path because one layer is hard-linked into folders at
/// different depths (the layer cache, the image's snapshot), where no
/// relative name fits every link. Only root's regular files are
/// rewritten, each inode once, never through a symlink (the folders hold
/// files VMs wrote). Returns how many were. Blocking.
pub(super) fn relocate(dir: &Path, from: &Path, to: &Path) -> Result<u32, VmmError> {
    let mut seen = std::collections::HashSet::new();
    relocate_in(dir, from, to, 0, &mut seen)
}

fn relocate_in(
    dir: &Path,
    from: &Path,
    to: &Path,
    depth: usize,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> Result<u32, VmmError> {
    use std::os::unix::fs::MetadataExt;
    let list = || VmmError::io(format!("list {}", dir.display()));
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(list()(e)),
    };
    let mut moved = 0;
    for entry in entries {
        let path = entry.map_err(list())?.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(VmmError::io(format!("stat {}", path.display())))?;
        if meta.is_dir() && depth < MAX_RELOCATE_DEPTH {
            moved += relocate_in(&path, from, to, depth + 1, seen)?;
            continue;
        }
        // SAFETY: geteuid only reads this process's effective uid.
        let own = meta.uid() == unsafe { libc::geteuid() };
        if !meta.is_file() || !own || !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let Some(name) = qcow2::backing_name(&path)? else {
            continue;
        };
        let Some(rest) = std::str::from_utf8(&name)
            .ok()
            .and_then(|n| Path::new(n).strip_prefix(from).ok())
        else {
            continue;
        };
        qcow2::rebase_header(&path, &to.join(rest))?;
        moved += 1;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relinked_chain_stays_in_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("layer-01.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        // Made with the absolute names a build leaves, then relinked.
        let elsewhere = tempfile::tempdir().unwrap();
        let abs_base = elsewhere.path().join("base.raw");
        std::fs::copy(&base, &abs_base).unwrap();
        let layer = dir.path().join("layer-00.qcow2");
        qcow2::create_overlay(&abs_base, "raw", &layer).unwrap();
        let top = dir.path().join("disk.qcow2");
        qcow2::create_overlay(&layer, "qcow2", &top).unwrap();
        let files = vec![
            PortableFile {
                name: "disk.qcow2".into(),
                path: top.clone(),
                backing: Some("layer-00.qcow2".into()),
            },
            PortableFile {
                name: "layer-00.qcow2".into(),
                path: layer.clone(),
                backing: Some("layer-01.raw".into()),
            },
        ];
        for f in &files {
            let backing = f.backing.as_deref().unwrap();
            qcow2::rebase_header_relative(&dir.path().join(&f.name), backing).unwrap();
        }
        let chain = qcow2::backing_chain(&top).unwrap();
        assert_eq!(chain, vec![layer.clone(), base.clone()]);
        // A name with a slash is not a name in the folder.
        assert!(qcow2::rebase_header_relative(&top, "../x.qcow2").is_err());
        assert!(qcow2::rebase_header_relative(&top, "/abs.qcow2").is_err());
    }

    #[test]
    fn a_moved_folder_of_layers_is_pointed_at_its_new_place() {
        let tmp = tempfile::tempdir().unwrap();
        let old = tmp.path().join("old");
        let layers = old.join("cache/layers");
        let snapshot = old.join("images/img/1/snapshot");
        std::fs::create_dir_all(&layers).unwrap();
        std::fs::create_dir_all(&snapshot).unwrap();
        let outside = tmp.path().join("base.raw");
        std::fs::write(&outside, vec![0u8; 1 << 20]).unwrap();
        let layer = layers.join("k.qcow2");
        qcow2::create_overlay(&outside, "raw", &layer).unwrap();
        let top = layers.join("top.qcow2");
        qcow2::create_overlay(&layer, "qcow2", &top).unwrap();
        // The same layer seen from two folders, as a build leaves it.
        std::fs::hard_link(&top, snapshot.join("disk.qcow2")).unwrap();

        let new = tmp.path().join("new");
        std::fs::rename(&old, &new).unwrap();
        assert!(qcow2::backing_chain(&new.join("images/img/1/snapshot/disk.qcow2")).is_err());
        // The top layer once (it has two links); the layer on the base
        // outside the folder keeps its name.
        assert_eq!(relocate(&new, &old, &new).unwrap(), 1);
        let chain = qcow2::backing_chain(&new.join("images/img/1/snapshot/disk.qcow2")).unwrap();
        assert_eq!(chain, vec![new.join("cache/layers/k.qcow2"), outside]);
        assert_eq!(
            relocate(&new, &old, &new).unwrap(),
            0,
            "a second pass changes nothing"
        );
    }
}
