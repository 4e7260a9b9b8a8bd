//! Fork: new microVMs that start from a running microVM's current memory
//! and disk. The parent is paused only while its snapshot is written
//! (`Vm::snapshot_live`); each child is restored from that snapshot under
//! its own id, endpoint and identity file, its clock stepped and its RNG
//! reseeded by the restore, and its disk a copy of the parent's layer. A
//! child is an ordinary microVM from then on: it suspends, resumes, is
//! terminated and can be forked like any other.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_api::model::MicrovmState;
use ember_api::ApiError;
use ember_store::MicrovmRecord;
use ember_vmm::RestoreMemory;

use super::instance::Instance;
use super::lifecycle::{forbidden, not_found, remove_dir_if_exists, Origin, RunPlan};
use super::Microvms;
use crate::service::names::new_id;

/// The most children one fork makes: each is a restore with its own copy
/// of the parent's memory.
const MAX_FORK_COUNT: u32 = 16;

/// The snapshot a fork's children start from, removed when the last of
/// them has started (or failed to).
pub(super) struct ForkSnapshot {
    dir: PathBuf,
}

impl ForkSnapshot {
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ForkSnapshot {
    fn drop(&mut self) {
        if let Err(e) = remove_dir_if_exists(&self.dir) {
            tracing::warn!(snapshot = %self.dir.display(), "removing a fork's snapshot: {e}");
        }
    }
}

impl Microvms {
    /// Forks the RUNNING microVM `parent_id` into `count` new ones, which
    /// are returned PENDING (their restores run in the background, like a
    /// run's). All are admitted before the parent pauses: a fork that does
    /// not fit is refused whole.
    pub async fn fork(
        self: &Arc<Self>,
        parent_id: &str,
        count: u32,
    ) -> Result<Vec<MicrovmRecord>, ApiError> {
        if !(1..=MAX_FORK_COUNT).contains(&count) {
            return Err(ApiError::validation(format!(
                "count must be between 1 and {MAX_FORK_COUNT}, not {count}"
            )));
        }
        if let Some((peers, owner)) = self.foreign_owner(parent_id).await {
            // The children run where the parent's memory is: on its owner,
            // which has stored their rows by the time it answers.
            let ids = peers.fork(&owner, parent_id, count).await?;
            let mut records = Vec::with_capacity(ids.len());
            for id in &ids {
                records.push(self.store.microvm(id).await.map_err(|e| {
                    ApiError::internal(format!(
                        "node {owner} forked {parent_id} into {id}, which this node cannot \
                         read back: {e}"
                    ))
                })?);
            }
            return Ok(records);
        }
        let parent = self.live_instance(parent_id).await?;
        self.refuse_if_fenced()?;
        self.refuse_if_draining()?;
        let parent_record = self
            .store
            .microvm(parent_id)
            .await
            .map_err(not_found(parent_id))?;
        let ids: Vec<String> = (0..count).map(|_| new_id()).collect();
        for (admitted, id) in ids.iter().enumerate() {
            if let Err(e) = self.admission.admit_run(id, parent.spec.memory_mib) {
                ids[..admitted]
                    .iter()
                    .for_each(|id| self.admission.release(id));
                return Err(e);
            }
        }
        let snapshot = match self.snapshot_for_fork(&parent).await {
            Ok(snapshot) => Arc::new(snapshot),
            Err(e) => {
                ids.iter().for_each(|id| self.admission.release(id));
                return Err(e);
            }
        };
        // One child runs on the snapshot's own files; several copy them.
        let memory = if count == 1 {
            RestoreMemory::Consume
        } else {
            RestoreMemory::Copy
        };
        let mut records = Vec::with_capacity(ids.len());
        let mut started = Vec::with_capacity(ids.len());
        for (n, id) in ids.iter().enumerate() {
            let plan = RunPlan {
                image: parent.image.clone(),
                version: parent.version,
                image_arn: parent_record.image_arn.clone(),
                spec: parent.spec.clone(),
            };
            match self.create_pending(id, plan).await {
                Ok((record, inst, guard)) => {
                    records.push(record);
                    started.push(Arc::clone(&inst));
                    let origin = Origin::Fork {
                        parent: parent.id.clone(),
                        snapshot: Arc::clone(&snapshot),
                        memory,
                    };
                    self.spawn_start(inst, guard, origin);
                }
                Err(e) => {
                    // All or nothing: the children made so far are ended.
                    ids[n..].iter().for_each(|id| self.admission.release(id));
                    let reason = format!("its fork failed: {}", e.message());
                    for child in started {
                        self.terminate(child, reason.clone()).await;
                    }
                    return Err(e);
                }
            }
        }
        tracing::info!(microvm = %parent.id, count, "forked");
        Ok(records)
    }

    /// Snapshots the parent under its transition lock, so no suspend or
    /// termination runs meanwhile, and continues it.
    async fn snapshot_for_fork(&self, parent: &Arc<Instance>) -> Result<ForkSnapshot, ApiError> {
        let _guard = parent.transition.lock().await;
        let state = parent.state();
        let vm = match parent.vm() {
            Some(vm) if state == MicrovmState::Running && !parent.is_doomed() => vm,
            _ => return Err(forbidden(&parent.id, state, "forked", "RUNNING")),
        };
        // Its snapshot would be written to the disk that is full.
        if let Some(reason) = parent.host_pause_reason() {
            return Err(super::lifecycle::host_paused(&parent.id, "forked", reason));
        }
        let snapshot = ForkSnapshot {
            dir: self.layout.forks().join(new_id()),
        };
        let info = vm.snapshot_live(snapshot.dir()).await.map_err(|e| {
            tracing::error!(microvm = %parent.id, "fork snapshot: {e}");
            ApiError::internal(format!("could not snapshot microVM {}: {e}", parent.id))
        })?;
        tracing::info!(
            microvm = %parent.id,
            paused_ms = info.duration_ms,
            memory_bytes = info.memory_bytes,
            "fork snapshot written"
        );
        Ok(snapshot)
    }

    /// Removes the fork snapshots a previous emberd left (its children
    /// that had not started are ended by recovery: they have no QEMU).
    pub(super) fn remove_leftover_forks(&self) {
        let Ok(entries) = std::fs::read_dir(self.layout.forks()) else {
            return;
        };
        for entry in entries.flatten() {
            if let Err(e) = remove_dir_if_exists(&entry.path()) {
                tracing::warn!(snapshot = %entry.path().display(), "removing a fork's snapshot: {e}");
            }
        }
    }
}
