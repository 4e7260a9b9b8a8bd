//! The trait pair every backend implements, and the backend-neutral VM
//! description.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::agent::AgentClient;
use crate::snapshot::SnapshotInfo;
use crate::VmmError;

/// How guest instructions execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation; slow, but runs anywhere.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// What the operator asked for; `Auto` probes the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Force(Accel),
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" | "" => Ok(Self::Auto),
            "kvm" => Ok(Self::Force(Accel::Kvm)),
            "tcg" => Ok(Self::Force(Accel::Tcg)),
            other => Err(format!(
                "unknown accelerator {other:?}: use auto, kvm or tcg"
            )),
        }
    }
}

/// Everything needed to cold-boot a VM. Paths must exist; the root
/// filesystem is never written (each VM writes to its own overlay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub name: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub mem_mib: u32,
    pub vcpus: u8,
    /// Appended to the kernel command line Ember builds.
    #[serde(default)]
    pub extra_cmdline: String,
    /// Defaulted so snapshot manifests written before networking existed
    /// still decode (as VMs without a network card, which they were).
    #[serde(default)]
    pub network: Network,
}

/// The VM's network card, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// No network card: the guest has loopback only.
    #[default]
    None,
    /// Outbound internet through QEMU user-mode networking (slirp); nothing
    /// can connect in. The guest gets [`GUEST_ADDRESS`], its gateway is
    /// [`GATEWAY_ADDRESS`] and [`DNS_ADDRESS`] answers DNS (the guest's
    /// `/etc/resolv.conf` is the image builder's business, not the agent's).
    ///
    /// Known limitation: slirp maps the gateway to the host itself, so the
    /// guest can reach services listening on the host's loopback through
    /// 10.0.2.2. To be closed by moving to a tap device with nftables rules.
    Internet,
    /// The same network card and guest addressing as [`Network::Internet`],
    /// plugged into nothing: every frame the guest sends is dropped and
    /// none arrive. The guest sees exactly the devices an `Internet` VM
    /// sees, so a snapshot of either restores as either (see
    /// [`RestoreOptions::network`]): images are snapshotted isolated and
    /// get internet only when a microVM asks for it.
    Isolated,
}

impl Network {
    /// Whether the guest has a network card. Device state only loads into
    /// a VM with the same devices, so this must match between a snapshot
    /// and its restore; the variants with a card are interchangeable.
    pub fn has_card(self) -> bool {
        !matches!(self, Self::None)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Internet => "internet",
            Self::Isolated => "isolated",
        }
    }
}

/// The guest's address under [`Network::Internet`] (slirp's default).
pub const GUEST_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 15);
/// Prefix length of the guest's network.
pub const GUEST_PREFIX_LEN: u8 = 24;
/// The default route under [`Network::Internet`]; also the host, see there.
pub const GATEWAY_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 2);
/// Slirp's DNS forwarder under [`Network::Internet`].
pub const DNS_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 3);

impl VmConfig {
    pub fn new(name: impl Into<String>, kernel: &Path, initramfs: &Path, rootfs: &Path) -> Self {
        Self {
            name: name.into(),
            kernel: kernel.to_path_buf(),
            initramfs: initramfs.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            mem_mib: 256,
            vcpus: 1,
            extra_cmdline: String::new(),
            network: Network::None,
        }
    }
}

/// Host-side cost of a running VM.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct VmStats {
    pub pid: u32,
    pub rss_bytes: u64,
    /// The part of `rss_bytes` no other process shares.
    pub private_bytes: u64,
    /// Host CPU time the VM has used, in milliseconds.
    pub cpu_ms: u64,
    /// Memory charged to the VM's cgroup (guest RAM, QEMU, page cache of
    /// its files), when it has one.
    pub cgroup_memory_bytes: Option<u64>,
    /// CPU time of everything in the VM's cgroup, in microseconds, when
    /// the host accounts it there (cgroup v2, or v1 with cpuacct mounted
    /// beside cpu).
    pub cgroup_cpu_us: Option<u64>,
}

