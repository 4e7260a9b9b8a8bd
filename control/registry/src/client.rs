//! HTTP to one repository of one registry, with the 401 dance done once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use url::Url;

use crate::auth::{parse_challenge, Challenge, Credentials};
use crate::guard::{self, AddressGuard, GuardedResolver};
use crate::{ImageReference, RegistryError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two reads of a body, not for the whole body: layers are big.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_TOKEN_RESPONSE_BYTES: u64 = 1 << 20;
const MAX_CA_FILE_BYTES: u64 = 1 << 20;

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Hosts (`host` or `host:port`, as in the reference) spoken to over
    /// plain HTTP. Every other registry is HTTPS.
    pub insecure_registries: Vec<String>,
    /// A PEM file of CA certificates trusted besides the system's.
    pub registry_ca: Option<PathBuf>,
    /// A docker-style `config.json` with `auths.<host>.auth` credentials.
    pub docker_config: Option<PathBuf>,
    /// HTTPS registries (`host` or `host:port`) allowed on loopback,
    /// private or link-local addresses. The insecure ones are allowed too.
    pub private_registries: Vec<String>,
}

pub(crate) struct Transport {
    pub http: reqwest::Client,
    pub guard: Arc<AddressGuard>,
    pub insecure: Vec<String>,
    pub credentials: Credentials,
}

impl Transport {
    pub(crate) fn new(options: &RegistryOptions) -> Result<Self, RegistryError> {
        // reqwest is built without a TLS crypto backend of its own; ring is
        // the one this workspace links. `Err` means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let guard = AddressGuard::new(
            options
                .insecure_registries
                .iter()
                .chain(&options.private_registries)
                .cloned(),
        );
        let mut builder = reqwest::Client::builder()
            // A proxy from emberd's environment would connect for us, to
            // addresses the guard never saw.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver(Arc::clone(&guard))))
            .redirect(guard::redirects(Arc::clone(&guard)))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("ember-registry/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.registry_ca {
            let bad = |reason: String| RegistryError::RegistryCa {
                path: path.clone(),
                reason,
            };
            let meta = std::fs::metadata(path).map_err(|e| RegistryError::io(path, e))?;
            if meta.len() > MAX_CA_FILE_BYTES {
                return Err(bad(format!("larger than {MAX_CA_FILE_BYTES} bytes")));
            }
            let pem = std::fs::read(path).map_err(|e| RegistryError::io(path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(bad("holds no certificate".to_string()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|source| RegistryError::Http {
            url: "(client set-up)".to_string(),
            source,
        })?;
        let credentials = match &options.docker_config {
            Some(path) => Credentials::load(path)?,
            None => Credentials::default(),
        };
        Ok(Self {
            http,
            guard,
            insecure: options.insecure_registries.clone(),
            credentials,
        })
    }
}

/// Requests to one repository, remembering the authorization that worked.
pub(crate) struct Session<'a> {
    transport: &'a Transport,
    reference: &'a ImageReference,
    base: Url,
    authorization: Option<HeaderValue>,
}

impl<'a> Session<'a> {
    pub(crate) fn new(
        transport: &'a Transport,
        reference: &'a ImageReference,
    ) -> Result<Self, RegistryError> {
        let host = reference.api_host();
        let scheme = if transport
            .insecure
            .iter()
            .any(|h| h == host || h == &reference.registry)
        {
            "http"
        } else {
            "https"
        };
        let base = format!("{scheme}://{host}/v2/{}/", reference.repository);
        let base = Url::parse(&base).map_err(|e| RegistryError::InvalidReference {
            reference: reference.to_string(),
            reason: format!("not a URL: {e}"),
        })?;
        Ok(Self {
            transport,
            reference,
            base,
            authorization: None,
        })
    }

    /// `registry/repository`, for messages.
    pub(crate) fn name(&self) -> String {
        format!("{}/{}", self.reference.registry, self.reference.repository)
    }

    pub(crate) fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base
            .join(path)
            .map_err(|e| RegistryError::InvalidReference {
                reference: self.reference.to_string(),
                reason: format!("not a URL: {e}"),
            })
    }

    /// GETs `url`, answering one 401 with credentials or a token. Returns
    /// the response whatever its status, but 401.
    pub(crate) async fn get(&mut self, url: &Url, accept: &str) -> Result<Response, RegistryError> {
        let response = self.send(url, accept).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        if self.authorization.is_some() {
            return Err(self.unauthorized("the registry refused the credentials or token"));
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
            .ok_or_else(|| self.unauthorized("401 without a Basic or Bearer challenge"))?;
        self.authorization = Some(self.authorize(challenge).await?);
        let response = self.send(url, accept).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(match self.credentials() {
                Some(_) => "the registry refused the credentials",
                None => "the registry needs credentials and the docker config has none for it",
            }));
        }
        Ok(response)
    }

