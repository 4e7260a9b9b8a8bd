use super::*;

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

#[test]
fn state_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ember.db");
    {
        let store = Store::open(&path).unwrap();
        store.create_image(&new_image("app")).unwrap();
        assert_eq!(
            store
                .add_version("app", "UPDATING", &new_version("b2", 2.0))
                .unwrap(),
            2
        );
        store
            .update_build_state("b2", "IN_PROGRESS", None, 3.0)
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let image = store.image("app").unwrap();
    assert_eq!(image.state, "UPDATING");
    let (versions, next) = store.list_versions("app", 0, 10).unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(next, None);
    let unfinished = store.unfinished_builds().unwrap();
    assert_eq!(
        unfinished.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        ["b-app", "b2"]
    );
    assert_eq!(store.tags("app").unwrap(), [("team".into(), "a".into())]);
}

#[test]
fn duplicate_names_conflict_and_keep_the_first() {
    let store = Store::open_in_memory().unwrap();
    store.create_image(&new_image("app")).unwrap();
    let mut again = new_image("app");
    again.version.build_id = "other".into();
    assert!(matches!(
        store.create_image(&again),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(store.build("other"), Err(StoreError::NotFound(_))));
    assert_eq!(store.list_images(None, None, 10).unwrap().0.len(), 1);
}

#[test]
fn listings_page_in_order_and_filter_by_name() {
    let store = Store::open_in_memory().unwrap();
    for n in ["c", "a", "b-x", "d-x", "e"] {
        store.create_image(&new_image(n)).unwrap();
    }
    let (p1, k1) = store.list_images(None, None, 2).unwrap();
    assert_eq!(
        p1.iter().map(|i| &i.name[..]).collect::<Vec<_>>(),
        ["a", "b-x"]
    );
    let (p2, k2) = store.list_images(k1.as_deref(), None, 2).unwrap();
    assert_eq!(
        p2.iter().map(|i| &i.name[..]).collect::<Vec<_>>(),
        ["c", "d-x"]
    );
    let (p3, k3) = store.list_images(k2.as_deref(), None, 2).unwrap();
    assert_eq!(p3.iter().map(|i| &i.name[..]).collect::<Vec<_>>(), ["e"]);
    assert_eq!(k3, None);
    let (f, _) = store.list_images(None, Some("-x"), 10).unwrap();
    assert_eq!(
        f.iter().map(|i| &i.name[..]).collect::<Vec<_>>(),
        ["b-x", "d-x"]
    );
}

#[test]
fn deleting_an_image_removes_everything_under_it() {
    let store = Store::open_in_memory().unwrap();
    store.create_image(&new_image("app")).unwrap();
    store
        .add_version("app", "UPDATING", &new_version("b2", 2.0))
        .unwrap();
    store.delete_image("app").unwrap();
    assert!(matches!(store.image("app"), Err(StoreError::NotFound(_))));
    assert!(matches!(store.build("b2"), Err(StoreError::NotFound(_))));
    assert!(store.tags("app").unwrap().is_empty());
    // The name is free again.
    store.create_image(&new_image("app")).unwrap();
}

#[test]
fn tag_limit_is_enforced_atomically() {
    let store = Store::open_in_memory().unwrap();
    store.create_image(&new_image("app")).unwrap();
    let many: Vec<_> = (0..3).map(|i| (format!("k{i}"), "v".to_string())).collect();
    assert!(store.set_tags("app", &many, 3).is_err());
    assert_eq!(store.tags("app").unwrap().len(), 1, "nothing applied");
    store.set_tags("app", &many[..2], 3).unwrap();
    store
        .remove_tags("app", &["k0".into(), "team".into()])
        .unwrap();
    assert_eq!(store.tags("app").unwrap(), [("k1".into(), "v".into())]);
}

#[test]
fn idempotency_records_round_trip() {
    let store = Store::open_in_memory().unwrap();
    assert_eq!(store.idempotent_reply("Create", "t").unwrap(), None);
    store
        .record_idempotent_reply("Create", "t", "h", "{\"a\":1}", 1.0)
        .unwrap();
    assert_eq!(
        store.idempotent_reply("Create", "t").unwrap(),
        Some(("h".into(), "{\"a\":1}".into()))
    );
}

#[test]
fn one_token_is_claimed_once_and_replayed_after() {
    let store = Store::open_in_memory().unwrap();
    assert_eq!(
        store.claim_idempotency("Create", "t", "h", 1.0).unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.claim_idempotency("Create", "t", "h", 1.5).unwrap(),
        Claim::InFlight {
            params_hash: "h".into()
        }
    );
    assert_eq!(store.idempotent_reply("Create", "t").unwrap(), None);
    store
        .record_idempotent_reply("Create", "t", "h", "{}", 2.0)
        .unwrap();
    assert_eq!(
        store
            .claim_idempotency("Create", "t", "other", 3.0)
            .unwrap(),
        Claim::Answered {
            params_hash: "h".into(),
            reply: "{}".into()
        }
    );
    // Another operation's token is its own.
    assert_eq!(
        store.claim_idempotency("Run", "t", "h", 3.0).unwrap(),
        Claim::Claimed
    );
}

#[test]
fn concurrent_claims_of_one_token_have_one_winner() {
    let store = std::sync::Arc::new(Store::open_in_memory().unwrap());
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let claims: Vec<_> = (0..8)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store.claim_idempotency("Create", "t", "h", 1.0).unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(claims.iter().filter(|c| **c == Claim::Claimed).count(), 1);
}

#[test]
fn a_released_claim_is_free_again_and_claims_do_not_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ember.db");
    let store = Store::open(&path).unwrap();
    store.claim_idempotency("Create", "a", "h", 1.0).unwrap();
    store.release_idempotency("Create", "a").unwrap();
    assert_eq!(
        store.claim_idempotency("Create", "a", "h", 1.0).unwrap(),
        Claim::Claimed
    );
    store.claim_idempotency("Create", "b", "h", 1.0).unwrap();
    store
        .record_idempotent_reply("Create", "b", "h", "{}", 1.0)
        .unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.claim_idempotency("Create", "a", "h", 2.0).unwrap(),
        Claim::Claimed
    );
    assert!(store.idempotent_reply("Create", "b").unwrap().is_some());
}

#[test]
fn records_older_than_the_window_or_beyond_the_cap_are_pruned() {
    let store = Store::open_in_memory().unwrap();
    store
        .record_idempotent_reply("Create", "old", "h", "{}", 0.0)
        .unwrap();
    let later = IDEMPOTENCY_WINDOW_SECS + 1.0;
    store
        .claim_idempotency("Create", "new", "h", later)
        .unwrap();
    assert_eq!(store.idempotent_reply("Create", "old").unwrap(), None);
    assert_eq!(
        store
            .claim_idempotency("Create", "old", "h", later)
            .unwrap(),
        Claim::Claimed
    );

    for i in 0..IDEMPOTENCY_MAX_RECORDS {
        store
            .record_idempotent_reply("Run", &format!("t{i}"), "h", "{}", later + i as f64)
            .unwrap();
    }
    let last = later + IDEMPOTENCY_MAX_RECORDS as f64;
    store.claim_idempotency("Run", "last", "h", last).unwrap();
    let count: i64 = store
        .conn()
        .query_row("SELECT COUNT(*) FROM idempotency", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, IDEMPOTENCY_MAX_RECORDS);
    assert_eq!(
        store.idempotent_reply("Run", "t0").unwrap(),
        None,
        "the oldest went first"
    );
    assert!(store.idempotent_reply("Run", "t9999").unwrap().is_some());
}
