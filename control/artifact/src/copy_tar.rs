//! The tar stream for one `COPY`/`ADD`, laid out for `tar -x -C /`.
//!
//! Only the copied entries are in it. The destination directory and its
//! parents are left to the extracting tar, which creates missing ones
//! (root, 0755) and leaves existing ones alone; a directory entry for them
//! would re-own and re-mode directories like `/tmp` on extraction.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::context::open_checked;
use crate::{ArtifactError, EntryKind, Selected};

/// Longest destination accepted.
const MAX_DEST_LEN: usize = 4096;

/// How a local archive source of `ADD` is compressed (by magic bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
}

/// What [`crate::Context::write_copy_tar`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTar {
    /// Bytes written to the output.
    pub bytes: u64,
    /// `ADD` sources that are tar archives, left out of the tar so the
    /// builder extracts them in the guest: (absolute host path of the
    /// archive, guest directory to extract into, compression).
    pub archives: Vec<(PathBuf, String, Compression)>,
}

struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    bytes: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn write(
    root: &Path,
    selected: &[Selected],
    dest: &str,
    owner: Option<(u32, u32)>,
    extract_archives: bool,
    out: &mut dyn Write,
) -> Result<CopyTar, ArtifactError> {
    let bad = |reason| ArtifactError::BadDestination {
        dest: dest.to_string(),
        reason,
    };
    if !dest.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    if dest.len() > MAX_DEST_LEN || dest.contains('\0') {
        return Err(bad("too long or contains NUL"));
    }
    let dest_is_dir = dest.ends_with('/') || dest.ends_with("/.");
    if selected.len() > 1 && !dest_is_dir {
        return Err(bad("several sources need a destination ending in '/'"));
    }
    let dest_dir = clean_dest(dest);
    let (uid, gid) = owner.unwrap_or((0, 0));
    let tar_error = |e: io::Error| ArtifactError::io("(COPY tar stream)", e);

    let mut tar = tar::Builder::new(CountingWriter {
        inner: out,
        bytes: 0,
    });
    tar.mode(tar::HeaderMode::Deterministic);
    let mut archives = Vec::new();
    for s in selected {
        match s.source.kind {
            EntryKind::File { size } => {
                let host_path = root.join(&s.source.path);
                if extract_archives {
                    if let Some(compression) = detect_archive(&host_path, size)? {
                        archives.push((host_path, format!("/{}", dest_dir.display()), compression));
                        continue;
                    }
                }
                let target = if selected.len() == 1 && !dest_is_dir {
                    dest_dir.clone()
                } else {
                    let base = s.name.file_name().ok_or(bad("a file source has no name"))?;
                    dest_dir.join(base)
                };
                if target.as_os_str().is_empty() {
                    return Err(bad("a file cannot replace '/'"));
                }
                append_file(&mut tar, &host_path, &target, size, s.source.mode, uid, gid)?;
            }
            EntryKind::Dir => {
                for entry in &s.contents {
                    let rel = entry.path.strip_prefix(&s.source.path).map_err(|_| {
                        ArtifactError::Changed {
                            path: entry.path.clone(),
                        }
                    })?;
                    let target = dest_dir.join(rel);
                    let mut header = header(entry.mode, uid, gid);
                    match &entry.kind {
                        EntryKind::Dir => {
                            header.set_entry_type(tar::EntryType::Directory);
                            tar.append_data(&mut header, &target, io::empty())
                                .map_err(tar_error)?;
                        }
                        EntryKind::Symlink { target: link } => {
                            header.set_entry_type(tar::EntryType::Symlink);
                            tar.append_link(&mut header, &target, link)
                                .map_err(tar_error)?;
                        }
                        EntryKind::File { size } => {
                            let host_path = root.join(&entry.path);
                            append_file(
                                &mut tar, &host_path, &target, *size, entry.mode, uid, gid,
                            )?;
                        }
                    }
                }
            }
            EntryKind::Symlink { .. } => {
                return Err(ArtifactError::Changed {
                    path: s.source.path.clone(),
                })
            }
        }
    }
    tar.finish().map_err(tar_error)?;
    let counter = tar.into_inner().map_err(tar_error)?;
    Ok(CopyTar {
        bytes: counter.bytes,
        archives,
    })
}

fn header(mode: u32, uid: u32, gid: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mode(mode & 0o777);
    header.set_uid(uid.into());
    header.set_gid(gid.into());
    // Fixed so the same sources always give the same bytes.
    header.set_mtime(0);
    header.set_size(0);
    header
}

fn append_file(
    tar: &mut tar::Builder<CountingWriter<'_>>,
    host_path: &Path,
    target: &Path,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), ArtifactError> {
    let file = open_checked(host_path, size)?;
    let mut header = header(mode, uid, gid);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    tar.append_data(&mut header, target, file.take(size))
        .map_err(|e| ArtifactError::io(host_path, e))
}

/// The destination as a path relative to `/`, `..` resolved (it cannot
/// climb above `/`, as in the guest).
fn clean_dest(dest: &str) -> PathBuf {
    let mut parts: Vec<&str> = Vec::new();
    for part in dest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.iter().collect()
}

/// Whether a file is a tar archive `ADD` would extract, by magic bytes.
/// Compressed files are not opened further: they are hostile and only the
/// guest unpacks them.
fn detect_archive(path: &Path, size: u64) -> Result<Option<Compression>, ArtifactError> {
    let mut head = Vec::with_capacity(512);
    open_checked(path, size)?
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| ArtifactError::io(path, e))?;
    let found = if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(b"BZh") {
        Some(Compression::Bzip2)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(Compression::Xz)
    } else if head.get(257..262) == Some(b"ustar".as_slice()) {
        Some(Compression::None)
    } else {
        None
    };
    Ok(found)
}
