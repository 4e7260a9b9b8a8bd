//! The Postgres backend: a pool of tokio-postgres connections, the same
//! tables as SQLite in Postgres' types, migrations serialised across hosts
//! with an advisory lock, and one emberd per node id (`node_lock.rs`).

mod idempotency;
mod images;
mod microvms;
mod node_lock;
mod nodes;
mod placement;
mod rows;
mod schema;
mod tls;
pub use tls::PostgresTls;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::node::Identity;
use crate::placement::LiveQuota;
use crate::StoreError;

/// Connections per emberd: its statements are short, and a host's API
/// handlers, reconciler and reapers rarely run more than a few at once.
const POOL_SIZE: usize = 16;
/// How long a statement waits for a free connection, for a new one, and
/// runs at most, so a Postgres that hangs fails requests instead of
/// piling them up.
const WAIT: Duration = Duration::from_secs(10);
const STATEMENT_TIMEOUT_MS: u32 = 15_000;

pub struct PostgresStore {
    pool: Pool,
    /// The node id's lock, once registered (`node_lock.rs`). An async
    /// mutex: registrations of one store take turns, lock and all.
    node_lock: tokio::sync::Mutex<Option<node_lock::NodeLock>>,
    /// The node this store registered as, for its owner writes.
    identity: Identity,
    pub(crate) quota: LiveQuota,
    config: tokio_postgres::Config,
    tls: tls::Connector,
    /// Woken by a placement on this node, heard on the node lock's session.
    pub(crate) placed: std::sync::Arc<tokio::sync::Notify>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`, or
    /// `host=/socket/dir` for a Unix socket) and brings the schema up to
    /// date, serialised with any other emberd doing the same. TCP
    /// connections use TLS verified against `tls.ca_file` (else the system's
    /// roots) unless the URL's `sslmode` says otherwise.
    pub async fn connect(url: &str, tls: &PostgresTls) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Open {
            path: "postgres".into(),
            message: format!("not a Postgres URL: {e}"),
        })?;
        config
            .application_name("emberd")
            .connect_timeout(WAIT)
            .options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
        tls::harden(url, &mut config);
        let tls = tls::connector(tls)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let store = Self {
            pool,
            node_lock: tokio::sync::Mutex::new(None),
            identity: Identity::default(),
            quota: LiveQuota::default(),
            config,
            tls,
            placed: std::sync::Arc::default(),
        };
        let mut client = store.client().await?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }

    // One statement on a pooled connection, prepared once per connection
    // (deadpool's statement cache) rather than at every call.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query(&statement, params).await?)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query_opt(&statement, params).await?)
    }

    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query_one(&statement, params).await?)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.execute(&statement, params).await?)
    }

    /// The node this store registered as, if it did.
    fn node(&self) -> Option<String> {
        self.identity.get().map(|(id, _)| id)
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(with_causes(&e)))
    }
}

/// An error with the causes under it ("error performing TLS handshake:
/// invalid peer certificate: UnknownIssuer"): the pool's own message
/// alone does not say what went wrong.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// Postgres has no unsigned integers: counts and sizes are BIGINT and
/// version numbers INTEGER, converted at the edge in both directions.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_i32(n: u32) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| StoreError::NotFound(format!("version {n}")))
}
