//! Several emberd nodes on one Postgres serve as one Ember: a token minted
//! through any node opens the endpoint on every node, a request for a
//! microVM another node runs is tunnelled to that node, and Suspend,
//! Resume and Terminate sent to any node are carried out by the owner.
//!
//! - `key.rs`: the shared secret (`--cluster-key-file`) and what is
//!   derived from it; requests between nodes are HMAC-signed with it.
//! - `internal.rs`: the internal listener (`--internal-listen`) that
//!   other nodes call: a tunnel to a guest port, a lifecycle action.
//! - `peer.rs`: the calling side, and where each node listens.
//! - `upstream.rs`: the proxy's way in: this node's VMs directly, other
//!   nodes' through a tunnel.
//! - `tls.rs`: the TLS nodes speak to each other, its certificate derived
//!   from the cluster key.

mod internal;
pub mod key;
mod peer;
mod shell_tunnel;
mod tls;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

pub use internal::serve as serve_internal;
pub use key::ClusterKey;
pub use peer::{Action, Peers};
pub use tls::InternalTls;
pub use upstream::ClusterUpstream;

/// The flags of cluster mode.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// A secret file (32 to 4096 bytes, mode 0600, e.g. `head -c 32
    /// /dev/urandom`), the same on every node of one Postgres store:
    /// endpoint tokens are signed with a key derived from it, so any node
    /// verifies them, and so are requests between nodes. Without it the
    /// token key is the data dir's own `proxy.key`.
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Where other nodes reach this one: tunnels to its microVMs'
    /// ports and the lifecycle actions sent to another node. TLS 1.3 with
    /// a certificate every node derives from the cluster key (and accepts
    /// from no one else), and every request signed with that key.
    #[arg(long, value_name = "ADDR", requires = "cluster_key_file")]
    pub internal_listen: Option<SocketAddr>,
    /// The address other nodes dial for --internal-listen, when that is a
    /// wildcard or behind NAT. Default: --internal-listen's bound address.
    #[arg(long, value_name = "ADDR", requires = "internal_listen")]
    pub internal_advertise: Option<SocketAddr>,
    /// MicroVMs the whole cluster holds at once, running or suspended, on
    /// every node of the store together (ServiceQuotaExceededException
    /// beyond), checked in the transaction that records a run; give every
    /// node the same. Each node's --max-microvms still applies to it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub cluster_max_microvms: Option<u64>,
}

/// Cluster mode as started: the key, and the internal listener bound
/// with the address other nodes are told.
pub struct Cluster {
    pub key: Arc<ClusterKey>,
    pub internal: Option<(TcpListener, String)>,
    pub tls: Arc<InternalTls>,
}

impl ClusterArgs {
    /// Loads the key and binds the internal listener, before the node
    /// registers (its address is part of the registration); `None`
    /// without `--cluster-key-file`.
    pub async fn start(&self) -> anyhow::Result<Option<Cluster>> {
        let Some(path) = &self.cluster_key_file else {
            return Ok(None);
        };
        let key = Arc::new(ClusterKey::load(path)?);
        let tls = Arc::new(InternalTls::new(&key)?);
        let internal = match self.internal_listen {
            None => None,
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--internal-listen {addr}"))?;
                let bound = listener.local_addr()?;
                let advertised = match self.internal_advertise {
                    Some(a) => a,
                    None if bound.ip().is_unspecified() => anyhow::bail!(
                        "--internal-listen {addr} is a wildcard address: pass \
                         --internal-advertise with the address other nodes dial"
                    ),
                    None => bound,
                };
                println!("emberd internal listener on {bound} (advertised as {advertised})");
                Some((listener, advertised.to_string()))
            }
        };
        Ok(Some(Cluster { key, internal, tls }))
    }
}
