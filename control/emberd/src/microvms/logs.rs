//! The app's stdout/stderr, per microVM. The guest writes them to
//! [`ember_builder::APP_LOG`] on its own disk; emberd copies what is new
//! into `DATA/logs/microvms/<id>.log` when someone reads the log and
//! before the VM suspends or terminates, so the host copy survives both
//! and idle VMs are never woken to ship logs.

use std::io::Write;
use std::path::Path;

use ember_vmm::agent::ExecRequest;
use ember_vmm::Vm;

use super::instance::Instance;
use super::Microvms;

/// The host copy stops growing here; a note says so.
pub const MAX_LOG_BYTES: u64 = 64 << 20;
/// How long one copy may take.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most copied in one go; the rest comes with the next read.
const CHUNK_BYTES: u64 = 4 << 20;

impl Microvms {
    /// Copies what the app wrote since the last copy. Best effort: a log
    /// that cannot be read is logged, never an error for the caller.
    pub async fn sync_logs(&self, inst: &Instance, vm: &dyn Vm) {
        let _one_at_a_time = inst.log_sync.lock().await;
        let path = self.log_path(&inst.id);
        // A guest that does not answer must not hold up a suspend.
        match tokio::time::timeout(SYNC_TIMEOUT, copy_new(vm, &path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(microvm = %inst.id, "copying the app log: {e}"),
            Err(_) => tracing::warn!(microvm = %inst.id, "copying the app log timed out"),
        }
    }

    /// Copies new log lines if the VM runs now.
    pub async fn refresh_logs(&self, id: &str) {
        let Some(inst) = self.instance(id) else {
            return;
        };
        // A guest the host holds paused cannot answer; what was copied stands.
        if let Some(vm) = inst.vm().filter(|_| !inst.is_host_paused()) {
            self.sync_logs(&inst, vm.as_ref()).await;
        }
    }
}

async fn copy_new(vm: &dyn Vm, path: &Path) -> Result<(), String> {
    let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if have >= MAX_LOG_BYTES {
        return Ok(());
    }
    let script = format!(
        "tail -c +{} {} 2>/dev/null | head -c {}",
        have + 1,
        ember_builder::APP_LOG,
        CHUNK_BYTES.min(MAX_LOG_BYTES - have)
    );
    let out = vm
        .agent()
        .exec(ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script],
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    if out.stdout.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    f.write_all(&out.stdout).map_err(|e| e.to_string())?;
    if have + out.stdout.len() as u64 >= MAX_LOG_BYTES {
        let _ = f.write_all(b"\n[ember: log truncated at 64 MiB]\n");
    }
    Ok(())
}
