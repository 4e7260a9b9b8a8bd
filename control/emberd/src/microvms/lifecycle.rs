//! The state machine: run, suspend, resume, terminate. The API methods
//! check that the current state allows the operation, record the
//! transitional state and return; the work happens in a task holding the
//! instance's transition lock.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OwnedMutexGuard;

use ember_api::model::MicrovmState;
use ember_api::{ApiError, ErrorKind};
use ember_builder::hooks::HookFailure;
use ember_store::{MicrovmRecord, MicrovmUpdate, StoreError};
use ember_vmm::{Network, RestoreDisk, RestoreMemory, RestoreOptions, Vm};

use super::instance::{Instance, Status};
use super::spec::{Hook, RunSpec};
use super::{EndpointMode, Microvms};
use crate::layout::DataDir;
use crate::now;

const RESOURCE: &str = "Microvm";
/// The state reason of a VM ended by `TerminateMicrovm`.
pub(super) const TERMINATED_BY_API: &str = "terminated by TerminateMicrovm";
/// Where the guest finds its own microVM id.
const IDENTITY_FILE: &str = "/run/ember-microvm-id";

/// Where a new microVM's QEMU comes from.
pub(super) enum Origin {
    /// Restored from its image version's snapshot.
    Image,
    /// Restored ahead of time into the warm pool, under the VM's id.
    Pooled(Arc<dyn Vm>),
    /// A snapshot of the running microVM `parent`.
    Fork {
        parent: String,
        snapshot: Arc<super::fork::ForkSnapshot>,
        memory: RestoreMemory,
    },
}

/// A run the service has validated: which snapshot, and how to run it.
pub struct RunPlan {
    pub image: String,
    pub version: u32,
    pub image_arn: String,
    pub spec: RunSpec,
}

impl Microvms {
    /// `RunMicrovm`: records the VM as PENDING with its endpoint and
    /// restores it in the background.
    pub async fn run(self: &Arc<Self>, plan: RunPlan) -> Result<MicrovmRecord, ApiError> {
        self.refuse_if_fenced()?;
        self.refuse_if_draining()?;
        // A pooled VM holds its slot already, under the id it was restored as.
        let pooled = self.claim_pooled(&plan.spec);
        let id = match &pooled {
            Some((id, _)) => id.clone(),
            None => {
                let id = crate::service::names::new_id();
                // The slot is taken before the first await, so parallel
                // runs see each other; every way out before the start
                // task gives it back.
                self.admission.admit_run(&id, plan.spec.memory_mib)?;
                id
            }
        };
        let pooled = pooled.map(|(_, vm)| vm);
        match self.create_pending(&id, plan).await {
            Ok((record, inst, guard)) => {
                let origin = match pooled {
                    Some(vm) => Origin::Pooled(vm),
                    None => Origin::Image,
                };
                self.spawn_start(inst, guard, origin);
                Ok(record)
            }
            Err(e) => {
                match pooled {
                    Some(vm) => self.discard_pooled(&id, vm),
                    None => self.admission.release(&id),
                }
                Err(e)
            }
        }
    }

    /// A new microVM `id`, which holds its admission slot: its endpoint
    /// bound, its row PENDING, its instance in the map with the transition
    /// lock taken (returned, for the task that starts it). On an error
    /// nothing is left but the slot, which is the caller's to give back.
    pub(super) async fn create_pending(
        &self,
        id: &str,
        plan: RunPlan,
    ) -> Result<(MicrovmRecord, Arc<Instance>, OwnedMutexGuard<()>), ApiError> {
        let endpoint = self.bind_endpoint(id, None).await?;
        let record = new_record(
            id,
            &plan,
            endpoint,
            Some(self.config.node_id.clone()),
            &self.layout,
        );
        let status = Status {
            state: MicrovmState::Pending,
            suspended_at: None,
        };
        let inst = Arc::new(Instance::of_record(&record, plan.spec, status));
        // Taken before the instance is visible, so a request that arrives
        // first waits for the start instead of finding no VM. The instance
        // is in the map before its row exists, so the reconciler of runs
        // placed here (`placement.rs`) never takes the row for one of those.
        let guard = Arc::clone(&inst.transition).lock_owned().await;
        self.live_map().insert(id.to_string(), Arc::clone(&inst));
        if let Err(e) = self.store.insert_microvm(&record).await {
            self.live_map().remove(id);
            self.proxy.unbind_vm(id);
            return Err(internal(e));
        }
        Ok((record, inst, guard))
    }

