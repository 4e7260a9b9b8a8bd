//! What both backends share about nodes: the registration a store
//! remembers, and the words of node and fencing errors.

use std::sync::{Mutex, MutexGuard};

use crate::StoreError;

/// `(node id, epoch)` of this store's emberd, once it registered.
pub(crate) type NodeId = (String, u64);

#[derive(Default)]
enum Standing {
    /// Never registered (benches, tools): owner columns are written NULL.
    #[default]
    Unregistered,
    Current(NodeId),
    /// The lease was reported lost. Kept apart from Unregistered so that
    /// the store's writes stay refused, rather than going through as an
    /// unregistered store's, until the caller registers again.
    Lost(NodeId),
}

/// The registration a store writes its owner columns with.
#[derive(Default)]
pub(crate) struct Identity(Mutex<Standing>);

impl Identity {
    fn lock(&self) -> MutexGuard<'_, Standing> {
        // Only a plain value is kept under the lock, so a panic elsewhere
        // cannot leave it half-written.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node this store runs (or last ran) as, current or lost: whose
    /// rows and claims are its own.
    pub(crate) fn get(&self) -> Option<NodeId> {
        match &*self.lock() {
            Standing::Unregistered => None,
            Standing::Current(me) | Standing::Lost(me) => Some(me.clone()),
        }
    }

    /// Who owner writes are made as: `Ok(None)` unregistered, `Err` with
    /// the lost registration if they must be refused.
    pub(crate) fn writer(&self) -> Result<Option<NodeId>, NodeId> {
        match &*self.lock() {
            Standing::Unregistered => Ok(None),
            Standing::Current(me) => Ok(Some(me.clone())),
            Standing::Lost(me) => Err(me.clone()),
        }
    }

    /// Who a write to microVM `vm`'s row is made as; refused while the
    /// lease is lost.
    pub(crate) fn writer_of(&self, vm: &str) -> Result<Option<NodeId>, StoreError> {
        self.writer()
            .map_err(|lost| StoreError::fenced_lost(vm, &lost))
    }

    pub(crate) fn set(&self, id: &str, epoch: u64) {
        *self.lock() = Standing::Current((id.to_string(), epoch));
    }

    /// Marks `me` lost, unless a registration made since (by another task
    /// of the same emberd) replaced it: an older renewal's answer does not
    /// undo a newer registration.
    pub(crate) fn forget(&self, me: &NodeId) {
        let mut held = self.lock();
        if matches!(&*held, Standing::Current(current) if current == me) {
            *held = Standing::Lost(me.clone());
        }
    }

    /// The registration (current or lost: renewing a lost one reports it
    /// lost again), or the error a node-scoped call gives without one.
    pub(crate) fn required(&self) -> Result<NodeId, StoreError> {
        self.get().ok_or_else(StoreError::not_registered)
    }
}

/// Who a row or a store belongs to, in an error message.
fn owner(node: Option<&str>, epoch: Option<u64>) -> String {
    match (node, epoch) {
        (Some(n), Some(e)) => format!("node {n} (epoch {e})"),
        (Some(n), None) => format!("node {n} (no epoch)"),
        (None, _) => "no node (an unregistered emberd wrote it)".into(),
    }
}

impl StoreError {
    pub(crate) fn not_registered() -> Self {
        Self::Conflict("this store has no node registration".into())
    }

    pub(crate) fn node_not_found(id: &str) -> Self {
        Self::NotFound(format!("node {id}"))
    }

    pub(crate) fn node_dead(id: &str) -> Self {
        Self::Conflict(format!("node {id} is DEAD"))
    }

    pub(crate) fn node_state_not_settable(state: &str) -> Self {
        Self::Conflict(format!(
            "a node's state can be set to READY or DRAINING, not {state}"
        ))
    }

    /// An owner write to a microVM this store's emberd does not own (or
    /// no longer: a sweep or a newer registration took it).
    pub(crate) fn fenced_write(
        vm: &str,
        row_node: Option<&str>,
        row_epoch: Option<u64>,
        me: Option<&NodeId>,
    ) -> Self {
        let me = match me {
            Some((n, e)) => format!("this emberd (node {n}, epoch {e})"),
            None => "this emberd, which has no node registration".into(),
        };
        Self::Fenced(format!(
            "microVM {vm} belongs to {}, not to {me}; it no longer owns it",
            owner(row_node, row_epoch)
        ))
    }

    /// A write by a store whose lease was reported lost, before it
    /// registered again.
    pub(crate) fn fenced_lost(vm: &str, (id, epoch): &NodeId) -> Self {
        Self::Fenced(format!(
            "this emberd's node {id} epoch {epoch} lost its lease; it may not write microVM {vm} \
             until it registers again"
        ))
    }

    /// An insert by a node whose registration was superseded.
    pub(crate) fn fenced_node((id, epoch): &NodeId) -> Self {
        Self::Fenced(format!(
            "this emberd's node {id} epoch {epoch} is no longer current; it may not start \
             microVMs"
        ))
    }
}

pub(crate) fn dead_node_reason(id: &str, expired_ago: f64) -> String {
    format!(
        "node {id} stopped renewing its lease (it expired {expired_ago:.1} s ago); it was \
         declared dead"
    )
}

pub(crate) fn lost_microvm_reason(id: &str) -> String {
    format!(
        "node {id}, which ran this microVM, stopped renewing its lease and was declared dead; \
         the microVM's memory and disk were on that host and are lost"
    )
}

pub(crate) fn lost_build_reason(id: &str) -> String {
    format!(
        "node {id}, which ran this build, stopped renewing its lease and was declared dead; \
         the build was abandoned. Run UpdateMicrovmImage to build again."
    )
}

pub(crate) fn replaced_node_reason(id: &str) -> String {
    format!("replaced by node {id}: a SQLite store serves one node")
}

/// How many of `live` (not DEAD) nodes one sweep may declare dead: at
/// most half of them.
pub(crate) fn max_dead_per_sweep(live: i64) -> i64 {
    live / 2
}

/// Lease lengths come in milliseconds; the store keeps seconds.
pub(crate) fn lease_seconds(lease_ms: u64) -> f64 {
    lease_ms as f64 / 1000.0
}
