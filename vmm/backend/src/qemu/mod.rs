//! The QEMU backend: `qemu-system-x86_64 -M microvm,acpi=on`, KVM or TCG,
//! controlled over QMP, one process and one runtime directory per VM.

mod attach;
mod cgroup;
mod command;
mod egress_guard;
pub(crate) mod files;
mod host;
mod host_pause;
pub mod jail;
mod launch;
mod migration;
mod net;
mod park;
mod portable;
mod process;
mod qcow2;
mod qmp;
mod runtime_record;
mod spawn;
mod stub_kernel;
mod vm;
mod vm_files;
mod working_set;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use cgroup::{CgroupConfig, CgroupError, CgroupVersion, IoLimits};
pub use host::{detect_accel, tsc_khz};
pub use jail::{IdRange, JailConfig, JailError};
pub use qmp::QmpError;
pub use runtime_record::RecordError;
pub use vm::QemuVm;

use crate::backend::{
    validate_vm_name, Accel, AccelChoice, Hypervisor, PortableFile, RestoreOptions, Vm, VmConfig,
};
use crate::snapshot::SnapshotError;
use crate::VmmError;

#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// VM runtime directories live in `<state_dir>/vms/<name>`.
    pub state_dir: PathBuf,
    pub accel: AccelChoice,
    pub qemu_binary: PathBuf,
    /// How long a cold boot may take to reach the agent.
    pub boot_timeout: Duration,
    /// How long a restore may take to reach the agent.
    pub restore_timeout: Duration,
    /// TCG translation cache size; the default (1 GiB) dominates idle RSS.
    pub tcg_tb_size_mib: u32,
    /// Record a suspended VM's working set and read it in first when the
    /// VM resumes from its own snapshot (see `working_set`).
    pub prefetch_working_set: bool,
    /// Kill QEMU when this process dies (tests, one-shot tools). A daemon
    /// that re-attaches to its VMs after a restart leaves this off.
    pub die_with_parent: bool,
    /// Install the nftables guard that keeps guests with outbound internet
    /// off the host's own and private addresses (see `egress_guard`).
    /// Without it (or when it cannot be installed: no nft) VMs asking for
    /// `Network::Internet` are refused.
    pub egress_guard: bool,
    /// Put each VM's QEMU in its own cgroup with these limits. A host
    /// without a usable cgroup hierarchy fails `QemuHypervisor::new`, and a
    /// VM whose cgroup cannot be made does not start.
    pub cgroup: Option<CgroupConfig>,
    /// The jail every QEMU runs in (see `jail`): always on; this says which
    /// ids it hands out and which folders VMs may read images from.
    pub jail: JailConfig,
}

impl QemuConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            accel: AccelChoice::Auto,
            qemu_binary: "qemu-system-x86_64".into(),
            boot_timeout: Duration::from_secs(120),
            restore_timeout: Duration::from_secs(30),
            tcg_tb_size_mib: 64,
            prefetch_working_set: true,
            die_with_parent: true,
            egress_guard: true,
            cgroup: None,
            jail: JailConfig::default(),
        }
    }
}

pub struct QemuHypervisor {
    config: QemuConfig,
    accel: Accel,
    tsc_khz: Option<u64>,
    qemu_version: String,
    /// Placeholder kernel and initrd for restores.
    restore_kernel: (PathBuf, PathBuf),
    /// In place when `config.egress_guard` asked for it and it could be
    /// installed.
    guard: Option<egress_guard::EgressGuard>,
    /// In place when `config.cgroup` asked for it.
    cgroups: Option<cgroup::Cgroups>,
    /// Hands each VM its uid and gid.
    ids: jail::IdAllocator,
    /// QEMU's binary, as jails exec it.
    qemu_program: PathBuf,
    /// What every jail holds (QEMU's own files, the devices), planned once.
    base_plan: jail::MountPlan,
    /// The empty folder each jail mounts its root on (in its own mount
    /// namespace, so all of them can share it).
    jail_root: PathBuf,
    /// `config.jail.image_roots`, resolved.
    image_roots: Vec<PathBuf>,
}