    pub(super) fn spawn_start(
        self: &Arc<Self>,
        inst: Arc<Instance>,
        guard: OwnedMutexGuard<()>,
        origin: Origin,
    ) {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.start(inst, guard, origin).await });
    }

    /// The endpoint URL of a VM and, for per-VM ports, the listener's
    /// address (re-used after a restart when `previous` is given).
    pub(super) async fn bind_endpoint(
        &self,
        id: &str,
        previous: Option<std::net::SocketAddr>,
    ) -> Result<(String, Option<String>), ApiError> {
        match &self.config.endpoint {
            EndpointMode::PerVmPort => {
                let bound = match previous {
                    Some(addr) => match self.proxy.bind_vm_at(id, addr).await {
                        Ok(a) => Ok(a),
                        Err(e) => {
                            tracing::warn!(microvm = id, %addr, "endpoint port taken, moving: {e}");
                            self.proxy.bind_vm(id).await
                        }
                    },
                    None => self.proxy.bind_vm(id).await,
                };
                let addr = bound.map_err(|e| {
                    ApiError::new(
                        ErrorKind::InsufficientCapacity,
                        format!("no endpoint port available: {e}"),
                    )
                })?;
                let scheme = self.proxy.scheme();
                Ok((format!("{scheme}://{addr}"), Some(addr.to_string())))
            }
            EndpointMode::Wildcard {
                domain,
                public_url_suffix,
            } => Ok((
                format!("{}://{id}.{domain}{public_url_suffix}", self.proxy.scheme()),
                None,
            )),
        }
    }

    async fn start(
        self: Arc<Self>,
        inst: Arc<Instance>,
        _guard: OwnedMutexGuard<()>,
        origin: Origin,
    ) {
        let started = std::time::Instant::now();
        let spec = &inst.spec;
        let forked_from = match &origin {
            Origin::Fork { parent, .. } => Some(parent.clone()),
            _ => None,
        };
        let restored = match origin {
            Origin::Pooled(vm) => Ok(vm),
            Origin::Image => {
                // Image snapshots have an unconnected network card; egress
                // plugs it into user-mode networking behind the egress
                // guard. Without egress the snapshot's own (isolated)
                // network stays.
                let options = RestoreOptions {
                    memory: RestoreMemory::Copy,
                    network: spec.internet().then_some(Network::Internet),
                    ..RestoreOptions::default()
                };
                self.hv
                    .restore(&inst.id, &spec.snapshot_dir, options)
                    .await
                    .map_err(|e| {
                        format!(
                            "could not start from version {} of image {}: {e}",
                            inst.version, inst.image
                        )
                    })
            }
            // The parent's snapshot already has the parent's network; the
            // child's disk copies the parent's layer so the snapshot can
            // go once every child has started.
            Origin::Fork {
                parent,
                snapshot,
                memory,
            } => {
                let options = RestoreOptions {
                    memory,
                    network: None,
                    disk: RestoreDisk::Copied,
                };
                self.hv
                    .restore(&inst.id, snapshot.dir(), options)
                    .await
                    .map_err(|e| format!("could not start as a fork of {parent}: {e}"))
            }
        };
        let vm = match restored {
            Ok(vm) => {
                self.admission.started(&inst.id);
                vm
            }
            Err(reason) => {
                tracing::error!(microvm = %inst.id, "{reason}");
                self.finish_termination(&inst, &reason).await;
                return;
            }
        };
        inst.set_vm(Some(Arc::clone(&vm)));
        self.watch_app_exit(&inst);
        self.serve_metadata(&inst, vm.as_ref());
        if let Err(e) = vm
            .agent()
            .write_file(IDENTITY_FILE, inst.id.as_bytes(), 0o644)
            .await
        {
            tracing::warn!(microvm = %inst.id, "writing {IDENTITY_FILE}: {e}");
        }
        // Endpoint traffic waits on the transition lock this task holds,
        // so nothing reaches the app before `/run` said yes. A fork's app
        // had its `/run` as the parent and goes on from there.
        if forked_from.is_none() {
            let body = ember_builder::hooks::run_body(&inst.id, spec.run_hook_payload.as_deref());
            if let Err(failure) = self.call_hook(&inst, vm.as_ref(), Hook::Run, body).await {
                self.sync_logs(&inst, vm.as_ref()).await;
                self.finish_termination(&inst, &failure.to_string()).await;
                return;
            }
        }
        inst.touch();
        if !inst.is_doomed() {
            let reason = forked_from.as_ref().map(|p| format!("forked from {p}"));
            self.set_state(&inst, MicrovmState::Running, reason.as_deref(), None)
                .await;
            self.metrics().observe_run(started.elapsed());
        }
        tracing::info!(microvm = %inst.id, image = %inst.image, version = inst.version, forked_from, "running");
        // After the run, not beside it: a pool restore would slow it.
        if forked_from.is_none() {
            self.refill_pool(&inst.image, &inst.spec);
        }
    }

    /// `SuspendMicrovm`.
    pub async fn request_suspend(self: &Arc<Self>, id: &str) -> Result<(), ApiError> {
        let inst = self.live_instance(id).await?;
        self.refuse_if_fenced()?;
        let state = inst.state();
        // As on the real service: suspending a suspended VM is a success.
        if matches!(state, MicrovmState::Suspended | MicrovmState::Suspending) {
            return Ok(());
        }
        if state != MicrovmState::Running {
            return Err(forbidden(id, state, "suspended", "RUNNING"));
        }
        if let Some(reason) = inst.host_pause_reason() {
            return Err(host_paused(id, "suspended", reason));
        }
        self.set_state(
            &inst,
            MicrovmState::Suspending,
            Some("suspended by SuspendMicrovm"),
            None,
        )
        .await;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = inst.transition.lock().await;
            this.suspend_locked(&inst, "suspended by SuspendMicrovm")
                .await;
        });
        Ok(())
    }

    /// Suspends a running VM: parked in place when the warm tier takes
    /// it, else saved to disk and its process ended. Caller holds the
    /// transition lock.
    pub(super) async fn suspend_locked(&self, inst: &Arc<Instance>, why: &str) {
        let Some(vm) = inst.vm() else {
            return;
        };
        // Paused by the host after the suspend was asked for: the guest
        // cannot answer its hook, nor the disk take the snapshot.
        if let Some(paused) = inst.host_pause_reason() {
            let reason = format!("{why}: not done, {paused}");
            self.set_state(inst, MicrovmState::Running, Some(&reason), None)
                .await;
            return;
        }
        let started = std::time::Instant::now();
        let reason = self.hook_then(inst, vm.as_ref(), Hook::Suspend, why).await;
        self.sync_logs(inst, vm.as_ref()).await;
        let tier = if self.park_for_suspend(inst, &vm).await {
            self.warm_budget_changed();
            "parked"
        } else {
            match self.save_to_disk(inst, vm.as_ref()).await {
                Ok(()) => "on disk",
                Err(e) => return self.suspend_failed(inst, vm.as_ref(), &e).await,
            }
        };
        self.metrics().observe_suspend(started.elapsed());
        // A termination queued meanwhile (the app exited, or
        // TerminateMicrovm) finishes next; TERMINATING stays the truth
        // until then.
        if !inst.is_doomed() {
            self.set_state(
                inst,
                MicrovmState::Suspended,
                Some(&reason),
                Some(Some(now())),
            )
            .await;
        }
        tracing::info!(microvm = %inst.id, tier, "suspended: {reason}");
    }

    /// Writes the VM to its suspended folder and ends its process. On an
    /// error no half snapshot is left.
    async fn save_to_disk(&self, inst: &Instance, vm: &dyn Vm) -> Result<(), String> {
        let dir = self.suspended_dir(&inst.id);
        if let Err(e) = remove_dir_if_exists(&dir) {
            tracing::warn!(microvm = %inst.id, "clearing {}: {e}", dir.display());
        }
        let saved = match std::fs::create_dir_all(self.vm_dir(&inst.id)) {
            Ok(()) => vm.suspend(&dir).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match saved {
            Ok(_) => {
                inst.set_vm(None);
                Ok(())
            }
            Err(e) => {
                let _ = remove_dir_if_exists(&dir);
                Err(e)
            }
        }
    }

    /// A save that failed: the VM may still be whole, and must not be lost.
    async fn suspend_failed(&self, inst: &Arc<Instance>, vm: &dyn Vm, e: &str) {
        if vm.exited().is_none() && vm.resume().await.is_ok() {
            let reason = format!("suspend failed, still running: {e}");
            tracing::error!(microvm = %inst.id, "{reason}");
            self.set_state(inst, MicrovmState::Running, Some(&reason), None)
                .await;
            return;
        }
        // A QEMU that died mid-save shows only as a broken monitor in `e`:
        // name the death instead.
        let reason = match vm.exited() {
            Some(how) => format!(
                "suspend failed: {}",
                super::app_exit::process_lost("unexpectedly", &how)
            ),
            None => format!("suspend failed and the VM could not continue: {e}"),
        };
        self.finish_termination(inst, &reason).await;
    }

    /// `ResumeMicrovm`.
    pub async fn request_resume(self: &Arc<Self>, id: &str) -> Result<(), ApiError> {
        let inst = match self.instance_or_row(id).await? {
            Here::Live(inst) => inst,
            // Placed here by another node and not started yet: it is
            // starting, which a resume leaves be, as for a local VM.
            Here::Row(rec) if rec.state == MicrovmState::Pending.as_str() => return Ok(()),
            Here::Row(rec) => return Err(not_live(&rec)),
        };
        self.refuse_if_fenced()?;
        let state = inst.state();
        // As on the real service: resuming a running (or starting) VM is
        // a success.
        if matches!(state, MicrovmState::Running | MicrovmState::Pending) {
            return Ok(());
        }
        if state != MicrovmState::Suspended {
            return Err(forbidden(id, state, "resumed", "SUSPENDED"));
        }
        self.admission.admit_start(&inst.id, inst.spec.memory_mib)?;
        self.set_state(
            &inst,
            MicrovmState::Pending,
            Some("resumed by ResumeMicrovm"),
            None,
        )
        .await;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = inst.transition.lock().await;
            if let Err(e) = this.resume_locked(&inst, "resumed by ResumeMicrovm").await {
                tracing::error!(microvm = %inst.id, "resume: {e}");
            }
        });
        Ok(())
    }

    /// Restores a suspended VM from its own snapshot. Caller holds the
    /// transition lock.
    pub(super) async fn resume_locked(
        &self,
        inst: &Arc<Instance>,
        why: &str,
    ) -> Result<Arc<dyn Vm>, String> {
        if let Some(vm) = inst.vm() {
            return Ok(vm);
        }
        let state = inst.state();
        if !matches!(state, MicrovmState::Suspended | MicrovmState::Pending) || inst.is_doomed() {
            return Err(format!("the microVM is {state}"));
        }
        // A no-op after ResumeMicrovm, which took the slot already; an
        // auto-resume takes it here.
        if let Err(e) = self.admission.admit_start(&inst.id, inst.spec.memory_mib) {
            let reason = format!("could not resume: {}", e.message());
            self.set_state(inst, MicrovmState::Suspended, Some(&reason), None)
                .await;
            return Err(reason);
        }
        let restore_started = std::time::Instant::now();
        let vm = match inst.parked() {
            Some((vm, _)) => self.wake_parked(inst, vm).await?,
            None => self.restore_from_disk(inst).await?,
        };
        // Traffic is held (the caller holds the transition lock) until
        // `/resume` said yes; a no puts the VM back to sleep.
        if let Err(failure) = self
            .call_hook(inst, vm.as_ref(), Hook::Resume, Bytes::new())
            .await
        {
            let reason = failure.to_string();
            self.suspend_again(inst, &vm, &reason).await;
            return Err(reason);
        }
        inst.touch();
        if !inst.is_doomed() {
            self.set_state(inst, MicrovmState::Running, Some(why), Some(None))
                .await;
        }
        self.metrics().observe_resume(restore_started.elapsed());
        tracing::info!(
            microvm = %inst.id,
            restore_ms = restore_started.elapsed().as_millis() as u64,
            "resumed: {why}"
        );
        Ok(vm)
    }

    /// Restores a deep-suspended VM from its snapshot on disk, which the
    /// new VM consumes. On failure the VM stays SUSPENDED if its snapshot
    /// is still whole, or is ended.
    async fn restore_from_disk(&self, inst: &Arc<Instance>) -> Result<Arc<dyn Vm>, String> {
        let dir = self.suspended_dir(&inst.id);
        if let Err(reason) = self.expand_suspended(inst).await {
            tracing::error!(microvm = %inst.id, "{reason}");
            self.set_state(inst, MicrovmState::Suspended, Some(&reason), None)
                .await;
            return Err(reason);
        }
        match self
            .hv
            .restore(
                &inst.id,
                &dir,
                RestoreOptions::memory(RestoreMemory::Consume),
            )
            .await
        {
            Ok(vm) => {
                self.admission.started(&inst.id);
                inst.set_vm(Some(Arc::clone(&vm)));
                self.watch_app_exit(inst);
                self.serve_metadata(inst, vm.as_ref());
                let _ = remove_dir_if_exists(&dir);
                Ok(vm)
            }
            Err(e) => {
                let reason = format!("resume failed: {e}");
                tracing::error!(microvm = %inst.id, "{reason}");
                if self.hv.snapshot_info(&dir).is_ok() {
                    self.set_state(inst, MicrovmState::Suspended, Some(&reason), None)
                        .await;
                } else {
                    self.finish_termination(inst, &reason).await;
                }
                Err(reason)
            }
        }
    }

    /// `TerminateMicrovm`: idempotent.
    pub async fn request_terminate(self: &Arc<Self>, id: &str) -> Result<(), ApiError> {
        let inst = match self.instance_or_row(id).await? {
            Here::Live(inst) => inst,
            // Placed here by another node and not started yet.
            Here::Row(rec) if rec.state == MicrovmState::Pending.as_str() => {
                self.refuse_if_fenced()?;
                self.terminate_unstarted(id, TERMINATED_BY_API).await;
                return Ok(());
            }
            // Already terminated.
            Here::Row(_) => return Ok(()),
        };
        self.refuse_if_fenced()?;
        if matches!(
            inst.state(),
            MicrovmState::Terminating | MicrovmState::Terminated
        ) {
            return Ok(());
        }
        self.terminate(inst, TERMINATED_BY_API.into()).await;
        Ok(())
    }

    /// Marks the VM TERMINATING and ends it once the transition in
    /// progress, if any, is done.
    pub(super) async fn terminate(self: &Arc<Self>, inst: Arc<Instance>, why: String) {
        if inst.doom() {
            return;
        }
        self.set_state(&inst, MicrovmState::Terminating, Some(&why), None)
            .await;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = inst.transition.lock().await;
            let mut reason = why;
            // No hooks or logs through an agent session that has ended,
            // nor from a guest the host holds paused.
            let answers = |vm: &Arc<dyn Vm>| !vm.agent().is_closed() && !inst.is_host_paused();
            if let Some(vm) = inst.vm().filter(answers) {
                reason = this
                    .hook_then(&inst, vm.as_ref(), Hook::Terminate, &reason)
                    .await;
                this.sync_logs(&inst, vm.as_ref()).await;
            }
            this.finish_termination(&inst, &reason).await;
        });
    }

    /// Ends the VM's process if any, removes its files and endpoint, and
    /// records TERMINATED.
    pub(super) async fn finish_termination(&self, inst: &Arc<Instance>, reason: &str) {
        inst.doom();
        if let Some(vm) = inst.set_vm(None) {
            if let Err(e) = vm.stop().await {
                tracing::warn!(microvm = %inst.id, "stopping: {e}");
            }
        }
        if let Err(e) = remove_dir_if_exists(&self.vm_dir(&inst.id)) {
            tracing::warn!(microvm = %inst.id, "removing its files: {e}");
        }
        self.proxy.unbind_vm(&inst.id);
        self.live_map().remove(&inst.id);
        self.admission.release(&inst.id);
        let t = now();
        inst.set_status(MicrovmState::Terminated, Some(None));
        let update = MicrovmUpdate {
            state: MicrovmState::Terminated.as_str(),
            state_reason: Some(Some(reason)),
            suspended_at: Some(None),
            terminated_at: Some(t),
            now: t,
        };
        self.write_state(&inst.id, &update).await;
        tracing::info!(microvm = %inst.id, "terminated: {reason}");
    }

    /// Records a state in the mirror and the store. `reason: None` clears
    /// the state reason.
    pub(super) async fn set_state(
        &self,
        inst: &Instance,
        state: MicrovmState,
        reason: Option<&str>,
        suspended_at: Option<Option<f64>>,
    ) {
        inst.set_status(state, suspended_at);
        // Every way into SUSPENDED leaves the VM without a QEMU: a saved
        // suspend, or a resume that failed or was refused.
        if state == MicrovmState::Suspended {
            self.admission.release_running(&inst.id);
        }
        let update = MicrovmUpdate {
            state: state.as_str(),
            state_reason: Some(reason),
            suspended_at,
            terminated_at: None,
            now: now(),
        };
        self.write_state(&inst.id, &update).await;
    }

    /// A resume whose `/resume` hook said no: the VM is saved again
    /// without calling `/suspend` (the app never resumed) and stays
    /// SUSPENDED with the hook's answer as its reason.
    async fn suspend_again(&self, inst: &Arc<Instance>, vm: &Arc<dyn Vm>, reason: &str) {
        if self.park_for_suspend(inst, vm).await {
            let reason = format!("{reason}; the microVM stays SUSPENDED");
            self.set_state(inst, MicrovmState::Suspended, Some(&reason), None)
                .await;
            self.warm_budget_changed();
            return;
        }
        let dir = self.suspended_dir(&inst.id);
        match vm.suspend(&dir).await {
            Ok(_) => {
                inst.set_vm(None);
                let reason = format!("{reason}; the microVM stays SUSPENDED");
                self.set_state(inst, MicrovmState::Suspended, Some(&reason), None)
                    .await;
            }
            Err(e) => {
                let reason = format!("{reason}; saving it again failed: {e}");
                self.finish_termination(inst, &reason).await;
            }
        }
    }

    /// Calls a body-less hook and returns the state reason `why`, with
    /// the hook's failure added when it failed.
    async fn hook_then(&self, inst: &Instance, vm: &dyn Vm, hook: Hook, why: &str) -> String {
        match self.call_hook(inst, vm, hook, Bytes::new()).await {
            Err(failed) => format!("{why}; {failed}"),
            Ok(()) => why.to_string(),
        }
    }

    /// Calls a lifecycle hook if the image enabled it.
    async fn call_hook(
        &self,
        inst: &Instance,
        vm: &dyn Vm,
        hook: Hook,
        body: Bytes,
    ) -> Result<(), HookFailure> {
        let Some((port, timeout)) = inst.spec.hooks.get(hook) else {
            return Ok(());
        };
        ember_builder::hooks::call(vm.agent(), port, hook, body, timeout)
            .await
            .inspect_err(|m| tracing::warn!(microvm = %inst.id, "{m}"))
    }

    pub(super) fn suspended_dir(&self, id: &str) -> std::path::PathBuf {
        self.vm_dir(id).join("suspended")
    }

    /// The live instance, or the right error for a terminated or unknown
    /// id.
    pub(super) async fn live_instance(&self, id: &str) -> Result<Arc<Instance>, ApiError> {
        match self.instance_or_row(id).await? {
            Here::Live(inst) => Ok(inst),
            Here::Row(rec) => Err(not_live(&rec)),
        }
    }

    /// The VM's instance on this node, or else its row (`NotFound` when
    /// there is none, the refusal when it is another node's).
    async fn instance_or_row(&self, id: &str) -> Result<Here, ApiError> {
        if let Some(inst) = self.instance(id) {
            return Ok(Here::Live(inst));
        }
        let rec = self.store.microvm(id).await.map_err(not_found(id))?;
        self.refuse_if_foreign(&rec)?;
        Ok(Here::Row(Box::new(rec)))
    }

    /// Has the node that runs `id` carry out `action`, when that is
    /// another node of the cluster: `Ok(true)` once it did. `Ok(false)`
    /// when this node is to act (or to give the error: unknown,
    /// terminated, no cluster to forward to).
    pub async fn forward_if_foreign(
        &self,
        id: &str,
        action: crate::cluster::Action,
    ) -> Result<bool, ApiError> {
        match self.foreign_owner(id).await {
            Some((peers, owner)) => {
                peers.forward(&owner, id, action).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Suspend, Resume or Terminate of `id`, carried out here or, for a VM
    /// another node runs, by that node.
    pub async fn act(
        self: &Arc<Self>,
        id: &str,
        action: crate::cluster::Action,
    ) -> Result<(), ApiError> {
        if self.forward_if_foreign(id, action).await? {
            return Ok(());
        }
        self.act_here(id, action).await
    }

    /// The action on a VM of this node's (or the error saying it is not).
    pub async fn act_here(
        self: &Arc<Self>,
        id: &str,
        action: crate::cluster::Action,
    ) -> Result<(), ApiError> {
        use crate::cluster::Action;
        match action {
            Action::Suspend => self.request_suspend(id).await,
            Action::Resume => self.request_resume(id).await,
            Action::Terminate => self.request_terminate(id).await,
        }
    }

    /// The other node of the cluster that runs live VM `id`, and the way
    /// to it; `None` when this node is to act (or to give the error:
    /// unknown, terminated, no cluster to forward to).
    pub(super) async fn foreign_owner(&self, id: &str) -> Option<(&crate::cluster::Peers, String)> {
        let peers = self.config.peers.as_deref()?;
        if self.instance(id).is_some() {
            return None;
        }
        let rec = self.store.microvm(id).await.ok()?;
        rec.owner_node
            .filter(|owner| {
                *owner != self.config.node_id && rec.state != MicrovmState::Terminated.as_str()
            })
            .map(|owner| (peers, owner))
    }

    /// A live VM another node runs, and this node did not forward the
    /// request (no cluster key, or a forwarded request whose VM moved):
    /// it says where the VM runs.
    fn refuse_if_foreign(&self, rec: &MicrovmRecord) -> Result<(), ApiError> {
        match rec.owner_node.as_deref() {
            Some(owner)
                if owner != self.config.node_id
                    && rec.state != MicrovmState::Terminated.as_str() =>
            {
                Err(ApiError::conflict(
                    RESOURCE,
                    &rec.id,
                    format!(
                        "microVM {} runs on node {owner}, not on this node ({}); send the \
                         request to that node's API{}",
                        rec.id,
                        self.config.node_id,
                        if self.config.peers.is_some() {
                            " (it could not be forwarded: it changed hands meanwhile)"
                        } else {
                            ", or give every node one --cluster-key-file and an \
                             --internal-listen so that any node forwards it"
                        }
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// A VM of this node's, as [`Microvms::instance_or_row`] found it.
enum Here {
    Live(Arc<Instance>),
    /// No instance: a row TERMINATED, or PENDING placed here by another
    /// node and not started yet.
    Row(Box<MicrovmRecord>),
}

/// The answer for a VM this node has no instance of: its state, from its
/// row.
fn not_live(rec: &MicrovmRecord) -> ApiError {
    ApiError::conflict(
        RESOURCE,
        &rec.id,
        format!("microVM {} is {}", rec.id, rec.state),
    )
}

/// The PENDING row of a new microVM `id` run from `plan`, naming `owner`
/// (the store writes the owner it registered or placed the VM on; this
/// is what the answer shows).
pub(super) fn new_record(
    id: &str,
    plan: &RunPlan,
    (endpoint, proxy_addr): (String, Option<String>),
    owner: Option<String>,
    layout: &DataDir,
) -> MicrovmRecord {
    let t = now();
    MicrovmRecord {
        id: id.to_string(),
        image: plan.image.clone(),
        version: plan.version,
        image_arn: plan.image_arn.clone(),
        spec: plan.spec.to_json(layout),
        state: MicrovmState::Pending.to_string(),
        state_reason: None,
        endpoint,
        proxy_addr,
        started_at: t,
        terminated_at: None,
        last_active_at: t,
        suspended_at: None,
        updated_at: t,
        owner_node: owner,
    }
}

/// An operation the guest would have to take part in, asked of a VM the
/// host holds paused.
pub(super) fn host_paused(id: &str, verb: &str, reason: &str) -> ApiError {
    ApiError::conflict(
        RESOURCE,
        id,
        format!("microVM {id} cannot be {verb} now: it is {reason}"),
    )
}

pub(super) fn forbidden(id: &str, state: MicrovmState, verb: &str, needed: &str) -> ApiError {
    ApiError::conflict(
        RESOURCE,
        id,
        format!("microVM {id} is {state}; only a {needed} microVM can be {verb}"),
    )
}

pub(super) fn not_found(id: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound(_) => ApiError::not_found(RESOURCE, id),
        other => internal(other),
    }
}

fn internal(e: StoreError) -> ApiError {
    crate::service::internal(e)
}

pub(super) fn remove_dir_if_exists(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
