//! How much of a cluster one sweep may declare dead.

use std::time::Duration;

use super::{node, LONG_LEASE_MS};
use crate::Db;

/// Three of four nodes expired: a sweep declares at most half of the four
/// dead, those expired longest first; the next pass, with two nodes left,
/// takes the third.
pub async fn one_sweep_declares_at_most_half_the_nodes_dead(db: Db) {
    let me = db.open().await;
    me.register_node("me", LONG_LEASE_MS).await.unwrap();
    if !db.serves_many_nodes() {
        assert!(me.sweep_expired_nodes().await.unwrap().is_empty());
        return;
    }
    let mut others = Vec::new();
    for id in ["a", "b", "c"] {
        let store = db.open().await;
        store.register_node(id, 200).await.unwrap();
        others.push(store);
        // a expires first, then b, then c.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let first = me.sweep_expired_nodes().await.unwrap();
    let ids: Vec<&str> = first.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"], "half of four, the oldest expired");
    assert_eq!(node(&me, "c").await.state, "READY");
    // Two left (me and c): one may go.
    let second = me.sweep_expired_nodes().await.unwrap();
    let ids: Vec<&str> = second.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["c"]);
    assert!(me.sweep_expired_nodes().await.unwrap().is_empty());
    drop(others);
}
