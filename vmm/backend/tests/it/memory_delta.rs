//! Compacting a VM's memory file against its base and expanding it again
//! gives back the same bytes; a wrong base or a crash mid-way never yields
//! silently wrong memory.

use crate::common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use ember_vmm::memory_delta::{compact, expand, MemoryDeltaError, DELTA_FILE, MEMORY_FILE, PAGE};
use ember_vmm::{Hypervisor, RestoreMemory, RestoreOptions};

const P: usize = PAGE as usize;

/// A deterministic non-zero page, distinct per `seed`.
fn page(seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..P)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as u8) | 1
        })
        .collect()
}

/// Creates `dir/memory.ram` of `size` bytes (a hole throughout) with the
/// given pages written.
fn write_sparse(dir: &Path, size: u64, pages: &[(u64, Vec<u8>)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(MEMORY_FILE);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    for (n, bytes) in pages {
        f.write_all_at(bytes, n * PAGE).unwrap();
    }
    path
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    vm: PathBuf,
    original: Vec<u8>,
}

/// Every case the scanner distinguishes, in a file that ends mid-page.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let vm = tmp.path().join("vm");
    let size = 20 * PAGE + 100;
    let mut tail_base = page(99)[..100].to_vec();
    tail_base.resize(P, 0);
    write_sparse(
        &base,
        size,
        &[
            (0, page(0)),    // equal
            (1, page(1)),    // differs
            (4, page(4)),    // vm hole
            (5, vec![0; P]), // zeros written in both
            (6, page(6)),    // equal run 6..9
            (7, page(7)),
            (8, page(8)),
            (9, page(9)),
            (10, page(10)),  // vm wrote zeros over it
            (15, page(15)),  // equal, isolated
            (20, tail_base), // partial page, equal
        ],
    );
    // Page 3 is a hole in the base but data in the VM: kept.
    let path = write_sparse(
        &vm,
        size,
        &[
            (0, page(0)),
            (1, page(1001)),
            (3, page(3)),
            (5, vec![0; P]),
            (6, page(6)),
            (7, page(7)),
            (8, page(8)),
            (9, page(9)),
            (10, vec![0; P]),
            (15, page(15)),
            (20, page(99)[..100].to_vec()),
        ],
    );
    let original = std::fs::read(&path).unwrap();
    assert_eq!(original.len() as u64, size);
    Fixture {
        _tmp: tmp,
        base,
        vm,
        original,
    }
}

fn ram(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join(MEMORY_FILE)).unwrap()
}

#[test]
fn compact_then_expand_is_byte_identical() {
    let f = fixture();
    let before = allocated(&f.vm.join(MEMORY_FILE));
    let stats = compact(&f.vm, &f.base).unwrap();
    assert_eq!(stats.base_pages, 7, "{stats:?}"); // 0, 6..=9, 15, 20
    assert_eq!(stats.zero_pages, 2, "{stats:?}"); // 5, 10
    assert_eq!(stats.kept_pages, 2, "{stats:?}"); // 1, 3
    assert_eq!(stats.allocated_before, before);
    assert_eq!(allocated(&f.vm.join(MEMORY_FILE)), 2 * PAGE, "{stats:?}");
    assert_eq!(stats.bytes_freed(), before - 2 * PAGE);
    assert!(f.vm.join(DELTA_FILE).is_file());
    // Compacted, the file reads as zeros where the base will fill in.
    assert_ne!(ram(&f.vm), f.original);
    assert!(matches!(
        compact(&f.vm, &f.base),
        Err(MemoryDeltaError::AlreadyCompacted { .. })
    ));

    let e = expand(&f.vm).unwrap();
    assert_eq!(e.bytes_restored, 6 * PAGE + 100, "{e:?}");
    assert_eq!(ram(&f.vm), f.original);
    assert!(!f.vm.join(DELTA_FILE).exists());
    // Nothing left to do: a no-op.
    assert_eq!(expand(&f.vm).unwrap().bytes_restored, 0);
    assert_eq!(ram(&f.vm), f.original);
}

