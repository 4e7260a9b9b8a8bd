//! Parking a paused VM: its guest RAM, a file it maps shared, is written
//! back and then dropped from host memory, while the QEMU process (its
//! devices, and under TCG its translated code) stays. Continuing it pages
//! the memory back in as the guest touches it, which costs far less than a
//! restore in a new process.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use super::process::Pidfd;

/// The address ranges where process `pid` maps `file`, from
/// `/proc/PID/maps`, matched by device and inode (the path QEMU sees is
/// its jail's, and a name proves nothing).
pub(super) fn mapped_ranges(pid: u32, file: &File) -> std::io::Result<Vec<(u64, u64)>> {
    Ok(mappings(pid, file)?
        .into_iter()
        .map(|(start, end, _)| (start, end))
        .collect())
}

/// As [`mapped_ranges`], each with the file offset it starts at.
pub(super) fn mappings(pid: u32, file: &File) -> std::io::Result<Vec<(u64, u64, u64)>> {
    let meta = file.metadata()?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(parse_maps(&maps, meta.dev(), meta.ino()))
}

fn parse_maps(maps: &str, dev: u64, ino: u64) -> Vec<(u64, u64, u64)> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let _perms = fields.next()?;
            let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let device = fields.next()?;
            let inode: u64 = fields.next()?.parse().ok()?;
            let (maj, min) = device.split_once(':')?;
            let same_dev = u32::from_str_radix(maj, 16).ok()? == major
                && u32::from_str_radix(min, 16).ok()? == minor;
            if !same_dev || inode != ino {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end, offset))
        })
        .collect()
}

/// Asks the kernel to reclaim the pages of `ranges` in the process behind
/// `pidfd` (`process_madvise(MADV_PAGEOUT)`, Linux 5.10+; the caller needs
/// CAP_SYS_NICE). Clean file pages mapped by that process alone leave host
/// memory; dirty ones stay, which is why the file is synced first.
pub(super) fn page_out(pidfd: &Pidfd, ranges: &[(u64, u64)]) -> std::io::Result<()> {
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let iov = libc::iovec {
                iov_base: at as *mut libc::c_void,
                iov_len: usize::try_from(end - at)
                    .map_err(|_| std::io::Error::other("mapping larger than the address space"))?,
            };
            // SAFETY: process_madvise reads one iovec from our memory (a
            // valid, live local) and advises on the *target's* address
            // range it names; nothing in this process is touched.
            let done = unsafe {
                libc::syscall(
                    libc::SYS_process_madvise,
                    pidfd.as_raw_fd(),
                    &iov as *const libc::iovec,
                    1usize,
                    libc::MADV_PAGEOUT,
                    0u32,
                )
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let done = u64::try_from(done).unwrap_or(0);
            if done == 0 {
                break;
            }
            at = at.saturating_add(done);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_matched_by_device_and_inode_with_their_offsets() {
        let dev = libc::makedev(0xfd, 0x01);
        let maps = "\
7f0000000000-7f0010000000 rw-s 00000000 fd:01 1234    /ram/memory.ram
7f0010000000-7f0010001000 r--p 00000000 fd:01 999     /usr/lib/libc.so
7f0020000000-7f0030000000 rw-s 00000000 fd:02 1234    /other/fs/same-inode
7f0030000000-7f0040000000 rw-s 10000000 fd:01 1234    /ram/memory.ram
garbage line
";
        assert_eq!(
            parse_maps(maps, dev, 1234),
            vec![
                (0x7f00_0000_0000, 0x7f00_1000_0000, 0),
                (0x7f00_3000_0000, 0x7f00_4000_0000, 0x1000_0000)
            ]
        );
        assert!(parse_maps(maps, dev, 42).is_empty());
    }
}