/// Which optional isolation measures are in force for a VM. Backends or
/// hosts without a capability run VMs without it; this says which ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Isolation {
    /// The VM's process runs in its own cgroup, with memory, CPU and
    /// process-count limits.
    pub cgroup: bool,
    /// The uid and gid the VM's process runs as, when not the caller's.
    pub run_as: Option<(u32, u32)>,
    /// The process runs in its own jail: namespaces, a root holding only
    /// its own files, no capabilities.
    pub jailed: bool,
}

/// Creates VMs. One per host; cheap to share.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    fn accel(&self) -> Accel;

    /// Cold-boots a VM and returns once its agent answers.
    async fn boot(&self, config: VmConfig) -> Result<Arc<dyn Vm>, VmmError>;

    /// Starts a new VM named `name` from a snapshot directory written by
    /// [`Vm::snapshot`] or [`Vm::suspend`], and returns once its agent
    /// answers and has been told it was restored (clock stepped, RNG
    /// reseeded). `options` says what happens to the snapshot's RAM image
    /// and which network the VM gets.
    async fn restore(
        &self,
        name: &str,
        snapshot_dir: &Path,
        options: RestoreOptions,
    ) -> Result<Arc<dyn Vm>, VmmError>;

    /// The sizes of the snapshot in `dir`; an error unless it holds a
    /// whole one (how callers tell a finished snapshot from a torn one).
    fn snapshot_info(&self, dir: &Path) -> Result<SnapshotInfo, VmmError> {
        Ok(SnapshotInfo::read(dir)?)
    }

    /// Stores the memory of the (unused) snapshot in `dir` as a difference
    /// from the snapshot `base`: pages equal to base's, and zero pages,
    /// stop taking disk. [`Hypervisor::expand_snapshot`] undoes it, and
    /// must run before `dir` is restored. Blocking. An already compacted
    /// snapshot is a [`VmmError::MemoryDelta`] `AlreadyCompacted`.
    fn compact_snapshot(
        &self,
        dir: &Path,
        base: &Path,
    ) -> Result<crate::memory_delta::CompactStats, VmmError> {
        Ok(crate::memory_delta::compact(dir, base)?)
    }

    /// Makes a compacted snapshot's memory whole again; a no-op for one
    /// that is not compacted. Blocking.
    fn expand_snapshot(&self, dir: &Path) -> Result<(), VmmError> {
        crate::memory_delta::expand(dir)?;
        Ok(())
    }

    /// The files the snapshot in `dir` needs on another host, each named
    /// as it will be in one folder there (its disk's backing files
    /// included), with the backing file each names. Blocking.
    fn portable_files(&self, dir: &Path) -> Result<Vec<PortableFile>, VmmError>;

    /// Makes `dir`, holding `files` as [`Hypervisor::portable_files`]
    /// named them, a snapshot that restores from there: each disk layer
    /// points at its backing file by its name in `dir`. Blocking.
    fn relink_portable(&self, dir: &Path, files: &[PortableFile]) -> Result<(), VmmError>;

    /// Which hosts' snapshots this backend restores, and which restore
    /// its own: equal strings, equal class. Placement matches a version's
    /// snapshot to nodes by it.
    fn compatibility(&self) -> String;

    /// Makes the snapshots and disk layers under `dir`, a folder that
    /// moved from `from` to `to` with the files they are built on, name
    /// those files at their new place. Returns how many files changed;
    /// running it again changes none. Blocking.
    fn relocate_images(&self, dir: &Path, from: &Path, to: &Path) -> Result<u32, VmmError>;

    /// Takes over a VM named `name` that a previous instance of the
    /// backend (possibly another process, e.g. a daemon before a restart)
    /// booted or restored and left running. The returned VM works as if
    /// this instance had started it (`stop`, `snapshot`, `suspend`, ...).
    /// A VM whose process is gone is cleaned up and reported as
    /// [`VmmError::NotRunning`].
    async fn attach(&self, name: &str) -> Result<Arc<dyn Vm>, VmmError>;
}

/// One file of a snapshot that travels between hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortableFile {
    /// Its name in the snapshot's folder on any host.
    pub name: String,
    /// Where it is on this host.
    pub path: PathBuf,
    /// The name (in the same folder) of the file it is a layer over.
    pub backing: Option<String>,
}