impl QemuHypervisor {
    pub async fn new(mut config: QemuConfig) -> Result<Self, VmmError> {
        // QEMU runs inside each VM's directory; every path it gets is absolute.
        config.state_dir = absolute(&config.state_dir)?;
        jail::check_host(&config.jail)?;
        let out = tokio::process::Command::new(&config.qemu_binary)
            .arg("--version")
            .output()
            .await
            .map_err(|source| VmmError::Spawn {
                program: config.qemu_binary.display().to_string(),
                source,
            })?;
        let qemu_version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("unknown")
            .trim()
            .to_string();
        // Root's alone: VMs reach their own files through their jails only.
        let jail_root = config.state_dir.join("jail-root");
        for dir in [
            config.state_dir.clone(),
            config.state_dir.join("vms"),
            jail_root.clone(),
        ] {
            private_dir(&dir)?;
        }
        let restore_kernel = stub_kernel::install(&config.state_dir)?;
        let accel = host::resolve_accel(config.accel);
        let runtime = jail::QemuRuntime::discover(&config.qemu_binary)?;
        let base_plan = spawn::base_plan(&runtime, accel)?;
        let ids = config.jail.ids;
        let guard = if config.egress_guard {
            let installed =
                tokio::task::spawn_blocking(move || egress_guard::EgressGuard::install(ids))
                    .await
                    .map_err(|e| VmmError::Tool {
                        tool: "nft",
                        message: e.to_string(),
                    })?;
            match installed {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(
                        "egress guard unavailable, VMs with internet access will be refused: {e}"
                    );
                    None
                }
            }
        } else {
            None
        };
        let cgroups = match config.cgroup.clone() {
            Some(c) => Some(cgroup::Cgroups::prepare(c).map_err(|e| VmmError::Tool {
                tool: "cgroup",
                message: format!("VMs cannot get their own cgroups on this host: {e}"),
            })?),
            None => None,
        };
        let image_roots = config
            .jail
            .image_roots
            .iter()
            .map(|r| {
                r.canonicalize().map_err(VmmError::io(format!(
                    "resolve image folder {}",
                    r.display()
                )))
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(accel = accel.as_str(), %qemu_version, cgroups = ?cgroups.as_ref().map(|c| c.version()), ids = %config.jail.ids, "QEMU backend ready (every VM jailed)");
        Ok(Self {
            ids: jail::IdAllocator::new(config.jail.ids, config.state_dir.join("vms")),
            qemu_program: runtime.binary,
            base_plan,
            jail_root,
            image_roots,
            cgroups,
            guard,
            accel,
            tsc_khz: host::tsc_khz(),
            qemu_version,
            restore_kernel,
            config,
        })
    }

    pub fn qemu_version(&self) -> &str {
        &self.qemu_version
    }

    /// The cgroup hierarchy VMs are placed in, if any.
    pub fn cgroup_version(&self) -> Option<CgroupVersion> {
        self.cgroups.as_ref().map(|c| c.version())
    }

    /// The runtime directory a VM of this name uses.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.config.state_dir.join("vms").join(name)
    }

    /// Claims the VM's runtime directory; an existing one means the name is
    /// taken (a live VM, or one whose files were never cleaned up).
    fn claim_dir(&self, name: &str) -> Result<PathBuf, VmmError> {
        validate_vm_name(name)?;
        let dir = self.vm_dir(name);
        // sockaddr_un holds 108 bytes; the longest name we bind is the QMP one.
        if dir.join(command::QMP_SOCKET).as_os_str().len() >= 100 {
            return Err(VmmError::SocketPathTooLong(dir));
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                let made =
                    private_dir(&dir).and_then(|()| private_dir(&dir.join(command::JAIL_DIR)));
                if let Err(e) = made {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
                Ok(dir)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(VmmError::NameInUse(name.to_string()))
            }
            Err(e) => Err(VmmError::Io {
                context: format!("create {}", dir.display()),
                source: e,
            }),
        }
    }
}

