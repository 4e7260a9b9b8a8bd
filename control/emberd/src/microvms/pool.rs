//! The warm pool: per image version, `--warm-pool N` VMs (or the image's
//! `ember:warm-pool` tag's N) restored from its snapshot ahead of time,
//! each under the id it will have. `RunMicrovm` claims one instead of
//! restoring: the claim gives it its record, its endpoint, its identity
//! file and its `/run` hook (so the app learns whose it is only then),
//! exactly what a fresh restore gets after its restore. A pooled VM is
//! never seen by the API before its claim and serves one id all its life.
//! Pooled VMs count against capacity (quota and running slots). The pool
//! is filled when a version's build succeeds, at emberd's start and when
//! the tag changes, and topped up in the background after each run; a
//! newer version ends the older version's pool. VMs that want internet
//! egress are restored for it, never pooled.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ember_vmm::{RestoreMemory, RestoreOptions, Vm};

use super::spec::RunSpec;
use super::Microvms;

/// The image tag whose value sets the pool size of the image's versions,
/// in place of `--warm-pool`.
pub const WARM_POOL_TAG: &str = "ember:warm-pool";
/// The largest pool one image version may have.
pub const MAX_WARM_POOL: usize = 16;

/// A pool size as the tag gives it: a whole number up to [`MAX_WARM_POOL`].
pub fn parse_pool_size(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n <= MAX_WARM_POOL => Ok(n),
        _ => Err(format!(
            "the tag {WARM_POOL_TAG} must be a number from 0 to {MAX_WARM_POOL}, not {value:?}"
        )),
    }
}

/// What a pooled VM was restored for: runs of this snapshot with this
/// much memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolKey {
    pub snapshot_dir: PathBuf,
    pub memory_mib: u32,
}

impl PoolKey {
    /// The pool a run like `spec` can claim from; none for a VM with
    /// internet egress (restored with its network, never pooled).
    fn of(spec: &RunSpec) -> Option<Self> {
        (!spec.internet()).then(|| Self {
            snapshot_dir: spec.snapshot_dir.clone(),
            memory_mib: spec.memory_mib,
        })
    }
}

struct Pooled {
    id: String,
    image: String,
    key: PoolKey,
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
    fn take_where(&mut self, which: impl FnMut(&Pooled) -> bool) -> Vec<Pooled> {
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
        let key = PoolKey::of(spec)?;
        let mut state = self.pool.lock();
        let i = state.vms.iter().position(|p| p.key == key)?;
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

    /// How many VMs each version of `image` keeps pooled: its tag's
    /// number, else `--warm-pool`.
    async fn pool_size(&self, image: &str) -> usize {
        let tags = self.store.tags(image).await.unwrap_or_default();
        tags.iter()
            .find(|(k, _)| k == WARM_POOL_TAG)
            .and_then(|(_, v)| parse_pool_size(v).ok())
            .unwrap_or(self.config.warm_pool)
    }

    /// Tops up the pool of `spec`'s image version after a run of it.
    pub(super) fn refill_pool(self: &Arc<Self>, image: &str, spec: &RunSpec) {
        if let Some(key) = PoolKey::of(spec) {
            self.fill_pool(image, key);
        }
    }

    /// Brings the pool of `image`'s version `key` to the image's pool
    /// size in the background (ending pooled VMs beyond it), and ends the
    /// pooled VMs of the image's other versions: the version that runs by
    /// default is this one now.
    pub fn fill_pool(self: &Arc<Self>, image: &str, key: PoolKey) {
        // The pool's size is a tag in the store, read asynchronously.
        let this = Arc::clone(self);
        let image = image.to_string();
        tokio::spawn(async move { this.resize_pool(&image, key).await });
    }

    async fn resize_pool(self: &Arc<Self>, image: &str, key: PoolKey) {
        if self.is_fenced() {
            return;
        }
        // A draining node takes no new microVMs, so it holds none ready.
        let size = match self.is_draining() {
            true => 0,
            false => self.pool_size(image).await,
        };
        let (ended, start_filler) = {
            let mut state = self.pool.lock();
            let mut ended = state.take_where(|p| p.image == image && p.key != key);
            let mut kept = 0;
            ended.extend(state.take_where(|p| {
                let this_version = p.key == key;
                kept += usize::from(this_version);
                this_version && kept > size
            }));
            // One filler per version at a time.
            let start_filler = size > 0 && !state.filling.contains(&key.snapshot_dir);
            if start_filler {
                state.filling.push(key.snapshot_dir.clone());
            }
            (ended, start_filler)
        };
        for old in ended {
            self.end_pooled(old);
        }
        if !start_filler {
            return;
        }
        let this = Arc::clone(self);
        let image = image.to_string();
        tokio::spawn(async move {
            this.fill(&image, &key, size).await;
            this.pool.lock().filling.retain(|d| *d != key.snapshot_dir);
        });
    }

    async fn fill(&self, image: &str, key: &PoolKey, size: usize) {
        loop {
            let have = self
                .pool
                .lock()
                .vms
                .iter()
                .filter(|p| p.key == *key)
                .count();
            if have >= size {
                return;
            }
            let id = crate::service::names::new_id();
            // No room: the pool waits for the next run to try again.
            if self.admission.admit_run(&id, key.memory_mib).is_err() {
                return;
            }
            let marker = self.layout.pool().join(&id);
            if let Err(e) = std::fs::write(&marker, b"") {
                tracing::warn!("warm pool: {}: {e}", marker.display());
                self.admission.release(&id);
                return;
            }
            let options = RestoreOptions::memory(RestoreMemory::Copy);
            match self.hv.restore(&id, &key.snapshot_dir, options).await {
                Ok(vm) => {
                    self.admission.started(&id);
                    tracing::info!(pooled = %id, image, "warm pool: restored");
                    self.pool.lock().vms.push(Pooled {
                        id,
                        image: image.to_string(),
                        key: key.clone(),
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
    pub fn end_pool_of(&self, image: &str, snapshot_dir: Option<&Path>) {
        let ended = self.pool.lock().take_where(|p| {
            p.image == image && snapshot_dir.map_or(true, |dir| p.key.snapshot_dir == dir)
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