/// How a snapshot is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreOptions {
    pub memory: RestoreMemory,
    /// The restored VM's network, in place of the one the snapshot was
    /// taken with; `None` keeps that one. Only switches between
    /// [`Network::Internet`] and [`Network::Isolated`]: the snapshot's
    /// device state loads only into a VM with the same devices, so asking
    /// for a card the snapshot lacks, or for none when it has one, is a
    /// [`VmmError::NetworkMismatch`]. A later snapshot or suspend of the
    /// restored VM records the network it runs with.
    pub network: Option<Network>,
    /// What the restored VM's disk is made of; ignored by
    /// [`RestoreMemory::Consume`], which takes the snapshot's disk.
    pub disk: RestoreDisk,
}

impl RestoreOptions {
    /// `memory`, on the network the snapshot was taken with.
    pub fn memory(memory: RestoreMemory) -> Self {
        Self {
            memory,
            ..Self::default()
        }
    }
}

/// How a restored VM gets its writable disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreDisk {
    /// A new empty layer on top of the snapshot's disk: nothing is copied,
    /// and the snapshot must outlive the VM (an image's snapshot, which
    /// every run of the image shares).
    #[default]
    Layered,
    /// A copy of the snapshot's own layer (only what its VM wrote): the VM
    /// depends on nothing in the snapshot directory once the restore
    /// returns, so a snapshot made for a fork can go.
    Copied,
}

/// What a restore does with the snapshot's memory image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreMemory {
    /// Map it copy-on-write: nothing is copied, the snapshot stays pristine
    /// for any number of clones. A later snapshot of the clone has to stream
    /// its RAM.
    #[default]
    Clone,
    /// Copy it into the VM's own file: the snapshot stays pristine, and the
    /// VM can later be snapshotted or suspended without moving its RAM.
    Copy,
    /// Take it over: the VM runs on the snapshot's own file (no copy), and
    /// the snapshot directory is consumed. For resuming a suspended VM.
    Consume,
}

/// Why a VM that nobody asked to pause is held paused by the host.
/// The guest's failed request is kept, not failed back to it: it is
/// retried when the VM continues ([`Vm::resume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPause {
    /// A write to the guest's disk found the host's filesystem full.
    DiskFull,
    /// A write to the guest's disk failed on the host for another reason.
    DiskError,
}

/// One running (or paused) VM.
#[async_trait]
pub trait Vm: Send + Sync {
    fn name(&self) -> &str;

    /// The in-guest agent: exec, files, streams to guest ports.
    fn agent(&self) -> &AgentClient;

    /// Where the guest's serial console is logged.
    fn console_log(&self) -> PathBuf;

    async fn pause(&self) -> Result<(), VmmError>;

    async fn resume(&self) -> Result<(), VmmError>;

    /// Pauses the VM (it stays paused) and writes memory, vCPU/device state
    /// and disk into `dir`, which must not exist yet.
    async fn snapshot(&self, dir: &Path) -> Result<SnapshotInfo, VmmError>;

    /// Writes a snapshot of the VM into `dir` (which must not exist) and
    /// continues it: the VM is paused only while its state is written. What
    /// a fork starts from. A VM that cannot continue afterwards is a
    /// [`VmmError`] even though the snapshot was written (it is removed).
    async fn snapshot_live(&self, dir: &Path) -> Result<SnapshotInfo, VmmError> {
        let info = self.snapshot(dir).await;
        let continued = self.resume().await;
        match (info, continued) {
            (Ok(info), Ok(())) => Ok(info),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => {
                let _ = std::fs::remove_dir_all(dir);
                Err(e)
            }
        }
    }

    /// Saves the VM into `dir` (which must not exist) and ends it. Unlike
    /// `snapshot` + `stop`, memory and disk files are moved, not copied,
    /// when the VM owns them, so suspending costs the device state only.
    async fn suspend(&self, dir: &Path) -> Result<SnapshotInfo, VmmError>;

    /// Pauses the VM and gives its guest memory back to the host while
    /// keeping it whole: the memory goes to the VM's own file and leaves
    /// host RAM, the process and its devices stay. [`Vm::wake`] continues
    /// it, paging memory back in as the guest touches it. Returns the host
    /// memory the parked VM still holds, in bytes. A backend or VM that
    /// cannot do this (memory that is not a file of its own) answers
    /// [`VmmError::WrongState`] and stays as it was, running or paused.
    async fn park(&self) -> Result<u64, VmmError> {
        Err(VmmError::WrongState("not parkable"))
    }

