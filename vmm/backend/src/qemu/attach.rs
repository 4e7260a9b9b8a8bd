//! Taking over a VM that an earlier backend instance launched and left
//! running (`die_with_parent` off), typically after a daemon restart.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::command::{AGENT_SOCKET, JAIL_DIR, QMP_SOCKET};
use super::process::{Pidfd, QemuProcess};
use super::qmp::Qmp;
use super::runtime_record::{process_start_ticks, RecordError, RuntimeRecord};
use super::vm::{QemuVm, RunState};
use super::QemuHypervisor;
use crate::agent::AgentClient;
use crate::VmmError;

/// QEMU serves one monitor client at a time: a connection that gets no
/// greeting within this time means another handle still holds the VM.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn attach(hv: &QemuHypervisor, name: &str) -> Result<QemuVm, VmmError> {
    let dir = hv.vm_dir(name);
    let not_running = |reason: &str| VmmError::NotRunning {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if !dir.is_dir() {
        return Err(not_running("it has no runtime directory"));
    }
    let record = match RuntimeRecord::load(&dir) {
        Ok(r) => r,
        Err(RecordError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            // A launch writes the record right after QEMU starts: without
            // one, no process was ever started for this directory.
            remove_dir(&dir);
            return Err(not_running("it never started (removed its runtime files)"));
        }
        Err(e) => return Err(e.into()),
    };
    let Some(ids) = record.run_as else {
        // Launched by a backend from before every VM was jailed: its files
        // and sockets are laid out for that one. End it rather than trust
        // a QEMU that may have written its own runtime files.
        if let Ok(pidfd) = Pidfd::open(record.pid) {
            if process_start_ticks(record.pid) == Some(record.start_ticks) {
                QemuProcess::adopted(pidfd).kill().await;
            }
        }
        remove_dir(&dir);
        if let Some(c) = &record.cgroup {
            c.remove().await;
        }
        return Err(not_running(
            "it was started without a jail by an older emberd (ended it and removed its files)",
        ));
    };
    let Some(pidfd) = live_process(&record, &dir.join(JAIL_DIR)) else {
        remove_dir(&dir);
        if let Some(c) = &record.cgroup {
            c.remove().await;
        }
        return Err(not_running(&format!(
            "its QEMU process {} is gone (removed its runtime files)",
            record.pid
        )));
    };
    let mut process = QemuProcess::adopted(pidfd);
    let qmp = tokio::time::timeout(MONITOR_TIMEOUT, Qmp::connect(&dir.join(QMP_SOCKET)))
        .await
        .map_err(|_| {
            not_running("its monitor does not answer; is another handle to this VM still open?")
        })??;
    let status = qmp.execute("query-status", json!({})).await?;
    let state = match status.get("status").and_then(|s| s.as_str()) {
        Some("running") => RunState::Running,
        Some("paused") | Some("postmigrate") => RunState::Paused,
        other => {
            // Still loading a snapshot, or crashed: it never became (or no
            // longer is) a VM anyone can use.
            let other = other.unwrap_or("unknown").to_string();
            process.kill().await;
            remove_dir(&dir);
            if let Some(c) = &record.cgroup {
                c.remove().await;
            }
            return Err(not_running(&format!(
                "QEMU was in state {other:?} (killed it and removed its runtime files)"
            )));
        }
    };
    // The agent only answers a running guest; a paused VM runs for the
    // handshake and is paused again.
    if state == RunState::Paused {
        qmp.execute("cont", json!({})).await?;
    }
    let agent = handshake(&dir, hv.config.restore_timeout).await;
    if state == RunState::Paused {
        qmp.execute("stop", json!({})).await?;
    }
    let agent = agent?;
    tracing::info!(vm = %name, pid = record.pid, "attached");
    Ok(QemuVm {
        name: name.to_string(),
        dir,
        accel: record.accel,
        qemu_version: record.qemu_version,
        memory: record.memory,
        pid: record.pid,
        qmp,
        agent,
        process: Mutex::new(Some(process)),
        state: Mutex::new(state),
        keep_on_drop: !hv.config.die_with_parent,
        cgroup: record.cgroup,
        ids,
        checkpoints: Mutex::new(record.checkpoints),
        prefetch_working_set: hv.config.prefetch_working_set,
        config: record.vm,
    })
}

/// A pidfd for the recorded process if it still runs QEMU in `dir` (its
/// jail's working directory, which keeps its host path inside the jail):
/// the start time rules out a recycled pid, the working directory any
/// other process. Opened before the checks so the answer cannot go stale.
fn live_process(record: &RuntimeRecord, dir: &Path) -> Option<Pidfd> {
    let pidfd = Pidfd::open(record.pid).ok()?;
    if process_start_ticks(record.pid)? != record.start_ticks {
        return None;
    }
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", record.pid)).ok()?;
    (cwd == dir).then_some(pidfd)
}

async fn handshake(dir: &Path, limit: Duration) -> Result<AgentClient, VmmError> {
    let stream = UnixStream::connect(dir.join(AGENT_SOCKET))
        .await
        .map_err(VmmError::io("connect to the agent socket"))?;
    AgentClient::handshake(stream, limit)
        .await
        .map_err(|e| match e {
            crate::agent::AgentError::Timeout(_) => {
                super::launch::timeout("the guest agent of an attached VM", limit, dir)
            }
            other => other.into(),
        })
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a dead VM's files");
    }
}
