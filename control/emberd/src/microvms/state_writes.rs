//! MicroVM state writes that survive a store that cannot take them for a
//! while (a full data disk under SQLite, a Postgres outage): the VM's state
//! changes anyway, the write is kept, merged with any later one of the
//! same VM, and retried every few seconds until the store takes it. Kept
//! in memory only, one entry per VM: a restart in that window recovers the
//! last state the store took, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ember_store::{MicrovmRecord, MicrovmUpdate, StoreError};

use super::Microvms;

const RETRY_EVERY: Duration = Duration::from_secs(2);

/// A [`MicrovmUpdate`] with owned text, for a write that has to wait.
#[derive(Clone, Debug, PartialEq)]
struct Owned {
    state: String,
    state_reason: Option<Option<String>>,
    suspended_at: Option<Option<f64>>,
    terminated_at: Option<f64>,
    now: f64,
    /// Which write this is: a retry that succeeds removes the entry only
    /// if no later write was merged into it meanwhile.
    seq: u64,
}

impl Owned {
    fn new(u: &MicrovmUpdate<'_>, seq: u64) -> Self {
        Self {
            state: u.state.to_string(),
            state_reason: u.state_reason.map(|r| r.map(str::to_string)),
            suspended_at: u.suspended_at,
            terminated_at: u.terminated_at,
            now: u.now,
            seq,
        }
    }

    /// A later write over this one: what it sets wins, what it leaves
    /// keeps this one's still unwritten value.
    fn merge(&mut self, later: &MicrovmUpdate<'_>, seq: u64) {
        self.state = later.state.to_string();
        if let Some(r) = later.state_reason {
            self.state_reason = Some(r.map(str::to_string));
        }
        if later.suspended_at.is_some() {
            self.suspended_at = later.suspended_at;
        }
        if later.terminated_at.is_some() {
            self.terminated_at = later.terminated_at;
        }
        self.now = later.now;
        self.seq = seq;
    }

    fn update(&self) -> MicrovmUpdate<'_> {
        MicrovmUpdate {
            state: &self.state,
            state_reason: self.state_reason.as_ref().map(|r| r.as_deref()),
            suspended_at: self.suspended_at,
            terminated_at: self.terminated_at,
            now: self.now,
        }
    }
}

#[derive(Default)]
pub struct StateWrites {
    inner: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    by_vm: HashMap<String, Owned>,
    next_seq: u64,
}

impl StateWrites {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Each change is a map insert or remove: a panic leaves no half.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The write to make now: `u` merged over what still waits for `id`.
    fn stage(&self, id: &str, u: &MicrovmUpdate<'_>) -> Owned {
        let mut w = self.lock();
        w.next_seq += 1;
        let seq = w.next_seq;
        match w.by_vm.get_mut(id) {
            Some(waiting) => {
                waiting.merge(u, seq);
                waiting.clone()
            }
            None => Owned::new(u, seq),
        }
    }

    fn done(&self, id: &str, seq: u64) {
        let mut w = self.lock();
        if w.by_vm.get(id).is_some_and(|o| o.seq == seq) {
            w.by_vm.remove(id);
        }
    }

    /// Keeps a write that failed, unless a later one is already kept.
    /// Returns whether this VM was not waiting before (worth a log line).
    fn keep(&self, id: &str, write: Owned) -> bool {
        let mut w = self.lock();
        match w.by_vm.get(id) {
            Some(kept) if kept.seq > write.seq => false,
            Some(_) => {
                w.by_vm.insert(id.to_string(), write);
                false
            }
            None => {
                w.by_vm.insert(id.to_string(), write);
                true
            }
        }
    }

