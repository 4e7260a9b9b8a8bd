//! `GET /ember/v1/nodes`: every node sharing this emberd's store, with
//! its state, epoch, lease and live microVMs; `POST
//! /ember/v1/nodes/{id}/drain` and `.../undrain`: stop or resume placing
//! new microVMs on a node (those it runs go on). Any node answers for
//! any other; a drained node learns it at its next lease renewal.
//!
//! Not part of the AWS model; signed with SigV4 like the API.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use ember_api::ApiError;
use ember_store::{NodeRecord, StoreError};

use crate::service::Daemon;

pub const LIST_ROUTE: &str = "/ember/v1/nodes";
pub const DRAIN_ROUTE: &str = "/ember/v1/nodes/{id}/drain";
pub const UNDRAIN_ROUTE: &str = "/ember/v1/nodes/{id}/undrain";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    node_id: String,
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_reason: Option<String>,
    epoch: u64,
    /// Seconds until the lease expires, in the store's clock; negative
    /// once it has.
    lease_seconds_left: f64,
    registered_at: f64,
    live_microvms: u64,
    /// Where other nodes reach its internal listener (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    internal_address: Option<String>,
    /// Memory it can still give to new microVMs, as placement counts it:
    /// its last report less what was placed on it since.
    #[serde(skip_serializing_if = "Option::is_none")]
    free_memory_mib: Option<u64>,
    /// Which snapshots it restores (QEMU version, accelerator, CPU):
    /// runs are placed only where the class is the image's.
    #[serde(skip_serializing_if = "Option::is_none")]
    compatibility_class: Option<String>,
    /// Whether this is the node that answered.
    this_node: bool,
}

#[derive(Serialize)]
struct Nodes {
    nodes: Vec<Node>,
}

pub async fn list_nodes(State(daemon): State<Arc<Daemon>>) -> Response {
    match daemon.store().nodes().await {
        Ok(nodes) => {
            let me = daemon.node_id();
            let nodes = nodes.into_iter().map(|n| node(n, me)).collect();
            Json(Nodes { nodes }).into_response()
        }
        Err(e) => crate::service::internal(e).into_response(),
    }
}

pub async fn drain_node(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    set_state(&daemon, &id, "DRAINING").await
}

pub async fn undrain_node(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    set_state(&daemon, &id, "READY").await
}

async fn set_state(daemon: &Daemon, id: &str, state: &str) -> Response {
    let reason = (state == "DRAINING").then_some("drained by ember node drain");
    let result = daemon.store().set_node_state(id, state, reason).await;
    if let Err(e) = result {
        return match e {
            StoreError::NotFound(_) => ApiError::not_found("Node", id).into_response(),
            StoreError::Conflict(m) => ApiError::conflict("Node", id, m).into_response(),
            other => crate::service::internal(other).into_response(),
        };
    }
    // This node acts at once; the others at their next renewal.
    if id == daemon.node_id() {
        daemon.microvms().set_draining(state == "DRAINING");
    }
    match daemon.store().nodes().await {
        Ok(nodes) => match nodes.into_iter().find(|n| n.id == id) {
            Some(n) => Json(node(n, daemon.node_id())).into_response(),
            None => ApiError::not_found("Node", id).into_response(),
        },
        Err(e) => crate::service::internal(e).into_response(),
    }
}

fn node(n: NodeRecord, me: &str) -> Node {
    Node {
        this_node: n.id == me,
        node_id: n.id,
        state: n.state,
        state_reason: n.state_reason,
        epoch: n.epoch,
        lease_seconds_left: n.lease_left_seconds,
        registered_at: n.registered_at,
        live_microvms: n.live_microvms,
        internal_address: n.address,
        free_memory_mib: n.free_mib,
        compatibility_class: n.compat_class,
    }
}
