//! Placement: which node a microVM run through any node is given to.

use std::time::Duration;

use ember_store::StoreError;

use super::{microvm, names, node, LONG_LEASE_MS};
use crate::Db;

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn capacity_refusal<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
    match r {
        Err(StoreError::Capacity(why)) => why,
        other => panic!("expected Capacity, got {other:?}"),
    }
}

/// Runs go to the candidate with the most memory free, each placement
/// lowering it, until none has room; a DRAINING node gets none; the
/// owner finds the row among its pending ones (and is woken, on Postgres).
pub async fn placement_picks_the_roomiest_ready_candidate(db: Db) {
    let n1 = db.open().await;
    n1.register_node("n1", LONG_LEASE_MS).await.unwrap();
    n1.report_node_free(Some(1000), 0).await.unwrap();
    if !db.serves_many_nodes() {
        let owner = n1
            .place_microvm(&microvm("a", "img", 1), 600, &ids(&["n1"]))
            .await;
        assert_eq!(owner.unwrap(), "n1");
        assert_eq!(node(&n1, "n1").await.free_mib, Some(400));
        let why = capacity_refusal(
            n1.place_microvm(&microvm("b", "img", 1), 600, &ids(&["n1", "other"]))
                .await,
        );
        assert!(why.contains("node n1 has 400 MiB free"), "{why}");
        assert!(why.contains("node other is not registered"), "{why}");
        assert_eq!(
            names(&n1.pending_microvms().await.unwrap(), |v| &v.id),
            ["a"]
        );
        return;
    }
    let n2 = db.open().await;
    n2.register_node("n2", LONG_LEASE_MS).await.unwrap();
    n2.report_node_free(Some(1500), 0).await.unwrap();
    let woken = n2.placements().expect("Postgres announces placements");
    let both = ids(&["n1", "n2"]);
    // n2 has more room: the first run goes there, placed through n1.
    assert_eq!(
        n1.place_microvm(&microvm("a", "img", 1), 600, &both)
            .await
            .unwrap(),
        "n2"
    );
    tokio::time::timeout(Duration::from_secs(5), woken.notified())
        .await
        .expect("n2 was told of the placement");
    let a = n1.microvm("a").await.unwrap();
    assert_eq!(
        (a.owner_node.as_deref(), a.state.as_str()),
        (Some("n2"), "PENDING")
    );
    assert_eq!(node(&n1, "n2").await.free_mib, Some(900));
    // Now n1 has more.
    assert_eq!(
        n2.place_microvm(&microvm("b", "img", 1), 600, &both)
            .await
            .unwrap(),
        "n1"
    );
    assert_eq!(
        names(&n2.pending_microvms().await.unwrap(), |v| &v.id),
        ["a"]
    );
    assert_eq!(
        names(&n1.pending_microvms().await.unwrap(), |v| &v.id),
        ["b"]
    );
    // 400 left on n1, 900 on n2; a DRAINING n2 takes nothing.
    n1.set_node_state("n2", "DRAINING", Some("maintenance"))
        .await
        .unwrap();
    let why = capacity_refusal(n1.place_microvm(&microvm("c", "img", 1), 600, &both).await);
    assert!(why.contains("node n1 has 400 MiB free"), "{why}");
    assert!(why.contains("node n2 is DRAINING"), "{why}");
    assert!(
        n1.microvm("c").await.is_err(),
        "a refused run leaves no row"
    );
    // A fresh report replaces what placements took.
    n1.report_node_free(Some(2000), 0).await.unwrap();
    assert_eq!(
        n2.place_microvm(&microvm("c", "img", 1), 600, &both)
            .await
            .unwrap(),
        "n1"
    );
    assert!(matches!(
        n2.place_microvm(&microvm("c", "img", 1), 600, &both).await,
        Err(StoreError::Conflict(_))
    ));
}

