//! Connection caps: a listener serves at most so many client connections
//! at once. One past the cap is answered `503` with `x-aws-proxy-error:
//! MICROVM_UNAVAILABLE` and closed, never queued; while too many such
//! answers are under way too, further connections are closed unanswered.

use std::sync::Arc;

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
