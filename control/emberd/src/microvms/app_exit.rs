//! A VM ends with its app: when the image's command (the guest's main
//! process) exits, the VM is terminated, as the real service does
//! ("Container Stopped with Exit Code: N").
//!
//! The agent keeps the exit status in guest memory, so a watch is started
//! on every new agent session (run, resume, re-attach): an exit that
//! happened while nobody listened (during a suspend, or while emberd was
//! down) is answered at once.

use std::sync::{Arc, Weak};

use ember_api::model::MicrovmState;
use ember_vmm::agent::{AgentError, ExitStatus};
use ember_vmm::Vm;

use super::instance::Instance;
use super::Microvms;

/// The state reason of a VM whose app exited, worded as the real service
/// words it (a death by signal N is 128 + N, as Docker reports it).
pub(super) fn container_stopped(status: ExitStatus) -> String {
    format!("Container Stopped with Exit Code: {}", status.shell_code())
}

impl Microvms {
    /// Watches the VM `inst` holds now; terminates it when its app exits.
    /// The watch ends by itself with the VM's agent session (a suspend or
    /// a stop), so each new session needs its own.
    pub(super) fn watch_app_exit(&self, inst: &Arc<Instance>) {
        let (Some(vm), Some(this)) = (inst.any_vm(), self.me.upgrade()) else {
            return;
        };
        // Only the session and a weak handle: the VM stays the instance's
        // to drop.
        let agent = vm.agent().clone();
        let watched = Arc::downgrade(&vm);
        drop(vm);
        let inst = Arc::clone(inst);
        tokio::spawn(async move {
            match agent.wait_main_exit().await {
                Err(AgentError::Disconnected) => {
                    this.check_vm_process(&inst, &watched).await;
                }
                Ok(status) => {
                    let reason = container_stopped(status);
                    tracing::info!(microvm = %inst.id, ?status, "the app's main process ended");
                    // Through the API's path: the terminate hook, the app
                    // log, the files; a no-op when the VM is already ending.
                    this.terminate(inst, reason).await;
                }
                // A guest that broke the protocol: the reaper terminates it.
                Err(AgentError::Violation(_)) => {}
                // An image built before main processes were marked, or
                // whose agent predates them.
                Err(AgentError::Guest { message, .. }) => {
                    tracing::debug!(microvm = %inst.id, "not watching the app: {message}");
                }
                Err(e) => tracing::warn!(microvm = %inst.id, "watching the app failed: {e}"),
            }
        });
    }
}

impl Microvms {
    /// After the agent session of a RUNNING (or parked) VM ended: a suspend or a stop
    /// did that on purpose (the state says so by then); otherwise, if the
    /// VM's process is gone (killed, crashed), the VM is terminated now
    /// with the reason, instead of looking RUNNING until a restart.
    async fn check_vm_process(&self, inst: &Arc<Instance>, watched: &Weak<dyn Vm>) {
        // A deliberate suspend or stop records its state before it ends
        // the process; give a racing one that long to show.
        tokio::time::sleep(SESSION_END_GRACE).await;
        let Some(vm) = watched.upgrade() else { return };
        // Running, or parked (warm suspended): both keep their process.
        let current = inst.any_vm();
        let same_vm = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &vm));
        if !same_vm
            || !matches!(
                inst.state(),
                MicrovmState::Running | MicrovmState::Suspended
            )
        {
            return;
        }
        drop(current);
        if let Some(how) = vm.exited() {
            tracing::warn!(microvm = %inst.id, how, "the microVM's QEMU process ended on its own");
            let reason = process_lost("unexpectedly", &how);
            drop(vm);
            if let Some(this) = self.me.upgrade() {
                this.terminate(Arc::clone(inst), reason).await;
            }
        }
    }
}

/// The state reason of a VM whose process ended on its own, `when` (e.g.
/// "unexpectedly", "while it was suspended") and `how` (its exit status).
pub(super) fn process_lost(when: &str, how: &str) -> String {
    format!("the microVM's virtual machine process ended {when} ({how}); its memory was lost")
}

/// How long a deliberate end of a VM may take to show in its state.
const SESSION_END_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_code_or_128_plus_the_signal() {
        let exited = ExitStatus {
            code: Some(3),
            signal: None,
        };
        assert_eq!(
            container_stopped(exited),
            "Container Stopped with Exit Code: 3"
        );
        let killed = ExitStatus {
            code: None,
            signal: Some(9),
        };
        assert_eq!(
            container_stopped(killed),
            "Container Stopped with Exit Code: 137"
        );
    }
}
