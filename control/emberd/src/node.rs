//! This emberd as a node of a cluster sharing one store: its id, its
//! lease, and the task that keeps the lease, fences the node when it
//! cannot, and declares other nodes dead when theirs expire.
//!
//! Timing, for a lease of `L`: a renewal every `L/3`, each bounded by
//! `L/3`; the node fences itself `L - L/6` after the *send* time of its
//! last good renewal, so it holds still before the store's clock can see
//! the lease expire, whatever the two clocks say. It sweeps only after a
//! full lease of good renewals: after an outage of the store every lease
//! has expired, and the first node back must not declare the others dead
//! before they had their chance to renew.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_store::{LeaseRenewal, StateStore, StoreError};

use crate::microvms::Microvms;

#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// This emberd's name among the nodes sharing one store (letters,
    /// digits, '.', '-', '_'; up to 63). Default: the host name.
    #[arg(long, value_name = "ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,
    /// How long a node's lease lasts without a renewal. A node that cannot
    /// renew holds its VMs paused after 5/6 of it; other nodes declare it
    /// dead, and its VMs lost, once it has passed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub node_lease_seconds: u64,
}

pub fn parse_node_id(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && value.as_bytes()[0].is_ascii_alphanumeric();
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not a node id: 1 to 63 letters, digits, '.', '-' or '_', starting \
             with a letter or digit"
        ))
    }
}

impl NodeArgs {
    /// `--node-id`, or the host name when it makes a valid id.
    pub fn node_id(&self) -> anyhow::Result<String> {
        if let Some(id) = &self.node_id {
            return Ok(id.clone());
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        parse_node_id(&host).map_err(|e| {
            anyhow::anyhow!("the host name does not make a node id ({e}); pass --node-id")
        })
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.node_lease_seconds)
    }
}

/// After a failed renewal the next comes this soon (not a third of a
/// lease later): once the store is back, every node renews within it, well
/// before any of them has the whole lease of good renewals it needs to
/// sweep the others.
const RETRY: Duration = Duration::from_millis(500);

/// A registered node: what the keeper needs to go on.
pub struct Registered {
    pub id: String,
    pub epoch: u64,
    lease: Duration,
    /// When the registration that gave the lease was sent.
    sent: Instant,
    /// Where other nodes reach its internal listener.
    address: Option<String>,
}

/// Registers the node, refusing to start if another emberd runs as it.
pub async fn register(
    store: &dyn StateStore,
    id: &str,
    lease: Duration,
    address: Option<String>,
) -> Result<Registered, StoreError> {
    let sent = Instant::now();
    let epoch = store.register_node(id, lease_ms(lease)).await?;
    // Set at every registration: the last one may have been elsewhere.
    store.set_node_address(address.as_deref()).await?;
    tracing::info!(node = %id, epoch, lease_s = lease.as_secs(), address = ?address, "node registered");
    Ok(Registered {
        id: id.to_string(),
        epoch,
        lease,
        sent,
        address,
    })
}

fn lease_ms(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)
}

/// Keeps the lease for as long as emberd runs.
pub fn spawn_keeper(store: Arc<dyn StateStore>, microvms: Arc<Microvms>, node: Registered) {
    tokio::spawn(async move {
        Keeper {
            store,
            microvms,
            node,
        }
        .run()
        .await
    });
}

struct Keeper {
    store: Arc<dyn StateStore>,
    microvms: Arc<Microvms>,
    node: Registered,
}

impl Keeper {
    async fn run(mut self) {
        let lease = self.node.lease;
        let every = lease / 3;
        let fence_after = lease - lease / 6;
        let mut last_good_sent = self.node.sent;
        // Good renewals without a failure in between, since when.
        let mut good_since = Some(self.node.sent);
        let mut next = self.node.sent + every;
        self.report_free().await;
        loop {
            tokio::time::sleep_until(next.into()).await;
            let sent = Instant::now();
            next = sent + every;
            let renewal = self.renew_fencing(last_good_sent, every).await;
            match renewal {
                Some(Ok(LeaseRenewal::Renewed { state })) => {
                    last_good_sent = sent;
                    self.microvms.set_draining(state == "DRAINING");
                    self.microvms.unfence().await;
                    self.report_free().await;
                    let since = *good_since.get_or_insert(sent);
                    if sent.duration_since(since) >= lease {
                        self.sweep().await;
                    }
                }
                Some(Ok(LeaseRenewal::Lost { state, epoch })) => {
                    self.lost(&state, epoch).await;
                    last_good_sent = self.node.sent;
                    good_since = Some(self.node.sent);
                }
                Some(Err(e)) => {
                    // Retried twice a second: one line per outage, not per try.
                    if good_since.take().is_some() {
                        tracing::error!(node = %self.node.id, "renewing the node's lease: {e}");
                    } else {
                        tracing::debug!(node = %self.node.id, "renewing the node's lease: {e}");
                    }
                    next = sent + RETRY.min(every);
                }
                None => {
                    good_since = None;
                    tracing::error!(
                        node = %self.node.id,
                        "renewing the node's lease: no answer from the store in {every:?}"
                    );
                }
            }
            if Instant::now() >= last_good_sent + fence_after {
                self.fence(last_good_sent).await;
            }
        }
    }