#[test]
fn large_file_across_chunk_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, vm) = (tmp.path().join("base"), tmp.path().join("vm"));
    let pages = 3 * 512 + 7; // 6 MiB and a bit: several 2 MiB chunks
    let size = pages * PAGE;
    let base_pages: Vec<_> = (0..pages).map(|n| (n, page(n as u32))).collect();
    // Every third page differs, every 100th is a hole in the VM.
    let vm_pages: Vec<_> = (0..pages)
        .filter(|n| n % 100 != 0)
        .map(|n| {
            (
                n,
                page(if n % 3 == 0 {
                    n as u32 + 1_000_000
                } else {
                    n as u32
                }),
            )
        })
        .collect();
    write_sparse(&base, size, &base_pages);
    write_sparse(&vm, size, &vm_pages);
    let original = ram(&vm);
    let stats = compact(&vm, &base).unwrap();
    let kept = vm_pages.iter().filter(|(n, _)| n % 3 == 0).count() as u64;
    assert_eq!(stats.kept_pages, kept);
    assert_eq!(stats.base_pages, vm_pages.len() as u64 - kept);
    assert_eq!(allocated(&vm.join(MEMORY_FILE)), kept * PAGE);
    expand(&vm).unwrap();
    assert_eq!(ram(&vm), original);
}

#[test]
fn changed_or_missing_base_is_refused_without_touching_memory() {
    let f = fixture();
    compact(&f.vm, &f.base).unwrap();
    let compacted = ram(&f.vm);

    // One byte of a page the VM depends on.
    let base_file = std::fs::OpenOptions::new()
        .write(true)
        .open(f.base.join(MEMORY_FILE))
        .unwrap();
    base_file.write_all_at(&[0xEE], 7 * PAGE + 5).unwrap();
    let err = expand(&f.vm).unwrap_err();
    assert!(matches!(err, MemoryDeltaError::BaseChanged { .. }), "{err}");
    assert!(err.to_string().contains("changed"), "{err}");
    assert_eq!(ram(&f.vm), compacted);
    assert!(f.vm.join(DELTA_FILE).is_file());

    base_file.set_len(30 * PAGE).unwrap();
    assert!(matches!(
        expand(&f.vm),
        Err(MemoryDeltaError::BaseChanged { .. })
    ));

    std::fs::remove_file(f.base.join(MEMORY_FILE)).unwrap();
    assert!(matches!(
        expand(&f.vm),
        Err(MemoryDeltaError::BaseMissing { .. })
    ));
    assert_eq!(ram(&f.vm), compacted);
}

