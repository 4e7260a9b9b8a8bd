use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;

use super::*;

fn limits(max_live: u64, max_running: u64, memory_reserve_mib: u64) -> Capacity {
    Capacity {
        max_live,
        max_running,
        memory_reserve_mib,
        disk: DiskReserve {
            dir: PathBuf::from("/data"),
            reserve_mib: 2048,
        },
    }
}

/// A host with plenty of memory and disk unless a test says otherwise.
fn roomy(limits: Capacity) -> Admission {
    Admission::with_probe(
        limits,
        Arc::new(|| HostFree {
            memory_mib: Some(1 << 20),
            disk_mib: Some(1 << 20),
        }),
    )
}

fn kind(r: Result<(), ApiError>) -> Option<ErrorKind> {
    r.err().map(|e| e.kind())
}

#[test]
fn quotas_and_host_limits_have_their_own_errors() {
    let a = roomy(limits(2, 1, 0));
    assert!(a.admit_run("a", 128).is_ok());
    assert_eq!(
        kind(a.admit_run("b", 128)),
        Some(ErrorKind::InsufficientCapacity)
    );
    a.release_running("a");
    assert!(a.admit_run("b", 128).is_ok());
    a.release_running("b");
    assert_eq!(
        kind(a.admit_run("c", 128)),
        Some(ErrorKind::ServiceQuotaExceeded),
        "two live VMs, suspended or not, fill a quota of two"
    );
}

#[test]
fn a_parallel_burst_gets_exactly_the_free_slots() {
    let a = roomy(limits(100, 3, 0));
    let barrier = Barrier::new(20);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (a, barrier) = (&a, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    kind(a.admit_run(&format!("vm-{i}"), 256))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let admitted = results.iter().filter(|r| r.is_none()).count();
    let refused = results
        .iter()
        .filter(|r| **r == Some(ErrorKind::InsufficientCapacity))
        .count();
    assert_eq!((admitted, refused), (3, 17), "{results:?}");
}

#[test]
fn a_slot_holder_is_admitted_again_without_taking_a_second_slot() {
    let a = roomy(limits(10, 2, 0));
    a.admit_run("a", 128).unwrap();
    a.admit_start("a", 128).unwrap();
    a.admit_start("a", 128).unwrap();
    a.admit_start("b", 128).unwrap();
    assert_eq!(
        kind(a.admit_start("c", 128)),
        Some(ErrorKind::InsufficientCapacity)
    );
}

#[test]
fn suspending_frees_the_slot_and_terminating_frees_the_quota() {
    let a = roomy(limits(2, 1, 0));
    a.admit_run("a", 128).unwrap();
    a.release_running("a");
    // Suspended: a resume of another VM may take the slot...
    a.admit_run("b", 128).unwrap();
    assert_eq!(
        kind(a.admit_start("a", 128)),
        Some(ErrorKind::InsufficientCapacity)
    );
    // ...and a terminated VM frees both.
    a.release("b");
    a.admit_start("a", 128).unwrap();
    a.admit_run("c", 128).unwrap_err();
    a.release("a");
    a.admit_run("c", 128).unwrap();
}

#[test]
fn memory_promised_to_starting_vms_counts_until_their_qemu_takes_it() {
    let available = Arc::new(AtomicU64::new(4096));
    let seen = Arc::clone(&available);
    let a = Admission::with_probe(
        limits(10, 10, 1024),
        Arc::new(move || HostFree {
            memory_mib: Some(seen.load(Ordering::SeqCst)),
            disk_mib: None,
        }),
    );
    a.admit_run("a", 2048).unwrap();
    // MemAvailable has not moved yet, but a's 2048 MiB are promised.
    let refused = a.admit_run("b", 2048).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InsufficientCapacity);
    assert!(
        refused.message().contains("2048 MiB of it promised"),
        "{}",
        refused.message()
    );
    // a's QEMU took its memory: MemAvailable shows it, nothing is promised.
    available.store(2048, Ordering::SeqCst);
    a.started("a");
    a.admit_run("b", 512).unwrap();
    // A failed start gives its promise back.
    a.release("b");
    a.admit_run("c", 1024).unwrap();
}

#[test]
fn a_disk_under_the_reserve_refuses_naming_free_and_reserved_mib() {
    let a = Admission::with_probe(
        limits(10, 10, 0),
        Arc::new(|| HostFree {
            memory_mib: None,
            disk_mib: Some(100),
        }),
    );
    let refused = a.admit_run("a", 128).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InsufficientCapacity);
    let m = refused.message();
    assert!(
        m.contains("100 MiB free") && m.contains("2048 MiB kept"),
        "{m}"
    );
    // A refused VM holds nothing.
    assert!(a.ledger().live.is_empty() && a.ledger().running.is_empty());
}

#[test]
fn recovered_vms_count_even_past_the_limits() {
    let a = roomy(limits(2, 1, 0));
    a.hold("running", Some(256));
    a.hold("suspended", None);
    a.hold("also-running", Some(256));
    assert_eq!(
        kind(a.admit_run("new", 128)),
        Some(ErrorKind::ServiceQuotaExceeded)
    );
    a.release("running");
    assert_eq!(
        kind(a.admit_start("suspended", 128)),
        Some(ErrorKind::InsufficientCapacity)
    );
    a.release("also-running");
    a.admit_start("suspended", 128).unwrap();
}

#[test]
fn the_real_probes_read_this_host() {
    let dir = tempfile::tempdir().unwrap();
    let disk = |reserve_mib| DiskReserve {
        dir: dir.path().to_path_buf(),
        reserve_mib,
    };
    assert!(disk(0).free_mib().is_some());
    assert_eq!(disk(0).shortage(), None);
    let m = disk(u64::MAX).shortage().unwrap();
    assert!(m.contains(&dir.path().display().to_string()), "{m}");
    assert!(mem_available_mib().is_some());
    let a = Admission::new(limits(1, 1, 0));
    assert_eq!(
        kind(a.admit_run("huge", u32::MAX)),
        Some(ErrorKind::InsufficientCapacity)
    );
}

#[test]
fn the_memory_reported_for_placement_is_what_a_run_could_take() {
    let a = Admission::with_probe(
        limits(3, 2, 100),
        Arc::new(|| HostFree {
            memory_mib: Some(1000),
            disk_mib: Some(1 << 20),
        }),
    );
    assert_eq!(a.free_for_runs_mib(), Some(900));
    assert!(a.admit_run("a", 300).is_ok());
    assert_eq!(a.free_for_runs_mib(), Some(600), "a VM still starting");
    a.started("a");
    assert_eq!(
        a.free_for_runs_mib(),
        Some(900),
        "MemAvailable shows it now"
    );
    assert!(a.admit_run("b", 100).is_ok());
    assert_eq!(
        a.free_for_runs_mib(),
        Some(0),
        "the running limit is reached"
    );
    a.release_running("a");
    a.release_running("b");
    assert!(a.admit_run("c", 100).is_ok());
    a.release_running("c");
    assert_eq!(
        a.free_for_runs_mib(),
        Some(0),
        "the quota of live VMs is full"
    );
}
