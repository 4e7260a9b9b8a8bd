//! Starting QEMU: a cold boot, or a restore into a process waiting for
//! incoming state. Every failure path leaves no process and no files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::cgroup::VmCgroup;
use super::command::{
    LaunchSpec, RamBacking, AGENT_SOCKET, CONSOLE_LOG, DISK, JAIL_DIR, MEMORY, QMP_SOCKET,
};
use super::migration::{set_migration_caps, wait_migration};
use super::process::QemuProcess;
use super::qmp::Qmp;
use super::runtime_record::{process_start_ticks, unix_ms_now, RuntimeRecord};
use super::spawn::spawn_qemu;
use super::vm::{Memory, QemuVm, RunState};
use super::QemuHypervisor;
use super::{files, qcow2, vm_files};
use crate::agent::AgentClient;
use crate::backend::{RestoreDisk, RestoreMemory, RestoreOptions, VmConfig};
use crate::snapshot::{FileRecord, MemoryImage, SnapshotManifest};
use crate::VmmError;

/// Owns a half-launched VM: on any error before `defuse`, kills the QEMU
/// process and removes the runtime directory, so a failed boot or restore
/// leaves nothing behind (and its id is free again with its folder gone).
pub(super) struct LaunchGuard {
    pub(super) dir: PathBuf,
    pub(super) child: Option<QemuProcess>,
    pub(super) cgroup: Option<VmCgroup>,
}

impl LaunchGuard {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            child: None,
            cgroup: None,
        }
    }

    pub(super) fn defuse(mut self) -> (Option<QemuProcess>, Option<VmCgroup>) {
        self.dir = PathBuf::new();
        (self.child.take(), self.cgroup.take())
    }
}

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        let cgroup = self.cgroup.take();
        match self.child.take() {
            Some(child) => end_in_background(child, cgroup),
            None => {
                if let Some(c) = cgroup {
                    c.remove_now();
                }
            }
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Kills a VM's process where nothing can wait for it (`Drop`), and
/// removes its cgroup once it is gone.
pub(super) fn end_in_background(mut process: QemuProcess, cgroup: Option<VmCgroup>) {
    process.start_kill();
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                process.kill().await;
                if let Some(c) = cgroup {
                    c.remove().await;
                }
            });
        }
        Err(_) => {
            if let Some(c) = cgroup {
                c.remove_now();
            }
        }
    }
}

pub(super) async fn boot(
    hv: &QemuHypervisor,
    config: VmConfig,
    dir: PathBuf,
) -> Result<QemuVm, VmmError> {
    let mut guard = LaunchGuard::new(dir.clone());
    let jail_dir = dir.join(JAIL_DIR);
    let ids = claim_ids(hv, &jail_dir)?;
    let format = qcow2::detect_format(&config.rootfs)?;
    let disk = jail_dir.join(DISK);
    qcow2::create_overlay(&config.rootfs, format, &disk)?;
    let mem_path = jail_dir.join(MEMORY);
    std::fs::File::create(&mem_path)
        .and_then(|f| f.set_len(u64::from(config.mem_mib) << 20))
        .map_err(VmmError::io(format!("create {}", mem_path.display())))?;
    files::reserve_blocks(&mem_path)?;
    vm_files::give(&[&disk, &mem_path], ids)?;
    let spec = LaunchSpec {
        config: &config,
        accel: hv.accel,
        ram: RamBacking::SharedFile(&mem_path),
        tsc_khz: hv.tsc_khz,
        tcg_tb_size_mib: hv.config.tcg_tb_size_mib,
        incoming: false,
        boot_files_override: None,
    };
    guard.cgroup = vm_cgroup(hv, &config)?;
    let spawned = spawn_qemu(hv, &dir, &jail_dir, &spec, None, guard.cgroup.as_ref(), ids)?;
    let pid = spawned.pid;
    guard.child = Some(spawned.process);
    check_cgroup(&guard, pid)?;
    let isolation = (guard.cgroup.clone(), Some(ids));
    write_record(hv, &config, &dir, pid, Memory::OwnFile, isolation)?;
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
    Ok(running_vm(
        hv,
        config,
        dir,
        (pid, Memory::OwnFile),
        (qmp, agent),
        guard,
        ids,
    ))
}

