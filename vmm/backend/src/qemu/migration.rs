//! Device-state migration to and from files, as snapshots use it.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::files;
use super::launch::{exited, timeout, LaunchGuard};
use super::qmp::Qmp;
use crate::VmmError;

/// Migration is local: lift QEMU's default 128 MiB/s cap.
const MIGRATION_BANDWIDTH: u64 = 64 << 30;

pub(super) async fn set_migration_caps(qmp: &Qmp, ignore_shared: bool) -> Result<(), VmmError> {
    qmp.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": ignore_shared}]}),
    )
    .await?;
    qmp.execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": MIGRATION_BANDWIDTH}),
    )
    .await?;
    Ok(())
}

/// Polls `query-migrate` until the migration finishes either way.
pub(super) async fn wait_migration(
    qmp: &Qmp,
    dir: &Path,
    guard: &mut LaunchGuard,
    limit: Duration,
    what: &'static str,
) -> Result<(), VmmError> {
    let deadline = Instant::now() + limit;
    loop {
        let status = migration_status(qmp).await;
        match status {
            Ok((s, _)) if s == "completed" => return Ok(()),
            Ok((s, err)) if s == "failed" || s == "cancelled" => {
                return Err(VmmError::Tool {
                    tool: "migration",
                    message: format!("{s}: {err}; {}", files::tail(&dir.join("qemu.stderr"), 5)),
                })
            }
            Ok(_) => {}
            Err(e) => return Err(exited(dir, guard).unwrap_or(e)),
        }
        if Instant::now() >= deadline {
            return Err(timeout(what, limit, dir));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn migration_status(qmp: &Qmp) -> Result<(String, String), VmmError> {
    let r = qmp.execute("query-migrate", json!({})).await?;
    let field = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Ok((field("status"), field("error-desc")))
}
