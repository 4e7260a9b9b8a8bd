//! The cases: what emberd relies on from its store, whichever backend.

use std::sync::Arc;

use ember_store::{
    Claim, Counted, DeadNode, LeaseRenewal, MicrovmRecord, MicrovmUpdate, NewImage, NewVersion,
    NodeRecord, StateStore, StoreError, IDEMPOTENCY_MAX_RECORDS, IDEMPOTENCY_WINDOW_SECS,
};

use crate::Db;

mod placement;
pub use placement::*;
mod sweep;
pub use sweep::*;

fn new_version(build_id: &str, now: f64) -> NewVersion {
    NewVersion {
        spec: "{}".into(),
        state: "PENDING".into(),
        status: "ACTIVE".into(),
        build_id: build_id.into(),
        build_state: "PENDING".into(),
        log_path: format!("/logs/{build_id}"),
        now,
    }
}

fn new_image(name: &str) -> NewImage {
    NewImage {
        name: name.into(),
        arn: format!("arn:aws:lambda:us-east-1:123456789012:microvm-image:{name}"),
        state: "CREATING".into(),
        tags: vec![("team".into(), "a".into())],
        version: new_version(&format!("b-{name}"), 1.0),
    }
}

fn microvm(id: &str, image: &str, version: u32) -> MicrovmRecord {
    MicrovmRecord {
        id: id.into(),
        image: image.into(),
        version,
        image_arn: format!("arn:aws:lambda:us-east-1:123456789012:microvm-image:{image}"),
        spec: "{}".into(),
        state: "PENDING".into(),
        state_reason: None,
        endpoint: "http://127.0.0.1:1".into(),
        proxy_addr: None,
        started_at: 1.0,
        terminated_at: None,
        last_active_at: 1.0,
        suspended_at: None,
        updated_at: 1.0,
        owner_node: None,
    }
}

fn names<T>(rows: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    rows.iter().map(|r| name(r).to_string()).collect()
}

pub async fn state_survives_reopening(db: Db) {
    {
        let store = db.open().await;
        store.create_image(&new_image("app")).await.unwrap();
        let v = store
            .add_version("app", "UPDATING", &new_version("b2", 2.0))
            .await
            .unwrap();
        assert_eq!(v, 2);
        store
            .update_build_state("b2", "IN_PROGRESS", None, 3.0)
            .await
            .unwrap();
        store.insert_microvm(&microvm("m", "app", 1)).await.unwrap();
    }
    let store = db.open().await;
    assert_eq!(store.image("app").await.unwrap().state, "UPDATING");
    let (versions, next) = store.list_versions("app", 0, 10).await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(next, None);
    let unfinished = store.unfinished_builds().await.unwrap();
    assert_eq!(names(&unfinished, |b| &b.id), ["b-app", "b2"]);
    assert_eq!(
        store.tags("app").await.unwrap(),
        [("team".into(), "a".into())]
    );
    assert_eq!(store.microvm("m").await.unwrap(), microvm("m", "app", 1));
    assert_eq!(store.live_microvms().await.unwrap().len(), 1);
}