    /// One renewal, bounded by `limit`; the node is fenced the moment its
    /// fence time passes, even while the renewal still waits.
    async fn renew_fencing(
        &self,
        last_good_sent: Instant,
        limit: Duration,
    ) -> Option<Result<LeaseRenewal, StoreError>> {
        let lease = self.node.lease;
        let fence_at = last_good_sent + (lease - lease / 6);
        let renew = tokio::time::timeout(
            limit,
            self.store.renew_node_lease(lease_ms(self.node.lease)),
        );
        tokio::pin!(renew);
        let fence_at = tokio::time::sleep_until(fence_at.into());
        tokio::pin!(fence_at);
        let mut fenced = false;
        loop {
            tokio::select! {
                done = &mut renew => return done.ok(),
                _ = &mut fence_at, if !fenced => {
                    fenced = true;
                    self.fence(last_good_sent).await;
                }
            }
        }
    }

    async fn fence(&self, last_good_sent: Instant) {
        let reason = format!(
            "it could not renew its lease in the state store for {:.1} s (lease {} s)",
            last_good_sent.elapsed().as_secs_f64(),
            self.node.lease.as_secs()
        );
        self.microvms.fence(&reason).await;
    }

    /// The store declared this node dead: its VMs are TERMINATED there
    /// and may be answered for elsewhere. End them here, then register
    /// again as a node with nothing.
    async fn lost(&mut self, state: &str, epoch: u64) {
        tracing::error!(
            node = %self.node.id,
            our_epoch = self.node.epoch,
            store_state = %state,
            store_epoch = epoch,
            "the store no longer holds this node's lease: it was declared dead; ending its VMs"
        );
        self.microvms
            .fence("the store declared this node dead")
            .await;
        self.microvms
            .abandon_all("this node was declared dead while it could not renew its lease")
            .await;
        loop {
            let address = self.node.address.clone();
            match register(&*self.store, &self.node.id, self.node.lease, address).await {
                Ok(node) => {
                    self.node = node;
                    self.microvms.unfence().await;
                    return;
                }
                Err(e) => {
                    tracing::error!(node = %self.node.id, "registering again: {e}");
                    tokio::time::sleep(self.node.lease / 3).await;
                }
            }
        }
    }

    /// What this node can still take, for runs other nodes place here;
    /// as fresh as the lease, so a placement's estimate heals at the next.
    async fn report_free(&self) {
        let free = self.microvms.free_for_runs_mib();
        let reserved = self.microvms.reserved_mib();
        if let Err(e) = self.store.report_node_free(free, reserved).await {
            tracing::debug!(node = %self.node.id, "reporting free memory: {e}");
        }
    }

    async fn sweep(&self) {
        match self.store.sweep_expired_nodes().await {
            Ok(dead) => {
                for node in dead {
                    tracing::error!(
                        node = %node.id,
                        epoch = node.epoch,
                        microvms = node.terminated_microvms.len(),
                        builds = node.failed_builds.len(),
                        "declared a node dead: its lease expired; its microVMs are TERMINATED \
                         and its builds FAILED"
                    );
                }
            }
            Err(e) => tracing::warn!("sweeping expired nodes: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_node_id;

    #[test]
    fn node_ids_are_short_plain_names() {
        for ok in ["n1", "host-1.example", "a_b", "0"] {
            assert_eq!(parse_node_id(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "-n", ".n", "a b", "a/b", "ä", &"x".repeat(64)] {
            assert!(parse_node_id(bad).is_err(), "{bad:?}");
        }
    }
}
