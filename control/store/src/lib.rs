//! emberd's state: images, their versions and builds, tags, microVMs and
//! idempotency records, behind one async trait, [`StateStore`], with two
//! backends: an embedded SQLite file (the default; one host needs nothing
//! else) and Postgres (`--store postgres://…`), which several emberd hosts
//! can share.
//!
//! Nothing lives only in memory: a killed daemon finds everything here on
//! restart. Every multi-row change is one transaction, so a crash never
//! leaves an image without its version or a version without its build.
//! States are stored as the API's enum strings; the service owns their
//! meaning, the store only keeps them consistent. Both backends pass one
//! conformance suite (`tests/conformance/`).

mod records;
pub use records::{
    BuildRecord, Claim, Counted, DeadNode, ImageRecord, LeaseRenewal, MicrovmRecord, MicrovmUpdate,
    NewImage, NewVersion, NodeRecord, Page, VersionRecord, IDEMPOTENCY_MAX_RECORDS,
    IDEMPOTENCY_WINDOW_SECS,
};
mod location;
mod node;
mod placement;
pub use location::StoreLocation;
mod postgres;
pub use postgres::{PostgresStore, PostgresTls};
mod sqlite;
pub use sqlite::SqliteStore;

use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database (Postgres): {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("state database (Postgres): cannot connect: {0}")]
    Pool(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("state database at {path}: {message}")]
    Open { path: String, message: String },
    #[error("state database: {0}")]
    Corrupt(String),
    /// An owner write refused because this emberd's node no longer owns
    /// the row (its lease was lost, or a newer registration took over):
    /// it must stop acting on that microVM.
    #[error("{0}")]
    Fenced(String),
    /// No node a microVM could be placed on has room for it now.
    #[error("{0}")]
    Capacity(String),
    /// The cluster already holds as many microVMs as it may.
    #[error("{0}")]
    Quota(String),
}

/// The errors both backends give in the same words.
impl StoreError {
    pub(crate) fn image_exists(name: &str) -> Self {
        Self::Conflict(format!("a microVM image named {name} already exists"))
    }

    pub(crate) fn image_not_found(name: &str) -> Self {
        Self::NotFound(format!("microVM image {name}"))
    }

    pub(crate) fn version_not_found(image: &str, version: u32) -> Self {
        Self::NotFound(format!("version {version} of microVM image {image}"))
    }

    pub(crate) fn build_not_found(id: &str) -> Self {
        Self::NotFound(format!("build {id}"))
    }

    pub(crate) fn too_many_tags(max_tags: usize, count: i64) -> Self {
        Self::Conflict(format!(
            "a resource can have at most {max_tags} tags; this would make {count}"
        ))
    }

    pub(crate) fn microvm_exists(id: &str) -> Self {
        Self::Conflict(format!("a microVM with id {id} already exists"))
    }

    pub(crate) fn microvm_not_found(id: &str) -> Self {
        Self::NotFound(format!("microVM {id}"))
    }

    pub(crate) fn schema_too_new(
        current: impl std::fmt::Display,
        known: impl std::fmt::Display,
    ) -> Self {
        Self::Conflict(format!(
            "the state database has schema version {current}, newer than this emberd knows \
             ({known}); run a newer emberd"
        ))
    }
}

/// Opens the store `location` names for one emberd, bringing its schema
/// up to date. Nothing is claimed yet: `register_node` makes the store a
/// node's (and, on Postgres, refuses a node id another emberd runs as).
/// `postgres_tls` says which CA a Postgres server's certificate must chain
/// to (else the system's roots) and which client certificate to present.
pub async fn open(
    location: &StoreLocation,
    postgres_tls: &PostgresTls,
) -> Result<Arc<dyn StateStore>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
        StoreLocation::Postgres(url) => Arc::new(PostgresStore::connect(url, postgres_tls).await?),
    })
}

