//! Suspended VMs' memory, stored as a difference from their image's
//! snapshot once they have stayed suspended a while: most of a small
//! app's RAM (the guest kernel, the libraries) is the image's, so a
//! compacted VM takes a few MiB of disk instead of its whole RAM. A VM
//! suspended only briefly is left whole: expanding costs a resume a few
//! hundred milliseconds under TCG.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ember_vmm::memory_delta::MemoryDeltaError;
use ember_vmm::VmmError;

use super::instance::Instance;
use super::Microvms;

impl Microvms {
    /// Compacts in the background; a failure only costs disk.
    pub(super) fn compact_suspended(self: &Arc<Self>, inst: &Arc<Instance>) {
        if inst.compaction.swap(true, Ordering::Relaxed) {
            return;
        }
        let dir = self.suspended_dir(&inst.id);
        let base = inst.spec.snapshot_dir.clone();
        let id = inst.id.clone();
        let hv = Arc::clone(&self.hv);
        tokio::task::spawn_blocking(move || match hv.compact_snapshot(&dir, &base) {
            Ok(s) => tracing::info!(
                microvm = %id,
                freed_mib = s.bytes_freed() >> 20,
                ms = s.duration.as_millis() as u64,
                "suspended memory compacted against its image"
            ),
            Err(VmmError::MemoryDelta(MemoryDeltaError::AlreadyCompacted { .. })) => {}
            Err(e) => tracing::warn!(microvm = %id, "compacting suspended memory: {e}"),
        });
    }

    /// Makes the suspended memory whole again before a resume; waits for
    /// a compaction in progress.
    pub(super) async fn expand_suspended(&self, inst: &Instance) -> Result<(), String> {
        let dir = self.suspended_dir(&inst.id);
        let hv = Arc::clone(&self.hv);
        let expanded = tokio::task::spawn_blocking(move || hv.expand_snapshot(&dir))
            .await
            .map_err(|e| format!("expanding suspended memory: {e}"))?;
        inst.compaction.store(false, Ordering::Relaxed);
        expanded
            .map(|_| ())
            .map_err(|e| format!("the suspended memory cannot be rebuilt: {e}"))
    }
}
