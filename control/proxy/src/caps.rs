//! Connection caps: a listener serves at most so many client connections
//! at once. One past the cap is answered `503` with `x-aws-proxy-error:
//! MICROVM_UNAVAILABLE` and closed, never queued; while too many such
//! answers are under way too, further connections are closed unanswered.
//! On shared listeners each microVM also has its own cap ([`VmCounts`]),
//! whose excess requests get the same 503.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections being refused with a 503 at once, per listener.
const MAX_REFUSING: usize = 64;

pub(crate) struct Caps {
    served: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
}

/// What an accepted connection may do; the permit frees its place when
/// the connection ends.
pub(crate) enum Admission {
    Served(OwnedSemaphorePermit),
    Refused(OwnedSemaphorePermit),
}

impl Caps {
    pub(crate) fn new(max_connections: usize) -> Self {
        Caps {
            served: Arc::new(Semaphore::new(max_connections)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        }
    }

    /// `None`: close the connection at once.
    pub(crate) fn admit(&self) -> Option<Admission> {
        if let Ok(permit) = Arc::clone(&self.served).try_acquire_owned() {
            return Some(Admission::Served(permit));
        }
        Arc::clone(&self.refusing)
            .try_acquire_owned()
            .ok()
            .map(Admission::Refused)
    }
}

/// Client connections per microVM on the shared listeners, whose own cap
/// counts all microVMs together: without it, one microVM's callers could
/// take every place of the shared listener. A connection holds a place of
/// each microVM it sent an authorized request for, until it ends.
pub(crate) struct VmCounts {
    max_per_vm: usize,
    /// Only microVMs with a connection open have an entry, so hostile host
    /// names cannot grow it (a place needs a valid token for the microVM).
    open: Mutex<HashMap<Arc<str>, usize>>,
}

/// One connection's place under a microVM's cap.
pub(crate) struct VmPlace {
    counts: Arc<VmCounts>,
    microvm_id: Arc<str>,
}

impl VmCounts {
    pub(crate) fn new(max_per_vm: usize) -> Arc<Self> {
        Arc::new(VmCounts {
            max_per_vm,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `None`: the microVM has all the connections it may have.
    pub(crate) fn take(self: &Arc<Self>, microvm_id: &Arc<str>) -> Option<VmPlace> {
        let mut open = self.open();
        let count = open.entry(Arc::clone(microvm_id)).or_insert(0);
        if *count >= self.max_per_vm {
            if *count == 0 {
                open.remove(microvm_id);
            }
            return None;
        }
        *count += 1;
        Some(VmPlace {
            counts: Arc::clone(self),
            microvm_id: Arc::clone(microvm_id),
        })
    }
}

impl VmPlace {
    pub(crate) fn microvm_id(&self) -> &str {
        &self.microvm_id
    }
}

impl Drop for VmPlace {
    fn drop(&mut self) {
        let mut open = self.counts.open();
        if let Some(count) = open.get_mut(&self.microvm_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.microvm_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_microvm_has_at_most_its_places_and_a_freed_one_comes_back() {
        let counts = VmCounts::new(2);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("vm-a"), Arc::from("vm-b"));
        let first = counts.take(&a).unwrap();
        let _second = counts.take(&a).unwrap();
        assert!(counts.take(&a).is_none());
        let _other = counts.take(&b).unwrap();
        drop(first);
        assert!(counts.take(&a).is_some());
    }

    #[test]
    fn a_microvm_without_connections_leaves_no_entry() {
        let counts = VmCounts::new(1);
        let a: Arc<str> = Arc::from("vm-a");
        drop(counts.take(&a).unwrap());
        assert!(counts.open().is_empty());
        assert!(VmCounts::new(0).take(&a).is_none());
    }
}
