//! Starting QEMU: a cold boot, or a restore into a process waiting for
//! incoming state. Every failure path leaves no process and no files.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::cgroup::VmCgroup;
use super::command::{
    self, LaunchSpec, RamBacking, AGENT_SOCKET, CONSOLE_LOG, DISK, MEMORY, QMP_SOCKET,
};
use super::migration::{set_migration_caps, wait_migration};
use super::process::QemuProcess;
use super::qmp::Qmp;
use super::runtime_record::{process_start_ticks, unix_ms_now, RuntimeRecord};
use super::vm::{Memory, QemuVm, RunState};
use super::QemuHypervisor;
use super::{files, qcow2, unprivileged};
use crate::agent::AgentClient;
use crate::backend::{RestoreMemory, VmConfig};
use crate::snapshot::{FileRecord, MemoryImage, SnapshotManifest};
use crate::VmmError;

/// The fd number the device-state file is inherited on by a restoring QEMU.
const INCOMING_FD: i32 = 3;

/// Owns a half-launched VM: on any error before `defuse`, kills the QEMU
/// process and removes the runtime directory, so a failed boot or restore
/// leaves nothing behind.
pub(super) struct LaunchGuard {
    pub(super) dir: PathBuf,
    pub(super) child: Option<Child>,
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

    pub(super) fn defuse(mut self) -> (Option<Child>, Option<VmCgroup>) {
        self.dir = PathBuf::new();
        (self.child.take(), self.cgroup.take())
    }
}

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        let cgroup = self.cgroup.take();
        match self.child.take() {
            Some(child) => end_in_background(QemuProcess::Child(child), cgroup),
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
    let format = qcow2::detect_format(&config.rootfs)?;
    qcow2::create_overlay(&config.rootfs, format, &dir.join(DISK))?;
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
    guard.cgroup = vm_cgroup(hv, &config);
    let run_as = hv.run_as;
    if let Some(ids) = run_as {
        unprivileged::hand_over(&dir, &[MEMORY, DISK], ids)?;
    }
    let child = spawn(hv, &dir, &spec, None, guard.cgroup.as_ref(), run_as)?;
    let pid = child.id().unwrap_or(0);
    guard.child = Some(child);
    check_cgroup(&mut guard, pid);
    let isolation = (guard.cgroup.clone(), run_as);
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
        Memory::OwnFile,
        (qmp, agent),
        guard,
        run_as,
    ))
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
        start_ticks: process_start_ticks(pid).ok_or_else(|| VmmError::QemuExited {
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
    memory: Memory,
    (qmp, agent): (Qmp, AgentClient),
    guard: LaunchGuard,
    run_as: Option<(u32, u32)>,
) -> QemuVm {
    let (child, cgroup) = guard.defuse();
    QemuVm {
        cgroup,
        run_as,
        keep_on_drop: !hv.config.die_with_parent,
        name: config.name.clone(),
        dir,
        accel: hv.accel,
        qemu_version: hv.qemu_version.clone(),
        memory,
        pid: child.as_ref().and_then(Child::id).unwrap_or(0),
        qmp,
        agent,
        process: Mutex::new(child.map(QemuProcess::Child)),
        state: Mutex::new(RunState::Running),
        checkpoints: Mutex::new(Vec::new()),
        config,
    }
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
    guard.cgroup = vm_cgroup(hv, &config);
    // See `unprivileged` for why a privately mapped snapshot image keeps
    // QEMU root.
    let run_as = hv
        .run_as
        .filter(|_| !matches!(spec.ram, RamBacking::PrivateFile(_)));
    if let Some(ids) = run_as {
        unprivileged::hand_over(&dir, &[MEMORY, DISK], ids)?;
    }
    let child = spawn(
        hv,
        &dir,
        &spec,
        Some(&state_file),
        guard.cgroup.as_ref(),
        run_as,
    )?;
    drop(state_file);
    let pid = child.id().unwrap_or(0);
    guard.child = Some(child);
    check_cgroup(&mut guard, pid);
    let isolation = (guard.cgroup.clone(), run_as);
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
        memory,
        (qmp, agent),
        guard,
        run_as,
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

/// The VM's cgroup, when the backend places VMs in cgroups and it could be
/// made; a VM without one still runs.
fn vm_cgroup(hv: &QemuHypervisor, config: &VmConfig) -> Option<VmCgroup> {
    let cgroups = hv.cgroups.as_ref()?;
    match cgroups.create(&config.name, config.mem_mib) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(vm = %config.name, "running without a cgroup: {e}");
            None
        }
    }
}

/// The child joins its cgroup itself and cannot report a failure to: look.
fn check_cgroup(guard: &mut LaunchGuard, pid: u32) {
    if let Some(c) = &guard.cgroup {
        if !c.contains(pid) {
            tracing::warn!(pid, cgroup = ?c.dirs, "QEMU did not join its cgroup; running without");
            c.remove_now();
            guard.cgroup = None;
        }
    }
}

fn spawn(
    hv: &QemuHypervisor,
    dir: &Path,
    spec: &LaunchSpec<'_>,
    incoming: Option<&std::fs::File>,
    cgroup: Option<&VmCgroup>,
    run_as: Option<(u32, u32)>,
) -> Result<Child, VmmError> {
    let mut cmd = Command::new(&hv.config.qemu_binary);
    // The egress guard matches the group of QEMU's sockets, so its group
    // wins over the one `run_as` names.
    let credentials = run_as.map(|(uid, gid)| (uid, hv.guard.map_or(gid, |g| g.gid)));
    match (hv.guard, spec.config.network) {
        (Some(guard), _) => {
            if credentials.is_none() {
                cmd.gid(guard.gid);
            }
        }
        (None, crate::backend::Network::Internet) => {
            return Err(VmmError::Tool {
                tool: "nft",
                message: "refusing outbound internet for this VM: the egress guard that keeps \
                          guests off the host's own and private addresses is not in place \
                          (it needs root and nftables)"
                    .into(),
            })
        }
        // Neither opens a host socket: nothing for the guard to police.
        (None, crate::backend::Network::None | crate::backend::Network::Isolated) => {}
    }
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
    let cgroup_procs = cgroup.map(VmCgroup::procs_files).unwrap_or_default();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (open, write, close, prctl, fcntl, dup2) on
    // values prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // "0" is the writing process: QEMU is in its cgroup before it
            // runs, so none of its threads ever starts outside. A failure
            // is noticed by the parent (`check_cgroup`).
            for procs in &cgroup_procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            // Drop root after joining the cgroup (which needs it) and
            // before anything of QEMU runs.
            if let Some((uid, gid)) = credentials {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
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
pub(super) fn exited(dir: &Path, guard: &mut LaunchGuard) -> Option<VmmError> {
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

pub(super) fn timeout(what: &'static str, limit: Duration, dir: &Path) -> VmmError {
    VmmError::Timeout {
        what,
        seconds: limit.as_secs(),
        console_tail: files::tail(&dir.join(CONSOLE_LOG), 20),
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
