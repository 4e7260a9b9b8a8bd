//! The warm pool: per image version, `--warm-pool N` VMs restored from its
//! snapshot ahead of time, each under the id it will have. `RunMicrovm`
//! claims one instead of restoring: the claim gives it its record, its
//! endpoint, its identity file and its `/run` hook (so the app learns whose
//! it is only then), exactly what a fresh restore gets after its restore.
//! A pooled VM is never seen by the API before its claim and serves one id
//! all its life. Pooled VMs count against capacity (quota and running
//! slots); the pool is topped up in the background after each run of the
//! version, and a run of a newer version ends the older version's pool.
//! VMs that want internet egress are restored for it, never pooled.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use ember_vmm::{RestoreMemory, RestoreOptions, Vm};

use super::spec::RunSpec;
use super::Microvms;

struct Pooled {
    id: String,
    image: String,
    snapshot_dir: PathBuf,
    memory_mib: u32,
    vm: Arc<dyn Vm>,
}

/// The pooled VMs, and the versions being topped up (one filler each).
#[derive(Default)]
pub struct Pool {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    vms: Vec<Pooled>,
    filling: Vec<PathBuf>,
}

impl PoolState {
    /// Takes the pooled VMs `which` picks out of the pool.
    fn take_where(&mut self, which: impl Fn(&Pooled) -> bool) -> Vec<Pooled> {
        let (taken, kept) = std::mem::take(&mut self.vms).into_iter().partition(which);
        self.vms = kept;
        taken
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Microvms {
    /// A pooled VM restored for a run like `spec`, out of the pool, with
    /// the id it was restored under.
    pub(super) fn claim_pooled(&self, spec: &RunSpec) -> Option<(String, Arc<dyn Vm>)> {
        if self.config.warm_pool == 0 || spec.internet() {
            return None;
        }
        let mut state = self.pool.lock();
        let i = state
            .vms
            .iter()
            .position(|p| p.snapshot_dir == spec.snapshot_dir && p.memory_mib == spec.memory_mib)?;
        let claimed = state.vms.swap_remove(i);
        drop(state);
        let _ = std::fs::remove_file(self.layout.pool().join(&claimed.id));
        Some((claimed.id, claimed.vm))
    }

    /// Ends a VM taken from the pool whose run could not go ahead.
    pub(super) fn discard_pooled(&self, id: &str, vm: Arc<dyn Vm>) {
        self.admission.release(id);
        tokio::spawn(async move {
            let _ = vm.stop().await;
        });
    }

    /// Tops up the pool of `spec`'s image version in the background, and
    /// ends the pooled VMs of the image's other versions.
    pub(super) fn refill_pool(self: &Arc<Self>, image: &str, spec: &RunSpec) {
        if self.config.warm_pool == 0 || spec.internet() {
            return;
        }
        let stale: Vec<Pooled> = {
            let mut state = self.pool.lock();
            if state.filling.contains(&spec.snapshot_dir) {
                return;
            }
            state.filling.push(spec.snapshot_dir.clone());
            state.take_where(|p| p.image == image && p.snapshot_dir != spec.snapshot_dir)
        };
        for old in stale {
            self.end_pooled(old);
        }
        let this = Arc::clone(self);
        let (image, spec) = (image.to_string(), spec.clone());
        tokio::spawn(async move {
            this.fill(&image, &spec).await;
            this.pool.lock().filling.retain(|d| *d != spec.snapshot_dir);
        });
    }

    async fn fill(&self, image: &str, spec: &RunSpec) {
        loop {
            let have = self
                .pool
                .lock()
                .vms
                .iter()
                .filter(|p| p.snapshot_dir == spec.snapshot_dir)
                .count();
            if have >= self.config.warm_pool {
                return;
            }
            let id = crate::service::names::new_id();
            // No room: the pool waits for the next run to try again.
            if self.admission.admit_run(&id, spec.memory_mib).is_err() {
                return;
            }
            let marker = self.layout.pool().join(&id);
            if let Err(e) = std::fs::write(&marker, b"") {
                tracing::warn!("warm pool: {}: {e}", marker.display());
                self.admission.release(&id);
                return;
            }
            let options = RestoreOptions::memory(RestoreMemory::Copy);
            match self.hv.restore(&id, &spec.snapshot_dir, options).await {
                Ok(vm) => {
                    self.admission.started(&id);
                    tracing::info!(pooled = %id, image, "warm pool: restored");
                    self.pool.lock().vms.push(Pooled {
                        id,
                        image: image.to_string(),
                        snapshot_dir: spec.snapshot_dir.clone(),
                        memory_mib: spec.memory_mib,
                        vm,
                    });
                }
                Err(e) => {
                    tracing::warn!(image, "warm pool: restore failed: {e}");
                    self.admission.release(&id);
                    let _ = std::fs::remove_file(&marker);
                    return;
                }
            }
        }
    }

    /// Ends the pooled VMs of `image` (of one version's snapshot, if
    /// given): its snapshot is being deleted, and a pooled VM would keep
    /// a slot and read the deleted files until the next run of the image.
    pub fn end_pool_of(&self, image: &str, snapshot_dir: Option<&std::path::Path>) {
        let ended = self.pool.lock().take_where(|p| {
            p.image == image && snapshot_dir.map_or(true, |dir| p.snapshot_dir == dir)
        });
        for old in ended {
            tracing::info!(pooled = %old.id, image, "warm pool: ended, its image is deleted");
            self.end_pooled(old);
        }
    }

    fn end_pooled(&self, old: Pooled) {
        self.admission.release(&old.id);
        let marker = self.layout.pool().join(&old.id);
        tokio::spawn(async move {
            let _ = old.vm.stop().await;
            let _ = std::fs::remove_file(marker);
        });
    }

    /// Ends the pooled VMs a previous emberd left: they have no record,
    /// and the next runs restore new ones.
    pub(super) async fn end_leftover_pool(&self) {
        let Ok(entries) = std::fs::read_dir(self.layout.pool()) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if ember_vmm::validate_vm_name(&id).is_ok() {
                if let Ok(vm) = self.hv.attach(&id).await {
                    let _ = vm.stop().await;
                }
            }
            let _ = std::fs::remove_file(entry.path());
            tracing::info!(pooled = %id, "warm pool: ended a VM the last run left");
        }
    }
}
