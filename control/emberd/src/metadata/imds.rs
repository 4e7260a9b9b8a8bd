//! The IMDSv2 HTTP surface one guest connection sees: a session token
//! first (`PUT /latest/api/token`), then GETs carrying it. Only the paths
//! SDKs use for credentials and region exist.
//!
//! Tokens are `expiry (8 bytes) ‖ HMAC-SHA256(key, vm id ‖ expiry)`,
//! base64url: valid only in the VM they were minted for, until they expire,
//! and not after emberd restarts (the key lives in memory; SDKs fetch a new
//! token on a 401).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::roles::{RoleCredentials, RoleKeys};

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const MAX_TTL_SECONDS: u64 = 21_600;
/// The name under which the VM's role appears, as on the real service.
pub const ROLE_NAME: &str = "execution_role";
const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";
/// Keys without an expiration in the file are served as valid this long,
/// so SDKs come back for them (and see rotated keys) regularly.
const ROLLING_EXPIRATION: Duration = Duration::from_secs(6 * 3600);
/// hyper's smallest read buffer: bounds a request's head.
const MAX_HEAD_BYTES: usize = 8192;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAC_LEN: usize = 32;

/// What the endpoint knows of one VM.
#[derive(Debug, Clone)]
pub struct VmIdentity {
    pub vm_id: String,
    pub role_arn: Option<String>,
}

/// Shared by every VM: the token key and where credentials come from.
pub struct Imds {
    key: [u8; 32],
    region: String,
    account: String,
    roles: Option<Arc<RoleCredentials>>,
}

type Reply = Response<Full<Bytes>>;

impl Imds {
    pub fn new(region: String, account: String, roles: Option<Arc<RoleCredentials>>) -> Self {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
        Self {
            key,
            region,
            account,
            roles,
        }
    }

