//! The metrics listener: `GET /metrics`, nothing else. Over TLS when
//! emberd's API is (same certificate), bounded like the API's listener,
//! and with `--metrics-token-file` only for callers that send
//! `Authorization: Bearer <token>` (Prometheus' `authorization:
//! credentials_file`).

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};

use ember_store::StateStore;

use super::Metrics;
use crate::api_server::ApiLimits;
use crate::microvms::Microvms;

/// A bearer token shorter than this is refused at start: it could be
/// guessed.
const MIN_TOKEN_LEN: usize = 16;
/// A token file larger than this is not a token.
const MAX_TOKEN_FILE: u64 = 4096;

#[derive(Clone)]
struct Sources {
    metrics: Arc<Metrics>,
    store: Arc<dyn StateStore>,
    microvms: Arc<Microvms>,
}

/// The bearer token scrapes must carry.
#[derive(Clone)]
pub struct ScrapeToken(Arc<[u8]>);

impl ScrapeToken {
    /// Reads the token from `path` (surrounding whitespace trimmed).
    pub fn read(path: &Path) -> Result<Self, String> {
        let what = |e: std::io::Error| format!("--metrics-token-file {}: {e}", path.display());
        let len = std::fs::metadata(path).map_err(what)?.len();
        if len > MAX_TOKEN_FILE {
            return Err(format!(
                "--metrics-token-file {}: {len} bytes is not a token",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(what)?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace()) {
            return Err(format!(
                "--metrics-token-file {}: the token must be at least {MIN_TOKEN_LEN} characters, \
                 without spaces",
                path.display()
            ));
        }
        Ok(Self(token.as_bytes().into()))
    }

    fn admits(&self, request: &Request) -> bool {
        let Some(given) = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        bool::from(given.ct_eq(&self.0))
    }
}

/// Serves `/metrics` on `listener` until the process ends.
pub fn serve<L>(
    listener: L,
    (metrics, store, microvms): (Arc<Metrics>, Arc<dyn StateStore>, Arc<Microvms>),
    token: Option<ScrapeToken>,
    limits: ApiLimits,
) where
    L: axum::serve::Listener,
    L::Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    L::Addr: Debug,
{
    let mut app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Sources {
            metrics,
            store,
            microvms,
        });
    if let Some(token) = token {
        app = app.layer(axum::middleware::from_fn_with_state(token, require_token));
    }
    tokio::spawn(crate::api_server::serve(
        listener,
        app,
        limits,
        std::future::pending(),
    ));
}

async fn require_token(State(token): State<ScrapeToken>, request: Request, next: Next) -> Response {
    if token.admits(&request) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is needed (--metrics-token-file)\n",
    )
        .into_response()
}

async fn scrape(State(sources): State<Sources>) -> Response {
    let scraped = match Metrics::state_counts(&*sources.store).await {
        Ok(states) => {
            tokio::task::spawn_blocking(move || sources.metrics.scrape(states, &sources.microvms))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    match scraped {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!("a metrics scrape failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, e).into_response()
        }
    }
}
