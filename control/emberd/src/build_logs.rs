//! `GET /ember/v1/microvm-images/{image}/versions/{version}/builds/{buildId}/log`:
//! a build's log as plain text; with `?follow=true` the response stays
//! open and streams new lines until the build ends.
//!
//! Not part of the AWS model (the managed service sends build logs to
//! CloudWatch); signed with SigV4 like the API.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use ember_api::{ApiError, ErrorKind};
use ember_builder::LogProgress;

use crate::service::Daemon;

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    follow: Option<String>,
}

impl LogQuery {
    pub fn follows(&self) -> bool {
        matches!(self.follow.as_deref(), Some("true" | "1" | "yes"))
    }
}

pub const ROUTE: &str = "/ember/v1/microvm-images/{image}/versions/{version}/builds/{build}/log";

pub async fn get_build_log(
    State(daemon): State<Arc<Daemon>>,
    Path((image, version, build)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let image = daemon.image_name(&image);
    let record = match daemon.store().build(&build).await {
        Ok(b) if b.image == image && b.version.to_string() == version => b,
        _ => {
            return not_found(format!(
                "no build {build} of version {version} of microVM image {image}"
            ))
        }
    };
    let follow = q.follows();
    let path = daemon.layout().resolve(&record.log_path);
    let live = if follow {
        daemon.builds().live_log(&build).map(|l| l.subscribe())
    } else {
        None
    };
    let body = match live {
        Some(progress) => Body::from_stream(follow_stream(path, progress)),
        None => match tokio::fs::read(&path).await {
            Ok(bytes) => Body::from(bytes),
            Err(e) => return not_found(format!("the log of build {build} is gone: {e}")),
        },
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Chunks of the log file as they are written, ending once the build
/// has ended and everything it wrote was sent.
fn follow_stream(
    path: PathBuf,
    progress: tokio::sync::watch::Receiver<LogProgress>,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    futures_util::stream::unfold(
        (path, progress, 0u64, false),
        |(path, mut progress, sent, finished)| async move {
            if finished {
                return None;
            }
            loop {
                let now = *progress.borrow_and_update();
                if now.len > sent {
                    let chunk = read_range(&path, sent, now.len).await;
                    return match chunk {
                        Ok(bytes) => {
                            let next = sent + bytes.len() as u64;
                            Some((Ok(bytes), (path, progress, next, false)))
                        }
                        Err(e) => Some((Err(e), (path, progress, sent, true))),
                    };
                }
                if now.done || progress.changed().await.is_err() {
                    return None;
                }
            }
        },
    )
}

pub async fn read_range(path: &std::path::Path, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(SeekFrom::Start(from)).await?;
    let mut buf = Vec::new();
    // One chunk at most 1 MiB; the rest follows on the next poll.
    f.take((to - from).min(1 << 20))
        .read_to_end(&mut buf)
        .await?;
    Ok(buf)
}

/// The API's own error shape (`X-Amzn-ErrorType`, JSON body).
fn not_found(message: String) -> Response {
    ApiError::new(ErrorKind::ResourceNotFound, message).into_response()
}
