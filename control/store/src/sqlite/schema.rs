//! The schema and its migrations, tracked with SQLite's `user_version`.

use rusqlite::Connection;

use crate::StoreError;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE images (
    name        TEXT PRIMARY KEY,
    arn         TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE versions (
    image         TEXT NOT NULL REFERENCES images(name) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    spec          TEXT NOT NULL,
    state         TEXT NOT NULL,
    status        TEXT NOT NULL,
    state_reason  TEXT,
    snapshot_dir  TEXT,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    PRIMARY KEY (image, version)
);
CREATE TABLE builds (
    id            TEXT PRIMARY KEY,
    image         TEXT NOT NULL,
    version       INTEGER NOT NULL,
    state         TEXT NOT NULL,
    state_reason  TEXT,
    log_path      TEXT NOT NULL,
    memory_bytes  INTEGER,
    disk_bytes    INTEGER,
    code_bytes    INTEGER,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    FOREIGN KEY (image, version) REFERENCES versions(image, version) ON DELETE CASCADE
);
CREATE INDEX builds_by_version ON builds (image, version);
CREATE TABLE tags (
    image  TEXT NOT NULL REFERENCES images(name) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (image, key)
);
CREATE TABLE idempotency (
    operation    TEXT NOT NULL,
    token        TEXT NOT NULL,
    params_hash  TEXT NOT NULL,
    reply        TEXT NOT NULL,
    created_at   REAL NOT NULL,
    PRIMARY KEY (operation, token)
);
"#,
    r#"
CREATE TABLE microvms (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    image           TEXT NOT NULL,
    version         INTEGER NOT NULL,
    image_arn       TEXT NOT NULL,
    spec            TEXT NOT NULL,
    state           TEXT NOT NULL,
    state_reason    TEXT,
    endpoint        TEXT NOT NULL,
    proxy_addr      TEXT,
    started_at      REAL NOT NULL,
    terminated_at   REAL,
    last_active_at  REAL NOT NULL,
    suspended_at    REAL,
    updated_at      REAL NOT NULL
);
CREATE INDEX microvms_by_image ON microvms (image, version);
CREATE INDEX microvms_by_state ON microvms (state);
"#,
    // A record is first a claim (pending, no reply yet) so that two
    // requests with one token cannot both act; pruned by age.
    r#"
ALTER TABLE idempotency ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
CREATE INDEX idempotency_by_age ON idempotency (created_at);
"#,
    // Nodes and their leases; a microVM names the node (and epoch) whose
    // emberd runs it, a pending claim the node acting on it. Rows from
    // before have no owner until a node registers and takes them.
    r#"
CREATE TABLE nodes (
    id                TEXT PRIMARY KEY,
    epoch             INTEGER NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('READY', 'DRAINING', 'DEAD')),
    state_reason      TEXT,
    lease_expires_at  REAL NOT NULL,
    registered_at     REAL NOT NULL
);
ALTER TABLE microvms ADD COLUMN owner_node TEXT;
ALTER TABLE microvms ADD COLUMN owner_epoch INTEGER;
CREATE INDEX microvms_by_owner ON microvms (owner_node, state);
ALTER TABLE idempotency ADD COLUMN node TEXT;
"#,
    // Where other nodes reach a node's internal listener, so any node can
    // tunnel to the microVMs another one runs.
    r#"
ALTER TABLE nodes ADD COLUMN address TEXT;
"#,
    // Placement: the memory a node can still give to new microVMs, and
    // which node's data dir holds a version's snapshot.
    r#"
ALTER TABLE nodes ADD COLUMN free_mib INTEGER;
ALTER TABLE versions ADD COLUMN snapshot_node TEXT;
"#,
    // The node a build runs on.
    r#"
ALTER TABLE builds ADD COLUMN node TEXT;
CREATE INDEX builds_by_node ON builds (node, state);
"#,
    // The object-store copy of a version's snapshot (its index digest),
    // from which any node restores it; the memory a node's microVMs hold,
    // which placement scores nodes by.
    r#"
ALTER TABLE versions ADD COLUMN snapshot_blob TEXT;
ALTER TABLE nodes ADD COLUMN reserved_mib INTEGER;
"#,
    // Which hosts can restore a snapshot (QEMU version, accelerator, CPU):
    // the class of the host that wrote a version's, and each node's own.
    r#"
ALTER TABLE versions ADD COLUMN snapshot_class TEXT;
ALTER TABLE nodes ADD COLUMN compat_class TEXT;
"#,
];

pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    // WAL keeps readers off the writer's back; NORMAL sync is durable
    // across a daemon crash (not a power cut mid-commit), which is the
    // failure emberd must survive.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::schema_too_new(current, known));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "state database migrated");
    }
    Ok(())
}
