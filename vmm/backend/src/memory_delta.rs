//! Stores a suspended VM's RAM as the difference from its image's snapshot.
//!
//! Every microVM starts from its image version's snapshot, so most of its
//! RAM (the guest kernel, the app's untouched pages) is byte-identical to
//! that snapshot's `memory.ram`. [`compact`] turns those pages (and any
//! all-zero page) into holes and records which ranges came from the base in
//! `memory.base`; [`expand`] writes the base's pages back before a restore.
//!
//! Crash safety rests on ordering: `memory.base` is durable before the
//! first hole is punched, and `memory.ram` is durable before `memory.base`
//! is removed. Writing base pages back is idempotent, so a crash at any
//! point leaves a directory that [`expand`] repairs. Both functions take
//! an exclusive `flock` on `memory.ram`, so an `expand` waits for a
//! `compact` still running in the background.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

mod record;

use record::{read_record, write_record, BaseIdentity, DeltaRecord, FORMAT_VERSION};

pub const MEMORY_FILE: &str = "memory.ram";
pub const DELTA_FILE: &str = "memory.base";
pub const PAGE: u64 = 4096;
/// Large sequential reads keep the comparison near memory bandwidth.
const CHUNK: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryDeltaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{vm} and {base} are the same file (a hard link); compacting would destroy the base")]
    SameFile { vm: PathBuf, base: PathBuf },
    #[error("{path} already exists: the memory is already compacted (expand it first)")]
    AlreadyCompacted { path: PathBuf },
    #[error("{path}: base memory {base} is gone; this VM's memory cannot be rebuilt")]
    BaseMissing { path: PathBuf, base: PathBuf },
    #[error("base memory {base} changed since {path} was written ({reason}); refusing to rebuild this VM's memory from it")]
    BaseChanged {
        path: PathBuf,
        base: PathBuf,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: memory delta format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    Version { path: PathBuf, found: u32 },
}

/// What [`compact`] did. Sizes are in bytes; "allocated" is `st_blocks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompactStats {
    pub allocated_before: u64,
    pub allocated_after: u64,
    /// Pages now read from the base on [`expand`].
    pub base_pages: u64,
    /// All-zero pages turned into holes (they read back as zeros).
    pub zero_pages: u64,
    /// Pages kept because they differ from the base.
    pub kept_pages: u64,
    pub duration: Duration,
}

impl CompactStats {
    pub fn bytes_freed(&self) -> u64 {
        self.allocated_before.saturating_sub(self.allocated_after)
    }
}

/// What [`expand`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExpandStats {
    /// Bytes copied from the base (0 when there was nothing to expand).
    pub bytes_restored: u64,
    pub ranges: u64,
    pub duration: Duration,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MemoryDeltaError + '_ {
    move |source| MemoryDeltaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces every page of `dir/memory.ram` that equals the same page of
/// `base/memory.ram`, and every all-zero page, by a hole, after recording
/// the base's ranges in `dir/memory.base`. Blocking; run it off the async
/// runtime. `dir` must not be in use by a VM.
pub fn compact(dir: &Path, base: &Path) -> Result<CompactStats, MemoryDeltaError> {
    let started = Instant::now();
    let vm_path = dir.join(MEMORY_FILE);
    let delta_path = dir.join(DELTA_FILE);
    let base_file_path = base.join(MEMORY_FILE);
    let base_path = std::fs::canonicalize(&base_file_path).map_err(io(&base_file_path))?;
    let vm = open_locked(&vm_path)?;
    if delta_path.exists() {
        return Err(MemoryDeltaError::AlreadyCompacted { path: delta_path });
    }
    let base_file = File::open(&base_path).map_err(io(&base_path))?;
    let vm_meta = vm.metadata().map_err(io(&vm_path))?;
    let base_meta = base_file.metadata().map_err(io(&base_path))?;
    if vm_meta.dev() == base_meta.dev() && vm_meta.ino() == base_meta.ino() {
        return Err(MemoryDeltaError::SameFile {
            vm: vm_path,
            base: base_path,
        });
    }
    let allocated_before = vm_meta.blocks() * 512;
    let scan = scan(
        &vm,
        &vm_path,
        vm_meta.len(),
        &base_file,
        &base_path,
        base_meta.len(),
    )?;

    let record = DeltaRecord {
        page_size: PAGE,
        vm_size: vm_meta.len(),
        base: BaseIdentity {
            path: base_path,
            size: base_meta.len(),
            mtime_ns: mtime_ns(&base_meta),
            ranges_crc32: scan.base_crc32,
        },
        ranges: scan.base_ranges,
    };
    write_record(dir, &delta_path, &record)?;
    for &(offset, len) in &scan.punch {
        punch_hole(&vm, offset, len).map_err(io(&vm_path))?;
    }
    let allocated_after = vm.metadata().map_err(io(&vm_path))?.blocks() * 512;
    let stats = CompactStats {
        allocated_before,
        allocated_after,
        base_pages: scan.base_pages,
        zero_pages: scan.zero_pages,
        kept_pages: scan.kept_pages,
        duration: started.elapsed(),
    };
    tracing::debug!(dir = %dir.display(), ?stats, "memory compacted");
    Ok(stats)
}

