//! `store`: what the state store costs a RunMicrovm. One run's store work
//! (claim its clientToken, insert the row, mark it RUNNING, record the
//! answer) and one GetMicrovm read, timed per backend: SQLite in a fresh
//! file in the data dir, and Postgres when `--postgres-url` names an empty
//! database to use.

use std::time::Instant;

use anyhow::Context;
use ember_store::{MicrovmRecord, MicrovmUpdate, StateStore, StoreLocation};
use serde_json::json;

use crate::edge::pct;

const RUNS: usize = 500;

pub async fn run(
    data_dir: &std::path::Path,
    postgres_url: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let dir = data_dir.join("bench-store");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let sqlite = StoreLocation::Sqlite(dir.join("bench.db"));
    let mut out = serde_json::Map::new();
    out.insert("bench".into(), json!("store"));
    out.insert("runs".into(), json!(RUNS));
    out.insert("sqlite".into(), measure(&sqlite).await?);
    match postgres_url {
        Some(url) => {
            let location: StoreLocation = url.parse().map_err(anyhow::Error::msg)?;
            out.insert("postgres".into(), measure(&location).await?);
        }
        None => {
            out.insert(
                "postgres".into(),
                json!("skipped: give --postgres-url postgres://…/empty_db"),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(serde_json::Value::Object(out))
}

async fn measure(location: &StoreLocation) -> anyhow::Result<serde_json::Value> {
    let store = ember_store::open(location, &Default::default())
        .await
        .with_context(|| format!("opening {location}"))?;
    // As emberd does: a registered node's writes carry its owner check.
    store
        .register_node(&format!("bench-{}", std::process::id()), 30_000)
        .await?;
    let mut run_ms = Vec::with_capacity(RUNS);
    let mut get_ms = Vec::with_capacity(RUNS);
    let tag = std::process::id();
    for i in 0..RUNS {
        let id = format!("bench-{tag}-{i}");
        let started = Instant::now();
        one_run(&*store, &id).await?;
        run_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        store.microvm(&id).await?;
        get_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(json!({
        "backend": store.backend(),
        "run_store_work_ms_p50": pct(&run_ms, 50.0),
        "run_store_work_ms_p99": pct(&run_ms, 99.0),
        "get_ms_p50": pct(&get_ms, 50.0),
        "get_ms_p99": pct(&get_ms, 99.0),
    }))
}

async fn one_run(store: &dyn StateStore, id: &str) -> anyhow::Result<()> {
    let now = 1.0;
    store.claim_idempotency("RunMicrovm", id, "h", now).await?;
    store
        .insert_microvm(&MicrovmRecord {
            id: id.into(),
            image: "bench".into(),
            version: 1,
            image_arn: "arn:aws:lambda:us-east-1:123456789012:microvm-image:bench".into(),
            spec: "{}".into(),
            state: "PENDING".into(),
            state_reason: None,
            endpoint: "http://127.0.0.1:1".into(),
            proxy_addr: None,
            started_at: now,
            terminated_at: None,
            last_active_at: now,
            suspended_at: None,
            updated_at: now,
            owner_node: None,
        })
        .await?;
    store
        .update_microvm(
            id,
            &MicrovmUpdate {
                state: "RUNNING",
                state_reason: Some(None),
                now,
                ..Default::default()
            },
        )
        .await?;
    store
        .record_idempotent_reply("RunMicrovm", id, "h", "{}", now)
        .await?;
    Ok(())
}
