//! One cgroup per VM, so a guest (or a QEMU a guest took over) cannot take
//! more than its share of memory, CPU or processes. cgroup v2 (unified) and
//! v1 (one hierarchy per controller) are both handled; which one the host
//! runs is detected once, when the backend starts.
//!
//! QEMU joins its cgroup in the child between fork and exec (it writes "0",
//! meaning itself, to `cgroup.procs`), so no thread of it ever runs outside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the controllers live.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cgroup v1 hierarchies used, each mounted at `CGROUP_ROOT/<name>`, in
/// the order of a `VmCgroup`'s folders.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "blkio"];
/// The CPU bandwidth period; the quota is a share of it.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupConfig {
    /// The cgroup all VMs' cgroups go in, relative to each hierarchy's root
    /// (e.g. `ember` → `/sys/fs/cgroup/memory/ember/<vm>` on v1,
    /// `/sys/fs/cgroup/ember/<vm>` on v2), or to this process's own cgroup
    /// when `nest_in_own_cgroup` is set.
    pub parent: PathBuf,
    /// Nest VM cgroups inside the cgroup this process runs in, so the limits
    /// a supervisor put on the daemon also cover its VMs.
    pub nest_in_own_cgroup: bool,
    /// CPU time a VM may use, in percent of one host core.
    pub cpu_max_percent: u32,
    /// Memory allowed on top of the guest's RAM (QEMU itself, TCG's
    /// translation cache, device buffers).
    pub memory_overhead_mib: u32,
    /// Threads and processes. QEMU under TCG runs about a dozen threads, and
    /// its block layer's worker pool grows to 64 under load.
    pub pids_max: u32,
    /// Block I/O on the disk holding the VMs' files; `None` leaves I/O
    /// unthrottled.
    pub io: Option<IoLimits>,
}

/// A VM's share of one block device (cgroup v2 `io.max`, v1
/// `blkio.throttle.*`). cgroup v1 throttles only I/O that reaches the
/// device under the VM's cgroup: reads and direct writes, not the page
/// cache's writeback, which v2 also charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoLimits {
    /// `MAJOR:MINOR` of the whole disk (not a partition).
    pub device: String,
    pub bytes_per_second: u64,
    pub ops_per_second: u64,
}

impl IoLimits {
    /// Limits on the disk that holds `path`. Fails on a filesystem with
    /// no block device of its own (tmpfs, overlayfs, btrfs subvolumes):
    /// there is nothing to throttle there, and the caller must decide.
    pub fn for_path(
        path: &Path,
        bytes_per_second: u64,
        ops_per_second: u64,
    ) -> Result<Self, CgroupError> {
        Ok(Self {
            device: super::host::block_device_of(path).map_err(|reason| {
                CgroupError::NoBlockDevice {
                    path: path.to_path_buf(),
                    reason,
                }
            })?,
            bytes_per_second,
            ops_per_second,
        })
    }
}

