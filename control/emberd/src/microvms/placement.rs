//! Runs across nodes. A `RunMicrovm` whose image version another node
//! holds is placed there: the store picks the holder if it is READY with
//! room, writes the row PENDING under that owner in one transaction and
//! tells it (`StateStore::placements`); the owner's reconciler, here,
//! starts the rows placed on it as if they had been run through it. A
//! refusal is synchronous and the model's capacity error.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ember_api::model::MicrovmState;
use ember_api::{ApiError, ErrorKind};
use ember_store::{MicrovmRecord, MicrovmUpdate};

use super::instance::{Instance, Status};
use super::lifecycle::{new_record, Origin, RunPlan};
use super::spec::RunSpec;
use super::{EndpointMode, Microvms};
use crate::now;

/// The reconciler looks for placed rows this often even without a
/// notification: one lost with a dropped session is picked up late, not
/// never.
const POLL: Duration = Duration::from_secs(1);

impl Microvms {
    /// What a run could still take here, reported to the other nodes.
    pub fn free_for_runs_mib(&self) -> Option<u64> {
        self.admission.free_for_runs_mib()
    }

    /// The memory this node's running microVMs hold, reported with it.
    pub fn reserved_mib(&self) -> u64 {
        self.admission.reserved_mib()
    }

    /// Whether a run may be placed on any node: cluster mode with every
    /// endpoint on the shared domain, and an object store every node
    /// fetches snapshots from.
    pub fn places_anywhere(&self) -> bool {
        self.config.blobs.is_some()
            && self.config.peers.is_some()
            && matches!(self.config.endpoint, EndpointMode::Wildcard { .. })
    }

    /// `RunMicrovm` placed by the store on one of `candidates` (this node
    /// among them, or the node holding a snapshot this one has not got),
    /// answered PENDING with its endpoint, which every node serves.
    pub async fn run_on(
        self: &Arc<Self>,
        plan: RunPlan,
        candidates: &[String],
    ) -> Result<MicrovmRecord, ApiError> {
        let holder = candidates.join(", ");
        self.refuse_if_fenced()?;
        // A per-VM port would be one this node listens on, for a VM that
        // runs elsewhere.
        if !matches!(self.config.endpoint, EndpointMode::Wildcard { .. })
            || self.config.peers.is_none()
        {
            return Err(ApiError::conflict(
                "MicrovmImageVersion",
                &format!("{}:{}", plan.image, plan.version),
                format!(
                    "version {} of {} was built by node {holder}, whose data dir holds its \
                     snapshot; runs are placed on another node only in cluster mode (one \
                     --cluster-key-file, --internal-listen and --endpoint-domain on every \
                     node): run it through node {holder}",
                    plan.version, plan.image
                ),
            ));
        }
        let id = crate::service::names::new_id();
        let endpoint = self.bind_endpoint(&id, None).await?;
        let mut record = new_record(&id, &plan, endpoint, None, &self.layout);
        let memory = u64::from(plan.spec.memory_mib);
        let owner = self
            .store
            .place_microvm(&record, memory, candidates)
            .await
            .map_err(crate::service::internal)?;
        tracing::info!(microvm = %id, owner = %owner, image = %plan.image, "placed on another node");
        record.owner_node = Some(owner);
        Ok(record)
    }

    /// Starts, for as long as emberd runs, the task that starts the runs
    /// other nodes place here. Call once, after recovery took back the
    /// rows of before.
    pub fn spawn_placement_reconciler(self: &Arc<Self>) {
        if self.config.peers.is_none() {
            return;
        }
        let this = Arc::clone(self);
        let woken = self.store.placements();
        tokio::spawn(async move {
            loop {
                match &woken {
                    Some(w) => {
                        let _ = tokio::time::timeout(POLL, w.notified()).await;
                    }
                    None => tokio::time::sleep(POLL).await,
                }
                this.start_placed().await;
            }
        });
    }

