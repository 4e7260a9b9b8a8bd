//! What the metrics read from the live VMs at scrape time.

use ember_vmm::VmStats;

use super::capacity::Usage;
use super::Microvms;

impl Microvms {
    /// Each running VM's host-side usage; a VM whose files cannot be read
    /// (it is ending) is left out.
    pub fn running_stats(&self) -> Vec<(String, VmStats)> {
        self.instances()
            .into_iter()
            .filter_map(|inst| {
                let stats = inst.vm()?.stats().ok()?;
                Some((inst.id.clone(), stats))
            })
            .collect()
    }

    pub fn capacity_usage(&self) -> Usage {
        self.admission.usage()
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.config.metrics
    }
}