impl CgroupConfig {
    pub fn new(parent: impl Into<PathBuf>) -> Self {
        Self {
            parent: parent.into(),
            nest_in_own_cgroup: false,
            cpu_max_percent: 100,
            memory_overhead_mib: 256,
            pids_max: 128,
            io: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy under {CGROUP_ROOT} (neither v2 nor v1 memory/cpu/pids)")]
    Unavailable,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find this process's cgroup for {controller} in /proc/self/cgroup")]
    OwnCgroupUnknown { controller: String },
    #[error("cannot cap VMs' block I/O: {path} {reason}")]
    NoBlockDevice { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The host's hierarchy, ready to make VM cgroups in.
#[derive(Debug)]
pub(super) struct Cgroups {
    version: CgroupVersion,
    config: CgroupConfig,
    /// The parent cgroup's directory in each hierarchy used (one on v2).
    parents: Vec<PathBuf>,
}

impl Cgroups {
    /// Detects the hierarchy, creates the parent cgroup and (v2) enables
    /// the controllers for its children.
    pub fn prepare(config: CgroupConfig) -> Result<Self, CgroupError> {
        Self::prepare_at(Path::new(CGROUP_ROOT), config)
    }

    fn prepare_at(root: &Path, config: CgroupConfig) -> Result<Self, CgroupError> {
        let own = if config.nest_in_own_cgroup {
            let text = std::fs::read_to_string("/proc/self/cgroup")
                .map_err(io(Path::new("/proc/self/cgroup")))?;
            Some(text)
        } else {
            None
        };
        let base = |hierarchy: &str, controller: &str| -> Result<PathBuf, CgroupError> {
            let mut dir = root.join(hierarchy);
            if let Some(text) = &own {
                let rel =
                    own_cgroup(text, controller).ok_or_else(|| CgroupError::OwnCgroupUnknown {
                        controller: controller.to_string(),
                    })?;
                dir.push(rel.trim_start_matches('/'));
            }
            Ok(dir.join(&config.parent))
        };
        if root.join("cgroup.controllers").is_file() {
            let parent = base("", "")?;
            std::fs::create_dir_all(&parent).map_err(io(&parent))?;
            // Each level down to the parent must hand the controllers on.
            let mut level = parent.clone();
            let mut chain = Vec::new();
            while level != root {
                let Some(up) = level.parent() else { break };
                chain.push(up.to_path_buf());
                level = up.to_path_buf();
            }
            chain.reverse();
            chain.push(parent.clone());
            for dir in chain {
                enable_v2_controllers(&dir)?;
            }
            return Ok(Self {
                version: CgroupVersion::V2,
                config,
                parents: vec![parent],
            });
        }
        if V1_CONTROLLERS
            .iter()
            .all(|c| root.join(c).join("cgroup.procs").is_file())
        {
            let mut parents = Vec::new();
            for c in V1_CONTROLLERS {
                let parent = base(c, c)?;
                std::fs::create_dir_all(&parent).map_err(io(&parent))?;
                parents.push(parent);
            }
            return Ok(Self {
                version: CgroupVersion::V1,
                config,
                parents,
            });
        }
        Err(CgroupError::Unavailable)
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Creates (or reuses, after a crash) the VM's cgroup with its limits.
    pub fn create(&self, vm: &str, mem_mib: u32) -> Result<VmCgroup, CgroupError> {
        let memory = (u64::from(mem_mib) + u64::from(self.config.memory_overhead_mib)) << 20;
        let quota = u64::from(self.config.cpu_max_percent) * CPU_PERIOD_US / 100;
        let pids = self.config.pids_max.to_string();
        let dirs: Vec<PathBuf> = self.parents.iter().map(|p| p.join(vm)).collect();
        let made = VmCgroup {
            version: self.version,
            dirs: dirs.clone(),
        };
        let result = (|| {
            for dir in &dirs {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
            }
            match self.version {
                CgroupVersion::V2 => {
                    let dir = &dirs[0];
                    write(&dir.join("memory.max"), &memory.to_string())?;
                    // Guest RAM swapped out would slip past memory.max.
                    write_if_present(&dir.join("memory.swap.max"), "0")?;
                    write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                    write(&dir.join("pids.max"), &pids)?;
                    if let Some(io) = &self.config.io {
                        let (d, b, n) = (&io.device, io.bytes_per_second, io.ops_per_second);
                        write(
                            &dir.join("io.max"),
                            &format!("{d} rbps={b} wbps={b} riops={n} wiops={n}"),
                        )?;
                    }
                }
                CgroupVersion::V1 => {
                    let (mem, cpu, pid, blk) = (&dirs[0], &dirs[1], &dirs[2], &dirs[3]);
                    if let Some(io) = &self.config.io {
                        let bytes = format!("{} {}", io.device, io.bytes_per_second);
                        let ops = format!("{} {}", io.device, io.ops_per_second);
                        write(&blk.join("blkio.throttle.read_bps_device"), &bytes)?;
                        write(&blk.join("blkio.throttle.write_bps_device"), &bytes)?;
                        write(&blk.join("blkio.throttle.read_iops_device"), &ops)?;
                        write(&blk.join("blkio.throttle.write_iops_device"), &ops)?;
                    }
                    write(&mem.join("memory.limit_in_bytes"), &memory.to_string())?;
                    // memory+swap: the same bound, so swap adds nothing.
                    write_if_present(
                        &mem.join("memory.memsw.limit_in_bytes"),
                        &memory.to_string(),
                    )?;
                    write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    write(&pid.join("pids.max"), &pids)?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(made),
            Err(e) => {
                made.remove_now();
                Err(e)
            }
        }
    }
}

/// A VM's cgroup: one directory per hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmCgroup {
    pub version: CgroupVersion,
    pub dirs: Vec<PathBuf>,
}

impl VmCgroup {
    /// The `cgroup.procs` files the child writes itself into before exec.
    pub(super) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether process `pid` is in every one of the VM's cgroups.
    pub(super) fn contains(&self, pid: u32) -> bool {
        let want = pid.to_string();
        self.dirs.iter().all(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .map(|s| s.lines().any(|l| l.trim() == want))
                .unwrap_or(false)
        })
    }

    /// The memory charged to the cgroup (`memory.current`, or v1's
    /// `memory.usage_in_bytes`).
    pub fn memory_bytes(&self) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V2 => "memory.current",
            CgroupVersion::V1 => "memory.usage_in_bytes",
        };
        read_u64(&self.dirs.first()?.join(file))
    }

    /// How many processes the kernel's OOM killer ended in the cgroup for
    /// reaching its memory limit (v2's `memory.events`, v1's
    /// `memory.oom_control`: both name it `oom_kill`).
    pub fn oom_kills(&self) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V2 => "memory.events",
            CgroupVersion::V1 => "memory.oom_control",
        };
        let text = std::fs::read_to_string(self.dirs.first()?.join(file)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// CPU time used in the cgroup, in microseconds: v2's `cpu.stat`
    /// `usage_usec`, or v1's `cpuacct.usage` (nanoseconds) where cpuacct
    /// shares the cpu hierarchy; `None` where it does not.
    pub fn cpu_us(&self) -> Option<u64> {
        match self.version {
            CgroupVersion::V2 => {
                let stat = std::fs::read_to_string(self.dirs.first()?.join("cpu.stat")).ok()?;
                stat.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok())
            }
            CgroupVersion::V1 => {
                read_u64(&self.dirs.get(1)?.join("cpuacct.usage")).map(|ns| ns / 1000)
            }
        }
    }

    /// Removes the cgroup once its processes are gone; the kernel may take
    /// a moment after an exit to let go, so this retries briefly.
    pub(super) async fn remove(&self) {
        for attempt in 0..20 {
            if self.try_remove() {
                return;
            }
            if attempt < 19 {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        tracing::warn!(cgroup = ?self.dirs, "could not remove a VM's cgroup: still busy");
    }

    /// One removal attempt, for paths that cannot wait.
    pub(super) fn remove_now(&self) {
        let _ = self.try_remove();
    }

    fn try_remove(&self) -> bool {
        let mut done = true;
        for dir in &self.dirs {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => done = false,
            }
        }
        done
    }
}

/// This process's cgroup in the hierarchy of `controller` ("" for v2),
/// from the text of /proc/self/cgroup (`id:controllers:path` lines).
fn own_cgroup<'a>(text: &'a str, controller: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then_some(path)
    })
}

fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available_path = dir.join("cgroup.controllers");
    let available = std::fs::read_to_string(&available_path).map_err(io(&available_path))?;
    let wanted: Vec<String> = ["memory", "cpu", "pids", "io"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &wanted.join(" "))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path))
}