/// Declares [`StateStore`] from one list of methods and implements it for
/// both backends by calling their own (SQLite: blocking, Postgres: async)
/// methods of the same name, so a method's signature is written once.
macro_rules! state_store {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        /// The state every emberd keeps. Methods are short statements or
        /// one transaction each; none holds a lock across calls.
        #[async_trait::async_trait]
        pub trait StateStore: Send + Sync {
            /// Which backend this is, for logs and `--help`-level messages.
            fn backend(&self) -> &'static str;
            /// Woken when another node places a microVM on this one
            /// (Postgres' LISTEN/NOTIFY); `None` where only this node
            /// places (SQLite), so polling is all there is.
            fn placements(&self) -> Option<Arc<tokio::sync::Notify>>;
            /// Limits the microVMs that are not TERMINATED, on every node
            /// of the store together, to `max` (`None`: no limit): an
            /// insert or placement beyond it is a [`StoreError::Quota`].
            /// Set once at start; every node should give the same.
            fn limit_live_microvms(&self, max: Option<u64>);
            $( $(#[$doc])* async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError>; )*
        }

        #[async_trait::async_trait]
        impl StateStore for SqliteStore {
            fn backend(&self) -> &'static str {
                "sqlite"
            }
            fn placements(&self) -> Option<Arc<tokio::sync::Notify>> {
                None
            }
            fn limit_live_microvms(&self, max: Option<u64>) {
                self.quota.set(max);
            }
            // SQLite statements here take microseconds on a local file, so
            // they run inline rather than on a blocking thread.
            $( async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                SqliteStore::$name(self $(, $arg)*)
            } )*
        }

        #[async_trait::async_trait]
        impl StateStore for PostgresStore {
            fn backend(&self) -> &'static str {
                "postgres"
            }
            fn placements(&self) -> Option<Arc<tokio::sync::Notify>> {
                Some(Arc::clone(&self.placed))
            }
            fn limit_live_microvms(&self, max: Option<u64>) {
                self.quota.set(max);
            }
            $( async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                PostgresStore::$name(self $(, $arg)*).await
            } )*
        }
    };
}