    async fn start_placed(self: &Arc<Self>) {
        // A fenced node starts nothing; the rows wait for its lease.
        if self.is_fenced() {
            return;
        }
        let rows = match self.store.pending_microvms().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!("reading the runs placed here: {e}");
                return;
            }
        };
        for rec in rows {
            if self.instance(&rec.id).is_none() {
                self.start_one_placed(rec).await;
            }
        }
    }

    /// One row placed here: admitted like a run through this node (the
    /// placement's estimate of free memory may be a lease old), its image
    /// snapshot fetched if this node lacks it, then started; refused, it
    /// ends with the reason. Admission comes first, so a run this node has
    /// no room for costs no fetch.
    async fn start_one_placed(self: &Arc<Self>, rec: MicrovmRecord) {
        // Registered before the row is read again: a TerminateMicrovm that
        // finds no instance records the row TERMINATED, then looks here.
        let _placing = Placing::new(self, &rec.id);
        let rec = match self.store.microvm(&rec.id).await {
            Ok(now) if now.state == MicrovmState::Pending.as_str() => now,
            _ => return,
        };
        let mut spec = match RunSpec::from_json(&rec.spec, &self.layout) {
            Ok(spec) => spec,
            Err(e) => {
                let why = format!("its run spec could not be read here: {e}");
                return self.end_unstarted(&rec.id, &why).await;
            }
        };
        // Checked under the map's lock: a run through this node puts its
        // instance there before its row exists. The reconciler is this
        // row's only other starter, and it runs one row at a time.
        let admitted = {
            let live = self.live_map();
            if live.contains_key(&rec.id) {
                return;
            }
            self.admission.admit_run(&rec.id, spec.memory_mib)
        };
        if let Err(e) = admitted {
            let why = match e.kind() {
                ErrorKind::InsufficientCapacity | ErrorKind::ServiceQuotaExceeded => format!(
                    "placed on node {} by another node, but it had no room when it started \
                     it: {}",
                    self.config.node_id,
                    e.message()
                ),
                _ => e.message().to_string(),
            };
            return self.end_unstarted(&rec.id, &why).await;
        }
        if let Err(why) = self.fetch_snapshot(&mut spec).await {
            self.admission.release(&rec.id);
            return self.end_unstarted(&rec.id, &why).await;
        }
        let status = Status {
            state: MicrovmState::Pending,
            suspended_at: None,
        };
        let inst = Arc::new(Instance::of_record(&rec, spec, status));
        let Ok(guard) = Arc::clone(&inst.transition).try_lock_owned() else {
            self.admission.release(&rec.id);
            return;
        };
        {
            let mut live = self.live_map();
            if self.placing().remove(&rec.id) == Some(true) {
                drop(live);
                tracing::info!(microvm = %rec.id, "terminated before it started");
                self.admission.release(&rec.id);
                return;
            }
            live.insert(rec.id.clone(), Arc::clone(&inst));
        }
        tracing::info!(microvm = %rec.id, image = %rec.image, "starting a run placed here");
        self.spawn_start(inst, guard, Origin::Image);
    }

    /// Points `spec` at a copy of its image snapshot in this node's cache
    /// when this data dir does not hold the snapshot, fetching it from the
    /// object store first if need be. Runs in the reconciler's loop, so a
    /// row is never started twice, and an image's first run on a node
    /// waits for its fetch.
    async fn fetch_snapshot(&self, spec: &mut RunSpec) -> Result<(), String> {
        if self.holds_snapshot(&spec.snapshot_dir, spec.snapshot_node.as_deref())
            && self.hv.snapshot_info(&spec.snapshot_dir).is_ok()
        {
            return Ok(());
        }
        let (Some(blobs), Some(digest)) = (&self.config.blobs, &spec.snapshot_blob) else {
            return Err(format!(
                "its image snapshot {} is not in node {}'s data dir, and the node has no \
                 --blob-store to fetch it from",
                spec.snapshot_dir.display(),
                self.config.node_id
            ));
        };
        let in_use: HashSet<String> = self
            .live_map()
            .values()
            .filter_map(|i| i.spec.snapshot_blob.clone())
            .collect();
        spec.snapshot_dir = blobs.ensure(digest, &in_use).await?;
        Ok(())
    }

    /// The cached copy of a recovered VM's image snapshot, when its own
    /// data dir does not hold the snapshot (it was fetched).
    pub(super) fn cached_snapshot(&self, spec: &mut RunSpec) {
        let (Some(blobs), Some(digest)) = (&self.config.blobs, &spec.snapshot_blob) else {
            return;
        };
        let cached = blobs.local_dir(digest);
        if !self.holds_snapshot(&spec.snapshot_dir, spec.snapshot_node.as_deref())
            && cached.is_dir()
        {
            spec.snapshot_dir = cached;
        }
    }

    /// Whether the image snapshot in `dir`, built by node `built_by`, is
    /// this node's to restore. Another node's data dir may be readable
    /// here (one host, a shared mount) or hold an unrelated snapshot of
    /// the same name (an image deleted and made again): with a store that
    /// nodes share, only what this node built counts.
    pub fn holds_snapshot(&self, dir: &Path, built_by: Option<&str>) -> bool {
        let shared = self.store.backend() != "sqlite";
        let ours = !shared || built_by.map_or(true, |n| n == self.config.node_id);
        ours && dir.starts_with(self.layout.root())
    }

    /// A placed row this node will not start: TERMINATED with why.
    async fn end_unstarted(&self, id: &str, why: &str) {
        tracing::error!(microvm = %id, "not starting a run placed here: {why}");
        self.record_unstarted_end(id, why).await;
    }

    /// TerminateMicrovm of a row placed here that has no instance yet:
    /// the row is TERMINATED first, then a start in progress is told (or,
    /// if it got the VM into the map meanwhile, the VM is terminated as
    /// any other). Either the start reads the row after it was ended, or
    /// it registered before this looks.
    pub(super) async fn terminate_unstarted(self: &Arc<Self>, id: &str, why: &str) {
        self.record_unstarted_end(id, why).await;
        let inst = {
            let live = self.live_map();
            let inst = live.get(id).cloned();
            if inst.is_none() {
                if let Some(cancelled) = self.placing().get_mut(id) {
                    *cancelled = true;
                }
            }
            inst
        };
        if let Some(inst) = inst {
            self.terminate(inst, why.to_string()).await;
        }
    }

    async fn record_unstarted_end(&self, id: &str, why: &str) {
        let t = now();
        let update = MicrovmUpdate {
            state: MicrovmState::Terminated.as_str(),
            state_reason: Some(Some(why)),
            suspended_at: None,
            terminated_at: Some(t),
            now: t,
        };
        if let Err(e) = self.store.update_microvm(id, &update).await {
            tracing::warn!(microvm = %id, "recording the end of a placed run: {e}");
        }
    }
}

/// A row's entry in `Microvms::placing` while its start is under way,
/// removed however the start ends.
struct Placing<'a> {
    microvms: &'a Microvms,
    id: String,
}

impl<'a> Placing<'a> {
    fn new(microvms: &'a Microvms, id: &str) -> Self {
        microvms.placing().insert(id.to_string(), false);
        Self {
            microvms,
            id: id.to_string(),
        }
    }
}

impl Drop for Placing<'_> {
    fn drop(&mut self) {
        self.microvms.placing().remove(&self.id);
    }
}
