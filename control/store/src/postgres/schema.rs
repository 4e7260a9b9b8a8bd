//! The schema and its migrations, tracked in `ember_schema`. Hosts that
//! start at once take turns through a transaction-scoped advisory lock.

use deadpool_postgres::Object;

use crate::StoreError;

/// The advisory lock key: "ember" in ASCII, so it is recognisable in
/// `pg_locks` and unlikely to collide with another application's.
const MIGRATION_LOCK: i64 = 0x0065_6d62_6572;

/// Each entry moves the schema from version `i` to `i + 1`. Text keys
/// sort byte-wise (`COLLATE "C"`) as SQLite's do, so pages continue at the
/// same key on either backend whatever the database's locale.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE images (
    name        TEXT COLLATE "C" PRIMARY KEY,
    arn         TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE versions (
    image         TEXT COLLATE "C" NOT NULL REFERENCES images(name) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    spec          TEXT NOT NULL,
    state         TEXT NOT NULL,
    status        TEXT NOT NULL,
    state_reason  TEXT,
    snapshot_dir  TEXT,
    created_at    DOUBLE PRECISION NOT NULL,
    updated_at    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (image, version)
);
CREATE TABLE builds (
    id            TEXT COLLATE "C" PRIMARY KEY,
    image         TEXT COLLATE "C" NOT NULL,
    version       INTEGER NOT NULL,
    state         TEXT NOT NULL,
    state_reason  TEXT,
    log_path      TEXT NOT NULL,
    memory_bytes  BIGINT,
    disk_bytes    BIGINT,
    code_bytes    BIGINT,
    created_at    DOUBLE PRECISION NOT NULL,
    updated_at    DOUBLE PRECISION NOT NULL,
    FOREIGN KEY (image, version) REFERENCES versions(image, version) ON DELETE CASCADE
);
CREATE INDEX builds_by_version ON builds (image, version);
CREATE TABLE tags (
    image  TEXT COLLATE "C" NOT NULL REFERENCES images(name) ON DELETE CASCADE,
    key    TEXT COLLATE "C" NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (image, key)
);
CREATE TABLE idempotency (
    operation    TEXT NOT NULL,
    token        TEXT NOT NULL,
    params_hash  TEXT NOT NULL,
    reply        TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    pending      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (operation, token)
);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
CREATE TABLE microvms (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT COLLATE "C" NOT NULL UNIQUE,
    image           TEXT COLLATE "C" NOT NULL,
    version         INTEGER NOT NULL,
    image_arn       TEXT NOT NULL,
    spec            TEXT NOT NULL,
    state           TEXT NOT NULL,
    state_reason    TEXT,
    endpoint        TEXT NOT NULL,
    proxy_addr      TEXT,
    started_at      DOUBLE PRECISION NOT NULL,
    terminated_at   DOUBLE PRECISION,
    last_active_at  DOUBLE PRECISION NOT NULL,
    suspended_at    DOUBLE PRECISION,
    updated_at      DOUBLE PRECISION NOT NULL
);
CREATE INDEX microvms_by_image ON microvms (image, version);
CREATE INDEX microvms_by_state ON microvms (state);
"#,
    // Nodes and their leases; a microVM names the node (and epoch) whose
    // emberd runs it, a pending claim the node acting on it. Rows from
    // before have no owner until a node registers and takes them.
    r#"
CREATE TABLE nodes (
    id                TEXT COLLATE "C" PRIMARY KEY,
    epoch             BIGINT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('READY', 'DRAINING', 'DEAD')),
    state_reason      TEXT,
    lease_expires_at  DOUBLE PRECISION NOT NULL,
    registered_at     DOUBLE PRECISION NOT NULL
);
ALTER TABLE microvms ADD COLUMN owner_node TEXT COLLATE "C", ADD COLUMN owner_epoch BIGINT;
CREATE INDEX microvms_by_owner ON microvms (owner_node, state);
ALTER TABLE idempotency ADD COLUMN node TEXT COLLATE "C";
"#,
    // Where other nodes reach a node's internal listener, so any node can
    // tunnel to the microVMs another one runs.
    r#"
ALTER TABLE nodes ADD COLUMN address TEXT;
"#,
    // Placement: the memory a node can still give to new microVMs (as it
    // last reported, less what was placed on it since), and which node's
    // data dir holds a version's snapshot.
    r#"
ALTER TABLE nodes ADD COLUMN free_mib BIGINT;
ALTER TABLE versions ADD COLUMN snapshot_node TEXT COLLATE "C";
"#,
    // The node a build runs on: its own restart and a sweep that declares
    // it dead end its unfinished builds, nobody else's.
    r#"
ALTER TABLE builds ADD COLUMN node TEXT COLLATE "C";
CREATE INDEX builds_by_node ON builds (node, state);
"#,
    // The object-store copy of a version's snapshot (its index digest),
    // from which any node restores it; the memory a node's microVMs hold,
    // which placement scores nodes by.
    r#"
ALTER TABLE versions ADD COLUMN snapshot_blob TEXT COLLATE "C";
ALTER TABLE nodes ADD COLUMN reserved_mib BIGINT;
"#,
    // Which hosts can restore a snapshot (QEMU version, accelerator, CPU):
    // the class of the host that wrote a version's, and each node's own.
    r#"
ALTER TABLE versions ADD COLUMN snapshot_class TEXT COLLATE "C";
ALTER TABLE nodes ADD COLUMN compat_class TEXT COLLATE "C";
"#,
];

pub(super) async fn migrate(client: &mut Object) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS ember_schema (version INTEGER NOT NULL)")
        .await?;
    let current: i32 = match tx
        .query_opt("SELECT version FROM ember_schema", &[])
        .await?
    {
        Some(row) => row.try_get(0)?,
        None => {
            tx.execute("INSERT INTO ember_schema (version) VALUES (0)", &[])
                .await?;
            0
        }
    };
    let known = MIGRATIONS.len();
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > known {
        return Err(StoreError::schema_too_new(current, known));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch_execute(sql).await?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("UPDATE ember_schema SET version = $1", &[&version])
            .await?;
        tracing::info!(version, "state database (Postgres) migrated");
    }
    tx.commit().await?;
    Ok(())
}
