//! VMs the host paused by itself. A guest disk write that meets a full
//! data dir stops the VM (the backend keeps the write and retries it when
//! the VM continues) without anyone asking. One task asks every running
//! VM's backend each second; a VM found paused stays RUNNING (the model
//! has no other state for it) with a reason saying so, its endpoint
//! answers 503 at once instead of hanging, no idle suspend is tried (it
//! would have to write to the full disk), and once the data dir has more
//! free than `--disk-reserve-mib` the VM is continued.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ember_api::model::MicrovmState;
use ember_vmm::{HostPause, Vm};
use futures_util::future::join_all;

use super::instance::Instance;
use super::Microvms;

const TICK: Duration = Duration::from_secs(1);
/// A backend slower than this to answer is asked again next tick.
const PROBE_LIMIT: Duration = Duration::from_secs(3);
/// The wait before continuing again a VM that paused again right after
/// a continue (its write still did not fit); doubled each time.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

pub const DISK_FULL_REASON: &str = "paused by the host: the data disk is full (a write to the \
     guest's disk failed: no space left on device); it continues by itself once space is free";
pub const DISK_ERROR_REASON: &str = "paused by the host: a write to the guest's disk failed on \
     the host (an I/O error); emberd continues it from time to time to retry the write";
pub const CONTINUED_REASON: &str = "continued: the data disk has space again";
pub const RETRIED_REASON: &str = "continued: the guest's disk write went through on retry";

fn reason(cause: HostPause) -> &'static str {
    match cause {
        HostPause::DiskFull => DISK_FULL_REASON,
        HostPause::DiskError => DISK_ERROR_REASON,
    }
}

/// An instance's host pause, while it lasts.
#[derive(Default)]
pub struct HostPauseCell(Mutex<Option<Paused>>);

struct Paused {
    cause: HostPause,
    /// No continue before this.
    next_try: Instant,
    retry: Duration,
    /// The reason went to the store (or was tried: on a full disk the
    /// store may not take it; the API shows it from here anyway).
    stored: bool,
}

impl HostPauseCell {
    fn lock(&self) -> MutexGuard<'_, Option<Paused>> {
        // Every change is one assignment: a panic cannot leave half of one.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Instance {
    /// The state reason while the host holds the VM paused.
    pub fn host_pause_reason(&self) -> Option<&'static str> {
        self.host_pause.lock().as_ref().map(|p| reason(p.cause))
    }

    pub fn is_host_paused(&self) -> bool {
        self.host_pause.lock().is_some()
    }
}

pub(super) fn spawn(microvms: &Arc<Microvms>) {
    let me = Arc::downgrade(microvms);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(this) = me.upgrade() else { return };
            // A fenced node's VMs stay paused whatever their disk.
            if this.is_fenced() {
                continue;
            }
            let instances = this.instances();
            join_all(instances.iter().map(|inst| this.watch_host_pause(inst))).await;
        }
    });
}

impl Microvms {
    async fn watch_host_pause(&self, inst: &Arc<Instance>) {
        if inst.state() != MicrovmState::Running || inst.is_doomed() {
            return;
        }
        let Some(vm) = inst.vm() else { return };
        let seen = match tokio::time::timeout(PROBE_LIMIT, vm.host_pause()).await {
            Ok(Ok(seen)) => seen,
            // A VM ending or dying is the other timers' business.
            Ok(Err(e)) => {
                tracing::debug!(microvm = %inst.id, "asking whether the host paused it: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(microvm = %inst.id, "no answer on its run state in {PROBE_LIMIT:?}");
                return;
            }
        };
        match seen {
            Some(cause) => {
                self.host_paused(inst, cause).await;
                self.continue_if_room(inst, vm.as_ref()).await;
            }
            None => self.host_continued(inst).await,
        }
    }

    async fn host_paused(&self, inst: &Instance, cause: HostPause) {
        let store = {
            let mut cell = inst.host_pause.lock();
            let paused = cell.get_or_insert_with(|| {
                tracing::warn!(
                    microvm = %inst.id,
                    free_mib = self.config.capacity.disk.free_mib(),
                    "{}",
                    reason(cause)
                );
                Paused {
                    cause,
                    next_try: Instant::now(),
                    retry: FIRST_RETRY,
                    stored: false,
                }
            });
            paused.cause = cause;
            !std::mem::replace(&mut paused.stored, true)
        };
        if store && !self.write_reason(inst, reason(cause)).await {
            // A transition holds the VM: try again next tick.
            if let Some(p) = inst.host_pause.lock().as_mut() {
                p.stored = false;
            }
        }
    }

    /// Continues the VM once its write can succeed: for a full disk, once
    /// the data dir has more free than the reserve.
    async fn continue_if_room(&self, inst: &Instance, vm: &dyn Vm) {
        let cause = match &*inst.host_pause.lock() {
            Some(p) if p.next_try <= Instant::now() => p.cause,
            _ => return,
        };
        let disk = &self.config.capacity.disk;
        let free_mib = disk.free_mib();
        if cause == HostPause::DiskFull && !free_mib.is_some_and(|f| f > disk.reserve_mib) {
            return;
        }
        // Not in the middle of a transition (a termination, say).
        let Ok(_guard) = inst.transition.try_lock() else {
            return;
        };
        if inst.is_doomed() || inst.state() != MicrovmState::Running {
            return;
        }
        match vm.resume().await {
            Ok(()) => {
                tracing::info!(microvm = %inst.id, ?free_mib, "continued after a host pause; its disk write is retried")
            }
            Err(e) => tracing::warn!(microvm = %inst.id, "continuing after a host pause: {e}"),
        }
        // Seen paused again next tick means the write still did not fit.
        if let Some(p) = inst.host_pause.lock().as_mut() {
            p.next_try = Instant::now() + p.retry;
            p.retry = (p.retry * 2).min(MAX_RETRY);
        }
    }

    async fn host_continued(&self, inst: &Instance) {
        let Some(was) = inst.host_pause.lock().take() else {
            return;
        };
        let text = match was.cause {
            HostPause::DiskFull => CONTINUED_REASON,
            HostPause::DiskError => RETRIED_REASON,
        };
        tracing::info!(microvm = %inst.id, "{text}");
        // A transition underway writes its own reason.
        self.write_reason(inst, text).await;
    }

    /// Records `text` as the reason of the RUNNING VM; false when a
    /// transition holds it, whose own outcome is the truth.
    async fn write_reason(&self, inst: &Instance, text: &str) -> bool {
        let Ok(_guard) = inst.transition.try_lock() else {
            return false;
        };
        if inst.is_doomed() || inst.state() != MicrovmState::Running {
            return true;
        }
        self.set_state(inst, MicrovmState::Running, Some(text), None)
            .await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_say_what_happened_and_what_comes_next() {
        let full = reason(HostPause::DiskFull);
        assert!(full.starts_with("paused by the host: the data disk is full"));
        assert!(full.contains("no space left on device"));
        assert!(full.ends_with("it continues by itself once space is free"));
        assert!(reason(HostPause::DiskError).contains("I/O error"));
    }
}
