//! What a node does when its lease is in doubt, or gone.
//!
//! A node that cannot renew its lease *fences* itself before the lease
//! can expire: another node may soon declare it dead and tell users its
//! VMs are lost, so nothing here may go on changing them. While fenced,
//! the vCPUs of its running VMs are paused (memory kept), endpoints answer
//! 503 and every transition is refused; the next good renewal lifts the
//! fence and continues the VMs. A node the store declared dead abandons
//! its VMs outright: their rows already say TERMINATED, so their QEMUs
//! are ended and nothing is written back.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use ember_api::model::MicrovmState;
use ember_api::{ApiError, ErrorKind};

use super::Microvms;

#[derive(Default)]
pub struct Fence {
    inner: Mutex<FenceState>,
}

#[derive(Default)]
struct FenceState {
    /// Why the node holds still; `None` while its lease is good.
    reason: Option<String>,
    /// VMs whose vCPUs the fence paused, continued when it lifts.
    paused: HashSet<String>,
    /// No new microVMs here: runs, forks and pool fills are refused.
    draining: bool,
}

impl Fence {
    fn lock(&self) -> MutexGuard<'_, FenceState> {
        // Each change is one field or one set operation: a panic leaves
        // no half-made change behind.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Microvms {
    pub fn fenced_reason(&self) -> Option<String> {
        self.fence.lock().reason.clone()
    }

    pub fn is_fenced(&self) -> bool {
        self.fence.lock().reason.is_some()
    }

    /// The error of an operation asked of a fenced node.
    pub(super) fn refuse_if_fenced(&self) -> Result<(), ApiError> {
        match self.fenced_reason() {
            Some(reason) => Err(ApiError::internal(format!(
                "node {} cannot change microVMs now: {reason}; retry shortly",
                self.config.node_id
            ))),
            None => Ok(()),
        }
    }

    pub fn set_draining(&self, draining: bool) {
        let was = std::mem::replace(&mut self.fence.lock().draining, draining);
        if was != draining {
            tracing::warn!(node = %self.config.node_id, draining, "node drain changed");
        }
    }

    pub fn is_draining(&self) -> bool {
        self.fence.lock().draining
    }

    /// New microVMs are refused on a draining node; those it runs go on.
    pub(super) fn refuse_if_draining(&self) -> Result<(), ApiError> {
        if self.is_draining() {
            return Err(ApiError::new(
                ErrorKind::InsufficientCapacity,
                format!(
                    "node {} is draining: it takes no new microVMs (ember node undrain {} \
                     lifts it)",
                    self.config.node_id, self.config.node_id
                ),
            ));
        }
        Ok(())
    }

    /// Fences the node, or keeps it fenced: called on every keeper tick
    /// while the lease is in doubt, so a VM that was in a transition at
    /// the first call is paused at a later one.
    pub async fn fence(&self, reason: &str) {
        let first = self
            .fence
            .lock()
            .reason
            .replace(reason.to_string())
            .is_none();
        if first {
            tracing::error!(node = %self.config.node_id, "fenced: {reason}");
        }
        for inst in self.instances() {
            // A VM the host holds paused for its disk stays so; the disk
            // keeper does not continue it while the node is fenced.
            if inst.state() != MicrovmState::Running || inst.is_host_paused() {
                continue;
            }
            let Some(vm) = inst.vm() else {
                continue;
            };
            if self.fence.lock().paused.contains(&inst.id) {
                continue;
            }
            // A transition in progress is left to finish; no new one can
            // start while fenced, and the next tick pauses the VM.
            let Ok(_guard) = inst.transition.try_lock() else {
                continue;
            };
            match vm.pause().await {
                Ok(()) => {
                    self.fence.lock().paused.insert(inst.id.clone());
                }
                Err(e) => tracing::error!(microvm = %inst.id, "fence: pausing: {e}"),
            }
        }
    }

    /// Lifts the fence after a good renewal: the VMs it paused continue.
    pub async fn unfence(&self) {
        let paused = {
            let mut state = self.fence.lock();
            if state.reason.take().is_none() {
                return;
            }
            std::mem::take(&mut state.paused)
        };
        tracing::warn!(
            node = %self.config.node_id,
            vms = paused.len(),
            "the lease is renewed: fence lifted"
        );
        for id in paused {
            let Some(vm) = self.instance(&id).and_then(|inst| inst.vm()) else {
                continue;
            };
            if let Err(e) = vm.resume().await {
                tracing::error!(microvm = %id, "fence lifted: continuing: {e}");
            }
        }
        self.warm_budget_changed();
    }

    /// The store declared this node dead and ended its VMs there (another
    /// node may already answer for their ids): every VM process here is
    /// ended and forgotten, with its files and endpoint. Nothing is
    /// written to the store; its rows are no longer this node's.
    pub async fn abandon_all(&self, why: &str) {
        let all: Vec<_> = self.live_map().drain().map(|(_, inst)| inst).collect();
        self.fence.lock().paused.clear();
        for inst in all {
            inst.doom();
            inst.set_status(MicrovmState::Terminated, Some(None));
            if let Some(vm) = inst.set_vm(None) {
                if let Err(e) = vm.stop().await {
                    tracing::error!(microvm = %inst.id, "abandoning: stopping: {e}");
                }
            }
            self.proxy.unbind_vm(&inst.id);
            self.admission.release(&inst.id);
            self.state_writes.forget(&inst.id);
            if let Err(e) = super::lifecycle::remove_dir_if_exists(&self.vm_dir(&inst.id)) {
                tracing::warn!(microvm = %inst.id, "abandoning: removing its files: {e}");
            }
            tracing::error!(microvm = %inst.id, "abandoned: {why}");
        }
    }
}
