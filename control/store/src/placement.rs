//! Placement: which of the nodes able to run a microVM gets it. Both
//! backends read the candidates' rows (locked, on Postgres) and let
//! [`choose`] decide, so they place and refuse in the same words.

use crate::StoreError;

/// A candidate node's row as placement reads it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub id: String,
    pub epoch: u64,
    pub state: String,
    /// Seconds until its lease expires, in the store's clock.
    pub lease_left: f64,
    pub free_mib: Option<u64>,
}

impl Candidate {
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

/// The candidate with the most memory free among those that can take
/// `memory_mib` (one that never reported comes last: its admission still
/// decides), or `Capacity` naming why each of `asked` could not.
pub(crate) fn choose<'a>(
    asked: &[String],
    found: &'a [Candidate],
    memory_mib: u64,
) -> Result<&'a Candidate, StoreError> {
    let best = found
        .iter()
        .filter(|c| asked.contains(&c.id) && c.refusal(memory_mib).is_none())
        .max_by(|a, b| {
            a.free_mib
                .is_some()
                .cmp(&b.free_mib.is_some())
                .then(a.free_mib.cmp(&b.free_mib))
                .then(b.id.cmp(&a.id))
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
        }
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
