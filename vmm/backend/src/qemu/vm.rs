//! One QEMU process: launch (cold or incoming), pause, snapshot, stop.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::command::{
    self, LaunchSpec, RamBacking, AGENT_SOCKET, CONSOLE_LOG, DISK, MEMORY, QMP_SOCKET,
};
use super::qmp::Qmp;
use super::QemuHypervisor;
use super::{files, qcow2};
use crate::agent::AgentClient;
use crate::backend::{Accel, RestoreMemory, Vm, VmConfig, VmStats};
use crate::snapshot::{FileRecord, MemoryImage, SnapshotInfo, SnapshotManifest};
use crate::VmmError;

const STATE_FILE: &str = "state.bin";
/// The name a snapshot's state file descriptor gets inside QEMU.
const STATE_FD_NAME: &str = "snapshot-state";
/// The fd number the device-state file is inherited on by a restoring QEMU.
const INCOMING_FD: i32 = 3;
/// Migration is local: lift QEMU's default 128 MiB/s cap.
const MIGRATION_BANDWIDTH: u64 = 64 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Memory {
    /// `dir/memory.ram`, shared: a snapshot copies it.
    OwnFile,
    /// Private mapping of another file, or anonymous: RAM goes in-stream.
    Private,
}

pub struct QemuVm {
    name: String,
    dir: PathBuf,
    config: VmConfig,
    accel: Accel,
    qemu_version: String,
    memory: Memory,
    pid: u32,
    qmp: Qmp,
    agent: AgentClient,
    child: Mutex<Option<Child>>,
    state: Mutex<RunState>,
}

/// Owns a half-launched VM: on any error before `defuse`, kills the QEMU
/// process and removes the runtime directory, so a failed boot or restore
/// leaves nothing behind.
struct LaunchGuard {
    dir: PathBuf,
    child: Option<Child>,
}

impl LaunchGuard {
    fn defuse(mut self) -> Option<Child> {
        self.dir = PathBuf::new();
        self.child.take()
    }
}

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(super) async fn boot(
    hv: &QemuHypervisor,
    config: VmConfig,
    dir: PathBuf,
) -> Result<QemuVm, VmmError> {
    let mut guard = LaunchGuard {
        dir: dir.clone(),
        child: None,
    };
    qcow2::create_overlay(&config.rootfs, "raw", &dir.join(DISK))?;
    let mem_path = dir.join(MEMORY);
    std::fs::File::create(&mem_path)
        .and_then(|f| f.set_len(u64::from(config.mem_mib) << 20))
        .map_err(VmmError::io(format!("create {}", mem_path.display())))?;
    let spec = LaunchSpec {
        config: &config,
        accel: hv.accel,
        ram: RamBacking::SharedFile(&mem_path),
        tsc_khz: hv.tsc_khz,
        tcg_tb_size_mib: hv.config.tcg_tb_size_mib,
        incoming: false,
        boot_files_override: None,
    };
    let child = spawn(hv, &dir, &spec, None)?;
    let pid = child.id().unwrap_or(0);
    guard.child = Some(child);
    let booted = async {
        let qmp = connect_qmp(&dir, &mut guard).await?;
        let agent = connect_agent(
            &dir,
            &mut guard,
            hv.config.boot_timeout,
            "the guest agent after boot",
        )
        .await?;
        Ok::<_, VmmError>((qmp, agent))
    }
    .await;
    let (qmp, agent) = match booted {
        Ok(v) => v,
        Err(e) => return Err(explain(e, &dir, &mut guard).await),
    };
    tracing::info!(vm = %config.name, pid, "booted");
    Ok(QemuVm {
        name: config.name.clone(),
        dir,
        accel: hv.accel,
        qemu_version: hv.qemu_version.clone(),
        memory: Memory::OwnFile,
        pid,
        qmp,
        agent,
        child: Mutex::new(guard.defuse()),
        state: Mutex::new(RunState::Running),
        config,
    })
}

