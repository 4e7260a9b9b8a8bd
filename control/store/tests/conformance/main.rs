//! One conformance suite for both backends of `StateStore`: every case
//! runs once against SQLite and once against a real Postgres server, each
//! on a database of its own.

mod cases;
mod postgres_server;

use std::path::PathBuf;
use std::sync::Arc;

use ember_store::{PostgresStore, SqliteStore, StateStore};

/// A database a case can open, and open again to see what survived.
pub enum Db {
    Sqlite(PathBuf, tempfile::TempDir),
    Postgres(String),
}

impl Db {
    pub async fn open(&self) -> Arc<dyn StateStore> {
        match self {
            Db::Sqlite(path, _) => Arc::new(SqliteStore::open(path).unwrap()),
            Db::Postgres(conninfo) => Arc::new(
                PostgresStore::connect(conninfo, &Default::default())
                    .await
                    .unwrap(),
            ),
        }
    }

    /// SQLite belongs to one daemon, which drops claims left by its dead
    /// predecessor at open; a shared Postgres keeps them, since another
    /// host may still be acting on one.
    pub fn drops_claims_at_open(&self) -> bool {
        matches!(self, Db::Sqlite(..))
    }

    /// Several nodes share a Postgres database; a SQLite file serves the
    /// one host it is on, so nothing there is swept.
    pub fn serves_many_nodes(&self) -> bool {
        matches!(self, Db::Postgres(..))
    }

    /// Takes the database back to the schema before nodes (SQLite's
    /// version 3, Postgres' 1), keeping its rows, as an emberd of then
    /// would have left it: the suite has no older emberd to write one.
    pub async fn downgrade_to_before_nodes(&self) {
        match self {
            Db::Sqlite(path, _) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.execute_batch(
                    "DROP TABLE nodes;
                     DROP INDEX microvms_by_owner;
                     ALTER TABLE microvms DROP COLUMN owner_node;
                     ALTER TABLE microvms DROP COLUMN owner_epoch;
                     ALTER TABLE idempotency DROP COLUMN node;
                     ALTER TABLE versions DROP COLUMN snapshot_node;
                     DROP INDEX builds_by_node;
                     ALTER TABLE builds DROP COLUMN node;
                     ALTER TABLE versions DROP COLUMN snapshot_blob;
                     ALTER TABLE versions DROP COLUMN snapshot_class;
                     PRAGMA user_version = 3;",
                )
                .unwrap();
            }
            Db::Postgres(conninfo) => {
                let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let conn = tokio::spawn(conn);
                client
                    .batch_execute(
                        "DROP TABLE nodes;
                         ALTER TABLE microvms DROP COLUMN owner_node, DROP COLUMN owner_epoch;
                         ALTER TABLE idempotency DROP COLUMN node;
                         ALTER TABLE versions DROP COLUMN snapshot_node;
                         ALTER TABLE builds DROP COLUMN node;
                         ALTER TABLE versions DROP COLUMN snapshot_blob;
                         ALTER TABLE versions DROP COLUMN snapshot_class;
                         UPDATE ember_schema SET version = 1;",
                    )
                    .await
                    .unwrap();
                drop(client);
                let _ = conn.await;
            }
        }
    }
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    Db::Sqlite(dir.path().join("ember.db"), dir)
}

async fn postgres() -> Db {
    Db::Postgres(postgres_server::fresh_database().await)
}

/// One test per case and backend, so a failure names both.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                crate::cases::$case(crate::sqlite().await).await;
            } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                crate::cases::$case(crate::postgres().await).await;
            } )*
        }
    };
}

conformance![
    state_survives_reopening,
    duplicate_names_conflict_and_keep_the_first,
    listings_page_in_order_and_filter_by_name,
    deleting_an_image_removes_everything_under_it,
    tag_limit_is_enforced_atomically,
    versions_update_and_delete,
    build_states_and_sizes,
    concurrent_versions_get_distinct_numbers,
    idempotency_records_round_trip,
    one_token_is_claimed_once_and_replayed_after,
    concurrent_claims_of_one_token_have_one_winner,
    released_claims_are_free_again_and_answers_survive_reopening,
    records_older_than_the_window_or_beyond_the_cap_are_pruned,
    counts_group_rows_by_state,
    microvms_list_in_run_order_with_filters_and_pages,
    state_updates_keep_or_clear_the_reason,
    the_first_live_microvm_of_an_image_or_version,
    last_active_never_moves_back_and_endpoints_change,
    nodes_register_with_rising_epochs_and_own_what_they_insert,
    a_superseded_registration_is_fenced,
    an_expired_node_is_declared_dead_with_its_microvms,
    two_sweepers_declare_a_dead_node_dead_once,
    pending_claims_are_dropped_by_their_own_node_only,
    live_microvms_are_the_nodes_own,
    rows_from_before_nodes_are_taken_by_the_first_node_to_register,
    placement_picks_the_roomiest_ready_candidate,
    a_versions_snapshot_names_the_node_that_wrote_it,
    a_versions_object_store_copy_is_recorded,
    one_sweep_declares_at_most_half_the_nodes_dead,
    a_dead_nodes_builds_fail_and_nobody_elses,
    the_cluster_quota_counts_every_nodes_live_microvms,
];

/// Emberds share a Postgres database, but each runs as a node id of its
/// own: a second emberd registering an id a live one holds is refused (it
/// would take the first's VMs for its own), and the id is free again once
/// the first is gone, without the claims it left unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_serves_one_emberd_at_a_time_on_postgres() {
    let conninfo = postgres_server::fresh_database().await;
    let url = ember_store::StoreLocation::Postgres(conninfo.clone());
    let first = ember_store::open(&url, &Default::default()).await.unwrap();
    assert_eq!(first.register_node("n1", 60_000).await.unwrap(), 1);
    let claimed = first.claim_idempotency("RunMicrovm", "t", "h", 1.0).await;
    assert_eq!(claimed.unwrap(), ember_store::Claim::Claimed);
    // Opening is not claiming: only registering as a taken id is refused.
    let second = ember_store::open(&url, &Default::default()).await.unwrap();
    match second.register_node("n1", 60_000).await {
        Err(ember_store::StoreError::Conflict(m)) => {
            assert!(m.contains("another emberd already runs as node n1"), "{m}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second emberd was let in as n1"),
    }
    assert_eq!(second.register_node("n2", 60_000).await.unwrap(), 1);
    drop(first);
    let third = ember_store::open(&url, &Default::default()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let epoch = loop {
        match third.register_node("n1", 60_000).await {
            Ok(epoch) => break epoch,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("the node id stayed taken: {e}"),
        }
    };
    assert_eq!(epoch, 2);
    // The first emberd's unanswered claim died with it.
    let again = third.claim_idempotency("RunMicrovm", "t", "h", 2.0).await;
    assert_eq!(again.unwrap(), ember_store::Claim::Claimed);
}

/// A SQLite file serves one node, so nobody can declare it dead: a lease
/// renewal the file cannot take (here: another connection holds the write
/// lock past the busy timeout; in life, a full disk) still stands, rather
/// than fencing the only node there is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_renewal_that_cannot_be_written_still_stands() {
    let Db::Sqlite(path, _dir) = sqlite().await else {
        unreachable!()
    };
    let store = SqliteStore::open(&path).unwrap();
    store.register_node("n1", 30_000).await.unwrap();
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let renewal = store.renew_node_lease(30_000).await.unwrap();
    assert!(
        matches!(&renewal, ember_store::LeaseRenewal::Renewed { state } if state == "READY"),
        "{renewal:?}"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
}
