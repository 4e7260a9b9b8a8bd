//! The listeners: one per microVM (endpoint `http(s)://127.0.0.1:PORT`, no
//! DNS needed) and any number of shared wildcard-domain listeners.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::caps::{Caps, VmCounts};
use crate::routing::Route;
use crate::serve::{serve_plain, Served};
use crate::tls::{serve_tls, EndpointTls};
use crate::token::TokenKey;
use crate::upstream::Upstream;

/// A failing `accept` (out of file descriptors) is retried after this.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} for microVM {microvm_id}: {source}")]
    Bind {
        microvm_id: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("microVM {microvm_id} already has an endpoint at {existing}, not {requested}")]
    AlreadyBound {
        microvm_id: String,
        existing: SocketAddr,
        requested: SocketAddr,
    },
}

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where per-VM listeners bind (port 0 unless re-bound at a stored
    /// address). Loopback by default: the endpoint is for this host.
    pub bind_ip: IpAddr,
    /// A client that has not sent a full request head by then is dropped.
    pub header_read_timeout: Duration,
    /// How long `Upstream::connect` (which may resume a suspended VM) and
    /// the HTTP handshake may take before the client gets a 504.
    pub connect_timeout: Duration,
    /// Serve every listener over TLS instead of plain TCP.
    pub tls: Option<EndpointTls>,
    /// Told of every answer and every client byte (emberd's metrics).
    pub observer: crate::Observer,
    /// A client connection with no request in flight (or an upgraded one
    /// with no byte either way) for this long is closed. Keep it shorter
    /// than the shortest idle policy, or an idle connection delays the
    /// suspend of its microVM.
    pub idle_timeout: Duration,
    /// Client connections one microVM's own listener serves at once, and
    /// the shared listeners serve for one microVM at once.
    pub max_connections_per_vm: usize,
    /// Client connections a shared (wildcard-domain) listener serves at
    /// once, all microVMs together.
    pub max_connections_per_listener: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            header_read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(60),
            tls: None,
            observer: crate::Observer::default(),
            idle_timeout: Duration::from_secs(30),
            max_connections_per_vm: 256,
            max_connections_per_listener: 4096,
        }
    }
}

/// What every connection needs, shared by all listeners.
pub(crate) struct Shared {
    pub(crate) key: Arc<TokenKey>,
    pub(crate) upstream: Arc<dyn Upstream>,
    pub(crate) config: ProxyConfig,
    /// Per-microVM caps on the shared listeners.
    pub(crate) vm_counts: Arc<VmCounts>,
}

struct VmListener {
    addr: SocketAddr,
    /// Dropping it stops the accept loop and every connection it accepted.
    _shutdown: watch::Sender<()>,
}

/// The endpoint proxy. Dropping it closes every per-VM listener.
pub struct Proxy {
    shared: Arc<Shared>,
    vm_listeners: Mutex<HashMap<String, VmListener>>,
}

impl Proxy {
    pub fn new(key: Arc<TokenKey>, upstream: Arc<dyn Upstream>, config: ProxyConfig) -> Self {
        Proxy {
            shared: Arc::new(Shared {
                key,
                upstream,
                vm_counts: VmCounts::new(config.max_connections_per_vm),
                config,
            }),
            vm_listeners: Mutex::new(HashMap::new()),
        }
    }

    /// Gives `microvm_id` its own listener on a fresh port of the bind IP;
    /// returns the existing address if it has one.
    pub async fn bind_vm(&self, microvm_id: &str) -> Result<SocketAddr, ProxyError> {
        if let Some(addr) = self.vm_addr(microvm_id) {
            return Ok(addr);
        }
        self.listen(microvm_id, SocketAddr::new(self.shared.config.bind_ip, 0))
            .await
    }

    /// Re-binds `microvm_id` at the address it had (emberd stores it), so
    /// endpoints survive an emberd restart.
    pub async fn bind_vm_at(
        &self,
        microvm_id: &str,
        addr: SocketAddr,
    ) -> Result<SocketAddr, ProxyError> {
        match self.vm_addr(microvm_id) {
            Some(existing) if existing == addr => return Ok(existing),
            Some(existing) => {
                return Err(ProxyError::AlreadyBound {
                    microvm_id: microvm_id.to_string(),
                    existing,
                    requested: addr,
                })
            }
            None => {}
        }
        self.listen(microvm_id, addr).await
    }

    /// Closes `microvm_id`'s listener and its open connections (including
    /// spliced WebSockets). Returns whether it had one.
    pub fn unbind_vm(&self, microvm_id: &str) -> bool {
        let removed = self.listeners().remove(microvm_id);
        if let Some(listener) = &removed {
            info!(microvm_id, addr = %listener.addr, "endpoint closed");
        }
        removed.is_some()
    }

    /// The scheme of endpoint URLs: `https` when the listeners serve TLS.
    pub fn scheme(&self) -> &'static str {
        match self.shared.config.tls {
            Some(_) => "https",
            None => "http",
        }
    }

    /// The address of `microvm_id`'s listener, if bound.
    pub fn vm_addr(&self, microvm_id: &str) -> Option<SocketAddr> {
        self.listeners().get(microvm_id).map(|l| l.addr)
    }

    /// Serves `<id>.<domain>` host names on a shared listener until the
    /// returned future is dropped (its connections end with it).
    pub async fn serve_shared(&self, listener: TcpListener, domain: &str) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let (_keep_open, shutdown) = watch::channel(());
        let caps = Caps::new(self.shared.config.max_connections_per_listener);
        accept_loop(
            self.shared.clone(),
            listener,
            Route::Wildcard(Arc::from(domain)),
            caps,
            shutdown,
        )
        .await;
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, HashMap<String, VmListener>> {
        self.vm_listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn listen(&self, microvm_id: &str, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
        let bind_err = |source| ProxyError::Bind {
            microvm_id: microvm_id.to_string(),
            addr,
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let bound = listener.local_addr().map_err(bind_err)?;
        let mut listeners = self.listeners();
        // A concurrent bind for the same VM won: keep one listener.
        if let Some(existing) = listeners.get(microvm_id) {
            return Ok(existing.addr);
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        tokio::spawn(accept_loop(
            self.shared.clone(),
            listener,
            Route::Fixed(Arc::from(microvm_id)),
            Caps::new(self.shared.config.max_connections_per_vm),
            shutdown_rx,
        ));
        listeners.insert(
            microvm_id.to_string(),
            VmListener {
                addr: bound,
                _shutdown: shutdown_tx,
            },
        );
        info!(microvm_id, addr = %bound, "endpoint listening");
        Ok(bound)
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    route: Route,
    caps: Caps,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(admission) = caps.admit() else {
                    debug!(%peer, "too many connections, even refused ones: closed");
                    continue;
                };
                let served = Served {
                    shared: shared.clone(),
                    peer,
                    route: route.clone(),
                    shutdown: shutdown.clone(),
                    admission,
                };
                tokio::spawn(serve_connection(served, stream));
            }
            Err(e) => {
                warn!(error = %e, "accepting an endpoint connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve_connection(served: Served, stream: TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "TCP_NODELAY on a client connection");
    }
    match served.shared.config.tls.clone() {
        Some(tls) => serve_tls(served, stream, &tls).await,
        None => serve_plain(served, stream).await,
    }
}
