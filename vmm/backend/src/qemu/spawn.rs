//! One QEMU process in its jail: what it may see (its program files, its
//! boot files, its disk's backing chain, its own folder), the descriptors
//! it inherits, the id it runs as. `jail/` does the jailing itself.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::cgroup::VmCgroup;
use super::command::{
    self, LaunchSpec, AGENT_FD, AGENT_SOCKET, DISK, INCOMING_FD, QMP_FD, QMP_SOCKET,
};
use super::jail::{self, Access, MountPlan, QemuRuntime, SpawnSpec};
use super::process::QemuProcess;
use super::{qcow2, vm_files, QemuHypervisor};
use crate::backend::{Accel, Network};
use crate::VmmError;

/// Room for qcow2 metadata on top of the disk's virtual size, in the cap
/// on what QEMU may write to one file.
const FILE_CAP_MARGIN: u64 = 256 << 20;

pub(super) struct Spawned {
    pub process: QemuProcess,
    pub pid: u32,
}

/// Starts QEMU for `spec` with the VM folder `dir` (root's: sockets,
/// record, QEMU's stderr) and its writable folder `jail_dir` (the disk
/// overlay and RAM file already in it, given to `ids`).
pub(super) fn spawn_qemu(
    hv: &QemuHypervisor,
    dir: &Path,
    jail_dir: &Path,
    spec: &LaunchSpec<'_>,
    incoming: Option<&File>,
    cgroup: Option<&VmCgroup>,
    ids: (u32, u32),
) -> Result<Spawned, VmmError> {
    if spec.config.network == Network::Internet && hv.guard.is_none() {
        return Err(VmmError::Tool {
            tool: "nft",
            message: "refusing outbound internet for this VM: the egress guard that keeps \
                      guests off the host's own and private addresses is not in place \
                      (it needs root and nftables)"
                .into(),
        });
    }
    let plan = plan(hv, jail_dir, spec)?;
    let disk_size = qcow2::virtual_size(&jail_dir.join(DISK), "qcow2")?;
    let ram = u64::from(spec.config.mem_mib) << 20;
    let qmp = listen(&dir.join(QMP_SOCKET))?;
    let agent = listen(&dir.join(AGENT_SOCKET))?;
    let null = File::open("/dev/null").map_err(VmmError::io("open /dev/null"))?;
    let stderr_path = dir.join("qemu.stderr");
    let stderr = File::create(&stderr_path)
        .map_err(VmmError::io(format!("create {}", stderr_path.display())))?;
    let mut fds = vec![
        (null.as_fd(), 0),
        (null.as_fd(), 1),
        (stderr.as_fd(), 2),
        (qmp.as_fd(), QMP_FD),
        (agent.as_fd(), AGENT_FD),
    ];
    if let Some(state) = incoming {
        fds.push((state.as_fd(), INCOMING_FD));
    }
    let args = command::qemu_args(spec);
    let procs = cgroup.map(VmCgroup::procs_files).unwrap_or_default();
    let child = jail::spawn(&SpawnSpec {
        program: &hv.qemu_program,
        args: &args,
        root_mount: &hv.jail_root,
        plan: &plan,
        cwd: jail_dir,
        ids,
        // Slirp's sockets are the only network a VM uses, and only with
        // outbound internet; everyone else gets no network at all.
        own_network: spec.config.network != Network::Internet,
        hostname: &spec.config.name,
        cgroup_procs: &procs,
        fds,
        die_with_parent: hv.config.die_with_parent,
        max_file_bytes: Some(disk_size.max(ram).saturating_add(FILE_CAP_MARGIN)),
    })?;
    let pid = child.pid;
    let process =
        QemuProcess::child(child.pidfd).map_err(VmmError::io("watch the QEMU process"))?;
    Ok(Spawned { process, pid })
}

/// The backend binds the sockets QEMU serves, where only root writes, and
/// hands QEMU the listening descriptors.
fn listen(path: &Path) -> Result<UnixListener, VmmError> {
    UnixListener::bind(path).map_err(VmmError::io(format!("listen on {}", path.display())))
}

/// What every jail of this backend holds: QEMU's program files and the
/// devices it opens. Planned once (it walks every path's components).
pub(super) fn base_plan(runtime: &QemuRuntime, accel: Accel) -> Result<MountPlan, VmmError> {
    let mut plan = MountPlan::default();
    for path in &runtime.read_only {
        plan.add(path, Access::Program)?;
    }
    let mut devices = vec![Path::new("/dev/null"), Path::new("/dev/urandom")];
    if accel == Accel::Kvm {
        devices.push(Path::new("/dev/kvm"));
    }
    for dev in devices {
        plan.add(dev, Access::Device)?;
    }
    Ok(plan)
}

fn plan(
    hv: &QemuHypervisor,
    jail_dir: &Path,
    spec: &LaunchSpec<'_>,
) -> Result<MountPlan, VmmError> {
    let mut plan = hv.base_plan.clone();
    let (kernel, initrd) = spec
        .boot_files_override
        .unwrap_or((&spec.config.kernel, &spec.config.initramfs));
    let mut shared: Vec<PathBuf> = vec![kernel.to_path_buf(), initrd.to_path_buf()];
    shared.extend(qcow2::backing_chain(&jail_dir.join(DISK))?);
    for path in &shared {
        check_image_root(hv, path)?;
        vm_files::make_world_readable(path)?;
        plan.add(path, Access::ReadOnly)?;
    }
    // Slirp's DNS relay forwards to the resolvers it reads from here.
    let resolv = Path::new("/etc/resolv.conf");
    if spec.config.network == Network::Internet && resolv.exists() {
        plan.add(resolv, Access::ReadOnly)?;
    }
    plan.add(jail_dir, Access::Writable)?;
    Ok(plan)
}

/// A file the VM reads must lie in one of the configured image folders:
/// backing-file names come from qcow2 headers a VM may have written.
fn check_image_root(hv: &QemuHypervisor, path: &Path) -> Result<(), VmmError> {
    let roots = &hv.image_roots;
    if roots.is_empty() {
        return Ok(());
    }
    let real = path.canonicalize().map_err(|e| VmmError::UnsafeBacking {
        path: path.to_path_buf(),
        reason: format!("cannot resolve it: {e}"),
    })?;
    if roots.iter().any(|r| real.starts_with(r)) {
        Ok(())
    } else {
        Err(VmmError::UnsafeBacking {
            path: path.to_path_buf(),
            reason: format!("{} is outside the image folders", real.display()),
        })
    }
}
