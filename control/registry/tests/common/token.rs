//! A test CA (made with `openssl`) and a token service the registry trusts:
//! it grants `pull` on `public/*` to anyone and everything to the test user,
//! as Docker Hub's and GHCR's token services do for public and own images.

use std::path::{Path, PathBuf};
use std::process::Command;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

pub const SERVICE: &str = "ember-test-registry";
pub const ISSUER: &str = "ember-test-tokens";

pub struct Pki {
    // Holds the files for as long as the registry uses them.
    _dir: tempfile::TempDir,
    pub ca_cert: PathBuf,
    pub leaf_cert: PathBuf,
    pub leaf_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA and a leaf for 127.0.0.1 that serves TLS and signs tokens.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ember test CA",
        ]);
        openssl(dir.path(), &ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(dir.path(), &csr);
        std::fs::write(
            dir.path().join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                "leaf.pem",
            ],
        );
        Self {
            ca_cert: dir.path().join("ca.pem"),
            leaf_cert: dir.path().join("leaf.pem"),
            leaf_key: dir.path().join("leaf.key"),
            _dir: dir,
        }
    }
}

fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
}

impl Signer {
    fn token(&self, subject: &str, access: serde_json::Value) -> String {
        let header =
            json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)]});
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE, "iat": now, "nbf": now - 60,
            "exp": now + 600, "jti": format!("{now}-{subject}"), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

/// Serves `/token` on a free port from its own thread; returns the realm.
pub fn serve_tokens(pki: &Pki) -> String {
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &pem_der(&pki.leaf_key),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let signer = std::sync::Arc::new(Signer {
        key,
        cert_der: pem_der(&pki.leaf_cert),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = Router::new().route("/token", get(issue)).with_state(signer);
            axum::serve(listener, app).await.unwrap();
        });
    });
    realm
}

async fn issue(
    State(signer): State<std::sync::Arc<Signer>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v).ok());
    let user = match basic {
        None => None,
        Some(pair) if pair == format!("{}:{}", super::USER, super::PASSWORD).as_bytes() => {
            Some(super::USER)
        }
        Some(_) => return Err(StatusCode::UNAUTHORIZED),
    };
    let mut access = vec![];
    if let Some(scope) = query.get("scope") {
        let mut parts = scope.splitn(3, ':');
        if let (Some("repository"), Some(name), Some(_)) =
            (parts.next(), parts.next(), parts.next())
        {
            let actions = match user {
                Some(_) => json!(["pull", "push"]),
                None if name.starts_with("public/") => json!(["pull"]),
                None => json!([]),
            };
            access.push(json!({"type": "repository", "name": name, "actions": actions}));
        }
    }
    let token = signer.token(user.unwrap_or(""), json!(access));
    Ok(Json(json!({"token": token})))
}
