//! `POST /ember/v1/microvms/{id}/fork` with `{"count": N}` (default 1):
//! N new microVMs that start from the running microVM's current memory
//! and disk. Answers `{"microvms": [...]}`, each in `RunMicrovm`'s shape
//! and PENDING until its restore is done.
//!
//! Not part of the AWS model; signed with SigV4 like the API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use ember_api::ApiError;

use crate::service::Daemon;

pub const ROUTE: &str = "/ember/v1/microvms/{id}/fork";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForkRequest {
    count: Option<u32>,
}

pub async fn fork_microvm(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let count = if body.is_empty() {
        1
    } else {
        match serde_json::from_slice::<ForkRequest>(&body) {
            Ok(r) => r.count.unwrap_or(1),
            Err(e) => {
                return ApiError::validation(format!("the fork request is not valid: {e}"))
                    .into_response()
            }
        }
    };
    match daemon.fork_microvm(&id, count).await {
        Ok(forks) => Json(forks).into_response(),
        Err(e) => e.into_response(),
    }
}