#[test]
fn crash_before_or_during_punching_still_expands_to_the_original() {
    let f = fixture();
    // Compact a copy to obtain the record a crashed compaction would have
    // left behind, then put it next to the untouched file.
    let copy = f.vm.with_file_name("copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(f.vm.join(MEMORY_FILE), copy.join(MEMORY_FILE)).unwrap();
    compact(&copy, &f.base).unwrap();
    std::fs::copy(copy.join(DELTA_FILE), f.vm.join(DELTA_FILE)).unwrap();
    expand(&f.vm).unwrap();
    assert_eq!(ram(&f.vm), f.original);

    // Half the holes punched: page 0 punched, the 6..9 run still there.
    std::fs::copy(copy.join(DELTA_FILE), f.vm.join(DELTA_FILE)).unwrap();
    let vm_file = std::fs::OpenOptions::new()
        .write(true)
        .open(f.vm.join(MEMORY_FILE))
        .unwrap();
    vm_file.write_all_at(&[0u8; P], 0).unwrap();
    expand(&f.vm).unwrap();
    assert_eq!(ram(&f.vm), f.original);
}

#[test]
fn damaged_record_and_hard_linked_base_are_refused() {
    let f = fixture();
    compact(&f.vm, &f.base).unwrap();
    let record = f.vm.join(DELTA_FILE);
    let mut bytes = std::fs::read(&record).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    std::fs::write(&record, &bytes).unwrap();
    assert!(matches!(
        expand(&f.vm),
        Err(MemoryDeltaError::Corrupt { .. })
    ));

    let linked = f.vm.with_file_name("linked");
    std::fs::create_dir(&linked).unwrap();
    std::fs::hard_link(f.base.join(MEMORY_FILE), linked.join(MEMORY_FILE)).unwrap();
    let base_before = ram(&f.base);
    assert!(matches!(
        compact(&linked, &f.base),
        Err(MemoryDeltaError::SameFile { .. })
    ));
    assert_eq!(ram(&f.base), base_before);
}

/// Measures real files: `EMBER_DELTA_VM=<dir> EMBER_DELTA_BASE=<dir>`
/// (directories with a `memory.ram`; the VM's is modified, then restored).
#[test]
#[ignore = "needs real memory files; set EMBER_DELTA_VM and EMBER_DELTA_BASE"]
fn measure_real_files() {
    let vm = PathBuf::from(std::env::var("EMBER_DELTA_VM").unwrap());
    let base = PathBuf::from(std::env::var("EMBER_DELTA_BASE").unwrap());
    let original = ram(&vm);
    let stats = compact(&vm, &base).unwrap();
    println!(
        "compact: allocated {} KiB -> {} KiB (memory.base {} B) in {:?}; pages: {} from base, {} zero, {} kept",
        stats.allocated_before >> 10,
        stats.allocated_after >> 10,
        std::fs::metadata(vm.join(DELTA_FILE)).unwrap().len(),
        stats.duration,
        stats.base_pages,
        stats.zero_pages,
        stats.kept_pages
    );
    let e = expand(&vm).unwrap();
    println!(
        "expand: {} KiB in {} ranges in {:?}; allocated now {} KiB",
        e.bytes_restored >> 10,
        e.ranges,
        e.duration,
        allocated(&vm.join(MEMORY_FILE)) >> 10
    );
    assert_eq!(ram(&vm), original);
}

/// A real guest: suspend a VM restored from a base snapshot, compact its
/// memory against the base, expand it, resume: its tmpfs is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_guest_resumes_after_compact_and_expand() {
    let env = common::env().await;
    let origin = env.boot("delta-origin").await;
    let base = env.state.path().join("base");
    origin.snapshot(&base).await.unwrap();
    origin.stop().await.unwrap();

    let vm = env
        .hv
        .restore(
            "delta-vm",
            &base,
            RestoreOptions::memory(RestoreMemory::Copy),
        )
        .await
        .unwrap();
    common::sh(
        &*vm,
        "head -c 3000000 /dev/urandom > /tmp/blob; md5sum /tmp/blob > /tmp/blob.md5",
    )
    .await;
    let sum = common::sh(&*vm, "cat /tmp/blob.md5").await;
    let suspended = env.state.path().join("suspended");
    vm.suspend(&suspended).await.unwrap();

    let (s, b) = (suspended.clone(), base.clone());
    let stats = tokio::task::spawn_blocking(move || compact(&s, &b))
        .await
        .unwrap()
        .unwrap();
    println!("real guest compact: {stats:?}");
    assert!(stats.base_pages > 1000, "{stats:?}");
    // The 3 MB of random data at least stays; most of the rest goes.
    assert!(stats.allocated_after >= 3_000_000, "{stats:?}");
    assert!(
        stats.allocated_after < stats.allocated_before / 2,
        "{stats:?}"
    );

    let s = suspended.clone();
    tokio::task::spawn_blocking(move || expand(&s))
        .await
        .unwrap()
        .unwrap();
    let resumed = env
        .hv
        .restore(
            "delta-vm",
            &suspended,
            RestoreOptions::memory(RestoreMemory::Consume),
        )
        .await
        .unwrap();
    assert_eq!(common::sh(&*resumed, "cat /tmp/blob.md5").await, sum);
    common::sh(&*resumed, "md5sum -c /tmp/blob.md5").await;
    resumed.stop().await.unwrap();
}