pub(super) async fn restore(
    hv: &QemuHypervisor,
    name: &str,
    manifest: SnapshotManifest,
    snapshot_dir: &Path,
    dir: PathBuf,
    mode: RestoreMemory,
) -> Result<QemuVm, VmmError> {
    let t0 = Instant::now();
    let phase = |what: &str| tracing::debug!(vm = %name, ms = t0.elapsed().as_secs_f64() * 1e3, "restore: {what}");
    let mut guard = LaunchGuard {
        dir: dir.clone(),
        child: None,
    };
    let mut config = manifest.vm.clone();
    config.name = name.to_string();
    let resolve = |rec: &FileRecord| {
        crate::snapshot::resolve(snapshot_dir, &rec.name).ok_or_else(|| VmmError::Tool {
            tool: "snapshot",
            message: format!("unsafe file name {:?}", rec.name),
        })
    };
    let disk = resolve(&manifest.disk)?;
    let state = resolve(&manifest.device_state)?;
    let memory_file = match &manifest.memory {
        MemoryImage::File(rec) => Some(resolve(rec)?),
        MemoryImage::InStream => None,
    };
    // Consume takes the snapshot's own files (hard links: on failure the
    // snapshot is untouched); the other modes leave the snapshot pristine.
    let own_memory = dir.join(MEMORY);
    match mode {
        RestoreMemory::Consume => take_file(&disk, &dir.join(DISK))?,
        _ => qcow2::create_overlay(&disk, "qcow2", &dir.join(DISK))?,
    }
    let (ram, memory) = match (&memory_file, mode) {
        (None, _) => (RamBacking::Anonymous, Memory::Private),
        (Some(image), RestoreMemory::Clone) => (RamBacking::PrivateFile(image), Memory::Private),
        (Some(image), RestoreMemory::Copy) => {
            files::sparse_copy(image, &own_memory, files::Zeros::Keep)?;
            (RamBacking::SharedFile(&own_memory), Memory::OwnFile)
        }
        (Some(image), RestoreMemory::Consume) => {
            take_file(image, &own_memory)?;
            (RamBacking::SharedFile(&own_memory), Memory::OwnFile)
        }
    };
    phase("files in place");
    let spec = LaunchSpec {
        config: &config,
        accel: hv.accel,
        ram,
        tsc_khz: hv.tsc_khz,
        tcg_tb_size_mib: hv.config.tcg_tb_size_mib,
        incoming: true,
        boot_files_override: Some((&hv.restore_kernel.0, &hv.restore_kernel.1)),
    };
    let state_file =
        std::fs::File::open(&state).map_err(VmmError::io(format!("open {}", state.display())))?;
    let child = spawn(hv, &dir, &spec, Some(&state_file))?;
    drop(state_file);
    let pid = child.id().unwrap_or(0);
    guard.child = Some(child);
    let consumed = (mode == RestoreMemory::Consume).then_some(snapshot_dir);
    let (qmp, agent) = match resume_incoming(
        hv,
        &dir,
        &mut guard,
        memory_file.is_some(),
        consumed,
        &phase,
    )
    .await
    {
        Ok(v) => v,
        Err(e) => return Err(explain(e, &dir, &mut guard).await),
    };
    phase("clock and RNG updated");
    if let Some(consumed) = consumed {
        // The VM runs on these files now (through its own links).
        let _ = std::fs::remove_dir_all(consumed);
    }
    tracing::info!(vm = %name, pid, snapshot = %snapshot_dir.display(), "restored");
    Ok(QemuVm {
        name: name.to_string(),
        dir,
        accel: hv.accel,
        qemu_version: hv.qemu_version.clone(),
        memory,
        pid,
        qmp,
        agent,
        child: Mutex::new(guard.defuse()),
        state: Mutex::new(RunState::Running),
        config,
    })
}

