//! Admission: a run or resume that the host cannot hold is refused with
//! the model's capacity errors instead of pushing the host into swap, the
//! OOM killer or a full disk.
//!
//! Admission is a reservation: [`Admission`] owns the counts under one
//! lock, and a VM takes its slot (and its memory) in the same critical
//! section that checks the limits, before anything awaits. A burst of
//! parallel runs and resumes therefore sees every slot the ones before it
//! took, even while their QEMU is still starting.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ember_api::{ApiError, ErrorKind};

/// The limits, as configured.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// MicroVMs not yet terminated (running and suspended).
    pub max_live: u64,
    /// MicroVMs whose QEMU is running or starting.
    pub max_running: u64,
    /// Memory left to the host: a VM starts only if its RAM fits into
    /// `MemAvailable`, less what VMs still starting will take, minus this.
    pub memory_reserve_mib: u64,
    pub disk: DiskReserve,
}

/// Free disk kept for the host in the data dir.
#[derive(Debug, Clone)]
pub struct DiskReserve {
    pub dir: PathBuf,
    pub reserve_mib: u64,
}

impl DiskReserve {
    /// Free MiB an unprivileged user could still write in the data dir
    /// (`f_bavail`: the filesystem's root reserve is not ours to spend).
    pub fn free_mib(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize) / (1024 * 1024))
    }

    /// Why the disk is too full, if it is. Unknown free space admits: a
    /// host whose statvfs fails should not refuse every VM.
    pub fn shortage(&self) -> Option<String> {
        shortage(self.free_mib(), self.reserve_mib, &self.dir)
    }
}

fn shortage(free_mib: Option<u64>, reserve_mib: u64, dir: &Path) -> Option<String> {
    let free = free_mib?;
    (free < reserve_mib).then(|| {
        format!(
            "not enough free disk on this host: {free} MiB free in {}, {reserve_mib} MiB kept \
             for the host (--disk-reserve-mib); free some space and retry",
            dir.display()
        )
    })
}

/// What the host has free right now; `None` when it cannot be read.
#[derive(Debug, Clone, Copy)]
pub struct HostFree {
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
}

type Probe = Arc<dyn Fn() -> HostFree + Send + Sync>;

/// The counts every admission decision is made against, and the slots
/// behind them.
pub struct Admission {
    limits: Capacity,
    probe: Probe,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// Not terminated: the quota.
    live: HashSet<String>,
    /// Holding a running slot: id → its reservation.
    running: HashMap<String, Slot>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    memory_mib: u32,
    /// Its QEMU is up and has mapped its memory, so `MemAvailable`
    /// already shows what it takes.
    started: bool,
}

impl Ledger {
    /// Memory promised to VMs whose QEMU has not taken it yet.
    fn running_mib(&self) -> u64 {
        self.running.values().map(|s| u64::from(s.memory_mib)).sum()
    }

    fn unstarted_mib(&self) -> u64 {
        self.running
            .values()
            .filter(|s| !s.started)
            .map(|s| u64::from(s.memory_mib))
            .sum()
    }
}

impl Admission {
    pub fn new(limits: Capacity) -> Self {
        let disk = limits.disk.clone();
        let probe: Probe = Arc::new(move || HostFree {
            memory_mib: mem_available_mib(),
            disk_mib: disk.free_mib(),
        });
        Self::with_probe(limits, probe)
    }

