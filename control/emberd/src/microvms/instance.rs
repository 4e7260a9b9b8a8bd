//! One live microVM as the daemon holds it in memory.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ember_api::model::MicrovmState;
use ember_vmm::Vm;

use super::spec::RunSpec;

/// The VM process behind an instance, when it has one.
#[derive(Clone)]
enum Machine {
    Running(Arc<dyn Vm>),
    /// Warm-suspended: paused, its guest memory handed back to the host,
    /// holding `host_bytes` of host memory.
    Parked {
        vm: Arc<dyn Vm>,
        host_bytes: u64,
    },
}

/// The state mirror; the store has the same values.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: MicrovmState,
    pub suspended_at: Option<f64>,
}

pub struct Instance {
    pub id: String,
    pub image: String,
    pub version: u32,
    pub started_at: f64,
    pub spec: RunSpec,
    status: Mutex<Status>,
    machine: Mutex<Option<Machine>>,
    /// Held for the whole of every transition; waiters for a resume queue
    /// here and find the VM running when they get it.
    pub transition: Arc<tokio::sync::Mutex<()>>,
    /// Last inbound request, unix milliseconds.
    last_active_ms: AtomicU64,
    /// The value last written to the store.
    pub flushed_active_ms: AtomicU64,
    /// Proxied connections currently open: a VM streaming a response or
    /// holding a WebSocket is not idle.
    open_streams: AtomicUsize,
    /// Set by TerminateMicrovm: a transition that finishes afterwards must
    /// not report the VM as running again.
    doomed: AtomicBool,
    /// Set once the suspended memory was (or is being) compacted.
    pub compaction: AtomicBool,
    /// One copy of the app log at a time, so no line is copied twice.
    pub log_sync: tokio::sync::Mutex<()>,
    /// Set while the host holds the VM paused (`disk_full.rs`).
    pub(super) host_pause: super::disk_full::HostPauseCell,
}

impl Instance {
    pub fn new(
        id: String,
        image: String,
        version: u32,
        started_at: f64,
        spec: RunSpec,
        status: Status,
        last_active: f64,
    ) -> Self {
        let ms = secs_to_ms(last_active);
        Self {
            id,
            image,
            version,
            started_at,
            spec,
            status: Mutex::new(status),
            machine: Mutex::new(None),
            transition: Arc::new(tokio::sync::Mutex::new(())),
            last_active_ms: AtomicU64::new(ms),
            flushed_active_ms: AtomicU64::new(ms),
            open_streams: AtomicUsize::new(0),
            doomed: AtomicBool::new(false),
            compaction: AtomicBool::new(false),
            log_sync: tokio::sync::Mutex::new(()),
            host_pause: Default::default(),
        }
    }

    /// The instance of a stored row (recovered, or placed here by another
    /// node), with its run spec read and the state it starts in.
    pub fn of_record(rec: &ember_store::MicrovmRecord, spec: RunSpec, status: Status) -> Self {
        Self::new(
            rec.id.clone(),
            rec.image.clone(),
            rec.version,
            rec.started_at,
            spec,
            status,
            rec.last_active_at,
        )
    }

    fn status_lock(&self) -> MutexGuard<'_, Status> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn status(&self) -> Status {
        self.status_lock().clone()
    }

    pub fn state(&self) -> MicrovmState {
        self.status_lock().state
    }

    pub(super) fn set_status(&self, state: MicrovmState, suspended_at: Option<Option<f64>>) {
        let mut s = self.status_lock();
        s.state = state;
        if let Some(at) = suspended_at {
            s.suspended_at = at;
        }
    }

    fn machine_lock(&self) -> MutexGuard<'_, Option<Machine>> {
        self.machine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The running VM, if there is one (not a parked one).
    pub fn vm(&self) -> Option<Arc<dyn Vm>> {
        match &*self.machine_lock() {
            Some(Machine::Running(vm)) => Some(Arc::clone(vm)),
            _ => None,
        }
    }

    /// The parked (warm-suspended) VM and the host memory it holds.
    pub fn parked(&self) -> Option<(Arc<dyn Vm>, u64)> {
        match &*self.machine_lock() {
            Some(Machine::Parked { vm, host_bytes }) => Some((Arc::clone(vm), *host_bytes)),
            _ => None,
        }
    }

    /// The VM process, running or parked.
    pub fn any_vm(&self) -> Option<Arc<dyn Vm>> {
        match &*self.machine_lock() {
            Some(Machine::Running(vm) | Machine::Parked { vm, .. }) => Some(Arc::clone(vm)),
            None => None,
        }
    }

    /// Makes `vm` the running VM (or, for `None`, leaves the instance
    /// without one); returns the VM it had, running or parked.
    pub(super) fn set_vm(&self, vm: Option<Arc<dyn Vm>>) -> Option<Arc<dyn Vm>> {
        let old = std::mem::replace(&mut *self.machine_lock(), vm.map(Machine::Running));
        old.map(|m| match m {
            Machine::Running(vm) | Machine::Parked { vm, .. } => vm,
        })
    }

    /// Records the VM as parked, holding `host_bytes`.
    pub(super) fn set_parked(&self, vm: Arc<dyn Vm>, host_bytes: u64) {
        *self.machine_lock() = Some(Machine::Parked { vm, host_bytes });
    }

    pub fn touch(&self) {
        self.last_active_ms.fetch_max(now_ms(), Ordering::Relaxed);
    }

    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        self.touch();
        StreamGuard(Arc::clone(self))
    }

    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Relaxed)
    }

    /// Marks the VM for termination; true if it already was, so only one
    /// caller starts the termination.
    pub fn doom(&self) -> bool {
        self.doomed.swap(true, Ordering::Relaxed)
    }

    pub fn is_doomed(&self) -> bool {
        self.doomed.load(Ordering::Relaxed)
    }
}

/// Counts a proxied connection as open until dropped. Closing it is not
/// activity: the proxy closes idle connections, and the idle clock must
/// start at the last request or byte, not at that close.
pub struct StreamGuard(Arc<Instance>);

impl StreamGuard {
    /// Bytes moved on the stream.
    pub fn moved(&self) {
        self.0.touch();
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn now_ms() -> u64 {
    secs_to_ms(crate::now())
}

pub fn secs_to_ms(s: f64) -> u64 {
    (s * 1000.0).max(0.0) as u64
}