/// Writes the base's pages back into `dir/memory.ram` for the ranges in
/// `dir/memory.base`, then removes `memory.base`. A no-op when it is
/// absent. Must be called before restoring from `dir`; fails without
/// touching `memory.ram` when the base is gone or differs. Blocking.
pub fn expand(dir: &Path) -> Result<ExpandStats, MemoryDeltaError> {
    let started = Instant::now();
    let vm_path = dir.join(MEMORY_FILE);
    let delta_path = dir.join(DELTA_FILE);
    if !delta_path.exists() {
        return Ok(ExpandStats::default());
    }
    let vm = open_locked(&vm_path)?;
    // Re-check under the lock: a concurrent expand may have finished.
    let record = match read_record(&delta_path)? {
        Some(r) => r,
        None => return Ok(ExpandStats::default()),
    };
    let vm_size = vm.metadata().map_err(io(&vm_path))?.len();
    if vm_size != record.vm_size {
        return Err(MemoryDeltaError::Corrupt {
            path: vm_path,
            reason: format!(
                "is {vm_size} bytes but was {} when compacted",
                record.vm_size
            ),
        });
    }
    let base_path = &record.base.path;
    let base = match File::open(base_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MemoryDeltaError::BaseMissing {
                path: delta_path,
                base: base_path.clone(),
            })
        }
        Err(e) => return Err(io(base_path)(e)),
    };
    let base_meta = base.metadata().map_err(io(base_path))?;
    let changed = |reason: String| MemoryDeltaError::BaseChanged {
        path: delta_path.clone(),
        base: base_path.clone(),
        reason,
    };
    if base_meta.len() != record.base.size {
        return Err(changed(format!(
            "size {} is now {}",
            record.base.size,
            base_meta.len()
        )));
    }
    let byte_ranges = || {
        record
            .ranges
            .iter()
            .map(|&(page, count)| (page * PAGE, (count * PAGE).min(vm_size - page * PAGE)))
    };
    // Check everything before writing anything: a VM must never be resumed
    // on memory rebuilt from the wrong base.
    let mut buf = vec![0u8; CHUNK as usize];
    let mut crc = crc32fast::Hasher::new();
    for (offset, len) in byte_ranges() {
        for_chunks(offset, len, |off, n| {
            let b = &mut buf[..n];
            base.read_exact_at(b, off).map_err(io(base_path))?;
            crc.update(b);
            Ok(())
        })?;
    }
    if crc.finalize() != record.base.ranges_crc32 {
        return Err(changed(format!(
            "content differs (mtime then {} ns, now {} ns)",
            record.base.mtime_ns,
            mtime_ns(&base_meta)
        )));
    }
    let mut written = 0u64;
    for (offset, len) in byte_ranges() {
        for_chunks(offset, len, |off, n| {
            let b = &mut buf[..n];
            base.read_exact_at(b, off).map_err(io(base_path))?;
            vm.write_all_at(b, off).map_err(io(&vm_path))?;
            written += n as u64;
            Ok(())
        })?;
    }
    // The pages must be durable before the record that could restore them
    // disappears.
    vm.sync_data().map_err(io(&vm_path))?;
    std::fs::remove_file(&delta_path).map_err(io(&delta_path))?;
    sync_dir(dir)?;
    let stats = ExpandStats {
        bytes_restored: written,
        ranges: record.ranges.len() as u64,
        duration: started.elapsed(),
    };
    tracing::debug!(dir = %dir.display(), ?stats, "memory expanded");
    Ok(stats)
}

/// The outcome of comparing the VM's file with the base, page by page.
#[derive(Default)]
struct Scan {
    base_ranges: Vec<(u64, u64)>,
    base_crc32: u32,
    /// Byte ranges to punch (base and zero pages, merged).
    punch: Vec<(u64, u64)>,
    base_pages: u64,
    zero_pages: u64,
    kept_pages: u64,
}

