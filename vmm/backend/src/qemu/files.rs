//! File plumbing: sparse copies of memory images, log tails, quoting.

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::VmmError;

/// Copies `src` to `dst` (which must not exist), preserving holes, so a
/// 256 MiB RAM image with 60 MiB touched costs 60 MiB of I/O and disk.
/// Returns the bytes of data copied.
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<u64, VmmError> {
    let input =
        std::fs::File::open(src).map_err(VmmError::io(format!("open {}", src.display())))?;
    let len = input
        .metadata()
        .map_err(VmmError::io(format!("stat {}", src.display())))?
        .len();
    let output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(VmmError::io(format!("create {}", dst.display())))?;
    output
        .set_len(len)
        .map_err(VmmError::io(format!("size {}", dst.display())))?;
    let (ifd, ofd) = (input.as_raw_fd(), output.as_raw_fd());
    let mut copied = 0u64;
    let mut pos: i64 = 0;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while pos < end {
        // SAFETY: plain lseek on a descriptor we own.
        let data = unsafe { libc::lseek(ifd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole remains
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(ifd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole };
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = usize::try_from(hole - off_in)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            // SAFETY: both descriptors are open files we own; the offsets
            // are valid pointers to locals.
            let n = unsafe { libc::copy_file_range(ifd, &mut off_in, ofd, &mut off_out, want, 0) };
            if n < 0 {
                return Err(VmmError::Io {
                    context: format!("copy {} to {}", src.display(), dst.display()),
                    source: std::io::Error::last_os_error(),
                });
            }
            if n == 0 {
                break;
            }
            copied += n as u64;
        }
        pos = hole;
    }
    Ok(copied)
}

/// Blocks actually allocated to a file, in bytes.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(16 * 1024);
    let text = String::from_utf8_lossy(&text[start..]);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Quotes a path for the `/bin/sh -c` that QEMU's `exec:` migration runs.
pub fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut f = std::fs::File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        let copied = sparse_copy(&src, &dst).unwrap();
        assert!((8192..1 << 20).contains(&copied), "copied {copied}");
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(allocated_bytes(&dst) < 1 << 20);
        assert!(sparse_copy(&src, &dst).is_err(), "must not overwrite");
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote(Path::new("/a b/c'd")), r"'/a b/c'\''d'");
    }
}
