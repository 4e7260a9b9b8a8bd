//! Which chunks of a file can hold anything but zeros.

use std::fs::File;

use rustix::fs::SeekFrom;

/// The byte ranges of `file` (below `size`) that may hold data, sorted:
/// the rest are holes, which read as zeros. Without SEEK_DATA support the
/// whole file is one range.
pub(crate) fn data_ranges(file: &File, size: u64) -> Vec<(u64, u64)> {
    let whole = vec![(0, size)];
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return whole,
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(end) => end.min(size),
            Err(_) => return whole,
        };
        if end <= start {
            return whole;
        }
        ranges.push((start, end));
        at = end;
    }
    ranges
}

/// Whether `[start, end)` meets one of the sorted, disjoint `ranges`.
pub(crate) fn meets(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let first = ranges.partition_point(|&(_, e)| e <= start);
    ranges.get(first).is_some_and(|&(s, _)| s < end)
}

/// Whether every byte of `buf` is zero.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(64);
    blocks.all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn finds_data_in_a_sparse_file() {
        const MIB: u64 = 1 << 20;
        let file = tempfile::tempfile().unwrap();
        file.set_len(64 * MIB).unwrap();
        file.write_all_at(&[1u8; 4096], 10 * MIB).unwrap();
        file.write_all_at(&[2u8; 10], 40 * MIB + 5).unwrap();
        file.sync_all().unwrap();
        let ranges = data_ranges(&file, 64 * MIB);
        // Every byte written is inside a range.
        assert!(meets(&ranges, 10 * MIB, 10 * MIB + 1));
        assert!(meets(&ranges, 40 * MIB + 5, 40 * MIB + 6));
        // On a file system with holes the first chunk, at least, is one.
        let covered: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        if covered < 64 * MIB {
            assert!(!meets(&ranges, 0, 4 * MIB));
            assert!(!meets(&ranges, 60 * MIB, 64 * MIB));
        }
        assert!(meets(&[(0, 64 * MIB)], 0, 1));
        assert!(!meets(&[], 0, 64 * MIB));
        assert!(!meets(&[(5, 10)], 10, 20));
        assert!(!meets(&[(5, 10)], 0, 5));
        assert!(meets(&[(5, 10), (30, 40)], 12, 31));

        let mut buf = vec![0u8; 4 * MIB as usize];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert!(is_zero(&buf));
        file.read_exact_at(&mut buf, 8 * MIB).unwrap();
        assert!(!is_zero(&buf));
        let mut tail = vec![0u8; 1000];
        file.read_exact_at(&mut tail, 40 * MIB).unwrap();
        assert!(!is_zero(&tail));
        assert!(is_zero(&tail[100..]));
        assert!(is_zero(&[]));
        let mut odd = vec![0u8; 130];
        assert!(is_zero(&odd));
        odd[129] = 1;
        assert!(!is_zero(&odd));
        odd[129] = 0;
        odd[64] = 1;
        assert!(!is_zero(&odd));
    }
}