fn scan(
    vm: &File,
    vm_path: &Path,
    vm_size: u64,
    base: &File,
    base_path: &Path,
    base_size: u64,
) -> Result<Scan, MemoryDeltaError> {
    let vm_data = data_extents(vm, vm_size).map_err(io(vm_path))?;
    let base_data = data_extents(base, base_size).map_err(io(base_path))?;
    let mut out = Scan::default();
    let mut crc = crc32fast::Hasher::new();
    let mut vm_buf = vec![0u8; CHUNK as usize];
    let mut base_buf = vec![0u8; CHUNK as usize];
    for (start, end) in vm_data {
        for_chunks(start, end - start, |off, n| {
            let v = &mut vm_buf[..n];
            vm.read_exact_at(v, off).map_err(io(vm_path))?;
            // Only pages fully inside the base file can come from it; a
            // base hole reads as zeros, which never equal a non-zero page.
            let base_n = base_size.saturating_sub(off).min(n as u64) as usize;
            let base_has_data = overlaps(&base_data, off, off + base_n as u64);
            if base_has_data {
                base.read_exact_at(&mut base_buf[..base_n], off)
                    .map_err(io(base_path))?;
            }
            for (i, page) in v.chunks(PAGE as usize).enumerate() {
                let page_off = off + i as u64 * PAGE;
                let at = i * PAGE as usize;
                if page.iter().all(|&b| b == 0) {
                    out.zero_pages += 1;
                    push_run(&mut out.punch, page_off, PAGE);
                } else if base_has_data
                    && at + page.len() <= base_n
                    && page == &base_buf[at..at + page.len()]
                {
                    out.base_pages += 1;
                    crc.update(page);
                    push_run(&mut out.punch, page_off, PAGE);
                    push_run(&mut out.base_ranges, page_off / PAGE, 1);
                } else {
                    out.kept_pages += 1;
                }
            }
            Ok(())
        })?;
    }
    out.base_crc32 = crc.finalize();
    Ok(out)
}

/// Calls `f(offset, len)` for consecutive pieces of at most [`CHUNK`].
fn for_chunks(
    offset: u64,
    len: u64,
    mut f: impl FnMut(u64, usize) -> Result<(), MemoryDeltaError>,
) -> Result<(), MemoryDeltaError> {
    let end = offset + len;
    let mut off = offset;
    while off < end {
        let n = (end - off).min(CHUNK);
        f(off, n as usize)?;
        off += n;
    }
    Ok(())
}

/// Appends `[start, start+len)` to ascending `runs`, merging with the last.
fn push_run(runs: &mut Vec<(u64, u64)>, start: u64, len: u64) {
    if let Some(last) = runs.last_mut() {
        if last.0 + last.1 == start {
            last.1 += len;
            return;
        }
    }
    runs.push((start, len));
}

fn overlaps(extents: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = extents.partition_point(|&(_, e)| e <= start);
    extents.get(i).is_some_and(|&(s, _)| s < end)
}

/// The file's data regions, widened to whole pages and clipped to `size`.
/// On a filesystem without `SEEK_DATA` the whole file is one region.
pub(crate) fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a descriptor we own; it only moves its offset,
        // which nothing else uses (all I/O here is positioned).
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let start = data as u64 / PAGE * PAGE;
        let end = (hole as u64).div_ceil(PAGE).saturating_mul(PAGE).min(size);
        match extents.last_mut() {
            Some(last) if last.1 >= start => last.1 = last.1.max(end),
            _ if end > start => extents.push((start, end)),
            _ => {}
        }
        pos = (hole as u64).max(pos + 1);
    }
    Ok(extents)
}

pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a descriptor we own; punching only deallocates
    // blocks within the file and keeps its size.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `path` and takes an exclusive advisory lock, waiting for a
/// concurrent compact or expand of the same file to finish.
fn open_locked(path: &Path) -> Result<File, MemoryDeltaError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    // SAFETY: flock on a descriptor we own; the lock is released when the
    // file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io(path)(std::io::Error::last_os_error()));
    }
    Ok(file)
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), MemoryDeltaError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_and_runs() {
        let mut runs = Vec::new();
        push_run(&mut runs, 0, 4);
        push_run(&mut runs, 4, 4);
        push_run(&mut runs, 12, 4);
        assert_eq!(runs, vec![(0, 8), (12, 4)]);
        let ext = [(0, 10), (20, 30)];
        assert!(overlaps(&ext, 5, 6));
        assert!(!overlaps(&ext, 10, 20));
        assert!(overlaps(&ext, 15, 21));
        assert!(!overlaps(&ext, 30, 40));
    }
}
