//! TLS for the API and every endpoint listener: a certificate pair from
//! files (`--tls-cert`, `--tls-key`) or one emberd makes for itself
//! (`--tls-self-signed`), re-read on SIGHUP. Plain HTTP is only for
//! loopback unless the operator says otherwise (`--insecure-http`):
//! SigV4 requests and endpoint tokens must not cross a network in clear.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// ALPN of the API (axum serves it over HTTP/1.1) and of endpoints (the
/// proxy speaks both; gRPC needs h2).
pub const API_ALPN: &[&[u8]] = &[b"http/1.1"];
pub const ENDPOINT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// API handshakes in progress at once; more connections wait in the
/// kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// Serve the API and endpoints over TLS with this PEM certificate
    /// chain (with `--tls-key`); re-read with the key on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve over TLS with a certificate emberd generates on first start
    /// into DATA_DIR/tls (SANs: the listen addresses, localhost,
    /// 127.0.0.1) and reuses later; its SHA-256 fingerprint is printed.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls_self_signed: bool,
    /// Serve plain HTTP on non-loopback addresses (by default emberd
    /// refuses to: signed requests and tokens would travel in clear).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_self_signed"])]
    pub insecure_http: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("refusing to serve plain HTTP on {0}, which is not a loopback address: pass --tls-cert FILE --tls-key FILE or --tls-self-signed, or --insecure-http to serve it in clear anyway")]
    PlainOffLoopback(IpAddr),
    #[error("reading {}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no PEM certificate in it", .0.display())]
    NoCertificate(PathBuf),
    #[error("the key does not fit the certificate, or is of a kind rustls cannot use: {0}")]
    Key(rustls::Error),
    #[error("the TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("generating the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

impl TlsArgs {
    fn enabled(&self) -> bool {
        self.tls_self_signed || self.tls_cert.is_some()
    }

    /// Fails closed: any listener off loopback needs TLS or the explicit
    /// `--insecure-http`.
    pub fn check_plain(&self, ips: &[IpAddr]) -> Result<(), TlsError> {
        if self.enabled() || self.insecure_http {
            return Ok(());
        }
        match ips.iter().find(|ip| !ip.is_loopback()) {
            Some(ip) => Err(TlsError::PlainOffLoopback(*ip)),
            None => Ok(()),
        }
    }
}

/// The certificate every listener presents, swapped in place on reload
/// so new handshakes get the new pair and open connections keep theirs.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

pub struct Tls {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<CurrentCert>,
}

impl Tls {
    /// The pair `args` names (making the self-signed one if needed), or
    /// `None` without TLS. `names` go into a new self-signed certificate.
    pub fn from_args(
        args: &TlsArgs,
        tls_dir: &Path,
        names: &[String],
    ) -> Result<Option<Self>, TlsError> {
        let (cert_path, key_path) = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ if args.tls_self_signed => self_signed(tls_dir, names)?,
            _ => return Ok(None),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_pair(&cert_path, &key_path, &provider)?;
        Ok(Some(Tls {
            cert_path,
            key_path,
            provider,
            current: Arc::new(CurrentCert(RwLock::new(Arc::new(key)))),
        }))
    }

    /// A server configuration offering `alpn`, presenting the current
    /// certificate.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&self.current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// What emberd prints at start and after a reload.
    pub fn describe(&self) -> String {
        let current = self
            .current
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let fingerprint = current
            .cert
            .first()
            .map(|der| fingerprint(der))
            .unwrap_or_default();
        format!(
            "emberd TLS certificate sha256 {fingerprint}  ({})",
            self.cert_path.display()
        )
    }

    /// Re-reads the pair; a pair that does not load leaves the old one
    /// in use.
    fn reload(&self) -> Result<(), TlsError> {
        let key = load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    /// Reloads the pair on every SIGHUP, for as long as emberd runs.
    pub fn reload_on_sighup(self: &Arc<Self>) -> io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup())?;
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => {
                        let line = tls.describe();
                        println!("{line}");
                        tracing::info!("SIGHUP: TLS certificate reloaded: {line}");
                    }
                    Err(e) => {
                        tracing::error!("SIGHUP: keeping the TLS certificate in use: {e}")
                    }
                }
            }
        });
        Ok(())
    }
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Pem { path, source }
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(pem_err(cert_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(cert_path))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(pem_err(key_path))?;
    CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Key)
}

/// DATA_DIR/tls/{cert,key}.pem, made now if either is missing.
fn self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for name in names {
        if !sans.contains(name) {
            sans.push(name.clone());
        }
    }
    let made = rcgen::generate_simple_self_signed(sans)?;
    let write = |path: &Path, text: String| {
        let tmp = path.with_extension("tmp");
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| TlsError::Write {
                path: path.to_path_buf(),
                source,
            })
    };
    // The key first: a crash in between leaves no certificate without
    // its key, and the next start makes a new pair.
    write(&key_path, made.signing_key.serialize_pem())?;
    write(&cert_path, made.cert.pem())?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok((cert_path, key_path))
}

/// Names a self-signed certificate should carry for these listeners:
/// their IPs unless unspecified (0.0.0.0 is no name a client dials).
pub fn listener_names(ips: &[IpAddr], domain: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = ips
        .iter()
        .filter(|ip| !ip.is_unspecified())
        .map(IpAddr::to_string)
        .collect();
    if let Some(domain) = domain {
        names.push(format!("*.{}", domain.trim_end_matches('.')));
    }
    names
}

/// `AB:CD:…`, as `openssl x509 -fingerprint -sha256` prints it.
fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The API listener over TLS: handshakes run in their own tasks (a slow
/// client holds no one else up) and finished ones are handed to axum.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an API connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake not done in time"),
                    }
                });
            }
        });
        Ok(TlsListener { local_addr, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends with the runtime.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tls: bool, insecure: bool) -> TlsArgs {
        TlsArgs {
            tls_cert: None,
            tls_key: None,
            tls_self_signed: tls,
            insecure_http: insecure,
        }
    }

    #[test]
    fn plain_http_only_on_loopback_unless_asked() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        assert!(args(false, false).check_plain(&[lo, lo6]).is_ok());
        let refused = args(false, false).check_plain(&[lo, any]).unwrap_err();
        let message = refused.to_string();
        for flag in [
            "--tls-cert",
            "--tls-key",
            "--tls-self-signed",
            "--insecure-http",
        ] {
            assert!(message.contains(flag), "{message}");
        }
        assert!(args(false, true).check_plain(&[any]).is_ok());
        assert!(args(true, false).check_plain(&[any]).is_ok());
    }

    #[test]
    fn self_signed_pair_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        let first = Tls::from_args(&args(true, false), &tls_dir, &[])
            .unwrap()
            .unwrap();
        let again = Tls::from_args(&args(true, false), &tls_dir, &[])
            .unwrap()
            .unwrap();
        assert_eq!(first.describe(), again.describe());
        assert!(first
            .describe()
            .starts_with("emberd TLS certificate sha256 "));
    }
}