pub async fn duplicate_names_conflict_and_keep_the_first(db: Db) {
    let store = db.open().await;
    store.create_image(&new_image("app")).await.unwrap();
    let mut again = new_image("app");
    again.version.build_id = "other".into();
    assert!(matches!(
        store.create_image(&again).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.build("other").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_images(None, None, 10).await.unwrap().0.len(), 1);
    assert!(matches!(
        store.image("nope").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .add_version("nope", "UPDATING", &new_version("b9", 1.0))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn listings_page_in_order_and_filter_by_name(db: Db) {
    let store = db.open().await;
    // Byte order, whatever the database's locale: upper case before lower,
    // '-' before letters.
    for n in ["c", "a", "b-x", "d-x", "e", "B", "a-"] {
        store.create_image(&new_image(n)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, next) = store.list_images(after.as_deref(), None, 2).await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(names(&page, |i| &i.name));
        match next {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    assert_eq!(seen, ["B", "a", "a-", "b-x", "c", "d-x", "e"]);
    let (f, _) = store.list_images(None, Some("-x"), 10).await.unwrap();
    assert_eq!(names(&f, |i| &i.name), ["b-x", "d-x"]);
    let (none, next) = store.list_images(Some("e"), None, 10).await.unwrap();
    assert!(none.is_empty() && next.is_none());
}

pub async fn deleting_an_image_removes_everything_under_it(db: Db) {
    let store = db.open().await;
    store.create_image(&new_image("app")).await.unwrap();
    store
        .add_version("app", "UPDATING", &new_version("b2", 2.0))
        .await
        .unwrap();
    store.delete_image("app").await.unwrap();
    assert!(matches!(
        store.image("app").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.build("b2").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.tags("app").await.unwrap().is_empty());
    assert!(store.all_versions().await.unwrap().is_empty());
    // The name is free again.
    store.create_image(&new_image("app")).await.unwrap();
}

pub async fn tag_limit_is_enforced_atomically(db: Db) {
    let store = db.open().await;
    store.create_image(&new_image("app")).await.unwrap();
    let many: Vec<_> = (0..3).map(|i| (format!("k{i}"), "v".to_string())).collect();
    assert!(matches!(
        store.set_tags("app", &many, 3).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.tags("app").await.unwrap().len(), 1, "nothing applied");
    store.set_tags("app", &many[..2], 3).await.unwrap();
    // Overwriting a key is not a new tag.
    store
        .set_tags("app", &[("k0".into(), "w".into())], 3)
        .await
        .unwrap();
    assert_eq!(
        store.tags("app").await.unwrap()[0],
        ("k0".into(), "w".into())
    );
    store
        .remove_tags("app", &["k0".into(), "team".into(), "absent".into()])
        .await
        .unwrap();
    assert_eq!(
        store.tags("app").await.unwrap(),
        [("k1".into(), "v".into())]
    );
    assert!(store
        .set_tags("nope", &[("k".into(), "v".into())], 3)
        .await
        .is_err());
}

pub async fn versions_update_and_delete(db: Db) {
    let store = db.open().await;
    store.create_image(&new_image("app")).await.unwrap();
    store
        .update_version_state("app", 1, "SUCCESSFUL", None, Some("/snap/1"), 2.0)
        .await
        .unwrap();
    // A later update without a snapshot keeps the folder.
    store
        .update_version_state("app", 1, "FAILED", Some("why"), None, 3.0)
        .await
        .unwrap();
    let v = store.version("app", 1).await.unwrap();
    assert_eq!(
        (v.state.as_str(), v.state_reason.as_deref()),
        ("FAILED", Some("why"))
    );
    assert_eq!(v.snapshot_dir.as_deref(), Some("/snap/1"));
    assert_eq!(v.updated_at, 3.0);
    store
        .set_version_status("app", 1, "INACTIVE", 4.0)
        .await
        .unwrap();
    assert_eq!(store.version("app", 1).await.unwrap().status, "INACTIVE");
    assert!(matches!(
        store.set_version_status("app", 7, "INACTIVE", 4.0).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.version("app", u32::MAX).await,
        Err(StoreError::NotFound(_))
    ));
    for n in 2..=4 {
        store
            .add_version("app", "UPDATING", &new_version(&format!("b{n}"), 5.0))
            .await
            .unwrap();
    }
    let (page, next) = store.list_versions("app", 1, 2).await.unwrap();
    assert_eq!(page.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(next, Some(3));
    store.delete_version("app", 3).await.unwrap();
    assert!(matches!(
        store.build("b3").await,
        Err(StoreError::NotFound(_))
    ));
    let (page, _) = store.list_versions("app", 0, 10).await.unwrap();
    assert_eq!(
        page.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2, 4]
    );
    // Numbers are never reused below the highest.
    let n = store
        .add_version("app", "UPDATING", &new_version("b5", 6.0))
        .await
        .unwrap();
    assert_eq!(n, 5);
    assert_eq!(store.all_versions().await.unwrap().len(), 4);
}

pub async fn build_states_and_sizes(db: Db) {
    let store = db.open().await;
    store.create_image(&new_image("app")).await.unwrap();
    let b = store.build("b-app").await.unwrap();
    assert_eq!((b.image.as_str(), b.version), ("app", 1));
    assert_eq!(b.memory_bytes, None);
    store
        .set_build_sizes("b-app", 1 << 33, 5 << 30, 0)
        .await
        .unwrap();
    store
        .update_build_state("b-app", "SUCCESSFUL", Some("done"), 9.0)
        .await
        .unwrap();
    let b = store.build("b-app").await.unwrap();
    assert_eq!(
        (b.memory_bytes, b.disk_bytes, b.code_bytes),
        (Some(1 << 33), Some(5 << 30), Some(0))
    );
    assert_eq!(
        (b.state.as_str(), b.state_reason.as_deref(), b.updated_at),
        ("SUCCESSFUL", Some("done"), 9.0)
    );
    assert!(store.unfinished_builds().await.unwrap().is_empty());
    let (page, next) = store.list_builds("app", 1, None, 10).await.unwrap();
    assert_eq!(names(&page, |b| &b.id), ["b-app"]);
    assert!(next.is_none());
    let (page, _) = store
        .list_builds("app", 1, Some("b-app"), 10)
        .await
        .unwrap();
    assert!(page.is_empty());
}

/// Hosts (here: tasks) adding versions to one image at once each get a
/// number of their own.
pub async fn concurrent_versions_get_distinct_numbers(db: Db) {
    let store = db.open().await;
    store.create_image(&new_image("app")).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .add_version("app", "UPDATING", &new_version(&format!("c{i}"), 2.0))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (2..=9).collect::<Vec<_>>());
}

pub async fn idempotency_records_round_trip(db: Db) {
    let store = db.open().await;
    assert_eq!(store.idempotent_reply("Create", "t").await.unwrap(), None);
    store
        .record_idempotent_reply("Create", "t", "h", "{\"a\":1}", 1.0)
        .await
        .unwrap();
    assert_eq!(
        store.idempotent_reply("Create", "t").await.unwrap(),
        Some(("h".into(), "{\"a\":1}".into()))
    );
}

pub async fn one_token_is_claimed_once_and_replayed_after(db: Db) {
    let store = db.open().await;
    assert_eq!(
        store
            .claim_idempotency("Create", "t", "h", 1.0)
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store
            .claim_idempotency("Create", "t", "h", 1.5)
            .await
            .unwrap(),
        Claim::InFlight {
            params_hash: "h".into()
        }
    );
    assert_eq!(store.idempotent_reply("Create", "t").await.unwrap(), None);
    store
        .record_idempotent_reply("Create", "t", "h", "{}", 2.0)
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_idempotency("Create", "t", "other", 3.0)
            .await
            .unwrap(),
        Claim::Answered {
            params_hash: "h".into(),
            reply: "{}".into()
        }
    );
    // Another operation's token is its own.
    assert_eq!(
        store.claim_idempotency("Run", "t", "h", 3.0).await.unwrap(),
        Claim::Claimed
    );
}

/// Sixteen claims at once through separate handles (separate connections
/// on Postgres, as separate hosts would be) have exactly one winner.
pub async fn concurrent_claims_of_one_token_have_one_winner(db: Db) {
    let mut stores: Vec<Arc<dyn StateStore>> = Vec::new();
    for _ in 0..4 {
        stores.push(db.open().await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, barrier) = (stores[i % 4].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .claim_idempotency("Create", "t", "h", 1.0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut claims = Vec::new();
    for t in tasks {
        claims.push(t.await.unwrap());
    }
    assert_eq!(claims.iter().filter(|c| **c == Claim::Claimed).count(), 1);
    assert!(claims.iter().all(|c| *c == Claim::Claimed
        || *c
            == Claim::InFlight {
                params_hash: "h".into()
            }));
}

pub async fn released_claims_are_free_again_and_answers_survive_reopening(db: Db) {
    let store = db.open().await;
    store
        .claim_idempotency("Create", "a", "h", 1.0)
        .await
        .unwrap();
    store.release_idempotency("Create", "a").await.unwrap();
    assert_eq!(
        store
            .claim_idempotency("Create", "a", "h", 1.0)
            .await
            .unwrap(),
        Claim::Claimed
    );
    store
        .claim_idempotency("Create", "b", "h", 1.0)
        .await
        .unwrap();
    store
        .record_idempotent_reply("Create", "b", "h", "{}", 1.0)
        .await
        .unwrap();
    // Releasing an answered record keeps the answer.
    store.release_idempotency("Create", "b").await.unwrap();
    drop(store);
    let store = db.open().await;
    let again = store
        .claim_idempotency("Create", "a", "h", 2.0)
        .await
        .unwrap();
    if db.drops_claims_at_open() {
        assert_eq!(again, Claim::Claimed);
    } else {
        assert_eq!(
            again,
            Claim::InFlight {
                params_hash: "h".into()
            }
        );
    }
    assert!(store
        .idempotent_reply("Create", "b")
        .await
        .unwrap()
        .is_some());
}

pub async fn records_older_than_the_window_or_beyond_the_cap_are_pruned(db: Db) {
    let store = db.open().await;
    store
        .record_idempotent_reply("Create", "old", "h", "{}", 0.0)
        .await
        .unwrap();
    let later = IDEMPOTENCY_WINDOW_SECS + 1.0;
    store
        .claim_idempotency("Create", "new", "h", later)
        .await
        .unwrap();
    assert_eq!(store.idempotent_reply("Create", "old").await.unwrap(), None);
    assert_eq!(
        store
            .claim_idempotency("Create", "old", "h", later)
            .await
            .unwrap(),
        Claim::Claimed
    );
    for i in 0..IDEMPOTENCY_MAX_RECORDS {
        store
            .record_idempotent_reply("Run", &format!("t{i}"), "h", "{}", later + 1.0 + i as f64)
            .await
            .unwrap();
    }
    let last = later + 2.0 + IDEMPOTENCY_MAX_RECORDS as f64;
    store
        .claim_idempotency("Run", "last", "h", last)
        .await
        .unwrap();
    // The cap holds exactly: 10,002 records were there before the claim;
    // the three oldest (the two claims, then t0) went to make room for it.
    assert_eq!(store.idempotent_reply("Run", "t0").await.unwrap(), None);
    assert!(store.idempotent_reply("Run", "t1").await.unwrap().is_some());
    assert_eq!(
        store
            .claim_idempotency("Create", "new", "h", last)
            .await
            .unwrap(),
        Claim::Claimed,
        "the pruned claim is free again"
    );
    let top = format!("t{}", IDEMPOTENCY_MAX_RECORDS - 1);
    assert!(store.idempotent_reply("Run", &top).await.unwrap().is_some());
}

pub async fn counts_group_rows_by_state(db: Db) {
    let store = db.open().await;
    assert!(store
        .count_by_state(Counted::Images)
        .await
        .unwrap()
        .is_empty());
    store.create_image(&new_image("a")).await.unwrap();
    store.create_image(&new_image("b")).await.unwrap();
    store.set_image_state("b", "FAILED", 2.0).await.unwrap();
    assert!(matches!(
        store.set_image_state("c", "FAILED", 2.0).await,
        Err(StoreError::NotFound(_))
    ));
    let mut images = store.count_by_state(Counted::Images).await.unwrap();
    images.sort();
    assert_eq!(
        images,
        vec![("CREATING".to_string(), 1), ("FAILED".to_string(), 1)]
    );
    assert_eq!(
        store.count_by_state(Counted::Builds).await.unwrap(),
        vec![("PENDING".to_string(), 2)]
    );
    store.insert_microvm(&microvm("m", "a", 1)).await.unwrap();
    assert_eq!(
        store.count_by_state(Counted::Microvms).await.unwrap(),
        vec![("PENDING".to_string(), 1)]
    );
    assert_eq!(store.count_live_microvms().await.unwrap(), 1);
}

pub async fn microvms_list_in_run_order_with_filters_and_pages(db: Db) {
    let store = db.open().await;
    for (id, img, v) in [("c", "a", 1), ("a", "b", 1), ("b", "a", 2)] {
        store.insert_microvm(&microvm(id, img, v)).await.unwrap();
    }
    assert!(matches!(
        store.insert_microvm(&microvm("a", "x", 1)).await,
        Err(StoreError::Conflict(_))
    ));
    let (page, next) = store.list_microvms(None, None, None, 2).await.unwrap();
    assert_eq!(names(&page, |v| &v.id), ["c", "a"]);
    let (page, next) = store
        .list_microvms(next.as_deref(), None, None, 2)
        .await
        .unwrap();
    assert_eq!(names(&page, |v| &v.id), ["b"]);
    assert!(next.is_none());
    let (page, _) = store
        .list_microvms(None, Some("a"), Some(2), 10)
        .await
        .unwrap();
    assert_eq!(names(&page, |v| &v.id), ["b"]);
    let (page, _) = store
        .list_microvms(None, Some("a"), None, 10)
        .await
        .unwrap();
    assert_eq!(names(&page, |v| &v.id), ["c", "b"]);
    assert!(matches!(
        store.microvm("zz").await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn state_updates_keep_or_clear_the_reason(db: Db) {
    let store = db.open().await;
    store.insert_microvm(&microvm("m", "a", 1)).await.unwrap();
    let u = MicrovmUpdate {
        state: "SUSPENDED",
        state_reason: Some(Some("idle")),
        suspended_at: Some(Some(5.0)),
        now: 5.0,
        ..Default::default()
    };
    store.update_microvm("m", &u).await.unwrap();
    let m = store.microvm("m").await.unwrap();
    assert_eq!(
        (m.state.as_str(), m.state_reason.as_deref()),
        ("SUSPENDED", Some("idle"))
    );
    assert_eq!(m.suspended_at, Some(5.0));
    let resumed = MicrovmUpdate {
        state: "RUNNING",
        state_reason: Some(None),
        suspended_at: Some(None),
        now: 6.0,
        ..Default::default()
    };
    store.update_microvm("m", &resumed).await.unwrap();
    let m = store.microvm("m").await.unwrap();
    assert_eq!((m.state_reason, m.suspended_at), (None, None));
    store.update_microvm("m", &u).await.unwrap();
    store
        .update_microvm(
            "m",
            &MicrovmUpdate {
                state: "TERMINATED",
                terminated_at: Some(9.0),
                now: 9.0,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let m = store.microvm("m").await.unwrap();
    assert_eq!(m.state_reason.as_deref(), Some("idle"));
    assert_eq!((m.terminated_at, m.updated_at), (Some(9.0), 9.0));
    assert_eq!(store.live_microvms().await.unwrap().len(), 0);
    assert!(matches!(
        store.update_microvm("nope", &u).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn the_first_live_microvm_of_an_image_or_version(db: Db) {
    let store = db.open().await;
    store.insert_microvm(&microvm("old", "a", 1)).await.unwrap();
    store.insert_microvm(&microvm("new", "a", 2)).await.unwrap();
    let done = MicrovmUpdate {
        state: "TERMINATED",
        now: 2.0,
        ..Default::default()
    };
    store.update_microvm("old", &done).await.unwrap();
    assert!(store
        .first_live_microvm("a", Some(1))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store
            .first_live_microvm("a", None)
            .await
            .unwrap()
            .unwrap()
            .id,
        "new"
    );
    assert_eq!(
        store
            .first_live_microvm("a", Some(2))
            .await
            .unwrap()
            .unwrap()
            .id,
        "new"
    );
    assert!(store.first_live_microvm("b", None).await.unwrap().is_none());
}

pub async fn last_active_never_moves_back_and_endpoints_change(db: Db) {
    let store = db.open().await;
    store.insert_microvm(&microvm("m", "a", 1)).await.unwrap();
    store.set_microvm_last_active("m", 7.0).await.unwrap();
    store.set_microvm_last_active("m", 3.0).await.unwrap();
    assert_eq!(store.microvm("m").await.unwrap().last_active_at, 7.0);
    store
        .set_microvm_endpoint("m", "http://127.0.0.1:9", Some("127.0.0.1:9"))
        .await
        .unwrap();
    let m = store.microvm("m").await.unwrap();
    assert_eq!(
        (m.endpoint.as_str(), m.proxy_addr.as_deref()),
        ("http://127.0.0.1:9", Some("127.0.0.1:9"))
    );
}

// Nodes, leases and fencing.

const LONG_LEASE_MS: u64 = 60_000;

fn terminate(now: f64) -> MicrovmUpdate<'static> {
    MicrovmUpdate {
        state: "TERMINATED",
        terminated_at: Some(now),
        now,
        ..Default::default()
    }
}

fn running(now: f64) -> MicrovmUpdate<'static> {
    MicrovmUpdate {
        state: "RUNNING",
        now,
        ..Default::default()
    }
}

async fn node(store: &Arc<dyn StateStore>, id: &str) -> NodeRecord {
    let nodes = store.nodes().await.unwrap();
    match nodes.into_iter().find(|n| n.id == id) {
        Some(n) => n,
        None => panic!("no node {id}"),
    }
}

fn assert_fenced<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(StoreError::Fenced(m)) => assert!(!m.is_empty()),
        other => panic!("{what}: expected Fenced, got {other:?}"),
    }
}

pub async fn nodes_register_with_rising_epochs_and_own_what_they_insert(db: Db) {
    let store = db.open().await;
    assert!(store.nodes().await.unwrap().is_empty());
    assert!(matches!(
        store.renew_node_lease(LONG_LEASE_MS).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.register_node("n1", LONG_LEASE_MS).await.unwrap(), 1);
    assert_eq!(store.register_node("n1", LONG_LEASE_MS).await.unwrap(), 2);
    // The caller's owner is ignored: the row names the registration.
    let mut vm = microvm("m", "a", 1);
    vm.owner_node = Some("someone-else".into());
    store.insert_microvm(&vm).await.unwrap();
    store
        .insert_microvm(&microvm("gone", "a", 1))
        .await
        .unwrap();
    store.update_microvm("gone", &terminate(2.0)).await.unwrap();
    assert_eq!(
        store.microvm("m").await.unwrap().owner_node.as_deref(),
        Some("n1")
    );
    store.update_microvm("m", &running(2.0)).await.unwrap();
    store.set_microvm_last_active("m", 5.0).await.unwrap();
    store.set_microvm_last_active("m", 4.0).await.unwrap();
    store
        .set_microvm_endpoint("m", "http://127.0.0.1:2", None)
        .await
        .unwrap();
    let m = store.microvm("m").await.unwrap();
    assert_eq!((m.state.as_str(), m.last_active_at), ("RUNNING", 5.0));
    assert!(matches!(
        store.insert_microvm(&microvm("m", "a", 1)).await,
        Err(StoreError::Conflict(_))
    ));
    let n = node(&store, "n1").await;
    assert_eq!(
        (n.epoch, n.state.as_str(), n.live_microvms),
        (2, "READY", 1)
    );
    assert_eq!(
        (n.state_reason.as_deref(), n.address.as_deref()),
        (None, None)
    );
    // Where other nodes reach it: set by the node, read by all, kept
    // across a re-registration (which sets it again anyway).
    let unregistered = db.open().await;
    assert!(matches!(
        unregistered.set_node_address(Some("10.0.0.9:1")).await,
        Err(StoreError::Conflict(_))
    ));
    store.set_node_address(Some("10.0.0.1:7001")).await.unwrap();
    assert_eq!(
        node(&unregistered, "n1").await.address.as_deref(),
        Some("10.0.0.1:7001")
    );
    // Which snapshots it restores: likewise the node's own to set.
    assert_eq!(n.compat_class, None);
    assert!(matches!(
        unregistered.set_node_compat_class("qemu 7.2 tcg").await,
        Err(StoreError::Conflict(_))
    ));
    store.set_node_compat_class("qemu 7.2 tcg").await.unwrap();
    assert_eq!(
        node(&unregistered, "n1").await.compat_class.as_deref(),
        Some("qemu 7.2 tcg")
    );
    assert!(
        n.lease_left_seconds > 50.0 && n.lease_left_seconds <= 60.0,
        "{n:?}"
    );
    assert!(
        (n.lease_expires_at - n.registered_at - 60.0).abs() < 1.0,
        "{n:?}"
    );

    assert_eq!(
        store.renew_node_lease(LONG_LEASE_MS).await.unwrap(),
        LeaseRenewal::Renewed {
            state: "READY".into()
        }
    );
    // A drain set through any store reaches the node at its next renewal.
    let other = db.open().await;
    other
        .set_node_state("n1", "DRAINING", Some("maintenance"))
        .await
        .unwrap();
    assert_eq!(
        store.renew_node_lease(LONG_LEASE_MS).await.unwrap(),
        LeaseRenewal::Renewed {
            state: "DRAINING".into()
        }
    );
    // A restart does not undo a drain.
    assert_eq!(store.register_node("n1", LONG_LEASE_MS).await.unwrap(), 3);
    let n = node(&store, "n1").await;
    assert_eq!(
        (n.state.as_str(), n.state_reason.as_deref()),
        ("DRAINING", Some("maintenance"))
    );
    other.set_node_state("n1", "READY", None).await.unwrap();
    assert_eq!(
        store.renew_node_lease(LONG_LEASE_MS).await.unwrap(),
        LeaseRenewal::Renewed {
            state: "READY".into()
        }
    );
    assert!(matches!(
        other.set_node_state("n1", "DEAD", None).await,
        Err(StoreError::Conflict(_))
    ));
    match other.set_node_state("nope", "DRAINING", None).await {
        Err(StoreError::NotFound(m)) => assert_eq!(m, "node nope"),
        r => panic!("expected NotFound, got {r:?}"),
    }
    // The store's writes still carry epoch 3 after the registrations.
    store.update_microvm("m", &running(6.0)).await.unwrap();
}

/// Whoever superseded the registration (a sweep on a shared database,
/// another registration on SQLite's one host), the old one's writes are
/// refused and change nothing, and it learns so at its next renewal.
pub async fn a_superseded_registration_is_fenced(db: Db) {
    let old = db.open().await;
    assert_eq!(old.register_node("n1", 300).await.unwrap(), 1);
    old.insert_microvm(&microvm("m", "a", 1)).await.unwrap();
    old.update_microvm("m", &running(2.0)).await.unwrap();
    let new = db.open().await;
    let expect_lost = if db.serves_many_nodes() {
        new.register_node("n2", LONG_LEASE_MS).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let dead = new.sweep_expired_nodes().await.unwrap();
        assert_eq!(
            dead,
            [DeadNode {
                id: "n1".into(),
                epoch: 2,
                terminated_microvms: vec!["m".into()],
                failed_builds: vec![]
            }]
        );
        LeaseRenewal::Lost {
            state: "DEAD".into(),
            epoch: 2,
        }
    } else {
        assert_eq!(new.register_node("n1", LONG_LEASE_MS).await.unwrap(), 2);
        LeaseRenewal::Lost {
            state: "READY".into(),
            epoch: 2,
        }
    };
    let before = old.microvm("m").await.unwrap();
    assert_fenced(old.update_microvm("m", &terminate(9.0)).await, "update");
    assert_fenced(old.set_microvm_last_active("m", 99.0).await, "last active");
    assert_fenced(
        old.set_microvm_endpoint("m", "http://127.0.0.1:9", None)
            .await,
        "endpoint",
    );
    assert_fenced(old.insert_microvm(&microvm("m2", "a", 1)).await, "insert");
    assert_eq!(old.microvm("m").await.unwrap(), before, "nothing changed");
    assert!(matches!(
        old.microvm("m2").await,
        Err(StoreError::NotFound(_))
    ));
    // The message names both sides.
    match old.update_microvm("m", &running(9.0)).await {
        Err(StoreError::Fenced(m)) => {
            assert!(m.contains("microVM m belongs to node"), "{m}");
            assert!(m.contains("(node n1, epoch 1)"), "{m}");
        }
        r => panic!("expected Fenced, got {r:?}"),
    }
    assert_eq!(old.renew_node_lease(300).await.unwrap(), expect_lost);
    // Still fenced, not let through as an unregistered store's writes.
    assert_fenced(old.insert_microvm(&microvm("m3", "a", 1)).await, "insert");
    assert_fenced(old.update_microvm("m", &running(9.0)).await, "update");
    assert_eq!(old.renew_node_lease(300).await.unwrap(), expect_lost);
    // Registering again makes it a node with a current epoch.
    assert_eq!(old.register_node("n1", LONG_LEASE_MS).await.unwrap(), 3);
    old.insert_microvm(&microvm("m4", "a", 1)).await.unwrap();
    old.update_microvm("m4", &running(10.0)).await.unwrap();
    assert_eq!(
        old.microvm("m4").await.unwrap().owner_node.as_deref(),
        Some("n1")
    );
}

pub async fn an_expired_node_is_declared_dead_with_its_microvms(db: Db) {
    let n1 = db.open().await;
    let n2 = db.open().await;
    n1.register_node("n1", 300).await.unwrap();
    n1.insert_microvm(&microvm("b", "a", 1)).await.unwrap();
    n1.insert_microvm(&microvm("a", "a", 1)).await.unwrap();
    n1.insert_microvm(&microvm("done", "a", 1)).await.unwrap();
    n1.update_microvm("done", &terminate(2.0)).await.unwrap();
    n1.claim_idempotency("RunMicrovm", "t", "h", 1.0)
        .await
        .unwrap();
    if !db.serves_many_nodes() {
        // One node per SQLite file: nobody else to sweep.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(n1.sweep_expired_nodes().await.unwrap().is_empty());
        assert!(n2.sweep_expired_nodes().await.unwrap().is_empty());
        return;
    }
    n2.register_node("n2", 300).await.unwrap();
    n2.insert_microvm(&microvm("theirs", "a", 1)).await.unwrap();
    // A lease renewed in time is not swept (renewed just before, so a
    // slow machine's setup above does not outlast it).
    n1.renew_node_lease(300).await.unwrap();
    assert!(
        n2.sweep_expired_nodes().await.unwrap().is_empty(),
        "in time"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // n2's own lease ran out too, but a node never sweeps itself.
    let dead = n2.sweep_expired_nodes().await.unwrap();
    assert_eq!(
        dead,
        [DeadNode {
            id: "n1".into(),
            epoch: 2,
            terminated_microvms: vec!["a".into(), "b".into()],
            failed_builds: vec![]
        }]
    );
    for id in ["a", "b"] {
        let m = n2.microvm(id).await.unwrap();
        assert_eq!(m.state, "TERMINATED");
        assert!(m.terminated_at.is_some());
        let reason = m.state_reason.unwrap_or_default();
        assert!(
            reason.starts_with("node n1, which ran this microVM, stopped renewing its lease")
                && reason.contains("are lost"),
            "{reason}"
        );
    }
    assert_eq!(n2.microvm("done").await.unwrap().terminated_at, Some(2.0));
    assert_eq!(n2.microvm("theirs").await.unwrap().state, "PENDING");
    let n = node(&n2, "n1").await;
    assert_eq!((n.state.as_str(), n.epoch, n.live_microvms), ("DEAD", 2, 0));
    assert!(n.lease_left_seconds < 0.0, "{n:?}");
    let reason = n.state_reason.unwrap_or_default();
    assert!(
        reason.starts_with("node n1 stopped renewing its lease (it expired ")
            && reason.ends_with("s ago); it was declared dead"),
        "{reason}"
    );
    // The dead node's claim went with it.
    assert_eq!(
        n2.claim_idempotency("RunMicrovm", "t", "h", 2.0)
            .await
            .unwrap(),
        Claim::Claimed
    );
    // Swept once: nothing left to declare dead.
    assert!(n2.sweep_expired_nodes().await.unwrap().is_empty());
    assert!(matches!(
        n2.set_node_state("n1", "READY", None).await,
        Err(StoreError::Conflict(m)) if m == "node n1 is DEAD"
    ));
    assert_eq!(
        n1.renew_node_lease(300).await.unwrap(),
        LeaseRenewal::Lost {
            state: "DEAD".into(),
            epoch: 2
        }
    );
    assert_fenced(n1.update_microvm("a", &running(3.0)).await, "update");
    assert_eq!(n1.register_node("n1", LONG_LEASE_MS).await.unwrap(), 3);
    assert_eq!(node(&n2, "n1").await.state, "READY");
    n1.insert_microvm(&microvm("c", "a", 1)).await.unwrap();
    assert_eq!(names(&n1.live_microvms().await.unwrap(), |v| &v.id), ["c"]);
}

pub async fn two_sweepers_declare_a_dead_node_dead_once(db: Db) {
    let n1 = db.open().await;
    n1.register_node("n1", 300).await.unwrap();
    n1.insert_microvm(&microvm("m", "a", 1)).await.unwrap();
    if !db.serves_many_nodes() {
        assert!(n1.sweep_expired_nodes().await.unwrap().is_empty());
        return;
    }
    let (n2, n3) = (db.open().await, db.open().await);
    n2.register_node("n2", LONG_LEASE_MS).await.unwrap();
    n3.register_node("n3", LONG_LEASE_MS).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (a, b) = tokio::join!(n2.sweep_expired_nodes(), n3.sweep_expired_nodes());
    let mut dead = a.unwrap();
    dead.extend(b.unwrap());
    assert_eq!(
        dead,
        [DeadNode {
            id: "n1".into(),
            epoch: 2,
            terminated_microvms: vec!["m".into()],
            failed_builds: vec![]
        }]
    );
    assert_eq!(node(&n2, "n1").await.epoch, 2, "bumped once");
}

/// A claim belongs to the node that made it: only that node's next
/// registration drops it (nobody will answer it), not another node's.
pub async fn pending_claims_are_dropped_by_their_own_node_only(db: Db) {
    let n1 = db.open().await;
    n1.register_node("n1", LONG_LEASE_MS).await.unwrap();
    n1.claim_idempotency("RunMicrovm", "t", "h", 1.0)
        .await
        .unwrap();
    let in_flight = Claim::InFlight {
        params_hash: "h".into(),
    };
    if db.serves_many_nodes() {
        let n2 = db.open().await;
        n2.register_node("n2", LONG_LEASE_MS).await.unwrap();
        assert_eq!(
            n2.claim_idempotency("RunMicrovm", "t", "h", 2.0)
                .await
                .unwrap(),
            in_flight
        );
    }
    assert_eq!(
        n1.claim_idempotency("RunMicrovm", "t", "h", 2.0)
            .await
            .unwrap(),
        in_flight
    );
    n1.register_node("n1", LONG_LEASE_MS).await.unwrap();
    assert_eq!(
        n1.claim_idempotency("RunMicrovm", "t", "h", 3.0)
            .await
            .unwrap(),
        Claim::Claimed
    );
}

/// `live_microvms` is what a restarted node takes back: its own rows on a
/// shared database; on SQLite's one host, every live row, whichever node
/// name wrote it. Counts and image checks stay cluster-wide.
pub async fn live_microvms_are_the_nodes_own(db: Db) {
    let n1 = db.open().await;
    n1.register_node("n1", LONG_LEASE_MS).await.unwrap();
    n1.insert_microvm(&microvm("a", "img", 1)).await.unwrap();
    let n2 = db.open().await;
    n2.register_node("n2", LONG_LEASE_MS).await.unwrap();
    n2.insert_microvm(&microvm("b", "img", 1)).await.unwrap();
    if db.serves_many_nodes() {
        assert_eq!(names(&n1.live_microvms().await.unwrap(), |v| &v.id), ["a"]);
        assert_eq!(names(&n2.live_microvms().await.unwrap(), |v| &v.id), ["b"]);
        // An unregistered store sees the rows no node owns: none here.
        let unregistered = db.open().await;
        assert!(unregistered.live_microvms().await.unwrap().is_empty());
        assert_eq!(node(&n1, "n1").await.live_microvms, 1);
        assert_eq!(node(&n1, "n2").await.live_microvms, 1);
    } else {
        // n2 took over the host and its VMs; n1 is retired, and its
        // store's writes are fenced.
        assert_eq!(
            names(&n2.live_microvms().await.unwrap(), |v| &v.id),
            ["a", "b"]
        );
        let n = node(&n2, "n1").await;
        assert_eq!(n.state, "DEAD");
        assert_eq!(
            n.state_reason.as_deref(),
            Some("replaced by node n2: a SQLite store serves one node")
        );
        assert_eq!(node(&n2, "n2").await.live_microvms, 2);
        assert_fenced(n1.update_microvm("a", &running(2.0)).await, "update");
        assert_fenced(n1.insert_microvm(&microvm("c", "img", 1)).await, "insert");
    }
    for store in [&n1, &n2] {
        assert_eq!(store.count_live_microvms().await.unwrap(), 2);
        assert_eq!(
            store
                .first_live_microvm("img", None)
                .await
                .unwrap()
                .map(|v| v.id),
            Some("a".to_string())
        );
    }
}

/// A database from before nodes existed opens, and the first node to
/// register takes its live rows.
pub async fn rows_from_before_nodes_are_taken_by_the_first_node_to_register(db: Db) {
    {
        let store = db.open().await;
        store
            .insert_microvm(&microvm("live", "a", 1))
            .await
            .unwrap();
        store
            .insert_microvm(&microvm("gone", "a", 1))
            .await
            .unwrap();
        store.update_microvm("gone", &terminate(2.0)).await.unwrap();
        store
            .claim_idempotency("RunMicrovm", "t", "h", 1.0)
            .await
            .unwrap();
    }
    db.downgrade_to_before_nodes().await;
    let store = db.open().await;
    assert!(store.nodes().await.unwrap().is_empty());
    let live = store.live_microvms().await.unwrap();
    assert_eq!(names(&live, |v| &v.id), ["live"]);
    assert_eq!(live[0].owner_node, None);
    // Unregistered, the store writes ownerless rows as before.
    store.update_microvm("live", &running(3.0)).await.unwrap();
    assert_eq!(store.register_node("n1", LONG_LEASE_MS).await.unwrap(), 1);
    let live = store.live_microvms().await.unwrap();
    assert_eq!(names(&live, |v| &v.id), ["live"]);
    assert_eq!(live[0].owner_node.as_deref(), Some("n1"));
    assert_eq!(store.microvm("gone").await.unwrap().owner_node, None);
    store.update_microvm("live", &running(4.0)).await.unwrap();
    assert_eq!(node(&store, "n1").await.live_microvms, 1);
    // The claim from before nodes had no node: nobody will answer it.
    assert_eq!(
        store
            .claim_idempotency("RunMicrovm", "t", "h", 5.0)
            .await
            .unwrap(),
        Claim::Claimed
    );
}