/// A fresh uid and gid for the VM, which now own its writable folder.
fn claim_ids(hv: &QemuHypervisor, jail_dir: &Path) -> Result<(u32, u32), VmmError> {
    let id = hv.ids.claim(jail_dir)?;
    Ok((id, id))
}

/// Leaves what `attach` needs to take the VM over in its runtime directory,
/// as soon as there is a process to take over.
fn write_record(
    hv: &QemuHypervisor,
    config: &VmConfig,
    dir: &Path,
    pid: u32,
    memory: Memory,
    (cgroup, run_as): (Option<VmCgroup>, Option<(u32, u32)>),
) -> Result<(), VmmError> {
    let record = RuntimeRecord {
        pid,
        start_ticks: process_start_ticks(pid).ok_or_else(|| VmmError::ProcessExited {
            status: "gone right after it started".into(),
            console_tail: files::tail(&dir.join("qemu.stderr"), 10),
        })?,
        vm: config.clone(),
        memory,
        accel: hv.accel,
        qemu_version: hv.qemu_version.clone(),
        started_unix_ms: unix_ms_now(),
        checkpoints: Vec::new(),
        cgroup,
        run_as,
    };
    record.write(dir).map_err(VmmError::Record)
}

/// The launched VM, owning its process from now on.
fn running_vm(
    hv: &QemuHypervisor,
    config: VmConfig,
    dir: PathBuf,
    (pid, memory): (u32, Memory),
    (qmp, agent): (Qmp, AgentClient),
    guard: LaunchGuard,
    ids: (u32, u32),
) -> QemuVm {
    let (child, cgroup) = guard.defuse();
    QemuVm {
        cgroup,
        ids,
        keep_on_drop: !hv.config.die_with_parent,
        name: config.name.clone(),
        dir,
        accel: hv.accel,
        qemu_version: hv.qemu_version.clone(),
        memory,
        pid,
        qmp,
        agent,
        process: Mutex::new(child),
        state: Mutex::new(RunState::Running),
        checkpoints: Mutex::new(Vec::new()),
        prefetch_working_set: hv.config.prefetch_working_set,
        config,
    }
}

pub(super) async fn restore(
    hv: &QemuHypervisor,
    name: &str,
    manifest: SnapshotManifest,
    snapshot_dir: &Path,
    dir: PathBuf,
    options: RestoreOptions,
) -> Result<QemuVm, VmmError> {
    let mode = options.memory;
    let t0 = Instant::now();
    let phase = |what: &str| tracing::debug!(vm = %name, ms = t0.elapsed().as_secs_f64() * 1e3, "restore: {what}");
    let mut guard = LaunchGuard::new(dir.clone());
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
    let jail_dir = dir.join(JAIL_DIR);
    let ids = claim_ids(hv, &jail_dir)?;
    // Consume takes the snapshot's own files (hard links: on failure the
    // snapshot is untouched); the other modes leave the snapshot pristine.
    let own_disk = jail_dir.join(DISK);
    let own_memory = jail_dir.join(MEMORY);
    match (mode, options.disk) {
        (RestoreMemory::Consume, _) => take_file(&disk, &own_disk)?,
        // A copy keeps the snapshot layer's own backing file (the layer
        // below it), so the VM no longer needs the snapshot directory.
        (_, RestoreDisk::Copied) => {
            files::sparse_copy(&disk, &own_disk, files::Zeros::Keep)?;
        }
        (_, RestoreDisk::Layered) => qcow2::create_overlay(&disk, "qcow2", &own_disk)?,
    }
    // A Clone would map the snapshot's image privately, but QEMU 7.2 opens
    // even a private mapping's file read-write, which the VM's uid may not
    // do to a file every clone shares: the jailed clone gets its own copy
    // (sparse, so only the pages the snapshot holds are copied).
    let (ram, memory) = match (&memory_file, mode) {
        (None, _) => (RamBacking::Anonymous, Memory::Private),
        (Some(image), RestoreMemory::Clone | RestoreMemory::Copy) => {
            files::sparse_copy(image, &own_memory, files::Zeros::Keep)?;
            (RamBacking::SharedFile(&own_memory), Memory::OwnFile)
        }
        (Some(image), RestoreMemory::Consume) => {
            take_file(image, &own_memory)?;
            // Read in the background while QEMU starts: the pages the
            // guest touched before its suspend, in file order.
            if hv.config.prefetch_working_set {
                let (ram, _) = vm_files::open_regular(&own_memory)?;
                let bytes = super::working_set::prefetch(snapshot_dir, &ram);
                tracing::debug!(vm = %name, bytes, "working set prefetch asked");
            }
            (RamBacking::SharedFile(&own_memory), Memory::OwnFile)
        }
    };
    let mut given: Vec<&Path> = vec![&own_disk];
    if memory == Memory::OwnFile {
        files::reserve_blocks(&own_memory)?;
        given.push(&own_memory);
    }
    vm_files::give(&given, ids)?;
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
    guard.cgroup = vm_cgroup(hv, &config)?;
    let spawned = spawn_qemu(
        hv,
        &dir,
        &jail_dir,
        &spec,
        Some(&state_file),
        guard.cgroup.as_ref(),
        ids,
    )?;
    drop(state_file);
    let pid = spawned.pid;
    guard.child = Some(spawned.process);
    check_cgroup(&guard, pid)?;
    let isolation = (guard.cgroup.clone(), Some(ids));
    write_record(hv, &config, &dir, pid, memory.clone(), isolation)?;
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
    Ok(running_vm(
        hv,
        config,
        dir,
        (pid, memory),
        (qmp, agent),
        guard,
        ids,
    ))
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
        json!({"uri": format!("fd:{}", super::command::INCOMING_FD)}),
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
        child.wait_exit(Duration::from_millis(500)).await;
    }
    exited(dir, guard).unwrap_or(err)
}

