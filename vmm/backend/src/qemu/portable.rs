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
}