/// Loads the device state into a QEMU started with `-incoming defer`,
/// resumes it and greets the agent, telling it it was restored.
async fn resume_incoming(
    hv: &QemuHypervisor,
    dir: &Path,
    guard: &mut LaunchGuard,
    ignore_shared: bool,
    consume: Option<&Path>,
    phase: &impl Fn(&str),
) -> Result<(Qmp, AgentClient), VmmError> {
    let qmp = connect_qmp(dir, guard).await?;
    phase("monitor connected");
    set_migration_caps(&qmp, ignore_shared).await?;
    qmp.execute(
        "migrate-incoming",
        json!({"uri": format!("fd:{INCOMING_FD}")}),
    )
    .await?;
    wait_migration(
        &qmp,
        dir,
        guard,
        hv.config.restore_timeout,
        "the snapshot to load",
    )
    .await?;
    phase("device state loaded");
    if let Some(snapshot_dir) = consume {
        // Once the guest runs it writes into the snapshot's files: the
        // snapshot stops being one before that can happen.
        let manifest = snapshot_dir.join(crate::snapshot::MANIFEST_FILE);
        std::fs::remove_file(&manifest)
            .map_err(VmmError::io(format!("consume {}", manifest.display())))?;
    }
    qmp.execute("cont", json!({})).await?;
    let agent = connect_agent(
        dir,
        guard,
        hv.config.restore_timeout,
        "the guest agent after restore",
    )
    .await?;
    phase("agent answered");
    agent.notify_restored().await?;
    Ok((qmp, agent))
}

/// A launch step failed: if QEMU is dying, its own words explain it better
/// than a reset monitor socket does.
async fn explain(err: VmmError, dir: &Path, guard: &mut LaunchGuard) -> VmmError {
    if let Some(child) = guard.child.as_mut() {
        let _ = tokio::time::timeout(Duration::from_millis(500), child.wait()).await;
    }
    exited(dir, guard).unwrap_or(err)
}

