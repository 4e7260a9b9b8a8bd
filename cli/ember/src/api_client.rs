//! A small client for emberd's API: finds the daemon through its data
//! folder (`endpoint`, `credentials`) and signs every request with SigV4,
//! like the AWS CLI does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use reqwest::Method;
use serde_json::Value;

/// reqwest is built without a default TLS backend (the workspace picks
/// ring); call before building any HTTP client. Installing fails only if
/// one is installed already, which is fine.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct ApiClient {
    endpoint: url::Url,
    access_key_id: String,
    secret_access_key: String,
    region: String,
    http: reqwest::Client,
    ca_bundle: Option<PathBuf>,
}

impl ApiClient {
    /// Reads `DATA_DIR/endpoint` (unless `endpoint` is given) and the
    /// `[default]` profile of `DATA_DIR/credentials`.
    pub fn from_data_dir(
        data_dir: &Path,
        endpoint: Option<&str>,
        region: &str,
    ) -> anyhow::Result<Self> {
        let endpoint = match endpoint {
            Some(e) => e.to_string(),
            None => std::fs::read_to_string(data_dir.join("endpoint"))
                .with_context(|| {
                    format!(
                        "no emberd endpoint in {}: is emberd running with --data-dir {}?",
                        data_dir.join("endpoint").display(),
                        data_dir.display()
                    )
                })?
                .trim()
                .to_string(),
        };
        let creds_path = data_dir.join("credentials");
        let text = std::fs::read_to_string(&creds_path)
            .with_context(|| format!("reading {}", creds_path.display()))?;
        let creds = ember_api::Credentials::from_shared_file(&text)
            .with_context(|| format!("{} has no [default] key pair", creds_path.display()))?;
        Ok(Self {
            endpoint: url::Url::parse(&endpoint)
                .with_context(|| format!("endpoint {endpoint:?}"))?,
            access_key_id: creds.access_key_id,
            secret_access_key: creds.secret_access_key,
            region: region.to_string(),
            http: http_client(None)?,
            ca_bundle: None,
        })
    }

    /// Trusts only the certificates of `bundle` (PEM) for https, as the
    /// AWS CLI does with `--ca-bundle`/`AWS_CA_BUNDLE`: how a client
    /// trusts emberd's `--tls-self-signed` certificate.
    pub fn with_ca_bundle(mut self, bundle: Option<&Path>) -> anyhow::Result<Self> {
        if bundle.is_some() {
            self.http = http_client(bundle)?;
        }
        self.ca_bundle = bundle.map(Path::to_path_buf);
        Ok(self)
    }

    /// The TLS trust of the HTTP client, for connections it cannot make
    /// (the shell's WebSocket): the CA bundle's certificates only, else the
    /// platform's verifier, as reqwest uses.
    pub fn tls_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let builder = rustls::ClientConfig::builder();
        let config = match &self.ca_bundle {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_pem_certs(path)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("the CA bundle {}", path.display()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => {
                use rustls_platform_verifier::BuilderVerifierExt as _;
                builder
                    .with_platform_verifier()
                    .context("the platform's certificate verifier")?
                    .with_no_client_auth()
            }
        };
        Ok(Arc::new(config))
    }

    /// The HTTP client API calls use, for requests to endpoints too.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// emberd's URL.
    pub fn endpoint(&self) -> &url::Url {
        &self.endpoint
    }

    /// Calls an API operation; an error answer becomes an error naming
    /// its type and message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let resp = self.send(method, path, query, body).await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let kind = v["__type"].as_str().unwrap_or("Error");
            let message = v["message"].as_str().unwrap_or(&text);
            bail!("{kind} ({status}): {message}");
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("emberd answered something that is not JSON")
    }

    /// A signed request whose (possibly endless) body the caller reads.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut url = self.endpoint.join(path)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut headers = vec![(
            "host".to_string(),
            url.host_str()
                .map(|h| match url.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_string(),
                })
                .unwrap_or_default(),
        )];
        if !body.is_empty() {
            headers.push(("content-type".into(), "application/json".into()));
        }
        let identity = aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "ember-data-dir",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("lambda")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| anyhow!("signing: {e}"))?
            .into();
        let signable = SignableRequest::new(
            method.as_str(),
            url.as_str(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| anyhow!("signing: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| anyhow!("signing: {e}"))?
            .into_parts();
        let (signed_headers, _) = instructions.into_parts();
        let mut req = self.http.request(method, url.clone());
        for (k, v) in &headers {
            if k != "host" {
                req = req.header(k, v);
            }
        }
        for h in signed_headers {
            req = req.header(h.name(), h.value());
        }
        req.body(body)
            .send()
            .await
            .with_context(|| format!("calling emberd at {}", self.endpoint))
    }
}

fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject as _;
    let pem =
        std::fs::read(path).with_context(|| format!("reading the CA bundle {}", path.display()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the CA bundle {}", path.display()))?;
    if certs.is_empty() {
        bail!("the CA bundle {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn http_client(ca_bundle: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(path) = ca_bundle {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the CA bundle {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("the CA bundle {}", path.display()))?;
        if certs.is_empty() {
            bail!("the CA bundle {} holds no PEM certificate", path.display());
        }
        builder = builder.tls_certs_only(certs);
    }
    Ok(builder.build()?)
}
