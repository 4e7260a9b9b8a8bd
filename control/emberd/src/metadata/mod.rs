//! The instance metadata endpoint every microVM sees at 169.254.169.254:
//! IMDSv2, answered by emberd itself, carrying the VM's execution role
//! credentials (`--role-credentials`) so AWS SDKs and the AWS CLI in the
//! guest find them with no configuration.
//!
//! Nothing travels over a network: the guest agent listens on the address
//! and hands each connection to the host over its channel
//! (`AgentClient::accept_metadata`). A VM's connections are served only by
//! [`imds::Imds`], with that VM's identity; no other VM can reach them.

pub mod imds;
pub mod roles;

use std::sync::Arc;
use std::time::Duration;

use ember_vmm::agent::{AgentClient, AgentError};
use tokio::sync::Semaphore;

pub use imds::{Imds, VmIdentity};
pub use roles::RoleCredentials;

/// Accepts kept outstanding in the agent: how many guest connections can
/// arrive at once before one waits for the host to offer another.
const OUTSTANDING_ACCEPTS: usize = 4;
/// Metadata connections served at once per VM, outstanding accepts
/// included; the guest's further connections are closed by its agent.
const MAX_CONNECTIONS: usize = 8;
/// SDKs open a connection per request or keep one briefly; a connection
/// that lasts longer is closed (the client reconnects if it needs to).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// One per emberd.
pub struct Metadata {
    imds: Arc<Imds>,
}

/// Says nothing of the token key or the keys.
impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata").finish_non_exhaustive()
    }
}

impl Metadata {
    pub fn new(region: String, account: String, roles: Option<Arc<RoleCredentials>>) -> Self {
        Self {
            imds: Arc::new(Imds::new(region, account, roles)),
        }
    }

    /// Serves the VM's metadata connections until its agent session ends:
    /// call whenever a VM starts, resumes or is re-attached.
    pub fn serve(&self, vm_id: &str, role_arn: Option<&str>, agent: &AgentClient) {
        let vm = Arc::new(VmIdentity {
            vm_id: vm_id.to_string(),
            role_arn: role_arn.map(str::to_string),
        });
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        for _ in 0..OUTSTANDING_ACCEPTS {
            tokio::spawn(accept_loop(
                Arc::clone(&self.imds),
                Arc::clone(&vm),
                agent.clone(),
                Arc::clone(&permits),
            ));
        }
    }
}

/// One outstanding accept at a time: wait for a permit, offer an accept,
/// serve what arrives on it, repeat.
async fn accept_loop(
    imds: Arc<Imds>,
    vm: Arc<VmIdentity>,
    agent: AgentClient,
    permits: Arc<Semaphore>,
) {
    loop {
        // The semaphore is never closed.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            accepted = agent.accept_metadata() => accepted,
            // Dropping the accept withdraws it, and the clone of the agent
            // goes with this task.
            _ = agent.wait_ended() => return,
        };
        match stream {
            Ok(stream) => {
                let (imds, vm) = (Arc::clone(&imds), Arc::clone(&vm));
                tokio::spawn(async move {
                    let serving = imds.serve_connection(vm, stream);
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, serving).await;
                    drop(permit);
                });
            }
            Err(AgentError::Guest { kind, message }) => {
                // An agent older than the metadata endpoint (an image built
                // before it) does not know the request.
                tracing::debug!(microvm = %vm.vm_id, %kind, "no metadata endpoint in this guest: {message}");
                return;
            }
            Err(e) => {
                tracing::debug!(microvm = %vm.vm_id, "metadata accepts end: {e}");
                return;
            }
        }
    }
}