fn spawn(
    hv: &QemuHypervisor,
    dir: &Path,
    spec: &LaunchSpec<'_>,
    incoming: Option<&std::fs::File>,
) -> Result<Child, VmmError> {
    let mut cmd = Command::new(&hv.config.qemu_binary);
    cmd.args(command::qemu_args(spec))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("qemu.stderr"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .kill_on_drop(false);
    let incoming_fd = incoming.map(|f| f.as_raw_fd());
    let die_with_parent = hv.config.die_with_parent;
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (prctl, fcntl, dup2) on values copied in.
    unsafe {
        cmd.pre_exec(move || {
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec on the copy; when the file already
            // sits on the target fd, dup2 is a no-op, so clear it directly.
            let failed = match incoming_fd {
                Some(fd) if fd == INCOMING_FD => libc::fcntl(fd, libc::F_SETFD, 0) < 0,
                Some(fd) => libc::dup2(fd, INCOMING_FD) < 0,
                None => false,
            };
            if failed {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| VmmError::Spawn {
        program: hv.config.qemu_binary.display().to_string(),
        source,
    })
}

/// Error for a QEMU that died during launch, with its last words.
fn exited(dir: &Path, guard: &mut LaunchGuard) -> Option<VmmError> {
    let child = guard.child.as_mut()?;
    match child.try_wait() {
        Ok(Some(status)) => {
            let stderr = files::tail(&dir.join("qemu.stderr"), 10);
            let console = files::tail(&dir.join(CONSOLE_LOG), 20);
            Some(VmmError::QemuExited {
                status: status.to_string(),
                console_tail: format!("{stderr}\n{console}").trim().to_string(),
            })
        }
        _ => None,
    }
}

async fn connect_qmp(dir: &Path, guard: &mut LaunchGuard) -> Result<Qmp, VmmError> {
    let path = dir.join(QMP_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if path.exists() {
            match Qmp::connect(&path).await {
                Ok(q) => return Ok(q),
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => {}
            }
        }
        if let Some(e) = exited(dir, guard) {
            return Err(e);
        }
        if Instant::now() >= deadline {
            return Err(timeout("the QEMU monitor", Duration::from_secs(10), dir));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn connect_agent(
    dir: &Path,
    guard: &mut LaunchGuard,
    limit: Duration,
    what: &'static str,
) -> Result<AgentClient, VmmError> {
    let stream = UnixStream::connect(dir.join(AGENT_SOCKET))
        .await
        .map_err(VmmError::io("connect to the agent socket"))?;
    match AgentClient::handshake(stream, limit).await {
        Ok(a) => Ok(a),
        Err(e) => Err(exited(dir, guard).unwrap_or(match e {
            crate::agent::AgentError::Timeout(_) => timeout(what, limit, dir),
            other => other.into(),
        })),
    }
}

fn timeout(what: &'static str, limit: Duration, dir: &Path) -> VmmError {
    VmmError::Timeout {
        what,
        seconds: limit.as_secs(),
        console_tail: files::tail(&dir.join(CONSOLE_LOG), 20),
    }
}

async fn set_migration_caps(qmp: &Qmp, ignore_shared: bool) -> Result<(), VmmError> {
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
async fn wait_migration(
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

impl QemuVm {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.pid
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
        let mut guard = LaunchGuard {
            dir: PathBuf::new(),
            child: None,
        };
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
        let place =
            |name: &str, zeros: files::Zeros| -> Result<FileRecord, VmmError> {
                let (src, dst) = (self.dir.join(name), out.join(name));
                match transfer {
                    Transfer::Copy => {
                        files::sparse_copy(&src, &dst, zeros)?;
                    }
                    Transfer::Move => std::fs::rename(&src, &dst).map_err(VmmError::io(
                        format!("move {} into {}", src.display(), out.display()),
                    ))?,
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
        let manifest = SnapshotManifest {
            vm: self.config.clone(),
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

    /// Ends the QEMU process and forgets the VM's runtime directory.
    async fn end_process(&self, state: &mut RunState) -> Result<(), VmmError> {
        let mut child = self.child.lock().await;
        if let Some(mut c) = child.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.qmp.execute("quit", json!({})))
                    .await;
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
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

fn create_snapshot_dir(dir: &Path) -> Result<PathBuf, VmmError> {
    let dir = super::absolute(dir)?;
    std::fs::create_dir(&dir).map_err(VmmError::io(format!(
        "create snapshot directory {}",
        dir.display()
    )))?;
    Ok(dir)
}

/// Gives the VM `src` as `dst` without copying (a hard link), or by a
/// copy where the two are on different filesystems.
fn take_file(src: &Path, dst: &Path) -> Result<(), VmmError> {
    match std::fs::hard_link(src, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            files::sparse_copy(src, dst, files::Zeros::Keep).map(|_| ())
        }
        Err(e) => Err(VmmError::Io {
            context: format!("link {} to {}", src.display(), dst.display()),
            source: e,
        }),
    }
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
        self.dir.join(CONSOLE_LOG)
    }

    async fn pause(&self) -> Result<(), VmmError> {
        self.set_run_state(RunState::Paused).await
    }

    async fn resume(&self) -> Result<(), VmmError> {
        self.set_run_state(RunState::Running).await
    }

    async fn snapshot(&self, dir: &Path) -> Result<SnapshotInfo, VmmError> {
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
        let started = Instant::now();
        let dir = create_snapshot_dir(dir)?;
        let device_state = match self.save_device_state(&dir).await {
            Ok(rec) => rec,
            Err(e) => {
                // Nothing moved yet: the VM is intact (paused).
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
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

    fn stats(&self) -> Result<VmStats, VmmError> {
        let (rss_bytes, private_bytes) =
            super::host::rss_bytes(self.pid).map_err(VmmError::io("read VM process status"))?;
        Ok(VmStats {
            pid: self.pid,
            rss_bytes,
            private_bytes,
        })
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
    /// nobody can reach; daemons that re-attach keep the handle alive.
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.try_lock() {
            if let Some(c) = child.as_mut() {
                let _ = c.start_kill();
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}
