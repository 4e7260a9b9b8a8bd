//! Unpacks a hostile zip archive under [`Limits`].

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use zip::ZipArchive;

use crate::tree_writer::{parse_entry_path, TreeWriter};
use crate::{ArtifactError, Limits};

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Unpacks `archive` into the empty directory `dest`; returns the
/// regular-file bytes written. Blocking.
pub(crate) fn unpack(archive: File, dest: &Path, limits: &Limits) -> Result<u64, ArtifactError> {
    let archive_len = archive
        .metadata()
        .map_err(|e| ArtifactError::io(dest, e))?
        .len();
    unpack_reader(archive, archive_len, dest, limits)
}

fn unpack_reader<R: Read + Seek>(
    reader: R,
    archive_len: u64,
    dest: &Path,
    limits: &Limits,
) -> Result<u64, ArtifactError> {
    let mut zip = ZipArchive::new(reader).map_err(ArtifactError::BadZip)?;
    if zip.len() > limits.max_entries {
        return Err(ArtifactError::TooManyEntries {
            limit: limits.max_entries,
        });
    }
    if zip.has_duplicate_names() {
        return Err(ArtifactError::entry("(archive)", "duplicate entry names"));
    }
    let mut tree = TreeWriter::new(dest, limits, Some(archive_len));
    for index in 0..zip.len() {
        // Metadata first: opening an encrypted entry for reading fails
        // with an error that would not name it.
        let (name, encrypted) = {
            let raw = zip.by_index_raw(index).map_err(ArtifactError::BadZip)?;
            let name = raw.name().map_err(ArtifactError::BadZip)?.into_owned();
            (name, raw.encrypted())
        };
        if encrypted {
            return Err(ArtifactError::entry(
                &name,
                "encrypted entries are not supported",
            ));
        }
        let mut file = zip.by_index(index).map_err(|e| match e {
            zip::result::ZipError::UnsupportedArchive(what) => {
                ArtifactError::entry(&name, format!("unsupported: {what}"))
            }
            other => ArtifactError::BadZip(other),
        })?;
        let mode = file.unix_mode();
        let kind = mode.map(|m| m & S_IFMT).unwrap_or(0);
        let is_dir = name.ends_with('/') || kind == S_IFDIR;
        let Some(path) = parse_entry_path(&name, limits)? else {
            if is_dir {
                continue;
            }
            return Err(ArtifactError::entry(&name, "empty path"));
        };
        if is_dir {
            if kind != 0 && kind != S_IFDIR {
                return Err(ArtifactError::entry(
                    &name,
                    "name ends in '/' but it is not a directory",
                ));
            }
            tree.dir(&path, mode.unwrap_or(0o755))?;
            continue;
        }
        match kind {
            S_IFLNK => {
                let target = read_link_target(&mut file, &name, limits)?;
                tree.symlink(&path, &target)?;
            }
            // Zips made on other systems carry no file type: a regular file.
            0 | S_IFREG => {
                let compressed = file.compressed_size();
                tree.file(&path, mode.unwrap_or(0o644), &mut file, Some(compressed))?;
            }
            _ => {
                return Err(ArtifactError::entry(
                    &name,
                    "device, FIFO or socket entries are not allowed",
                ))
            }
        }
    }
    let total = tree.finish()?;
    tracing::debug!(dest = %dest.display(), total, "unpacked zip");
    Ok(total)
}

fn read_link_target(
    file: &mut dyn Read,
    name: &str,
    limits: &Limits,
) -> Result<PathBuf, ArtifactError> {
    let cap = limits.max_path_len as u64;
    let mut target = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut target)
        .map_err(|e| ArtifactError::entry(name, format!("cannot read symlink target: {e}")))?;
    if target.len() as u64 > cap {
        return Err(ArtifactError::entry(name, "symlink target too long"));
    }
    if target.contains(&0) {
        return Err(ArtifactError::entry(name, "NUL byte in symlink target"));
    }
    use std::os::unix::ffi::OsStringExt;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(target)))
}
