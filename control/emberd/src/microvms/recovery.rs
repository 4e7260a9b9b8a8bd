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

/// How many previous VMs are attached at once: a silent guest costs its
/// agent handshake's timeout, so one at a time could keep VMs unusable
/// for an hour.
const ATTACH_PARALLELISM: usize = 16;

impl Microvms {
    /// Takes back every live microVM in the store. Call once at start,
    /// before serving: each VM is registered at once (the API answers for
    /// it with its stored state, its endpoint listens), then attached in
    /// the background, at most [`ATTACH_PARALLELISM`] at a time, under its
    /// transition lock, so an operation or a request on it waits for its
    /// attach instead of racing it. Returns how many were registered.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, ember_store::StoreError> {
        self.end_leftover_pool().await;
        self.remove_leftover_forks();
        let records = self.store.live_microvms().await?;
        let owned: std::collections::HashSet<&str> =
            records.iter().map(|r| r.id.as_str()).collect();
        self.end_unowned(&owned).await;
        let slots = Arc::new(tokio::sync::Semaphore::new(ATTACH_PARALLELISM));
        let mut registered = 0;
        for rec in records {
            let Some(inst) = self.register(&rec).await else {
                continue;
            };
            registered += 1;
            // Uncontended: nothing else knows the instance yet.
            let guard = Arc::clone(&inst.transition).lock_owned().await;
            let (this, slots) = (Arc::clone(self), Arc::clone(&slots));
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                this.attach_recovered(&rec, &inst).await;
                drop(guard);
            });
        }
        Ok(registered)
    }

    /// Ends the VM processes and removes the files of microVMs this node
    /// does not own (any more): rows TERMINATED while it was away (another
    /// node declared it dead), or crashes between the row's end and its
    /// files'. A process left running would be a twin of nothing.
    async fn end_unowned(&self, owned: &std::collections::HashSet<&str>) {
        // QEMU's runtime folders, one per VM process, and the VMs' files.
        let roots = [
            (self.layout.vm_state().join("vms"), false),
            (self.layout.microvms(), true),
        ];
        for (root, holds_files) in roots {
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                // Build VMs are the builds' to clean up.
                let build_vm = id.starts_with("build-") || id.starts_with("image-");
                if build_vm
                    || owned.contains(id.as_str())
                    || ember_vmm::validate_vm_name(&id).is_err()
                {
                    continue;
                }
                if let Ok(vm) = self.hv.attach(&id).await {
                    tracing::warn!(microvm = %id, "ending a VM process this node does not own");
                    if let Err(e) = vm.stop().await {
                        tracing::error!(microvm = %id, "stopping: {e}");
                    }
                }
                if holds_files {
                    if let Err(e) = super::lifecycle::remove_dir_if_exists(&entry.path()) {
                        tracing::warn!(microvm = %id, "removing its files: {e}");
                    }
                }
            }
        }
    }

    /// The in-memory instance of a stored VM, in the map, counted, its
    /// endpoint bound. A VM whose run spec cannot be read is ended here:
    /// its QEMU (if any) stopped, its row TERMINATED with the reason.
    async fn register(self: &Arc<Self>, rec: &MicrovmRecord) -> Option<Arc<Instance>> {
        let state: MicrovmState = rec.state.parse().unwrap_or(MicrovmState::Terminating);
        let mut spec = match RunSpec::from_json(&rec.spec, &self.layout) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(microvm = %rec.id, "unreadable run spec: {e}");
                self.end_unreadable(rec, &e.to_string()).await;
                return None;
            }
        };
        self.cached_snapshot(&mut spec);
        let status = Status {
            state,
            suspended_at: rec.suspended_at,
        };
        let inst = Arc::new(Instance::of_record(rec, spec, status));
        self.live_map().insert(rec.id.clone(), Arc::clone(&inst));
        // Counted whatever the limits say: it exists already.
        self.admission.hold(&rec.id, None);
        let previous = rec.proxy_addr.as_deref().and_then(|a| a.parse().ok());
        match self.bind_endpoint(&rec.id, previous).await {
            Ok((endpoint, addr)) if endpoint != rec.endpoint => {
                tracing::warn!(microvm = %rec.id, %endpoint, "the endpoint moved");
                let _ = self
                    .store
                    .set_microvm_endpoint(&rec.id, &endpoint, addr.as_deref())
                    .await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(microvm = %rec.id, "endpoint: {}", e.message()),
        }
        Some(inst)
    }

    /// Ends a VM emberd cannot describe: without its run spec there is no
    /// way to serve or resume it, and a QEMU left running would be an
    /// orphan nobody accounts for.
    async fn end_unreadable(&self, rec: &MicrovmRecord, why: &str) {
        if let Ok(vm) = self.hv.attach(&rec.id).await {
            if let Err(e) = vm.stop().await {
                tracing::warn!(microvm = %rec.id, "stopping: {e}");
            }
        }
        if let Err(e) = super::lifecycle::remove_dir_if_exists(&self.vm_dir(&rec.id)) {
            tracing::warn!(microvm = %rec.id, "removing its files: {e}");
        }
        let reason = format!("emberd could not read this microVM's run record at restart ({why})");
        let t = crate::now();
        let update = ember_store::MicrovmUpdate {
            state: MicrovmState::Terminated.as_str(),
            state_reason: Some(Some(&reason)),
            suspended_at: Some(None),
            terminated_at: Some(t),
            now: t,
        };
        self.write_state(&rec.id, &update).await;
    }

    /// Attaches a registered VM to its QEMU (or finds it suspended, or
    /// ends it); the caller holds its transition lock.
    async fn attach_recovered(self: &Arc<Self>, rec: &MicrovmRecord, inst: &Arc<Instance>) -> bool {
        let state = inst.state();
        let has_snapshot = self.hv.snapshot_info(&self.suspended_dir(&rec.id)).is_ok();
        if state == MicrovmState::Suspended {
            if has_snapshot {
                return true;
            }
            return self.attach_parked(rec, inst).await;
        }
        match self.hv.attach(&rec.id).await {
            Ok(vm) => {
                self.admission.hold(&rec.id, Some(inst.spec.memory_mib));
                self.serve_metadata(inst, vm.as_ref());
                inst.set_vm(Some(vm));
                self.watch_app_exit(inst);
                match state {
                    MicrovmState::Terminating => {
                        self.terminate(Arc::clone(inst), TERMINATED_BY_API.into())
                            .await;
                    }
                    MicrovmState::Running => {}
                    // A start, resume or suspend was cut short but the VM
                    // is whole: it is running. A suspend cut short may have
                    // left it paused, so it is continued (and told time
                    // moved on).
                    _ => {
                        if let Some(vm) = inst.vm() {
                            if let Err(e) = vm.wake().await {
                                tracing::warn!(microvm = %rec.id, "continuing it: {e}");
                            }
                        }
                        self.set_state(
                            inst,
                            MicrovmState::Running,
                            Some("emberd restarted during a state change; the VM kept running"),
                            Some(None),
                        )
                        .await
                    }
                }
                tracing::info!(microvm = %rec.id, "re-attached");
                true
            }
            Err(e) if has_snapshot && state != MicrovmState::Terminating => {
                // Killed between writing the suspended state and recording
                // it: the snapshot is whole, so the VM is suspended.
                tracing::info!(microvm = %rec.id, "no VM process ({e}); suspended state found");
                self.set_state(
                    inst,
                    MicrovmState::Suspended,
                    Some("suspended (emberd restarted while suspending)"),
                    Some(Some(crate::now())),
                )
                .await;
                true
            }
            Err(e) => {
                let reason = if state == MicrovmState::Terminating {
                    TERMINATED_BY_API.to_string()
                } else {
                    format!("its VM process was gone when emberd restarted: {e}")
                };
                self.finish_termination(inst, &reason).await;
                false
            }
        }
    }

    /// A SUSPENDED VM without a snapshot on disk was parked by the
    /// previous emberd: its QEMU is still there, paused, and is taken back
    /// parked. Without a process, the VM's state is lost.
    async fn attach_parked(self: &Arc<Self>, rec: &MicrovmRecord, inst: &Arc<Instance>) -> bool {
        let vm = match self.hv.attach(&rec.id).await {
            Ok(vm) => vm,
            Err(e) => {
                tracing::warn!(microvm = %rec.id, "no suspended state: {e}");
                self.finish_termination(
                    inst,
                    "its suspended state was missing when emberd restarted",
                )
                .await;
                return false;
            }
        };
        // The attach ran the guest for its handshake: park it again.
        match vm.park().await {
            Ok(host_bytes) => {
                self.serve_metadata(inst, vm.as_ref());
                inst.set_parked(vm, host_bytes);
                self.watch_app_exit(inst);
                tracing::info!(microvm = %rec.id, "re-attached, parked");
                true
            }
            Err(e) => {
                inst.set_vm(Some(vm));
                let reason = format!("emberd restarted and could not suspend it again: {e}");
                self.finish_termination(inst, &reason).await;
                false
            }
        }
    }
}
