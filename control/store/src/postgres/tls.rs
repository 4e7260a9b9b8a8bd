//! TLS to Postgres, with rustls: a TCP connection is encrypted and its
//! server verified unless the URL says `sslmode=disable` (or `prefer`,
//! which allows plain text when the server has no TLS). Unix sockets carry
//! no TLS. The roots are `--store-ca-file` if given, else the system's;
//! `--store-client-cert`/`--store-client-key` present a client certificate
//! to a server that asks for one (pg_hba's `cert` method, `clientcert=`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StoreError;

/// A CA file (or a client certificate chain, or a key) is a few PEM
/// blocks; anything bigger is not one.
const MAX_CA_FILE_BYTES: u64 = 1 << 20;

/// How emberd's connections to Postgres present and check certificates.
#[derive(Debug, Clone, Default)]
pub struct PostgresTls {
    /// The CA a server's certificate must chain to (else the system's).
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate (chain) and its key, both PEM.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Makes `sslmode` explicit: `require` when the URL left it out and a host
/// is reached over TCP, so a Postgres without TLS is refused rather than
/// spoken to in plain text (tokio-postgres would otherwise `prefer`).
pub(super) fn harden(url: &str, config: &mut tokio_postgres::Config) {
    let names_mode = url
        .split(['?', '&', ' '])
        .any(|part| part.starts_with("sslmode="));
    let tcp = config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
    if !names_mode && tcp {
        config.ssl_mode(SslMode::Require);
    }
}

/// rustls' connector, but for Unix sockets: their "host" is a folder,
/// which is no server name, and Postgres never offers TLS on them anyway.
#[derive(Clone)]
pub(super) struct Connector(MakeRustlsConnect);

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Self::Error> {
        // tokio-postgres names no host for a Unix socket (an empty name).
        let host = if host.is_empty() || host.starts_with('/') {
            "localhost"
        } else {
            host
        };
        <MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(&mut self.0, host)
    }
}

pub(super) fn connector(tls: &PostgresTls) -> Result<Connector, StoreError> {
    let mut roots = RootCertStore::empty();
    match tls.ca_file.as_deref() {
        Some(path) => {
            for cert in read_ca_file(path)? {
                roots.add(cert).map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            // Certificates the system store holds but rustls cannot parse
            // are skipped; an empty store then fails at connect, naming it.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Pool(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_pem_certs(cert, "--store-client-cert")?;
            let key_pem = read_bounded(key, "--store-client-key")?;
            refuse_open_key(key)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| StoreError::Open {
                    path: key.display().to_string(),
                    message: format!("--store-client-key is not a PEM private key: {e}"),
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| StoreError::Open {
                    path: cert.display().to_string(),
                    message: format!("--store-client-cert and --store-client-key: {e}"),
                })?
        }
    };
    Ok(Connector(MakeRustlsConnect::new(config)))
}

/// A key others can read is refused, as libpq refuses it.
fn refuse_open_key(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: format!("--store-client-key: {e}"),
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            message: format!(
                "--store-client-key has mode {:o}; group and others must not read it (chmod 600)",
                mode & 0o7777
            ),
        });
    }
    Ok(())
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    read_pem_certs(path, "--store-ca-file")
}

/// A file of at most [`MAX_CA_FILE_BYTES`], named by its flag in errors.
fn read_bounded(path: &Path, flag: &str) -> Result<Vec<u8>, StoreError> {
    let open_err = |message: String| StoreError::Open {
        path: path.display().to_string(),
        message,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| open_err(format!("{flag}: {e}")))?
        .len();
    if size > MAX_CA_FILE_BYTES {
        return Err(open_err(format!(
            "{flag} is {size} bytes; a file over {MAX_CA_FILE_BYTES} is refused"
        )));
    }
    std::fs::read(path).map_err(|e| open_err(format!("{flag}: {e}")))
}

fn read_pem_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let open_err = |message: String| StoreError::Open {
        path: path.display().to_string(),
        message,
    };
    let pem = read_bounded(path, flag)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| open_err(format!("{flag} is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(open_err(format!("{flag} holds no certificate")));
    }
    Ok(certs)
}
