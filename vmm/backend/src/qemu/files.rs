//! File plumbing: sparse copies of memory images, log tails.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::VmmError;

/// How data extents are copied.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Zeros {
    /// In-kernel copy of every data extent.
    Keep,
    /// Pages that read as zero become holes: a guest's RAM file has many
    /// pages it touched once and zeroed, which need not be stored.
    Skip,
}

const PAGE: usize = 4096;

/// Copies `src` to `dst` (which must not exist), preserving holes, so a
/// 256 MiB RAM image with 60 MiB touched costs 60 MiB of I/O and disk.
/// Returns the bytes of data copied.
///
/// `src` may lie in a VM's folder: it is never opened through a symlink
/// and must be a regular file.
pub fn sparse_copy(src: &Path, dst: &Path, zeros: Zeros) -> Result<u64, VmmError> {
    let (input, meta) = super::vm_files::open_regular(src)?;
    let len = meta.len();
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
        if zeros == Zeros::Skip {
            copied +=
                copy_nonzero_pages(&input, &output, data, hole).map_err(|source| VmmError::Io {
                    context: format!("copy {} to {}", src.display(), dst.display()),
                    source,
                })?;
            pos = hole;
            continue;
        }
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

/// Gives every page of a VM's RAM file its blocks now (`fallocate`), so
/// a guest touching a page it never used cannot meet a full disk: QEMU
/// takes a SIGBUS there and the VM dies. On ext4 and xfs the blocks are
/// reserved unwritten (no I/O, still read as holes by `SEEK_DATA`); on
/// tmpfs they are host memory.
pub fn reserve_blocks(path: &Path) -> Result<(), VmmError> {
    let context = || {
        format!(
            "reserve disk space for the guest memory in {}",
            path.display()
        )
    };
    let (file, len) = open_for_blocks(path).map_err(|e| VmmError::io(context())(e))?;
    let len = i64::try_from(len)
        .map_err(|_| VmmError::io(context())(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: fallocate on a descriptor we own, over the file's own length;
    // mode 0 only allocates holes and never changes data.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } != 0 {
        return Err(VmmError::io(context())(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Gives back the blocks [`reserve_blocks`] gave a RAM file that its VM
/// never wrote (they read as holes): a stored snapshot keeps only its data.
pub fn release_unwritten(path: &Path) -> Result<(), VmmError> {
    let released = || -> std::io::Result<()> {
        let (file, len) = open_for_blocks(path)?;
        let mut from = 0;
        let data = crate::memory_delta::data_extents(&file, len)?;
        for (start, end) in data.into_iter().chain([(len, len)]) {
            if start > from {
                crate::memory_delta::punch_hole(&file, from, start - from)?;
            }
            from = end;
        }
        Ok(())
    };
    released().map_err(VmmError::io(format!(
        "release unused blocks of {}",
        path.display()
    )))
}

/// Opens a RAM file for changing its blocks, never through a symlink, with
/// its length.
fn open_for_blocks(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

/// Copies `[start, end)` page by page, leaving all-zero pages as holes.
fn copy_nonzero_pages(
    input: &std::fs::File,
    output: &std::fs::File,
    start: i64,
    end: i64,
) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    let mut off = u64::try_from(start).unwrap_or(0);
    let end = u64::try_from(end).unwrap_or(0);
    while off < end {
        let want = usize::try_from(end - off)
            .unwrap_or(buf.len())
            .min(buf.len());
        let n = input.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        // Write maximal runs of non-zero pages in one call each.
        let mut run: Option<usize> = None;
        for (i, page) in chunk.chunks(PAGE).enumerate() {
            let zero = page.iter().all(|&b| b == 0);
            match (zero, run) {
                (false, None) => run = Some(i * PAGE),
                (true, Some(from)) => {
                    output.write_all_at(&chunk[from..i * PAGE], off + from as u64)?;
                    copied += (i * PAGE - from) as u64;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(from) = run {
            output.write_all_at(&chunk[from..], off + from as u64)?;
            copied += (n - from) as u64;
        }
        off += n as u64;
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

/// The last `lines` lines of a log file, for error messages: from its last
/// 16 KiB only (a guest writes the console log, as much as it likes), and
/// never through a symlink (it lies in the VM's folder).
pub fn tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 16 * 1024;
    let mut text = Vec::new();
    if let Ok((mut f, meta)) = super::vm_files::open_regular(path) {
        if f.seek(SeekFrom::Start(meta.len().saturating_sub(WINDOW)))
            .is_ok()
        {
            let _ = f.take(WINDOW).read_to_end(&mut text);
        }
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        let copied = sparse_copy(&src, &dst, Zeros::Keep).unwrap();
        assert!((8192..1 << 20).contains(&copied), "copied {copied}");
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(allocated_bytes(&dst) < 1 << 20);
        assert!(
            sparse_copy(&src, &dst, Zeros::Keep).is_err(),
            "must not overwrite"
        );
    }

    #[test]
    fn zero_pages_become_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        // 3 MiB written in full: a zero page, data, 1 MiB of zeros, data.
        let mut bytes = vec![0u8; 3 << 20];
        bytes[PAGE..2 * PAGE].fill(9);
        bytes[(2 << 20) + 5] = 1;
        std::fs::write(&src, &bytes).unwrap();
        let dst = dir.path().join("dst");
        let copied = sparse_copy(&src, &dst, Zeros::Skip).unwrap();
        assert_eq!(copied, 2 * PAGE as u64);
        assert_eq!(std::fs::read(&dst).unwrap(), bytes);
        assert!(
            allocated_bytes(&dst) <= 64 * 1024,
            "{}",
            allocated_bytes(&dst)
        );
    }
}