/// Creates `dir` if needed and makes it root's alone (0700).
fn private_dir(dir: &Path) -> Result<(), VmmError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(VmmError::io(format!("create {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(VmmError::io(format!("chmod {}", dir.display())))
}

fn require_file(what: &'static str, path: &Path) -> Result<(), VmmError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(VmmError::MissingFile {
            what,
            path: path.to_path_buf(),
        })
    }
}

fn absolute(path: &Path) -> Result<PathBuf, VmmError> {
    std::path::absolute(path).map_err(VmmError::io(format!("resolve {}", path.display())))
}

#[async_trait]
impl Hypervisor for QemuHypervisor {
    fn accel(&self) -> Accel {
        self.accel
    }

    fn portable_files(&self, dir: &Path) -> Result<Vec<PortableFile>, VmmError> {
        portable::portable_files(dir)
    }

    fn relink_portable(&self, dir: &Path, files: &[PortableFile]) -> Result<(), VmmError> {
        portable::relink(dir, files)
    }

    fn compatibility(&self) -> String {
        // Device state loads only into the QEMU version and accelerator
        // that wrote it; under KVM `-cpu host` shows the guest the host's
        // CPU, which must not change under a running kernel. TCG emulates
        // one fixed CPU.
        match self.accel {
            Accel::Tcg => format!("qemu {} tcg", self.qemu_version),
            Accel::Kvm => format!(
                "qemu {} kvm {}",
                self.qemu_version,
                host::cpu_model().unwrap_or_else(|| "unknown-cpu".into())
            ),
        }
    }

    fn relocate_images(&self, dir: &Path, from: &Path, to: &Path) -> Result<u32, VmmError> {
        portable::relocate(dir, from, to)
    }

    async fn boot(&self, mut config: VmConfig) -> Result<Arc<dyn Vm>, VmmError> {
        validate_vm_name(&config.name)?;
        require_file("guest kernel", &config.kernel)?;
        require_file("initramfs", &config.initramfs)?;
        require_file("root filesystem", &config.rootfs)?;
        config.kernel = absolute(&config.kernel)?;
        config.initramfs = absolute(&config.initramfs)?;
        config.rootfs = absolute(&config.rootfs)?;
        let dir = self.claim_dir(&config.name)?;
        let vm = launch::boot(self, config, dir).await?;
        Ok(Arc::new(vm))
    }

    async fn restore(
        &self,
        name: &str,
        snapshot_dir: &Path,
        options: RestoreOptions,
    ) -> Result<Arc<dyn Vm>, VmmError> {
        validate_vm_name(name)?;
        let snapshot_dir = absolute(snapshot_dir)?;
        let mut manifest = crate::SnapshotManifest::load(&snapshot_dir)?;
        if let Some(network) = options.network {
            let has_card = manifest.vm.network.has_card();
            if network.has_card() != has_card {
                return Err(VmmError::NetworkMismatch {
                    snapshot: snapshot_dir,
                    snapshot_has_card: has_card,
                    requested: network,
                });
            }
            // The restored VM's own config (runtime record, later
            // snapshots) names the network it really runs with.
            manifest.vm.network = network;
        }
        // Device state only loads into the VMM and accelerator that wrote it.
        let incompatible = |reason: String| {
            VmmError::Snapshot(SnapshotError::Incompatible {
                path: snapshot_dir.clone(),
                reason,
            })
        };
        if manifest.accel != self.accel {
            return Err(incompatible(format!(
                "taken under {}, this host runs {}",
                manifest.accel.as_str(),
                self.accel.as_str()
            )));
        }
        if manifest.vmm_version != self.qemu_version {
            return Err(incompatible(format!(
                "written by {:?}, this host has {:?}",
                manifest.vmm_version, self.qemu_version
            )));
        }
        let dir = self.claim_dir(name)?;
        let vm = launch::restore(self, name, manifest, &snapshot_dir, dir, options).await?;
        Ok(Arc::new(vm))
    }

    async fn attach(&self, name: &str) -> Result<Arc<dyn Vm>, VmmError> {
        validate_vm_name(name)?;
        let vm = attach::attach(self, name).await?;
        Ok(Arc::new(vm))
    }
}
