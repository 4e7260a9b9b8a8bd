//! One running QEMU process behind the `Vm` trait: pause, resume,
//! snapshot, suspend, stop.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;

use super::cgroup::VmCgroup;
use super::command::{CONSOLE_LOG, DISK, JAIL_DIR, MEMORY};
use super::launch::LaunchGuard;
use super::migration::{set_migration_caps, wait_migration};
use super::process::QemuProcess;
use super::qmp::Qmp;
use super::runtime_record::RuntimeRecord;
use super::{files, vm_files};
use crate::agent::AgentClient;
use crate::backend::{Accel, HostPause, Isolation, Vm, VmConfig, VmStats};
use crate::snapshot::{FileRecord, MemoryImage, SnapshotInfo, SnapshotManifest};
use crate::VmmError;

const STATE_FILE: &str = "state.bin";
/// The name a snapshot's state file descriptor gets inside QEMU.
const STATE_FD_NAME: &str = "snapshot-state";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunState {
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Memory {
    /// `dir/memory.ram`, shared: a snapshot copies it.
    OwnFile,
    /// Private mapping of another file, or anonymous: RAM goes in-stream.
    Private,
}

pub struct QemuVm {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) config: VmConfig,
    pub(super) accel: Accel,
    pub(super) qemu_version: String,
    pub(super) memory: Memory,
    pub(super) pid: u32,
    pub(super) qmp: Qmp,
    pub(super) agent: AgentClient,
    pub(super) process: Mutex<Option<QemuProcess>>,
    pub(super) state: Mutex<RunState>,
    /// Dropping the handle leaves the VM running, for a later `attach`
    /// (the backend's `die_with_parent` is off).
    pub(super) keep_on_drop: bool,
    /// Removed once the process is gone.
    pub(super) cgroup: Option<VmCgroup>,
    /// The uid and gid its QEMU runs as, which own its writable folder
    /// (and so are held for it until that folder is gone).
    pub(super) ids: (u32, u32),
    /// Disk layers frozen by `checkpoint_disk`; once any exist, the disk is
    /// a chain inside the runtime folder that snapshots cannot carry.
    pub(super) checkpoints: Mutex<Vec<PathBuf>>,
    /// Record the working set at suspend (the backend's setting).
    pub(super) prefetch_working_set: bool,
}

impl QemuVm {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The VM's writable folder, the only one its QEMU may write.
    fn jail_dir(&self) -> PathBuf {
        self.dir.join(JAIL_DIR)
    }

    /// Moves between running and paused; a no-op when already there.
    async fn set_run_state(&self, want: RunState) -> Result<(), VmmError> {
        let mut state = self.state.lock().await;
        if *state == RunState::Stopped {
            return Err(VmmError::WrongState("stopped"));
        }
        if *state != want {
            let command = if want == RunState::Running {
                "cont"
            } else {
                "stop"
            };
            self.qmp.execute(command, json!({})).await?;
            *state = want;
        }
        Ok(())
    }

    /// Pauses the VM and writes its device state (and, for privately
    /// mapped RAM, its memory) into `out/state.bin`.
    async fn save_device_state(&self, out: &Path) -> Result<FileRecord, VmmError> {
        self.pause().await?;
        set_migration_caps(&self.qmp, self.memory == Memory::OwnFile).await?;
        let state = out.join(STATE_FILE);
        // QEMU gets the open file itself: its sandbox forbids spawning the
        // shell an `exec:` migration would need.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&state)
            .map_err(VmmError::io(format!("create {}", state.display())))?;
        self.qmp
            .execute_with_fd("getfd", json!({"fdname": STATE_FD_NAME}), file.as_fd())
            .await?;
        drop(file);
        self.qmp
            .execute("migrate", json!({"uri": format!("fd:{STATE_FD_NAME}")}))
            .await?;
        let mut guard = LaunchGuard::new(PathBuf::new());
        let res = wait_migration(
            &self.qmp,
            &self.dir,
            &mut guard,
            Duration::from_secs(300),
            "the snapshot to be written",
        )
        .await;
        guard.defuse();
        res?;
        Ok(FileRecord {
            name: STATE_FILE.into(),
            size: file_len(&state)?,
            crc32: Some(crate::snapshot::crc32_file(&state)?),
        })
    }