    /// Continues a parked or paused VM and tells its guest that time moved
    /// on (clock stepped, RNG reseeded), as after a restore: the guest
    /// cannot tell a long pause from a suspend.
    async fn wake(&self) -> Result<(), VmmError> {
        self.resume().await?;
        self.agent().notify_restored().await?;
        Ok(())
    }

    fn stats(&self) -> Result<VmStats, VmmError>;

    /// Whether the host paused the VM by itself (not through
    /// [`Vm::pause`]), and why: the guest waits for a request the host
    /// could not serve. `None` for a VM that runs, or that its owner
    /// paused. Asks the VMM, so it may wait on it; never changes the VM.
    async fn host_pause(&self) -> Result<Option<HostPause>, VmmError> {
        Ok(None)
    }

    /// How the VM's process ended, once it has (killed, crashed, or
    /// stopped); `None` while it runs, or when a backend cannot tell.
    /// Never waits.
    fn exited(&self) -> Option<String> {
        None
    }

    /// As [`Vm::exited`], after waiting up to `limit` for the process to
    /// end: for a caller who saw the VM's monitor or agent connection
    /// close, which happens a moment before the exit shows.
    async fn wait_exited(&self, limit: std::time::Duration) -> Option<String> {
        let _ = limit;
        self.exited()
    }

    /// The isolation measures in force for this VM.
    fn isolation(&self) -> Isolation {
        Isolation::default()
    }

    /// Freezes the VM's writable disk layer and hard-links it to `dest`
    /// (which must not exist, on the same filesystem); writes continue in a
    /// new empty layer on top. The frozen layer is a qcow2 image whose
    /// backing file is the layer below (the VM's root filesystem for the
    /// first one), so image builds keep one layer per step. The guest should
    /// `sync` first. Afterwards the VM can no longer be snapshotted,
    /// suspended or stopped keeping its disk: its disk is a chain.
    async fn checkpoint_disk(&self, dest: &Path) -> Result<(), VmmError>;

    /// Ends the VM and moves its writable disk layer to `dest` (which must
    /// not exist): a qcow2 image whose backing file is the VM's root
    /// filesystem, usable as the `rootfs` of a later VM. The guest should
    /// `sync` first; the block layer is flushed on the way out.
    async fn stop_keeping_disk(&self, dest: &Path) -> Result<(), VmmError>;

    /// Ends the VM and removes its runtime files. Idempotent.
    async fn stop(&self) -> Result<(), VmmError>;
}

/// VM names become directory and socket names, so they are kept boring.
pub fn validate_vm_name(name: &str) -> Result<(), VmmError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(VmmError::InvalidName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_are_validated() {
        for good in ["a", "vm-1", "A_b-9"] {
            assert!(validate_vm_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_vm_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configs_written_before_networking_decode_without_a_network() {
        let old = r#"{"name":"a","kernel":"/k","initramfs":"/i","rootfs":"/r",
                      "mem_mib":256,"vcpus":1,"extra_cmdline":""}"#;
        let cfg: VmConfig = serde_json::from_str(old).unwrap();
        assert_eq!(cfg.network, Network::None);
        let mut cfg = cfg;
        cfg.network = Network::Internet;
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains(r#""network":"internet""#), "{json}");
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), cfg);
        cfg.network = Network::Isolated;
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains(r#""network":"isolated""#), "{json}");
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), cfg);
    }

    #[test]
    fn only_networks_with_a_card_have_one() {
        assert!(!Network::None.has_card());
        assert!(Network::Internet.has_card());
        assert!(Network::Isolated.has_card());
    }

    #[test]
    fn accel_choice_parses() {
        assert_eq!(
            "kvm".parse::<AccelChoice>(),
            Ok(AccelChoice::Force(Accel::Kvm))
        );
        assert_eq!("auto".parse::<AccelChoice>(), Ok(AccelChoice::Auto));
        assert!("xen".parse::<AccelChoice>().is_err());
    }
}