    fn with_probe(limits: Capacity, probe: Probe) -> Self {
        Self {
            limits,
            probe,
            ledger: Mutex::new(Ledger::default()),
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // Every change is a single insert or remove; a panic elsewhere
        // cannot leave the ledger half-updated.
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new microVM: the account-level quota first, then the host. On
    /// success `id` counts as live and holds a running slot.
    pub fn admit_run(&self, id: &str, memory_mib: u32) -> Result<(), ApiError> {
        let mut ledger = self.ledger();
        if ledger.live.len() as u64 >= self.limits.max_live {
            return Err(ApiError::new(
                ErrorKind::ServiceQuotaExceeded,
                format!(
                    "this emberd holds at most {} microVMs (running or suspended); terminate some \
                     or raise --max-microvms",
                    self.limits.max_live
                ),
            ));
        }
        self.take_slot(&mut ledger, id, memory_mib)?;
        ledger.live.insert(id.to_string());
        Ok(())
    }

    /// A VM about to get a QEMU process again (a resume). Admitting a VM
    /// that already holds its slot is a no-op, so a ResumeMicrovm and the
    /// task that carries it out count once.
    pub fn admit_start(&self, id: &str, memory_mib: u32) -> Result<(), ApiError> {
        let mut ledger = self.ledger();
        self.take_slot(&mut ledger, id, memory_mib)
    }

    fn take_slot(&self, ledger: &mut Ledger, id: &str, memory_mib: u32) -> Result<(), ApiError> {
        if ledger.running.contains_key(id) {
            return Ok(());
        }
        let running = ledger.running.len() as u64;
        if running >= self.limits.max_running {
            return Err(ApiError::new(
                ErrorKind::InsufficientCapacity,
                format!(
                    "this host already runs {running} microVMs, its limit (--max-running-microvms); \
                     suspend or terminate one"
                ),
            ));
        }
        let free = (self.probe)();
        if let Some(available) = free.memory_mib {
            let promised = ledger.unstarted_mib();
            let needed = u64::from(memory_mib) + self.limits.memory_reserve_mib;
            if available.saturating_sub(promised) < needed {
                return Err(ApiError::new(
                    ErrorKind::InsufficientCapacity,
                    format!(
                        "not enough free memory on this host for a {memory_mib} MiB microVM: \
                         {available} MiB available, {promised} MiB of it promised to microVMs \
                         still starting, {} MiB kept for the host (--memory-reserve-mib)",
                        self.limits.memory_reserve_mib
                    ),
                ));
            }
        }
        let disk = &self.limits.disk;
        if let Some(message) = shortage(free.disk_mib, disk.reserve_mib, &disk.dir) {
            return Err(ApiError::new(ErrorKind::InsufficientCapacity, message));
        }
        ledger.running.insert(
            id.to_string(),
            Slot {
                memory_mib,
                started: false,
            },
        );
        Ok(())
    }

    /// The VM's QEMU is up: its memory now shows in `MemAvailable`.
    pub fn started(&self, id: &str) {
        if let Some(slot) = self.ledger().running.get_mut(id) {
            slot.started = true;
        }
    }

    /// The VM has no QEMU any more (suspended, or its start failed).
    pub fn release_running(&self, id: &str) {
        self.ledger().running.remove(id);
    }

    /// The VM is gone (terminated, or its run failed before it existed).
    pub fn release(&self, id: &str) {
        let mut ledger = self.ledger();
        ledger.running.remove(id);
        ledger.live.remove(id);
    }

    /// A VM a previous emberd left behind, counted without a check: it
    /// exists whether or not the limits allow it. `running` is its memory
    /// when its QEMU runs.
    pub fn hold(&self, id: &str, running: Option<u32>) {
        let mut ledger = self.ledger();
        ledger.live.insert(id.to_string());
        if let Some(memory_mib) = running {
            ledger.running.insert(
                id.to_string(),
                Slot {
                    memory_mib,
                    started: true,
                },
            );
        }
    }
}

impl Admission {
    /// The memory a new microVM could have here now, as `admit_run`
    /// would count it: 0 when the quota, the running limit or the disk
    /// reserve would refuse any; `None` when free memory is unknown. Other
    /// nodes place runs by it.
    /// The memory of the VMs holding a running slot, started or not.
    pub fn reserved_mib(&self) -> u64 {
        self.ledger().running_mib()
    }

    pub fn free_for_runs_mib(&self) -> Option<u64> {
        let ledger = self.ledger();
        let full = ledger.live.len() as u64 >= self.limits.max_live
            || ledger.running.len() as u64 >= self.limits.max_running;
        let free = (self.probe)();
        let disk = &self.limits.disk;
        if full || shortage(free.disk_mib, disk.reserve_mib, &disk.dir).is_some() {
            return Some(0);
        }
        free.memory_mib.map(|available| {
            available
                .saturating_sub(ledger.unstarted_mib())
                .saturating_sub(self.limits.memory_reserve_mib)
        })
    }
}

/// What admission holds and has left, for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub live: u64,
    pub max_live: u64,
    pub running: u64,
    pub max_running: u64,
    /// The RAM of every VM holding a running slot.
    pub memory_reserved_mib: u64,
    pub memory_host_reserve_mib: u64,
    pub memory_available_mib: Option<u64>,
}

impl Admission {
    pub fn usage(&self) -> Usage {
        let (live, running, reserved) = {
            let ledger = self.ledger();
            (
                ledger.live.len() as u64,
                ledger.running.len() as u64,
                ledger.running_mib(),
            )
        };
        Usage {
            live,
            max_live: self.limits.max_live,
            running,
            max_running: self.limits.max_running,
            memory_reserved_mib: reserved,
            memory_host_reserve_mib: self.limits.memory_reserve_mib,
            memory_available_mib: (self.probe)().memory_mib,
        }
    }
}

fn mem_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
}

#[cfg(test)]
mod tests;