    /// Serves HTTP/1.1 on one guest connection until either side closes it.
    pub async fn serve_connection<IO>(self: Arc<Self>, vm: Arc<VmIdentity>, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let service = service_fn(move |req: Request<Incoming>| {
            let reply = self.answer(&vm, &req, SystemTime::now());
            async move { Ok::<_, Infallible>(reply) }
        });
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(TokioIo::new(io), service)
            .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "metadata connection ended");
        }
    }

    /// Bodies are never read: no request here has a meaningful one.
    fn answer<B>(&self, vm: &VmIdentity, req: &Request<B>, now: SystemTime) -> Reply {
        let path = req.uri().path();
        if path == TOKEN_PATH {
            return match *req.method() {
                Method::PUT => self.token(vm, req, now),
                _ => status(StatusCode::METHOD_NOT_ALLOWED),
            };
        }
        if *req.method() != Method::GET && *req.method() != Method::HEAD {
            return status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let token = req.headers().get(TOKEN_HEADER).map(HeaderValue::as_bytes);
        if !token.is_some_and(|t| self.verify(&vm.vm_id, t, now)) {
            return status(StatusCode::UNAUTHORIZED);
        }
        match path {
            "/latest/meta-data" | "/latest/meta-data/" => {
                text("iam/\ninstance-id\nplacement/".into())
            }
            "/latest/meta-data/instance-id" => text(vm.vm_id.clone()),
            "/latest/meta-data/iam" | "/latest/meta-data/iam/" => {
                text("security-credentials/".into())
            }
            "/latest/meta-data/placement" | "/latest/meta-data/placement/" => text("region".into()),
            "/latest/meta-data/placement/region" => text(self.region.clone()),
            "/latest/dynamic/instance-identity/document" => self.identity_document(vm),
            "/latest/meta-data/iam/security-credentials" | CREDENTIALS_PATH => {
                // Only a role with keys is listed: SDKs take the first name.
                match self.keys_for(vm) {
                    Some(_) => text(ROLE_NAME.into()),
                    None => text(String::new()),
                }
            }
            p if p.strip_prefix(CREDENTIALS_PATH) == Some(ROLE_NAME) => match self.keys_for(vm) {
                Some((keys, written)) => credentials(&keys, written, now),
                None => status(StatusCode::NOT_FOUND),
            },
            _ => status(StatusCode::NOT_FOUND),
        }
    }

    fn token<B>(&self, vm: &VmIdentity, req: &Request<B>, now: SystemTime) -> Reply {
        // As the real IMDS: a forwarded request is some proxy relaying for
        // another host, which must not get this VM's credentials.
        if req.headers().contains_key("x-forwarded-for") {
            return status(StatusCode::FORBIDDEN);
        }
        let ttl = req
            .headers()
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|t| (1..=MAX_TTL_SECONDS).contains(t));
        let Some(ttl) = ttl else {
            return status(StatusCode::BAD_REQUEST);
        };
        let expires = unix_secs(now).saturating_add(ttl);
        let mut reply = text(self.mint(&vm.vm_id, expires));
        reply
            .headers_mut()
            .insert(TTL_HEADER, HeaderValue::from(ttl));
        reply
    }

    fn mac(&self, vm_id: &str, expires: u64) -> Hmac<Sha256> {
        // A key of any length is accepted by HMAC; this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"ember-imds-token\0");
        mac.update(vm_id.as_bytes());
        mac.update(b"\0");
        mac.update(&expires.to_be_bytes());
        mac
    }

    fn mint(&self, vm_id: &str, expires: u64) -> String {
        let mut raw = expires.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.mac(vm_id, expires).finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn verify(&self, vm_id: &str, token: &[u8], now: SystemTime) -> bool {
        // A token is 54 characters; anything much longer is not one.
        if token.len() > 128 {
            return false;
        }
        let Ok(raw) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        if raw.len() != 8 + MAC_LEN {
            return false;
        }
        let (expiry, tag) = raw.split_at(8);
        let mut expiry_bytes = [0u8; 8];
        expiry_bytes.copy_from_slice(expiry);
        let expires = u64::from_be_bytes(expiry_bytes);
        expires > unix_secs(now) && self.mac(vm_id, expires).verify_slice(tag).is_ok()
    }

    fn keys_for(&self, vm: &VmIdentity) -> Option<(RoleKeys, SystemTime)> {
        let arn = vm.role_arn.as_deref()?;
        let snapshot = self.roles.as_ref()?.current();
        let keys = snapshot.roles.get(arn)?.clone();
        Some((keys, snapshot.written))
    }

    fn identity_document(&self, vm: &VmIdentity) -> Reply {
        let doc = serde_json::json!({
            "accountId": self.account,
            "architecture": "x86_64",
            "availabilityZone": format!("{}a", self.region),
            "instanceId": vm.vm_id,
            "region": self.region,
            "version": "2017-09-30",
        });
        json(&doc)
    }
}

fn credentials(keys: &RoleKeys, written: SystemTime, now: SystemTime) -> Reply {
    let expiration = keys
        .expiration
        .clone()
        .unwrap_or_else(|| rfc3339(now + ROLLING_EXPIRATION));
    json(&serde_json::json!({
        "Code": "Success",
        "LastUpdated": rfc3339(written),
        "Type": "AWS-HMAC",
        "AccessKeyId": keys.access_key_id,
        "SecretAccessKey": keys.secret_access_key,
        // SDKs require the field; an empty one means "no session token".
        "Token": keys.session_token.clone().unwrap_or_default(),
        "Expiration": expiration,
    }))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn status(code: StatusCode) -> Reply {
    let mut reply = text(code.canonical_reason().unwrap_or_default().to_string());
    *reply.status_mut() = code;
    reply
}

fn text(body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    reply
}

fn json(value: &serde_json::Value) -> Reply {
    let mut reply = text(value.to_string());
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

#[cfg(test)]
#[path = "imds_tests.rs"]
mod tests;
