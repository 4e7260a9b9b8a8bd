//! The working set of a suspended VM: the guest pages its QEMU had mapped
//! when it was suspended (present in the process's page tables: the pages
//! the guest touched since its last restore), recorded as a bitmap next to
//! the snapshot. A later restore that runs on the snapshot's own RAM file
//! asks the kernel to read those pages in first, in file order, while QEMU
//! starts, instead of the guest faulting them in one by one from a cold
//! page cache. Only a hint: a missing or malformed bitmap costs the
//! prefetch, never the restore.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The bitmap's file in a snapshot directory (not in the manifest: a
/// snapshot without one restores the same).
pub(super) const WORKING_SET: &str = "working-set.bits";

const PAGE: u64 = 4096;
/// `/proc/PID/pagemap`: bit 63 of an entry says the page is present.
const PRESENT: u64 = 1 << 63;
/// Pagemap entries read at once.
const BATCH: usize = 4096;

/// Writes the pages of `ram` that process `pid` maps into `out` (one bit
/// per page of the file) and returns how many there are.
pub(super) fn record(pid: u32, ram: &File, out: &Path) -> std::io::Result<u64> {
    let pages = ram.metadata()?.len().div_ceil(PAGE);
    let mut bits = vec![0u8; usize::try_from(pages.div_ceil(8)).map_err(std::io::Error::other)?];
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    let mut entries = vec![0u8; BATCH * 8];
    let mut present = 0;
    for (start, end, offset) in super::park::mappings(pid, ram)? {
        let mut vpage = start / PAGE;
        let mut fpage = offset / PAGE;
        while vpage < end / PAGE && fpage < pages {
            let n = usize::try_from((end / PAGE - vpage).min(BATCH as u64)).unwrap_or(BATCH);
            let buf = &mut entries[..n * 8];
            pagemap.read_exact_at(buf, vpage * 8)?;
            for entry in buf.chunks_exact(8) {
                let bytes: [u8; 8] = entry.try_into().unwrap_or_default();
                if u64::from_le_bytes(bytes) & PRESENT != 0 && fpage < pages {
                    // In range: fpage < pages and bits holds pages bits.
                    if let Some(byte) = bits.get_mut((fpage / 8) as usize) {
                        *byte |= 1 << (fpage % 8);
                        present += 1;
                    }
                }
                fpage += 1;
            }
            vpage += n as u64;
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)?;
    file.write_all(&bits)?;
    Ok(present)
}

/// Starts reading the working set recorded in `snapshot_dir` from `ram`
/// (the snapshot's RAM file, or a link to it) into the page cache:
/// `POSIX_FADV_WILLNEED` per run of recorded pages, which returns at once
/// and reads in the background. Returns the bytes asked for; 0 without a
/// usable bitmap.
pub(super) fn prefetch(snapshot_dir: &Path, ram: &File) -> u64 {
    let Ok(len) = ram.metadata().map(|m| m.len()) else {
        return 0;
    };
    let Some(bits) = read_bits(&snapshot_dir.join(WORKING_SET), len.div_ceil(PAGE)) else {
        return 0;
    };
    let mut asked = 0;
    for (first, count) in runs(&bits) {
        let (offset, bytes) = (first * PAGE, count * PAGE);
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(bytes)) else {
            break;
        };
        // SAFETY: an advice on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::posix_fadvise(ram.as_raw_fd(), off, n, libc::POSIX_FADV_WILLNEED) };
        if rc != 0 {
            break;
        }
        asked += bytes;
    }
    asked
}

/// The bitmap for a file of `pages` pages, if `path` holds exactly one.
fn read_bits(path: &Path, pages: u64) -> Option<Vec<u8>> {
    let want = pages.div_ceil(8);
    let file = File::open(path).ok()?;
    if file.metadata().ok()?.len() != want {
        return None;
    }
    let mut bits = Vec::with_capacity(usize::try_from(want).ok()?);
    file.take(want).read_to_end(&mut bits).ok()?;
    Some(bits)
}

/// Runs of set bits as (first page, pages).
fn runs(bits: &[u8]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, byte) in bits.iter().enumerate() {
        for b in 0..8 {
            if byte & (1 << b) == 0 {
                continue;
            }
            let page = i as u64 * 8 + b;
            match runs.last_mut() {
                Some((first, count)) if *first + *count == page => *count += 1,
                _ => runs.push((page, 1)),
            }
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_bits_become_runs_of_pages() {
        assert_eq!(
            runs(&[0b0000_0111, 0, 0b1000_0000, 0b0000_0001]),
            vec![(0, 3), (23, 2)]
        );
        assert!(runs(&[0, 0]).is_empty());
    }

    #[test]
    fn a_bitmap_of_the_wrong_size_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WORKING_SET);
        std::fs::write(&path, [0xffu8; 4]).unwrap();
        assert_eq!(read_bits(&path, 32), Some(vec![0xff; 4]));
        assert_eq!(read_bits(&path, 64), None);
        assert_eq!(read_bits(&dir.path().join("missing"), 32), None);
    }

    #[test]
    fn the_pages_this_process_touched_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ram");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(64 * PAGE).unwrap();
        // SAFETY: a fresh shared mapping of a file we own, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (64 * PAGE) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        for page in [3u64, 4, 40] {
            // SAFETY: inside the 64-page mapping made above.
            unsafe { *(map as *mut u8).add((page * PAGE) as usize) = 1 };
        }
        let out = dir.path().join(WORKING_SET);
        let present = record(std::process::id(), &file, &out).unwrap();
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(map, (64 * PAGE) as usize) };
        assert_eq!(present, 3);
        let bits = read_bits(&out, 64).unwrap();
        assert_eq!(runs(&bits), vec![(3, 2), (40, 1)]);
        assert_eq!(prefetch(dir.path(), &file), 3 * PAGE);
    }
}