state_store! {
    /// Creates an image with its version 1 and that version's build;
    /// `Conflict` if the name is taken (nothing of the second is kept).
    fn create_image(&self, new: &NewImage) -> ();
    /// Adds the next version (and its build) to an image and sets the
    /// image's state; returns the new version number.
    fn add_version(&self, image: &str, image_state: &str, version: &NewVersion) -> u32;
    fn image(&self, name: &str) -> ImageRecord;
    /// Images ordered by name, after `after`, whose name contains `filter`.
    fn list_images(
        &self,
        after: Option<&str>,
        filter: Option<&str>,
        limit: usize,
    ) -> Page<ImageRecord, String>;
    fn set_image_state(&self, name: &str, state: &str, now: f64) -> ();
    /// Removes an image with its versions, builds and tags.
    fn delete_image(&self, name: &str) -> ();
    fn version(&self, image: &str, version: u32) -> VersionRecord;
    /// Versions of one image in ascending order, after version `after`.
    fn list_versions(&self, image: &str, after: u32, limit: usize) -> Page<VersionRecord, u32>;
    /// Every version of every image, for start-up checks.
    fn all_versions(&self) -> Vec<VersionRecord>;
    /// Sets a version's state and reason; `snapshot_dir` only if given.
    fn update_version_state(
        &self,
        image: &str,
        version: u32,
        state: &str,
        reason: Option<&str>,
        snapshot_dir: Option<&str>,
        now: f64,
    ) -> ();
    fn set_version_status(&self, image: &str, version: u32, status: &str, now: f64) -> ();
    /// Records that a version's snapshot is in the object store, under
    /// the index `digest`, written by a host of compatibility `class`.
    fn set_version_blob(&self, image: &str, version: u32, digest: &str, class: &str, now: f64) -> ();
    fn delete_version(&self, image: &str, version: u32) -> ();
    fn build(&self, id: &str) -> BuildRecord;
    /// Builds of one version, oldest first, after build id `after`.
    fn list_builds(
        &self,
        image: &str,
        version: u32,
        after: Option<&str>,
        limit: usize,
    ) -> Page<BuildRecord, String>;
    /// Builds that were pending or running, e.g. when the daemon died: on
    /// Postgres those of this store's node (or of none), since the other
    /// nodes' are still running; on SQLite all of them.
    fn unfinished_builds(&self) -> Vec<BuildRecord>;
    fn update_build_state(&self, id: &str, state: &str, reason: Option<&str>, now: f64) -> ();
    fn set_build_sizes(&self, id: &str, memory_bytes: u64, disk_bytes: u64, code_bytes: u64) -> ();
    /// An image's tags, by key.
    fn tags(&self, image: &str) -> Vec<(String, String)>;
    /// Adds or overwrites tags, refusing to go over `max_tags` in total.
    fn set_tags(&self, image: &str, tags: &[(String, String)], max_tags: usize) -> ();
    fn remove_tags(&self, image: &str, keys: &[String]) -> ();
    /// Claims `(operation, token)` in one transaction, pruning records that
    /// fell out of the window (or beyond the cap) first.
    fn claim_idempotency(&self, operation: &str, token: &str, params_hash: &str, now: f64) -> Claim;
    /// Turns this caller's claim into the answer replayed to retries.
    fn record_idempotent_reply(
        &self,
        operation: &str,
        token: &str,
        params_hash: &str,
        reply: &str,
        now: f64,
    ) -> ();
    /// Gives up a claim whose request failed, so a retry acts afresh.
    /// An answered record is kept.
    fn release_idempotency(&self, operation: &str, token: &str) -> ();
    /// The recorded answer for `(operation, token)`, with the hash of the
    /// parameters it was made with; a claim still in flight is no answer.
    fn idempotent_reply(&self, operation: &str, token: &str) -> Option<(String, String)>;
    /// `(state, rows)` of every state that has at least one row.
    fn count_by_state(&self, table: Counted) -> Vec<(String, u64)>;
    /// `Conflict` if the id is taken. The row is owned by this store's
    /// registration (the record's `owner_node` is ignored); `Fenced` if
    /// that registration is no longer current, since no QEMU may start
    /// without a committed row naming its node and epoch.
    fn insert_microvm(&self, vm: &MicrovmRecord) -> ();
    fn microvm(&self, id: &str) -> MicrovmRecord;
    /// MicroVMs in the order they were run, after the one with id `after`,
    /// optionally only those of one image (and version).
    fn list_microvms(
        &self,
        after: Option<&str>,
        image: Option<&str>,
        version: Option<u32>,
        limit: usize,
    ) -> Page<MicrovmRecord, String>;
    /// The microVMs not yet TERMINATED that this store's node owns (with
    /// no registration: those no node owns): what a restarted daemon
    /// takes back. Other nodes' VMs are theirs to recover.
    fn live_microvms(&self) -> Vec<MicrovmRecord>;
    /// A microVM not yet TERMINATED that runs from `image` (and
    /// `version`), if any: what keeps them from being deleted.
    fn first_live_microvm(&self, image: &str, version: Option<u32>) -> Option<MicrovmRecord>;
    fn count_live_microvms(&self) -> u64;
    /// `Fenced` unless this store's node and epoch own the row (a row no
    /// node owns is written only by an unregistered store).
    fn update_microvm(&self, id: &str, update: &MicrovmUpdate<'_>) -> ();
    /// Records the last inbound request (never moving it back), so idle
    /// timers survive a restart. Like `update_microvm`, `Fenced` unless
    /// this node (and epoch) owns the row.
    fn set_microvm_last_active(&self, id: &str, at: f64) -> ();
    /// A restarted daemon could not re-bind the old endpoint port.
    fn set_microvm_endpoint(&self, id: &str, endpoint: &str, proxy_addr: Option<&str>) -> ();
    /// Registers this emberd as node `node_id` with a lease of `lease_ms`
    /// in the store's clock, and returns its new epoch (1, then one more
    /// at each registration). Takes back the node's live microVMs (and
    /// those no node owns) and drops the claims it left pending. The
    /// store remembers the registration for its owner writes. Postgres:
    /// `Conflict` if another emberd runs as `node_id` on the database.
    fn register_node(&self, node_id: &str, lease_ms: u64) -> u64;
    /// Extends this node's lease to `lease_ms` from the store's now, or
    /// reports it lost; then every owner write of the store is `Fenced`
    /// until it registers again. `Conflict` if it never registered.
    fn renew_node_lease(&self, lease_ms: u64) -> LeaseRenewal;
    /// Declares dead every other node whose lease expired, bumping its
    /// epoch and terminating its live microVMs, each node by exactly one
    /// sweeper, and at most half the nodes not yet DEAD per call (those
    /// expired longest first). A SQLite store serves one node: nothing to
    /// sweep.
    fn sweep_expired_nodes(&self) -> Vec<DeadNode>;
    /// Every node, by id.
    fn nodes(&self) -> Vec<NodeRecord>;
    /// Sets a node READY or DRAINING (no other state); `NotFound` if there
    /// is no such node, `Conflict` if it is DEAD.
    fn set_node_state(&self, node_id: &str, state: &str, reason: Option<&str>) -> ();
    /// Records where other nodes reach this registered node's internal
    /// listener (tunnels to its microVMs, forwarded actions); `None`
    /// when it serves none. `Conflict` if it never registered.
    fn set_node_address(&self, address: Option<&str>) -> ();
    /// Records which snapshots this registered node can restore (its
    /// QEMU version, accelerator and CPU), for placement to match.
    /// `Conflict` if it never registered.
    fn set_node_compat_class(&self, class: &str) -> ();
    /// Records how much memory this registered node can still give to new
    /// microVMs, as its own admission counts it (`None`: unknown), and how
    /// much its microVMs hold, for placements made on other nodes.
    fn report_node_free(&self, free_mib: Option<u64>, reserved_mib: u64) -> ();
    /// Inserts `vm` PENDING, owned by the node among `candidates` with the
    /// most memory free that is READY, holds its lease and has room for
    /// `memory_mib`, whose free memory it lowers by as much; one
    /// transaction, announced to the owner (see `placements`). Returns
    /// the owner's id. `Capacity` naming why no candidate could take it;
    /// `Conflict` if the id is taken. SQLite: only this node can be chosen.
    fn place_microvm(&self, vm: &MicrovmRecord, memory_mib: u64, candidates: &[String]) -> String;
    /// The PENDING microVMs this registered node owns at its current
    /// epoch: runs it started and runs other nodes placed on it.
    fn pending_microvms(&self) -> Vec<MicrovmRecord>;
}
