//! Taking back the microVMs of a previous emberd (stopped or killed):
//! running VMs are re-attached, suspended ones stay resumable, and the
//! ones whose VM is gone are recorded as TERMINATED with the reason.

use std::sync::Arc;

use ember_api::model::MicrovmState;
use ember_store::MicrovmRecord;

use super::instance::{Instance, Status};
use super::lifecycle::TERMINATED_BY_API;
use super::spec::RunSpec;
use super::Microvms;

impl Microvms {
    /// Re-attaches every live microVM in the store. Call once at start,
    /// before serving.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, ember_store::StoreError> {
        let records = self.store.live_microvms()?;
        let mut recovered = 0;
        for rec in records {
            if self.recover_one(&rec).await {
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    async fn recover_one(self: &Arc<Self>, rec: &MicrovmRecord) -> bool {
        let state: MicrovmState = rec.state.parse().unwrap_or(MicrovmState::Terminating);
        let spec = match RunSpec::from_json(&rec.spec) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(microvm = %rec.id, "unreadable run spec: {e}");
                return false;
            }
        };
        let inst = Arc::new(Instance::new(
            rec.id.clone(),
            rec.image.clone(),
            rec.version,
            rec.started_at,
            spec,
            Status {
                state,
                suspended_at: rec.suspended_at,
            },
            rec.last_active_at,
        ));
        self.live_map().insert(rec.id.clone(), Arc::clone(&inst));
        // Counted whatever the limits say: it exists already.
        self.admission.hold(&rec.id, None);
        let previous = rec.proxy_addr.as_deref().and_then(|a| a.parse().ok());
        match self.bind_endpoint(&rec.id, previous).await {
            Ok((endpoint, addr)) if endpoint != rec.endpoint => {
                tracing::warn!(microvm = %rec.id, %endpoint, "the endpoint moved");
                let _ = self
                    .store
                    .set_microvm_endpoint(&rec.id, &endpoint, addr.as_deref());
            }
            Ok(_) => {}
            Err(e) => tracing::error!(microvm = %rec.id, "endpoint: {}", e.message()),
        }
        let has_snapshot = ember_vmm::SnapshotManifest::load(&self.suspended_dir(&rec.id)).is_ok();
        if state == MicrovmState::Suspended {
            if has_snapshot {
                return true;
            }
            self.finish_termination(
                &inst,
                "its suspended state was missing when emberd restarted",
            )
            .await;
            return false;
        }
        match self.hv.attach(&rec.id).await {
            Ok(vm) => {
                self.admission.hold(&rec.id, Some(inst.spec.memory_mib));
                self.serve_metadata(&inst, vm.as_ref());
                inst.set_vm(Some(vm));
                self.watch_app_exit(&inst);
                match state {
                    MicrovmState::Terminating => {
                        self.terminate(Arc::clone(&inst), TERMINATED_BY_API.into());
                    }
                    MicrovmState::Running => {}
                    // A start, resume or suspend was cut short but the VM
                    // runs: it is running.
                    _ => self.set_state(
                        &inst,
                        MicrovmState::Running,
                        Some("emberd restarted during a state change; the VM kept running"),
                        Some(None),
                    ),
                }
                tracing::info!(microvm = %rec.id, "re-attached");
                true
            }
            Err(e) if has_snapshot && state != MicrovmState::Terminating => {
                // Killed between writing the suspended state and recording
                // it: the snapshot is whole, so the VM is suspended.
                tracing::info!(microvm = %rec.id, "no VM process ({e}); suspended state found");
                self.set_state(
                    &inst,
                    MicrovmState::Suspended,
                    Some("suspended (emberd restarted while suspending)"),
                    Some(Some(crate::now())),
                );
                true
            }
            Err(e) => {
                let reason = if state == MicrovmState::Terminating {
                    TERMINATED_BY_API.to_string()
                } else {
                    format!("its VM process was gone when emberd restarted: {e}")
                };
                self.finish_termination(&inst, &reason).await;
                false
            }
        }
    }
}