/// The VM's cgroup, when the backend places VMs in cgroups; a VM whose
/// cgroup cannot be made does not start.
fn vm_cgroup(hv: &QemuHypervisor, config: &VmConfig) -> Result<Option<VmCgroup>, VmmError> {
    let Some(cgroups) = hv.cgroups.as_ref() else {
        return Ok(None);
    };
    cgroups
        .create(&config.name, config.mem_mib)
        .map(Some)
        .map_err(|e| VmmError::Tool {
            tool: "cgroup",
            message: format!("could not give the VM its cgroup, so it does not start: {e}"),
        })
}

/// The child joined its cgroup before anything else (or failed its
/// launch); checked once more from outside.
fn check_cgroup(guard: &LaunchGuard, pid: u32) -> Result<(), VmmError> {
    match &guard.cgroup {
        Some(c) if !c.contains(pid) => Err(VmmError::Tool {
            tool: "cgroup",
            message: format!("QEMU (pid {pid}) is not in its cgroup {:?}", c.dirs),
        }),
        _ => Ok(()),
    }
}

/// Error for a QEMU that died during launch, with its last words.
pub(super) fn exited(dir: &Path, guard: &mut LaunchGuard) -> Option<VmmError> {
    let status = guard.child.as_mut()?.try_exit()?;
    let stderr = files::tail(&dir.join("qemu.stderr"), 10);
    let console = files::tail(&dir.join(JAIL_DIR).join(CONSOLE_LOG), 20);
    Some(VmmError::ProcessExited {
        status,
        console_tail: format!("{stderr}\n{console}").trim().to_string(),
    })
}

async fn connect_qmp(dir: &Path, guard: &mut LaunchGuard) -> Result<Qmp, VmmError> {
    let path = dir.join(QMP_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The socket exists from the start (the backend bound it); the
        // greeting comes once QEMU is up.
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, Qmp::connect(&path)).await {
            Ok(Ok(q)) => return Ok(q),
            Ok(Err(e)) if Instant::now() >= deadline => return Err(e.into()),
            _ => {}
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

pub(super) fn timeout(what: &'static str, limit: Duration, dir: &Path) -> VmmError {
    VmmError::Timeout {
        what,
        seconds: limit.as_secs(),
        console_tail: files::tail(&dir.join(JAIL_DIR).join(CONSOLE_LOG), 20),
    }
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
