//! The cases: what emberd relies on from its store, whichever backend.

use std::sync::Arc;

use ember_store::{
    Claim, Counted, MicrovmRecord, MicrovmUpdate, NewImage, NewVersion, StateStore, StoreError,
    IDEMPOTENCY_MAX_RECORDS, IDEMPOTENCY_WINDOW_SECS,
};

use crate::Db;

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
