//! Placement: which of the nodes able to run a microVM gets it. Both
//! backends read the candidates' rows (locked, on Postgres) and let
//! [`choose`] decide, so they place and refuse in the same words.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::StoreError;

/// The limit on microVMs that are not TERMINATED across every node of the
/// store (`--cluster-max-microvms`), checked where rows are inserted.
#[derive(Debug, Default)]
pub(crate) struct LiveQuota(AtomicU64);

impl LiveQuota {
    pub fn set(&self, max: Option<u64>) {
        // 0 is "no limit": a limit of 0 would refuse every run, which the
        // flag's parser does not allow.
        self.0.store(max.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|max| *max > 0)
    }
}

/// The refusal when `live` microVMs already fill the limit `max`.
pub(crate) fn check_quota(live: u64, max: u64) -> Result<(), StoreError> {
    if live < max {
        return Ok(());
    }
    Err(StoreError::Quota(format!(
        "the cluster holds at most {max} microVMs (running or suspended) and has {live}; \
         terminate some or raise --cluster-max-microvms"
    )))
}

/// A candidate node's row as placement reads it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub id: String,
    pub epoch: u64,
    pub state: String,
    /// Seconds until its lease expires, in the store's clock.
    pub lease_left: f64,
    pub free_mib: Option<u64>,
    /// The memory of its microVMs, as it last reported, plus what was
    /// placed on it since.
    pub reserved_mib: u64,
}

impl Candidate {
    /// How full `memory_mib` more would make it, 0 to 1.
    fn load(&self, memory_mib: u64) -> f64 {
        let used = self.reserved_mib.saturating_add(memory_mib) as f64;
        let capacity = self.reserved_mib.saturating_add(self.free_mib.unwrap_or(0)) as f64;
        if capacity <= 0.0 {
            return 1.0;
        }
        (used / capacity).min(1.0)
    }

    /// Why this node cannot take `memory_mib` now, if it cannot.
    fn refusal(&self, memory_mib: u64) -> Option<String> {
        if self.state != "READY" {
            return Some(format!("node {} is {}", self.id, self.state));
        }
        if self.lease_left <= 0.0 {
            return Some(format!(
                "node {}'s lease expired {:.1} s ago",
                self.id, -self.lease_left
            ));
        }
        match self.free_mib {
            Some(free) if free < memory_mib => Some(format!(
                "node {} has {free} MiB free for new microVMs",
                self.id
            )),
            _ => None,
        }
    }
}

/// Among the candidates that can take `memory_mib`, the one it would fill
/// least: the lowest (reserved + requested) / (reserved + free), so VMs
/// spread over nodes by size even where every node sees one host's free
/// memory; one that never reported comes last (its admission still
/// decides). Else `Capacity`, naming why each of `asked` could not.
pub(crate) fn choose<'a>(
    asked: &[String],
    found: &'a [Candidate],
    memory_mib: u64,
) -> Result<&'a Candidate, StoreError> {
    let best = found
        .iter()
        .filter(|c| asked.contains(&c.id) && c.refusal(memory_mib).is_none())
        .min_by(|a, b| {
            b.free_mib
                .is_some()
                .cmp(&a.free_mib.is_some())
                .then(a.load(memory_mib).total_cmp(&b.load(memory_mib)))
                .then(b.free_mib.cmp(&a.free_mib))
                .then(a.id.cmp(&b.id))
        });
    if let Some(best) = best {
        return Ok(best);
    }
    let why: Vec<String> = asked
        .iter()
        .map(|id| match found.iter().find(|c| &c.id == id) {
            Some(c) => c
                .refusal(memory_mib)
                .unwrap_or_else(|| format!("node {id} cannot")),
            None => format!("node {id} is not registered"),
        })
        .collect();
    Err(StoreError::Capacity(if why.is_empty() {
        "no node can run this microVM".into()
    } else {
        format!(
            "no node that can run this microVM has room for its {memory_mib} MiB now: {}",
            why.join("; ")
        )
    }))
}

/// A stored MiB count, where a negative one (never written so) reads as 0.
pub(crate) fn stored_mib(v: Option<i64>) -> Option<u64> {
    v.map(|v| u64::try_from(v).unwrap_or(0))
}

/// The Postgres channel a placement is announced on, with the owner's
/// node id as its payload.
pub(crate) const PLACED_CHANNEL: &str = "ember_placed";

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: &str, lease_left: f64, free_mib: Option<u64>) -> Candidate {
        Candidate {
            id: id.into(),
            epoch: 1,
            state: state.into(),
            lease_left,
            free_mib,
            reserved_mib: 0,
        }
    }

    #[test]
    fn the_node_its_vms_fill_least_wins_on_one_hosts_free_memory() {
        // Both see the same free memory; a holds 512 MiB of VMs already.
        let mut a = node("a", "READY", 5.0, Some(4096));
        a.reserved_mib = 512;
        let b = node("b", "READY", 5.0, Some(4096));
        let found = [a, b];
        let all = ids(&["a", "b"]);
        assert_eq!(
            choose(&all, &found, 256).map(|c| c.id.as_str()).ok(),
            Some("b")
        );
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_node_with_most_room_wins_and_unknown_room_comes_last() {
        let found = [
            node("a", "READY", 5.0, Some(600)),
            node("b", "READY", 5.0, Some(900)),
            node("c", "READY", 5.0, None),
        ];
        let all = ids(&["a", "b", "c"]);
        assert_eq!(
            choose(&all, &found, 512).map(|c| c.id.as_str()).ok(),
            Some("b")
        );
        assert_eq!(
            choose(&all, &found, 800).map(|c| c.id.as_str()).ok(),
            Some("b")
        );
        assert_eq!(
            choose(&all, &found, 1000).map(|c| c.id.as_str()).ok(),
            Some("c")
        );
        assert_eq!(
            choose(&ids(&["a"]), &found, 512)
                .map(|c| c.id.as_str())
                .ok(),
            Some("a")
        );
    }

    #[test]
    fn a_refusal_names_every_candidate() {
        let found = [
            node("a", "DRAINING", 5.0, Some(4096)),
            node("b", "READY", -2.0, Some(4096)),
            node("c", "READY", 5.0, Some(100)),
        ];
        let Err(StoreError::Capacity(why)) = choose(&ids(&["a", "b", "c", "d"]), &found, 512)
        else {
            panic!("placed");
        };
        for part in [
            "node a is DRAINING",
            "node b's lease expired 2.0 s ago",
            "node c has 100 MiB free",
            "node d is not registered",
            "512 MiB",
        ] {
            assert!(why.contains(part), "{why}");
        }
    }
}
