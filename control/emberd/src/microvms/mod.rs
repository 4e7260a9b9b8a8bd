//! Running microVMs: the one in-memory map of live VMs, their state
//! machine, idle timers, and the proxy's way into them.
//!
//! The store is the source of truth for what the API reports; each live
//! VM also has an [`Instance`] here that mirrors its state and holds its
//! `Vm` handle while it runs. Every transition (run, suspend, resume,
//! terminate) runs under the instance's transition lock, so an auto-resume
//! triggered by twenty concurrent requests happens once and the rest wait
//! for it.

mod app_exit;
mod capacity;
mod compaction;
mod disk_full;
mod fence;
mod fork;
mod instance;
mod lifecycle;
pub mod logs;
mod observed;
mod placement;
mod pool;
mod reaper;
mod recovery;
pub mod spec;
mod state_writes;
mod upstream;
mod warm;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use ember_proxy::{Proxy, TokenKey};
use ember_store::StateStore;
use ember_vmm::Hypervisor;

use crate::layout::DataDir;
use capacity::Admission;
pub use capacity::{Capacity, DiskReserve};
pub use instance::Instance;
pub use lifecycle::RunPlan;
pub use pool::{parse_pool_size, PoolKey, WARM_POOL_TAG};
pub use upstream::VmUpstream;
pub use warm::default_warm_budget_bytes;

/// How endpoints are addressed.
#[derive(Debug, Clone)]
pub enum EndpointMode {
    /// Every VM gets its own listener (on the proxy's bind address):
    /// `http://IP:PORT`. Works with curl and Python on a host with no DNS
    /// set-up.
    PerVmPort,
    /// One shared listener; the VM is the first label of the `Host`:
    /// `http://<id>.<domain>` (behind a wildcard DNS record).
    Wildcard {
        domain: String,
        public_url_suffix: String,
    },
}

#[derive(Debug, Clone)]
pub struct MicrovmsConfig {
    /// The floor of `maxIdleDurationSeconds` (the model's is 60).
    pub min_idle_seconds: u32,
    /// A VM suspended this long has its memory stored as a difference
    /// from its image's.
    pub compact_after_seconds: u32,
    pub endpoint: EndpointMode,
    /// Serves every running VM's 169.254.169.254.
    pub metadata: Arc<crate::metadata::Metadata>,
    pub capacity: Capacity,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Host memory parked (warm-suspended) VMs may hold in all; 0 sends
    /// every suspend to disk.
    pub warm_suspended_bytes: u64,
    /// VMs per image version restored ahead of time for `RunMicrovm`.
    pub warm_pool: usize,
    /// This emberd's `--node-id`: the owner its VMs' rows name.
    pub node_id: String,
    /// The other nodes of a cluster, which carry out actions on the
    /// microVMs they run (`None`: one node, or no cluster key).
    pub peers: Option<Arc<crate::cluster::Peers>>,
    /// The object store image snapshots are fetched from when this
    /// node's data dir does not hold them.
    pub blobs: Option<Arc<crate::blobs::SnapshotBlobs>>,
}

pub struct Microvms {
    store: Arc<dyn StateStore>,
    layout: DataDir,
    hv: Arc<dyn Hypervisor>,
    proxy: Arc<Proxy>,
    tokens: Arc<TokenKey>,
    config: MicrovmsConfig,
    /// Running slots and the quota: taken before a VM starts, given back
    /// when it suspends or ends.
    admission: Admission,
    live: Mutex<HashMap<String, Arc<Instance>>>,
    /// Rows placed here that the reconciler is starting (not yet in
    /// `live`), each with whether a TerminateMicrovm came for it meanwhile.
    /// Locked after `live` when both are.
    placing: Mutex<HashMap<String, bool>>,
    /// For tasks started where only `&self` is at hand (a resume).
    me: Weak<Microvms>,
    /// Wakes the task that keeps parked VMs within their budget.
    warm_tier: Arc<tokio::sync::Notify>,
    /// VMs restored ahead of time, waiting for a `RunMicrovm`.
    pool: pool::Pool,
    /// State changes the store could not take yet.
    state_writes: state_writes::StateWrites,
    /// Whether the node's lease is in doubt, and whether it drains.
    fence: fence::Fence,
}

impl Microvms {
    pub fn new(
        store: Arc<dyn StateStore>,
        layout: DataDir,
        hv: Arc<dyn Hypervisor>,
        proxy: Arc<Proxy>,
        tokens: Arc<TokenKey>,
        config: MicrovmsConfig,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            admission: Admission::new(config.capacity.clone()),
            store,
            layout,
            hv,
            proxy,
            tokens,
            config,
            live: Mutex::new(HashMap::new()),
            placing: Mutex::new(HashMap::new()),
            warm_tier: Arc::new(tokio::sync::Notify::new()),
            pool: pool::Pool::default(),
            state_writes: state_writes::StateWrites::default(),
            fence: fence::Fence::default(),
        })
    }

    pub fn config(&self) -> &MicrovmsConfig {
        &self.config
    }

    pub fn tokens(&self) -> &TokenKey {
        &self.tokens
    }

    pub fn instance(&self, id: &str) -> Option<Arc<Instance>> {
        self.live_map().get(id).cloned()
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Instance>>> {
        // Entries are inserted and removed whole; a panic elsewhere cannot
        // leave the map half-updated.
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn placing(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.placing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn instances(&self) -> Vec<Arc<Instance>> {
        self.live_map().values().cloned().collect()
    }

    /// Where a VM keeps what outlives its QEMU process: the suspended
    /// snapshot.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.layout.microvm_dir(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.layout.microvm_log(id)
    }

    /// Answers the VM's 169.254.169.254 for as long as its agent session
    /// lasts: after every start, resume and re-attach.
    fn serve_metadata(&self, inst: &Instance, vm: &dyn ember_vmm::Vm) {
        let role = inst.spec.execution_role_arn.as_deref();
        self.config.metadata.serve(&inst.id, role, vm.agent());
    }

    /// Starts the idle reaper and the warm tier's budget keeper; call once.
    pub fn start_background(self: &Arc<Self>) {
        reaper::spawn(Arc::clone(self));
        disk_full::spawn(self);
        state_writes::spawn(self);
        self.spawn_placement_reconciler();
        self.spawn_warm_tier();
        // VMs recovered parked may already be over a smaller budget.
        self.warm_budget_changed();
    }
}