    /// Puts the VM's memory image and disk overlay into `out`: copies while
    /// the VM lives on, moves once its process is gone. `stop` flushed the
    /// block layer, so the overlay is consistent either way.
    fn collect_files(
        &self,
        out: &Path,
        transfer: Transfer,
    ) -> Result<(MemoryImage, FileRecord), VmmError> {
        let place = |name: &str, zeros: files::Zeros| -> Result<FileRecord, VmmError> {
            let (src, dst) = (self.jail_dir().join(name), out.join(name));
            match transfer {
                // `sparse_copy` opens without following symlinks.
                Transfer::Copy => {
                    files::sparse_copy(&src, &dst, zeros)?;
                }
                // The process is gone: check what the VM left under
                // that name, make it root's, then move it.
                Transfer::Move => {
                    vm_files::take_back(&src, self.ids.0)?;
                    if name == MEMORY {
                        files::release_unwritten(&src)?;
                    }
                    std::fs::rename(&src, &dst).map_err(VmmError::io(format!(
                        "move {} into {}",
                        src.display(),
                        out.display()
                    )))?
                }
            }
            Ok(FileRecord {
                name: name.into(),
                size: file_len(&dst)?,
                crc32: None,
            })
        };
        let memory = match self.memory {
            Memory::OwnFile => MemoryImage::File(place(MEMORY, files::Zeros::Skip)?),
            Memory::Private => MemoryImage::InStream,
        };
        Ok((memory, place(DISK, files::Zeros::Keep)?))
    }

    fn write_manifest(
        &self,
        out: &Path,
        device_state: FileRecord,
        memory: MemoryImage,
        disk: FileRecord,
        started: Instant,
    ) -> Result<SnapshotInfo, VmmError> {
        // A restore boots the stub kernel and takes the snapshot's own
        // disk: the files this VM booted from mean nothing there, and
        // would tie a snapshot that moves to paths of this host.
        let vm = VmConfig {
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            rootfs: PathBuf::new(),
            ..self.config.clone()
        };
        let manifest = SnapshotManifest {
            vm,
            accel: self.accel,
            vmm_version: self.qemu_version.clone(),
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            memory,
            device_state,
            disk,
        };
        manifest.write(out)?;
        let memory_bytes = match &manifest.memory {
            MemoryImage::File(rec) => files::allocated_bytes(&out.join(&rec.name)),
            MemoryImage::InStream => 0,
        };
        Ok(SnapshotInfo {
            dir: out.to_path_buf(),
            memory_bytes,
            device_state_bytes: manifest.device_state.size,
            disk_bytes: files::allocated_bytes(&out.join(DISK)),
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Writes the pages the stopped guest had touched into `dir` for the
    /// resume's prefetch. A hint: failing costs the prefetch only.
    fn record_working_set(&self, dir: &Path) {
        if self.memory != Memory::OwnFile || !self.prefetch_working_set {
            return;
        }
        let recorded =
            vm_files::open_checked(&self.jail_dir().join(MEMORY), self.ids.0).and_then(|ram| {
                super::working_set::record(
                    self.pid,
                    &ram,
                    &dir.join(super::working_set::WORKING_SET),
                )
                .map_err(VmmError::io("record the working set"))
            });
        match recorded {
            Ok(pages) => tracing::debug!(vm = %self.name, pages, "working set recorded"),
            Err(e) => tracing::warn!(vm = %self.name, "no working set recorded: {e}"),
        }
    }

    /// Rewrites the runtime record `attach` reads, after a change to it.
    fn update_record(&self, change: impl FnOnce(&mut RuntimeRecord)) -> Result<(), VmmError> {
        let mut record = RuntimeRecord::load(&self.dir).map_err(VmmError::Record)?;
        change(&mut record);
        record.write(&self.dir).map_err(VmmError::Record)
    }

    async fn refuse_if_checkpointed(&self) -> Result<(), VmmError> {
        if !self.checkpoints.lock().await.is_empty() {
            return Err(VmmError::WrongState(
                "running on a checkpointed disk chain (use checkpoint_disk for its layers)",
            ));
        }
        Ok(())
    }

    /// Ends the QEMU process and forgets the VM's runtime directory.
    async fn end_process(&self, state: &mut RunState) -> Result<(), VmmError> {
        let mut process = self.process.lock().await;
        if let Some(mut p) = process.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.qmp.execute("quit", json!({})))
                    .await;
            if !p.wait_exit(Duration::from_secs(5)).await {
                p.kill().await;
            }
            if let Some(c) = &self.cgroup {
                c.remove().await;
            }
        }
        *state = RunState::Stopped;
        Ok(())
    }
}

/// How a snapshot takes the VM's own files.
#[derive(Clone, Copy)]
enum Transfer {
    Copy,
    Move,
}

/// How long a QEMU whose monitor broke mid-save may take to be seen ended.
const EXIT_AFTER_MONITOR_LOSS: Duration = Duration::from_secs(2);

fn create_snapshot_dir(dir: &Path) -> Result<PathBuf, VmmError> {
    let dir = super::absolute(dir)?;
    std::fs::create_dir(&dir).map_err(VmmError::io(format!(
        "create snapshot directory {}",
        dir.display()
    )))?;
    Ok(dir)
}

fn file_len(path: &Path) -> Result<u64, VmmError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(VmmError::io(format!("stat {}", path.display())))
}