fn write_if_present(path: &Path, value: &str) -> Result<(), CgroupError> {
    if path.exists() {
        write(path, value)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_is_found_per_controller() {
        let text = "12:pids:/a\n4:memory:/process_api/x\n2:cpu,cpuacct:/c\n0::/unified\n";
        assert_eq!(own_cgroup(text, "memory"), Some("/process_api/x"));
        assert_eq!(own_cgroup(text, "cpu"), Some("/c"));
        assert_eq!(own_cgroup(text, ""), Some("/unified"));
        assert_eq!(own_cgroup(text, "blkio"), None);
    }

    #[test]
    fn v1_layout_gets_limits_per_controller() {
        let root = tempfile::tempdir().unwrap();
        for c in V1_CONTROLLERS {
            std::fs::create_dir_all(root.path().join(c)).unwrap();
            std::fs::write(root.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let mut config = CgroupConfig::new("ember");
        config.cpu_max_percent = 50;
        config.io = Some(IoLimits {
            device: "253:0".into(),
            bytes_per_second: 1000,
            ops_per_second: 10,
        });
        let cgroups = Cgroups::prepare_at(root.path(), config).unwrap();
        assert_eq!(cgroups.version(), CgroupVersion::V1);
        let vm = cgroups.create("vm1", 256).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(
            read("memory/ember/vm1/memory.limit_in_bytes"),
            (512u64 << 20).to_string()
        );
        assert_eq!(read("cpu/ember/vm1/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("pids/ember/vm1/pids.max"), "128");
        assert_eq!(
            read("blkio/ember/vm1/blkio.throttle.write_bps_device"),
            "253:0 1000"
        );
        assert_eq!(
            read("blkio/ember/vm1/blkio.throttle.read_iops_device"),
            "253:0 10"
        );
        assert_eq!(vm.procs_files().len(), 4);
    }

    #[test]
    fn v2_layout_enables_controllers_and_sets_limits() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids io").unwrap();
        std::fs::create_dir_all(root.path().join("ember")).unwrap();
        std::fs::write(
            root.path().join("ember/cgroup.controllers"),
            "cpu memory pids",
        )
        .unwrap();
        let mut config = CgroupConfig::new("ember");
        config.io = Some(IoLimits {
            device: "8:0".into(),
            bytes_per_second: 5,
            ops_per_second: 7,
        });
        let cgroups = Cgroups::prepare_at(root.path(), config).unwrap();
        assert_eq!(cgroups.version(), CgroupVersion::V2);
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+memory +cpu +pids +io");
        cgroups.create("vm1", 128).unwrap();
        assert_eq!(read("ember/vm1/memory.max"), (384u64 << 20).to_string());
        assert_eq!(read("ember/vm1/cpu.max"), "100000 100000");
        assert_eq!(
            read("ember/vm1/io.max"),
            "8:0 rbps=5 wbps=5 riops=7 wiops=7"
        );
    }
}
