//! The warm suspended tier. A suspend first parks the VM in place: vCPUs
//! stopped, guest memory written to the VM's own file and released from
//! host RAM, the QEMU process kept. Resuming it is a `cont` plus the page-ins
//! the app's next request causes (and, under TCG, its translated code is
//! still there), a fraction of a restore in a new process. Parked VMs
//! still hold QEMU's own memory, so they share a budget
//! (`--warm-suspended-mib`); beyond it the oldest are moved to the deep
//! tier (the process ends, everything is on disk). Both tiers are the
//! API's SUSPENDED.

use std::sync::Arc;

use ember_api::model::MicrovmState;
use ember_vmm::Vm;

use super::app_exit::process_lost;
use super::instance::Instance;
use super::lifecycle::remove_dir_if_exists;
use super::Microvms;

/// The default budget: an eighth of the host's memory (0 if unreadable:
/// every suspend then goes to disk, as before the warm tier).
pub fn default_warm_budget_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib.saturating_mul(1024) / 8)
}

impl Microvms {
    /// Parks a running VM for its suspend when the warm tier is on. False
    /// when the suspend must go to disk instead (no budget, or the VM
    /// cannot be parked); the VM is then intact, running or paused.
    pub(super) async fn park_for_suspend(&self, inst: &Instance, vm: &Arc<dyn Vm>) -> bool {
        if self.config.warm_suspended_bytes == 0 {
            return false;
        }
        match vm.park().await {
            Ok(host_bytes) => {
                inst.set_parked(Arc::clone(vm), host_bytes);
                tracing::info!(
                    microvm = %inst.id,
                    host_mib = host_bytes >> 20,
                    "parked (warm suspended)"
                );
                true
            }
            Err(e) => {
                tracing::info!(microvm = %inst.id, "cannot park, suspending to disk: {e}");
                false
            }
        }
    }

    /// Continues a parked VM: it is running again with the memory and
    /// processes it had. A VM whose process cannot continue is gone.
    pub(super) async fn wake_parked(
        &self,
        inst: &Arc<Instance>,
        vm: Arc<dyn Vm>,
    ) -> Result<Arc<dyn Vm>, String> {
        match vm.wake().await {
            Ok(()) => {
                self.admission.started(&inst.id);
                inst.set_vm(Some(Arc::clone(&vm)));
                Ok(vm)
            }
            Err(e) => {
                let reason = match vm.exited() {
                    Some(how) => format!(
                        "resume failed: {}",
                        process_lost("while it was suspended", &how)
                    ),
                    None => format!("resume failed: the suspended microVM could not continue: {e}"),
                };
                tracing::error!(microvm = %inst.id, "{reason}");
                self.finish_termination(inst, &reason).await;
                Err(reason)
            }
        }
    }

    /// Parked VMs, the host memory they hold, and the budget (bytes).
    pub fn warm_tier_usage(&self) -> (u64, u64, u64) {
        let held: Vec<u64> = self
            .instances()
            .iter()
            .filter_map(|inst| inst.parked().map(|(_, bytes)| bytes))
            .collect();
        (
            held.len() as u64,
            held.iter().sum(),
            self.config.warm_suspended_bytes,
        )
    }

    /// Asks the tier task to check the budget.
    pub(super) fn warm_budget_changed(&self) {
        self.warm_tier.notify_one();
    }

    /// Starts the task that keeps parked VMs within the budget, oldest
    /// moved to disk first, one at a time.
    pub(super) fn spawn_warm_tier(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let notify = Arc::clone(&self.warm_tier);
        tokio::spawn(async move {
            loop {
                notify.notified().await;
                let Some(this) = me.upgrade() else { return };
                // Unfencing wakes this task again.
                if this.is_fenced() {
                    continue;
                }
                // One pass per wake-up: a VM that failed to move stays
                // parked until the budget changes again, instead of the
                // loop retrying a full disk without end.
                for victim in this.over_warm_budget() {
                    this.move_to_disk(&victim).await;
                }
            }
        });
    }

    /// The parked VMs to move to disk, oldest first, so that the rest
    /// hold no more than the budget.
    fn over_warm_budget(&self) -> Vec<Arc<Instance>> {
        let mut parked: Vec<(f64, u64, Arc<Instance>)> = self
            .instances()
            .into_iter()
            .filter_map(|inst| {
                let (_, bytes) = inst.parked()?;
                let since = inst.status().suspended_at.unwrap_or(f64::MAX);
                Some((since, bytes, inst))
            })
            .collect();
        parked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut held: u64 = parked.iter().map(|(_, b, _)| b).sum();
        let mut victims = Vec::new();
        for (_, bytes, inst) in parked {
            if held <= self.config.warm_suspended_bytes {
                break;
            }
            held -= bytes;
            victims.push(inst);
        }
        victims
    }

    /// Moves a parked VM to the deep tier: its state saved to disk, its
    /// process ended. A failed save leaves it parked (its memory is whole
    /// in its file), unless its process is gone.
    async fn move_to_disk(&self, inst: &Arc<Instance>) {
        let _guard = inst.transition.lock().await;
        if inst.state() != MicrovmState::Suspended || inst.is_doomed() {
            return;
        }
        let Some((vm, host_bytes)) = inst.parked() else {
            return;
        };
        // Out of the slot while its process ends on purpose, so the end of
        // its agent session is not taken for a crash.
        inst.set_vm(None);
        let dir = self.suspended_dir(&inst.id);
        let _ = remove_dir_if_exists(&dir);
        let saved = match std::fs::create_dir_all(self.vm_dir(&inst.id)) {
            Ok(()) => vm.suspend(&dir).await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("create {}: {e}", self.vm_dir(&inst.id).display())),
        };
        match saved {
            Ok(info) => tracing::info!(
                microvm = %inst.id,
                ms = info.duration_ms,
                "moved from the warm tier to disk"
            ),
            Err(e) => {
                let _ = remove_dir_if_exists(&dir);
                if let Some(how) = vm.exited() {
                    let reason = process_lost("while it was suspended", &how);
                    self.finish_termination(inst, &reason).await;
                } else {
                    tracing::error!(microvm = %inst.id, "moving to disk failed, stays parked: {e}");
                    inst.set_parked(vm, host_bytes);
                    // Not retried until the budget changes again: a full
                    // disk would otherwise be hammered every loop.
                }
            }
        }
    }
}
