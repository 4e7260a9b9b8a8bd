//! The proxy's way in on a node of a cluster: a microVM this node runs is
//! reached directly; one another node owns, through a tunnel to that
//! node, which resumes it and counts its traffic as it would its own
//! clients'. The proxy checked the token first, with the cluster's key.

use std::sync::Arc;

use ember_api::model::MicrovmState;
use ember_proxy::{AsyncStream, Shell, TerminalSize, Upstream, UpstreamError};
use ember_store::{StateStore, StoreError};

use super::Peers;
use crate::microvms::VmUpstream;

pub struct ClusterUpstream {
    local: Arc<VmUpstream>,
    peers: Arc<Peers>,
    store: Arc<dyn StateStore>,
    me: String,
}

impl ClusterUpstream {
    pub fn new(
        local: Arc<VmUpstream>,
        peers: Arc<Peers>,
        store: Arc<dyn StateStore>,
        me: String,
    ) -> Self {
        ClusterUpstream {
            local,
            peers,
            store,
            me,
        }
    }

    /// The node that runs `microvm_id` if it is not this one; `NotFound`
    /// for an unknown or terminated microVM.
    async fn other_owner(&self, microvm_id: &str) -> Result<Option<String>, UpstreamError> {
        if self.local.runs(microvm_id) {
            return Ok(None);
        }
        let rec = match self.store.microvm(microvm_id).await {
            Ok(rec) => rec,
            Err(StoreError::NotFound(_)) => return Err(UpstreamError::NotFound),
            Err(e) => {
                return Err(UpstreamError::Unavailable(format!(
                    "the state store could not say which node runs it: {e}"
                )))
            }
        };
        if rec.state == MicrovmState::Terminated.as_str() {
            return Err(UpstreamError::NotFound);
        }
        Ok(rec.owner_node.filter(|owner| *owner != self.me))
    }
}

#[async_trait::async_trait]
impl Upstream for ClusterUpstream {
    async fn connect(
        &self,
        microvm_id: &str,
        port: u16,
    ) -> Result<Box<dyn AsyncStream>, UpstreamError> {
        match self.other_owner(microvm_id).await? {
            Some(owner) => self.peers.tunnel(&owner, microvm_id, port).await,
            None => self.local.connect(microvm_id, port).await,
        }
    }

    async fn open_shell(
        &self,
        microvm_id: &str,
        size: TerminalSize,
    ) -> Result<Shell, UpstreamError> {
        match self.other_owner(microvm_id).await? {
            Some(owner) => self.peers.shell(&owner, microvm_id, size).await,
            None => self.local.open_shell(microvm_id, size).await,
        }
    }

    fn touch(&self, microvm_id: &str) {
        // Another node's VM is touched by its owner, on the tunnel's bytes.
        self.local.touch(microvm_id);
    }
}
