//! How much of a cluster one sweep may declare dead.

use std::time::Duration;

use super::{new_image, new_version, node, LONG_LEASE_MS};
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

/// A build belongs to the node it runs on: another node's restart does not
/// find it unfinished, and a sweep that declares its node dead fails it,
/// its version and its image, as that node's restart would have.
pub async fn a_dead_nodes_builds_fail_and_nobody_elses(db: Db) {
    let n1 = db.open().await;
    n1.register_node("n1", 300).await.unwrap();
    if !db.serves_many_nodes() {
        n1.create_image(&new_image("img1")).await.unwrap();
        let unfinished = n1.unfinished_builds().await.unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].node.as_deref(), Some("n1"));
        return;
    }
    let n2 = db.open().await;
    n2.register_node("n2", LONG_LEASE_MS).await.unwrap();
    n2.create_image(&new_image("img2")).await.unwrap();
    n2.update_build_state("b-img2", "SUCCEEDED", None, 2.0)
        .await
        .unwrap();
    n2.set_image_state("img2", "CREATED", 2.0).await.unwrap();
    n1.renew_node_lease(300).await.unwrap();
    n1.create_image(&new_image("img1")).await.unwrap();
    n1.add_version("img2", "UPDATING", &new_version("b-img2-2", 3.0))
        .await
        .unwrap();
    let own = |builds: Vec<ember_store::BuildRecord>| -> Vec<String> {
        builds.into_iter().map(|b| b.id).collect()
    };
    assert_eq!(
        own(n1.unfinished_builds().await.unwrap()),
        ["b-img1", "b-img2-2"]
    );
    assert!(
        n2.unfinished_builds().await.unwrap().is_empty(),
        "n1's run on"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dead = n2.sweep_expired_nodes().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].failed_builds, ["b-img1", "b-img2-2"]);
    for (build, image, version, image_state) in [
        ("b-img1", "img1", 1, "CREATE_FAILED"),
        ("b-img2-2", "img2", 2, "UPDATE_FAILED"),
    ] {
        let b = n2.build(build).await.unwrap();
        assert_eq!(b.state, "FAILED");
        let why = b.state_reason.unwrap_or_default();
        assert!(why.starts_with("node n1, which ran this build"), "{why}");
        assert_eq!(n2.version(image, version).await.unwrap().state, "FAILED");
        assert_eq!(n2.image(image).await.unwrap().state, image_state);
    }
    assert_eq!(n2.build("b-img2").await.unwrap().state, "SUCCEEDED");
    assert_eq!(n2.version("img2", 1).await.unwrap().state, "PENDING");
}