#[async_trait]
impl Vm for QemuVm {
    fn name(&self) -> &str {
        &self.name
    }

    fn agent(&self) -> &AgentClient {
        &self.agent
    }

    fn console_log(&self) -> PathBuf {
        self.jail_dir().join(CONSOLE_LOG)
    }

    async fn pause(&self) -> Result<(), VmmError> {
        self.set_run_state(RunState::Paused).await
    }

    async fn resume(&self) -> Result<(), VmmError> {
        // Always asked of QEMU, even when the VM should be running: a
        // `stop` that failed because QEMU died left the cached state at
        // Running, and a resume must not report a dead VM as continued.
        let mut state = self.state.lock().await;
        if *state == RunState::Stopped {
            return Err(VmmError::WrongState("stopped"));
        }
        self.qmp.execute("cont", json!({})).await?;
        *state = RunState::Running;
        Ok(())
    }

    async fn snapshot(&self, dir: &Path) -> Result<SnapshotInfo, VmmError> {
        self.refuse_if_checkpointed().await?;
        let started = Instant::now();
        let dir = create_snapshot_dir(dir)?;
        let result = async {
            let device_state = self.save_device_state(&dir).await?;
            let (memory, disk) = self.collect_files(&dir, Transfer::Copy)?;
            self.write_manifest(&dir, device_state, memory, disk, started)
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    async fn suspend(&self, dir: &Path) -> Result<SnapshotInfo, VmmError> {
        self.refuse_if_checkpointed().await?;
        let started = Instant::now();
        let dir = create_snapshot_dir(dir)?;
        let device_state = match self.save_device_state(&dir).await {
            Ok(rec) => rec,
            Err(e) => {
                // Nothing moved yet: the VM is intact (paused), unless
                // QEMU died. Its monitor closes before its exit shows, so
                // the exit gets a moment: `exited()` must then name it.
                if matches!(e, VmmError::Monitor(_)) {
                    self.wait_exited(EXIT_AFTER_MONITOR_LOSS).await;
                }
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        self.record_working_set(&dir);
        let mut state = self.state.lock().await;
        self.end_process(&mut state).await?;
        // From here on the VM exists only as files: on an error they stay
        // where they are (in its runtime dir or the snapshot dir), never deleted.
        let (memory, disk) = self.collect_files(&dir, Transfer::Move)?;
        let info = self.write_manifest(&dir, device_state, memory, disk, started)?;
        std::fs::remove_dir_all(&self.dir)
            .map_err(VmmError::io(format!("remove {}", self.dir.display())))?;
        tracing::info!(vm = %self.name, snapshot = %dir.display(), "suspended");
        Ok(info)
    }

    async fn park(&self) -> Result<u64, VmmError> {
        if self.memory != Memory::OwnFile {
            return Err(VmmError::WrongState(
                "running on memory that is not a file of its own",
            ));
        }
        self.refuse_if_checkpointed().await?;
        self.pause().await?;
        // Opened checked: the file lies in the VM's own folder.
        let ram = vm_files::open_checked(&self.jail_dir().join(MEMORY), self.ids.0)?;
        // Dirty pages are not reclaimed by an advice, only clean ones.
        let ram = tokio::task::spawn_blocking(move || ram.sync_data().map(|()| ram))
            .await
            .map_err(|e| VmmError::io("sync guest memory")(std::io::Error::other(e)))?
            .map_err(VmmError::io("sync guest memory"))?;
        let process = self.process.lock().await;
        let process = process.as_ref().ok_or(VmmError::WrongState("stopped"))?;
        let ranges = super::park::mapped_ranges(self.pid, &ram)
            .map_err(VmmError::io("read the VM process's mappings"))?;
        if ranges.is_empty() {
            return Err(VmmError::WrongState("not mapping its memory file"));
        }
        super::park::page_out(process.pidfd(), &ranges)
            .map_err(VmmError::io("release guest memory (process_madvise)"))?;
        let (rss, _) =
            super::host::rss_bytes(self.pid).map_err(VmmError::io("read VM process status"))?;
        tracing::debug!(vm = %self.name, rss, "parked");
        Ok(rss)
    }

    fn exited(&self) -> Option<String> {
        // Held only while the VM is being stopped: then it is ending anyway.
        let mut process = self.process.try_lock().ok()?;
        let how = process.as_mut().and_then(QemuProcess::try_exit)?;
        // A SIGKILL alone does not say who sent it; the cgroup can.
        match self.cgroup.as_ref().and_then(VmCgroup::oom_kills) {
            Some(n) if n > 0 => Some(format!(
                "{how}, by the kernel's OOM killer: the VM's cgroup reached its memory limit \
                 (guest memory plus overhead; page cache of the VM's files counts)"
            )),
            _ => Some(how),
        }
    }

    async fn wait_exited(&self, limit: Duration) -> Option<String> {
        if let Some(process) = self.process.lock().await.as_mut() {
            process.wait_exit(limit).await;
        }
        self.exited()
    }

    async fn host_pause(&self) -> Result<Option<HostPause>, VmmError> {
        if *self.state.lock().await == RunState::Stopped {
            return Ok(None);
        }
        super::host_pause::query(&self.qmp).await
    }

    fn isolation(&self) -> Isolation {
        Isolation {
            cgroup: self.cgroup.is_some(),
            run_as: Some(self.ids),
            jailed: true,
        }
    }

    fn stats(&self) -> Result<VmStats, VmmError> {
        let (rss_bytes, private_bytes) =
            super::host::rss_bytes(self.pid).map_err(VmmError::io("read VM process status"))?;
        Ok(VmStats {
            pid: self.pid,
            rss_bytes,
            private_bytes,
            cpu_ms: super::host::cpu_ms(self.pid).map_err(VmmError::io("read VM process stat"))?,
            cgroup_memory_bytes: self.cgroup.as_ref().and_then(VmCgroup::memory_bytes),
            cgroup_cpu_us: self.cgroup.as_ref().and_then(VmCgroup::cpu_us),
        })
    }

    async fn checkpoint_disk(&self, dest: &Path) -> Result<(), VmmError> {
        let state = self.state.lock().await;
        if *state == RunState::Stopped {
            return Err(VmmError::WrongState("stopped"));
        }
        let mut checkpoints = self.checkpoints.lock().await;
        let n = checkpoints.len();
        let jail_dir = self.jail_dir();
        let frozen = match n {
            0 => jail_dir.join(DISK),
            k => jail_dir.join(format!("disk-{k}.qcow2")),
        };
        let next = jail_dir.join(format!("disk-{}.qcow2", n + 1));
        // QEMU drains and flushes the active layer, makes it the read-only
        // backing file of a new empty one, and writes go there from now on.
        self.qmp
            .execute(
                "blockdev-snapshot-sync",
                json!({
                    "device": "root",
                    "snapshot-file": next.display().to_string(),
                    "format": "qcow2",
                }),
            )
            .await?;
        // A layer QEMU created names the one below by its runtime path;
        // point it at where that one was kept, so the chain outlives us.
        // The layer lies in the VM's folder: link the file checked, not the
        // name, and make the kept layer root's, read-only to the VMs that
        // will read it as a backing file.
        let layer = vm_files::open_checked(&frozen, self.ids.0)?;
        if let Some(below) = checkpoints.last() {
            super::qcow2::rebase_header(&frozen, below)?;
        }
        vm_files::link_open(&layer, dest)?;
        vm_files::own_as_root(&layer, dest, 0o644)?;
        checkpoints.push(dest.to_path_buf());
        self.update_record(|r| r.checkpoints = checkpoints.clone())
    }

    async fn stop_keeping_disk(&self, dest: &Path) -> Result<(), VmmError> {
        if dest.exists() {
            return Err(VmmError::io(format!("keep disk at {}", dest.display()))(
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        self.refuse_if_checkpointed().await?;
        let mut state = self.state.lock().await;
        if *state == RunState::Stopped {
            return Err(VmmError::WrongState("stopped"));
        }
        // `quit` closes the block devices, which flushes qcow2 metadata.
        self.end_process(&mut state).await?;
        let disk = self.jail_dir().join(DISK);
        vm_files::take_back(&disk, self.ids.0)?;
        std::fs::rename(&disk, dest).map_err(VmmError::io(format!(
            "move {} to {}",
            disk.display(),
            dest.display()
        )))?;
        std::fs::remove_dir_all(&self.dir)
            .map_err(VmmError::io(format!("remove {}", self.dir.display())))?;
        tracing::info!(vm = %self.name, disk = %dest.display(), "stopped, disk kept");
        Ok(())
    }

    async fn stop(&self) -> Result<(), VmmError> {
        let mut state = self.state.lock().await;
        if *state == RunState::Stopped {
            return Ok(());
        }
        self.end_process(&mut state).await?;
        std::fs::remove_dir_all(&self.dir)
            .map_err(VmmError::io(format!("remove {}", self.dir.display())))?;
        tracing::info!(vm = %self.name, "stopped");
        Ok(())
    }
}

impl Drop for QemuVm {
    /// A VM handle dropped without `stop` must not leak a QEMU that
    /// nobody can reach, unless the VM is meant to outlive its handle and be
    /// taken over by `attach` (the backend does not die with its parent).
    fn drop(&mut self) {
        if self.keep_on_drop {
            return;
        }
        if let Ok(mut process) = self.process.try_lock() {
            if let Some(p) = process.take() {
                super::launch::end_in_background(p, self.cgroup.take());
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}
