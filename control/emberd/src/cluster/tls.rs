//! TLS between nodes without certificates to hand out: every node derives
//! one Ed25519 key from the cluster key and makes the same self-signed
//! certificate from it (fixed serial, names and dates; Ed25519 signatures
//! are deterministic), and a node dialling another accepts exactly that
//! certificate. Only holders of the cluster key can serve it, so tunnelled
//! app bytes and forwarded requests are encrypted and reach a real node.
//! The requests stay HMAC-signed as well: TLS authenticates the server,
//! the signature the caller.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use super::ClusterKey;

/// The name every node's certificate carries and every caller asks for.
pub const SERVER_NAME: &str = "ember-internal";

/// PKCS#8 v1 of an Ed25519 key (RFC 8410): this prefix, then the seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, thiserror::Error)]
pub enum InternalTlsError {
    #[error("the internal listener's certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the internal listener's TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Both ends of the internal TLS, made once from the cluster key.
pub struct InternalTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl InternalTls {
    pub fn new(key: &ClusterKey) -> Result<Self, InternalTlsError> {
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(key.tls_seed());
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8);
        let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        params.serial_number = Some(rcgen::SerialNumber::from(1u64));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, SERVER_NAME);
        let cert = params.self_signed(&pair)?.der().clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(pkcs8))?;
        let verifier = Arc::new(PinnedCertificate {
            cert,
            provider: Arc::clone(&provider),
        });
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The name a caller asks every node for.
    pub fn server_name() -> Result<ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
        ServerName::try_from(SERVER_NAME)
    }
}

/// Accepts the cluster's certificate and nothing else; the handshake's
/// signature is checked against it as usual.
#[derive(Debug)]
struct PinnedCertificate {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() && intermediates.is_empty() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Both configs speak TLS 1.3 only.
        Err(rustls::Error::General(
            "nodes speak TLS 1.3 to each other".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake of `client`'s caller with `server`'s listener over an
    /// in-memory pipe: whether the caller accepted the certificate.
    async fn handshake(client: &InternalTls, server: &InternalTls) -> bool {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&server.server));
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&client.client));
        let name = InternalTls::server_name();
        assert!(name.is_ok());
        let Ok(name) = name else { return false };
        let (accepted, connected) = tokio::join!(acceptor.accept(b), connector.connect(name, a));
        let _ = accepted;
        connected.is_ok()
    }

    fn tls(secret: &[u8]) -> InternalTls {
        match InternalTls::new(&ClusterKey::from_secret(secret)) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn nodes_of_one_key_accept_each_other_and_no_other() {
        let (n1, n2, stranger) = (tls(&[7u8; 32]), tls(&[7u8; 32]), tls(&[8u8; 32]));
        assert!(handshake(&n1, &n2).await, "two nodes of one cluster");
        assert!(handshake(&n2, &n1).await);
        assert!(!handshake(&n1, &stranger).await, "a server without the key");
    }
}
