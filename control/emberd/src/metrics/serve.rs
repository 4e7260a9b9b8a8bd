//! The metrics listener: `GET /metrics`, nothing else, no authentication
//! (bind it to loopback or a private network).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use ember_store::Store;

use super::Metrics;
use crate::microvms::Microvms;

#[derive(Clone)]
struct Sources {
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    microvms: Arc<Microvms>,
}

/// Serves `/metrics` on `listener` until the process ends.
pub fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    microvms: Arc<Microvms>,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Sources {
            metrics,
            store,
            microvms,
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics listener stopped: {e}");
        }
    });
}

async fn scrape(State(sources): State<Sources>) -> Response {
    let scraped = tokio::task::spawn_blocking(move || {
        sources.metrics.scrape(&sources.store, &sources.microvms)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
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