/// A version's snapshot is the node's that wrote it, so runs of it can
/// be placed where it is.
pub async fn a_versions_snapshot_names_the_node_that_wrote_it(db: Db) {
    let n1 = db.open().await;
    n1.register_node("n1", LONG_LEASE_MS).await.unwrap();
    n1.create_image(&super::new_image("img")).await.unwrap();
    assert_eq!(n1.version("img", 1).await.unwrap().snapshot_node, None);
    n1.update_version_state("img", 1, "SUCCESSFUL", None, Some("/data/snap"), 2.0)
        .await
        .unwrap();
    // A later state change without a snapshot keeps both.
    n1.update_version_state("img", 1, "SUCCESSFUL", Some("again"), None, 3.0)
        .await
        .unwrap();
    let v = n1.version("img", 1).await.unwrap();
    assert_eq!(v.snapshot_dir.as_deref(), Some("/data/snap"));
    assert_eq!(v.snapshot_node.as_deref(), Some("n1"));
}

/// The object-store copy of a snapshot is recorded on its own: a state
/// change keeps it, and a version that does not exist is an error.
pub async fn a_versions_object_store_copy_is_recorded(db: Db) {
    let s = db.open().await;
    s.create_image(&super::new_image("img")).await.unwrap();
    assert_eq!(s.version("img", 1).await.unwrap().snapshot_blob, None);
    assert_eq!(s.version("img", 1).await.unwrap().snapshot_class, None);
    s.set_version_blob("img", 1, "ab12", "qemu 7.2 tcg", 2.0)
        .await
        .unwrap();
    s.update_version_state("img", 1, "SUCCESSFUL", None, Some("/data/snap"), 3.0)
        .await
        .unwrap();
    let v = s.version("img", 1).await.unwrap();
    assert_eq!(v.snapshot_blob.as_deref(), Some("ab12"));
    assert_eq!(v.snapshot_class.as_deref(), Some("qemu 7.2 tcg"));
    assert_eq!(v.snapshot_dir.as_deref(), Some("/data/snap"));
    assert!(matches!(
        s.set_version_blob("img", 9, "ab12", "qemu 7.2 tcg", 4.0)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

fn quota_refusal<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
    match r {
        Err(StoreError::Quota(why)) => why,
        other => panic!("expected Quota, got {other:?}"),
    }
}

/// `--cluster-max-microvms`: inserts and placements through any node
/// count every node's microVMs that are not TERMINATED; ending one makes
/// room; without a limit nothing is counted.
pub async fn the_cluster_quota_counts_every_nodes_live_microvms(db: Db) {
    let n1 = db.open().await;
    n1.register_node("n1", LONG_LEASE_MS).await.unwrap();
    n1.report_node_free(Some(10_000), 0).await.unwrap();
    n1.limit_live_microvms(Some(2));
    n1.insert_microvm(&microvm("a", "img", 1)).await.unwrap();
    // Through the other node when there is one, else the same.
    let other = if db.serves_many_nodes() {
        let n2 = db.open().await;
        n2.register_node("n2", LONG_LEASE_MS).await.unwrap();
        n2.limit_live_microvms(Some(2));
        n2
    } else {
        n1.clone()
    };
    other.insert_microvm(&microvm("b", "img", 1)).await.unwrap();
    let why = quota_refusal(other.insert_microvm(&microvm("c", "img", 1)).await);
    assert!(
        why.contains("at most 2 microVMs") && why.contains("has 2"),
        "{why}"
    );
    quota_refusal(
        n1.place_microvm(&microvm("c", "img", 1), 100, &ids(&["n1"]))
            .await,
    );
    assert!(matches!(
        n1.microvm("c").await,
        Err(StoreError::NotFound(_))
    ));
    let ended = ember_store::MicrovmUpdate {
        state: "TERMINATED",
        state_reason: Some(Some("ended")),
        suspended_at: None,
        terminated_at: Some(5.0),
        now: 5.0,
    };
    n1.update_microvm("a", &ended).await.unwrap();
    assert_eq!(
        n1.place_microvm(&microvm("c", "img", 1), 100, &ids(&["n1"]))
            .await
            .unwrap(),
        "n1"
    );
    n1.limit_live_microvms(None);
    n1.insert_microvm(&microvm("d", "img", 1)).await.unwrap();
}
