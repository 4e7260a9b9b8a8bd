//! `GET /ember/v1/microvms/{id}/log`: the app's stdout/stderr of one
//! microVM as plain text; with `?follow=true` the response stays open and
//! streams new output until the VM is terminated.
//!
//! Not part of the AWS model (the managed service sends app logs to
//! CloudWatch); signed with SigV4 like the API.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use ember_api::{ApiError, ErrorKind};

use crate::build_logs::{read_range, LogQuery};
use crate::microvms::Microvms;
use crate::service::Daemon;

pub const ROUTE: &str = "/ember/v1/microvms/{id}/log";
/// How often a followed log asks the guest for new output.
const POLL: Duration = Duration::from_secs(1);

pub async fn get_microvm_log(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    if daemon.store().microvm(&id).await.is_err() {
        return ApiError::new(ErrorKind::ResourceNotFound, format!("no microVM {id}"))
            .into_response();
    }
    let microvms = Arc::clone(daemon.microvms());
    microvms.refresh_logs(&id).await;
    let path = microvms.log_path(&id);
    let body = if q.follows() {
        Body::from_stream(follow(microvms, id, path))
    } else {
        match tokio::fs::read(&path).await {
            Ok(bytes) => Body::from(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Body::empty(),
            Err(e) => return ApiError::internal(format!("reading the log: {e}")).into_response(),
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The log so far, then what the app writes, until the VM is terminated.
fn follow(
    microvms: Arc<Microvms>,
    id: String,
    path: std::path::PathBuf,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    futures_util::stream::unfold((0u64, false), move |(sent, ended)| {
        let (microvms, id, path) = (Arc::clone(&microvms), id.clone(), path.clone());
        async move {
            if ended {
                return None;
            }
            loop {
                let len = tokio::fs::metadata(&path)
                    .await
                    .map(|m| m.len())
                    .unwrap_or(0);
                if len > sent {
                    return match read_range(&path, sent, len).await {
                        Ok(bytes) => {
                            let next = sent + bytes.len() as u64;
                            Some((Ok(bytes), (next, false)))
                        }
                        Err(e) => Some((Err(e), (sent, true))),
                    };
                }
                // The VM is gone and everything it wrote was sent.
                microvms.instance(&id)?;
                tokio::time::sleep(POLL).await;
                microvms.refresh_logs(&id).await;
            }
        }
    })
}
