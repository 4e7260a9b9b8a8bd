//! The values read at scrape time: states from the store, each running
//! VM's cgroup, and what admission has left.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use ember_store::{Counted, StateStore};

use super::{KindLabel, Metrics, MicrovmLabel, StateLabel};
use crate::microvms::Microvms;

const MIB: i64 = 1024 * 1024;

/// `(state, rows)` per counted table, as the store answered.
pub struct StateCounts(Vec<(Counted, Vec<(String, u64)>)>);

impl Metrics {
    /// Rows per state of each counted table, read before [`Self::scrape`]
    /// (which blocks and holds the registry lock).
    pub async fn state_counts(store: &dyn StateStore) -> Result<StateCounts, String> {
        let mut counts = Vec::new();
        for table in [Counted::Microvms, Counted::Images, Counted::Builds] {
            let rows = store
                .count_by_state(table)
                .await
                .map_err(|e| format!("reading states: {e}"))?;
            counts.push((table, rows));
        }
        Ok(StateCounts(counts))
    }

    /// The whole exposition, in OpenMetrics text. Blocking (cgroup
    /// files): call it off the async workers.
    pub fn scrape(&self, states: StateCounts, microvms: &Microvms) -> Result<String, String> {
        // Held while the sampled families are cleared, refilled and
        // encoded, so concurrent scrapes never see a half-filled family.
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = &self.sampled;
        for (table, counts) in states.0 {
            let family = match table {
                Counted::Microvms => &s.microvms,
                Counted::Images => &s.images,
                Counted::Builds => &s.builds,
            };
            family.clear();
            for (state, n) in counts {
                family
                    .get_or_create(&StateLabel { state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        s.vm_cpu.clear();
        s.vm_memory.clear();
        for (id, stats) in microvms.running_stats() {
            let label = MicrovmLabel { microvm_id: id };
            let cpu = match stats.cgroup_cpu_us {
                Some(us) => us as f64 / 1e6,
                None => stats.cpu_ms as f64 / 1e3,
            };
            // A fresh counter each scrape, raised to the cgroup's own
            // running total: the kernel keeps the count, not emberd.
            s.vm_cpu.get_or_create(&label).inc_by(cpu);
            let memory = stats.cgroup_memory_bytes.unwrap_or(stats.rss_bytes);
            s.vm_memory
                .get_or_create(&label)
                .set(i64::try_from(memory).unwrap_or(i64::MAX));
        }
        let usage = microvms.capacity_usage();
        let mib = |v: u64| i64::try_from(v).unwrap_or(i64::MAX / MIB) * MIB;
        s.capacity_memory.clear();
        if let Some(available) = usage.memory_available_mib {
            set(&s.capacity_memory, "available", mib(available));
        }
        set(
            &s.capacity_memory,
            "reserved",
            mib(usage.memory_reserved_mib),
        );
        set(
            &s.capacity_memory,
            "host_reserve",
            mib(usage.memory_host_reserve_mib),
        );
        set(&s.capacity_slots, "total", clamp(usage.max_running));
        set(&s.capacity_slots, "used", clamp(usage.running));
        set(&s.capacity_microvms, "total", clamp(usage.max_live));
        set(&s.capacity_microvms, "used", clamp(usage.live));
        let (parked, held, budget) = microvms.warm_tier_usage();
        s.warm_microvms.set(clamp(parked));
        set(&s.warm_memory, "held", clamp(held));
        set(&s.warm_memory, "budget", clamp(budget));
        let mut text = String::new();
        encode(&mut text, &registry).map_err(|e| format!("encoding: {e}"))?;
        Ok(text)
    }
}

fn set(family: &Family<KindLabel, Gauge>, kind: &'static str, value: i64) {
    family.get_or_create(&KindLabel { kind }).set(value);
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