    async fn send(&self, url: &Url, accept: &str) -> Result<Response, RegistryError> {
        self.transport.guard.check_url(url)?;
        let mut request = self.transport.http.get(url.clone()).header(ACCEPT, accept);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        request
            .send()
            .await
            .map_err(|source| http_error(url, source))
    }

    fn credentials(&self) -> Option<&(String, String)> {
        self.transport
            .credentials
            .for_host(&self.reference.registry)
    }

    fn unauthorized(&self, reason: &str) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            reason: reason.to_string(),
        }
    }

    fn basic(&self) -> Option<HeaderValue> {
        let (user, password) = self.credentials()?;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    async fn authorize(&self, challenge: Challenge) -> Result<HeaderValue, RegistryError> {
        let (realm, service, scope) = match challenge {
            Challenge::Basic => {
                return self.basic().ok_or_else(|| {
                    self.unauthorized(
                        "the registry needs credentials and the docker config has none for it",
                    )
                })
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => (realm, service, scope),
        };
        let mut url =
            Url::parse(&realm).map_err(|_| self.unauthorized("the token realm is not a URL"))?;
        // Credentials go to the realm: never in the clear unless the realm's
        // host is one the operator listed as plain HTTP.
        let realm_host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => return Err(self.unauthorized("the token realm has no host")),
        };
        match url.scheme() {
            "https" => {}
            "http" if self.transport.insecure.contains(&realm_host) => {}
            _ => {
                return Err(self.unauthorized(
                    "the token realm is not https and its host is not in insecure_registries",
                ))
            }
        }
        let scope =
            scope.unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &scope);
        }
        self.transport.guard.check_url(&url)?;
        let mut request = self.transport.http.get(url.clone());
        if let Some(basic) = self.basic() {
            request = request.header(AUTHORIZATION, basic);
        }
        let response = request
            .send()
            .await
            .map_err(|source| http_error(&url, source))?;
        match response.status() {
            status if status.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.unauthorized("the token service refused the credentials"))
            }
            status => {
                return Err(RegistryError::Status {
                    url: url.to_string(),
                    status: status.as_u16(),
                })
            }
        }
        let body = read_bounded(response, MAX_TOKEN_RESPONSE_BYTES, "the token response").await?;
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            self.unauthorized("the token service answered something other than a token")
        })?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.unauthorized("the token service answered no token"))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| self.unauthorized("the token is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// A refusal by the guard (from the resolver or a redirect) says so;
/// anything else is an HTTP failure.
pub(crate) fn http_error(url: &Url, source: reqwest::Error) -> RegistryError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&source);
    while let Some(e) = cause {
        if let Some(RegistryError::RefusedHost { host }) = e.downcast_ref::<RegistryError>() {
            return guard::refused(host);
        }
        cause = e.source();
    }
    RegistryError::Http {
        url: url.to_string(),
        source,
    }
}

pub(crate) fn content_type(response: &Response) -> Option<String> {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The whole body, refusing more than `limit` bytes.
pub(crate) async fn read_bounded(
    mut response: Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let url = response.url().to_string();
    let too_large = || RegistryError::TooLarge {
        what: what.to_string(),
        limit,
    };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| RegistryError::Http {
            url: url.clone(),
            source,
        })?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
