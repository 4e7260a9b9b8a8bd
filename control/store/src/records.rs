//! Plain rows, as the service reads and writes them.

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub name: String,
    pub arn: String,
    pub state: String,
    pub created_at: f64,
    pub updated_at: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionRecord {
    pub image: String,
    pub version: u32,
    /// The build request as the service serialised it (its own typed
    /// struct); the store does not look inside.
    pub spec: String,
    pub state: String,
    pub status: String,
    pub state_reason: Option<String>,
    /// Where the finished snapshot lives, once the build succeeded.
    pub snapshot_dir: Option<String>,
    /// The node whose data dir holds it: the one that wrote
    /// `snapshot_dir` (`None` for an unregistered store's, or a version
    /// from before nodes).
    pub snapshot_node: Option<String>,
    /// The digest of the snapshot's index in the object store
    /// (`--blob-store`), from which every node can restore it; `None`
    /// without one.
    pub snapshot_blob: Option<String>,
    /// The compatibility class of the host that wrote the snapshot
    /// (QEMU version, accelerator, CPU): only nodes of that class can
    /// restore it. Recorded with `snapshot_blob`.
    pub snapshot_class: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildRecord {
    pub id: String,
    pub image: String,
    pub version: u32,
    pub state: String,
    pub state_reason: Option<String>,
    pub log_path: String,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub code_bytes: Option<u64>,
    pub created_at: f64,
    pub updated_at: f64,
    /// The node it runs on: the store's registration when it was created
    /// (`None` for an unregistered store's, or a build from before nodes).
    pub node: Option<String>,
}

/// A new image with its first version and build, created together.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub name: String,
    pub arn: String,
    pub state: String,
    pub tags: Vec<(String, String)>,
    pub version: NewVersion,
}

/// A version and its (first) build, created together.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub spec: String,
    pub state: String,
    pub status: String,
    pub build_id: String,
    pub build_state: String,
    pub log_path: String,
    pub now: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MicrovmRecord {
    pub id: String,
    pub image: String,
    pub version: u32,
    pub image_arn: String,
    /// The run request as the service serialised it; opaque here.
    pub spec: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub endpoint: String,
    /// The proxy listener's address for per-VM-port endpoints, kept so a
    /// restarted daemon serves the same endpoint again.
    pub proxy_addr: Option<String>,
    pub started_at: f64,
    pub terminated_at: Option<f64>,
    pub last_active_at: f64,
    pub suspended_at: Option<f64>,
    pub updated_at: f64,
    /// The node whose emberd runs it, as the row says. On insert the
    /// store writes its own registration instead, so a caller cannot
    /// claim a VM for another node.
    pub owner_node: Option<String>,
}

/// A state change: the new state and what else changes with it.
#[derive(Debug, Clone, Default)]
pub struct MicrovmUpdate<'a> {
    pub state: &'a str,
    /// `Some(None)` clears the reason; `None` leaves it.
    pub state_reason: Option<Option<&'a str>>,
    pub suspended_at: Option<Option<f64>>,
    pub terminated_at: Option<f64>,
    pub now: f64,
}

/// One page of a listing, and the key to continue after, if more remain.
pub type Page<T, K> = (Vec<T>, Option<K>);

/// SQL LIMIT for a page of `limit` rows: one extra tells whether another
/// page exists.
pub(crate) fn fetch_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1)
}

/// Rows were fetched with one extra to learn whether another page exists.
pub(crate) fn paginate<T, K>(mut rows: Vec<T>, limit: usize, key: impl Fn(&T) -> K) -> Page<T, K> {
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(key);
        (rows, next)
    } else {
        (rows, None)
    }
}

/// How long a token is remembered: AWS documents a retried request as
/// idempotent for a day, not forever.
pub const IDEMPOTENCY_WINDOW_SECS: f64 = 24.0 * 3600.0;

/// At most this many records are kept, the oldest pruned first, so a
/// caller minting tokens cannot grow the database without bound.
pub const IDEMPOTENCY_MAX_RECORDS: i64 = 10_000;

/// What claiming `(operation, token)` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The token was free and is now this caller's: act, then record the
    /// reply or release the claim.
    Claimed,
    /// Another request with this token is still acting.
    InFlight { params_hash: String },
    /// A request with this token was answered.
    Answered { params_hash: String, reply: String },
}

/// Which table to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Microvms,
    Images,
    Builds,
}

impl ImageRecord {
    /// The columns every backend selects, in the order its row mapping reads them.
    pub(crate) const COLUMNS: &'static str = "name, arn, state, created_at, updated_at";
}

impl VersionRecord {
    /// The columns every backend selects, in the order its row mapping reads them.
    pub(crate) const COLUMNS: &'static str =
        "image, version, spec, state, status, state_reason, snapshot_dir, created_at, updated_at, \
         snapshot_node, snapshot_blob, snapshot_class";
}

impl BuildRecord {
    /// The columns every backend selects, in the order its row mapping reads them.
    pub(crate) const COLUMNS: &'static str = "id, image, version, state, state_reason, log_path, \
         memory_bytes, disk_bytes, code_bytes, created_at, updated_at, node";
}

impl MicrovmRecord {
    /// The columns every backend selects, in the order its row mapping reads them.
    pub(crate) const COLUMNS: &'static str =
        "id, image, version, image_arn, spec, state, state_reason, \
         endpoint, proxy_addr, started_at, terminated_at, last_active_at, suspended_at, updated_at, \
         owner_node";
}

/// One emberd host as the cluster sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub id: String,
    /// Bumped at every registration and when the node is declared dead:
    /// writes made under an older epoch are refused.
    pub epoch: u64,
    /// `READY`, `DRAINING` or `DEAD`.
    pub state: String,
    pub state_reason: Option<String>,
    /// Unix seconds in the store's clock (Postgres' for a shared store),
    /// so hosts with skewed clocks agree on when a lease ran out.
    pub lease_expires_at: f64,
    /// Seconds until the lease expires in the store's clock (negative:
    /// expired).
    pub lease_left_seconds: f64,
    pub registered_at: f64,
    /// MicroVMs it owns that are not TERMINATED.
    pub live_microvms: u64,
    /// `host:port` of its internal listener, if it serves one.
    pub address: Option<String>,
    /// Memory it can still give to new microVMs: what it last reported,
    /// less what was placed on it since (`None`: never reported).
    pub free_mib: Option<u64>,
    /// The snapshots it can restore (QEMU version, accelerator, CPU), as
    /// it reported at start (`None`: not reported).
    pub compat_class: Option<String>,
}

/// What renewing this emberd's lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRenewal {
    /// Still this node's: `state` is READY or DRAINING, so a drain set
    /// through another host reaches this one.
    Renewed { state: String },
    /// The node was declared dead or registered again elsewhere (`epoch`
    /// is the row's now; 0 if the row is gone). The store's owner writes
    /// are refused from then on, until it registers again.
    Lost { state: String, epoch: u64 },
}

/// A node a sweep declared dead, with the microVMs that died with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadNode {
    pub id: String,
    /// Its epoch after the sweep bumped it.
    pub epoch: u64,
    pub terminated_microvms: Vec<String>,
    /// Its builds that were still running, now FAILED with their versions.
    pub failed_builds: Vec<String>,
}

/// The states a node can be set to by an operator; DEAD is only ever
/// reached through a sweep (or, on SQLite, by another node registering).
pub(crate) const SETTABLE_NODE_STATES: &[&str] = &["READY", "DRAINING"];