    fn snapshot(&self) -> Vec<(String, Owned)> {
        self.lock()
            .by_vm
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Shows a VM's row as it will be once its waiting write is taken.
    fn apply(&self, rec: &mut MicrovmRecord) {
        let w = self.lock();
        let Some(waiting) = w.by_vm.get(&rec.id) else {
            return;
        };
        rec.state = waiting.state.clone();
        if let Some(r) = &waiting.state_reason {
            rec.state_reason = r.clone();
        }
        if let Some(at) = waiting.suspended_at {
            rec.suspended_at = at;
        }
        if waiting.terminated_at.is_some() {
            rec.terminated_at = waiting.terminated_at;
        }
        rec.updated_at = waiting.now;
    }

    /// Drops what waits for a VM this node no longer owns.
    pub(super) fn forget(&self, id: &str) {
        self.lock().by_vm.remove(id);
    }

    pub fn waiting(&self) -> usize {
        self.lock().by_vm.len()
    }
}

impl Microvms {
    /// The API reads rows from the store; a VM whose last change the store
    /// has not taken yet is shown with that change.
    pub fn with_waiting_state(&self, mut rec: MicrovmRecord) -> MicrovmRecord {
        self.state_writes.apply(&mut rec);
        rec
    }

    /// Writes a VM's state change to the store, or keeps it for the retry
    /// task when the store cannot take it now.
    pub(super) async fn write_state(&self, id: &str, update: &MicrovmUpdate<'_>) {
        let write = self.state_writes.stage(id, update);
        match self.store.update_microvm(id, &write.update()).await {
            Ok(()) => self.state_writes.done(id, write.seq),
            // The row is gone (never stored): nothing to retry.
            Err(StoreError::NotFound(_)) => self.state_writes.done(id, write.seq),
            // Another node's now (this one was declared dead): a retry
            // would be refused the same way.
            Err(e @ StoreError::Fenced(_)) => {
                self.state_writes.done(id, write.seq);
                tracing::error!(microvm = %id, "state not written: {e}");
            }
            Err(e) => {
                if self.state_writes.keep(id, write) {
                    tracing::error!(
                        microvm = %id,
                        "the store did not take its state ({e}); kept in memory and retried every {}s",
                        RETRY_EVERY.as_secs()
                    );
                }
            }
        }
    }

    async fn retry_state_writes(&self) {
        for (id, write) in self.state_writes.snapshot() {
            match self.store.update_microvm(&id, &write.update()).await {
                Ok(()) | Err(StoreError::NotFound(_)) => {
                    self.state_writes.done(&id, write.seq);
                    tracing::info!(microvm = %id, state = %write.state, "state written after a retry");
                }
                Err(e @ StoreError::Fenced(_)) => {
                    self.state_writes.done(&id, write.seq);
                    tracing::error!(microvm = %id, "state not written: {e}");
                }
                // Still down: one failure says enough for this round.
                Err(_) => return,
            }
        }
    }
}

pub(super) fn spawn(microvms: &Arc<Microvms>) {
    let weak = Arc::downgrade(microvms);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETRY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(microvms) = weak.upgrade() else {
                return;
            };
            if microvms.state_writes.waiting() > 0 {
                microvms.retry_state_writes().await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update<'a>(state: &'a str, reason: Option<Option<&'a str>>) -> MicrovmUpdate<'a> {
        MicrovmUpdate {
            state,
            state_reason: reason,
            now: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn later_writes_merge_over_waiting_ones_and_keep_what_they_leave() {
        let w = StateWrites::default();
        let mut first = update("SUSPENDED", Some(Some("idle")));
        first.suspended_at = Some(Some(5.0));
        let staged = w.stage("a", &first);
        assert!(w.keep("a", staged));
        let mut last = update("TERMINATED", None);
        last.terminated_at = Some(9.0);
        let merged = w.stage("a", &last);
        assert_eq!(merged.state, "TERMINATED");
        assert_eq!(merged.state_reason, Some(Some("idle".into())));
        assert_eq!(merged.suspended_at, Some(Some(5.0)));
        assert_eq!(merged.terminated_at, Some(9.0));
        // The first write's retry succeeding does not drop the later one.
        w.done("a", 1);
        assert_eq!(w.waiting(), 1);
        assert!(!w.keep("a", merged.clone()));
        w.done("a", merged.seq);
        assert_eq!(w.waiting(), 0);
    }

    #[test]
    fn an_older_failure_never_replaces_a_newer_waiting_write() {
        let w = StateWrites::default();
        let old = w.stage("a", &update("RUNNING", None));
        let new = w.stage("a", &update("SUSPENDED", None));
        assert!(w.keep("a", new));
        assert!(!w.keep("a", old));
        assert_eq!(w.snapshot()[0].1.state, "SUSPENDED");
    }
}
