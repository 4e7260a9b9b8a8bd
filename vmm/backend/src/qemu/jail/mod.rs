//! The jail every QEMU process runs in, builds included.
//!
//! A guest that escapes into QEMU holds a process with QEMU's privileges,
//! so QEMU gets as few as the work allows, set up by the backend (root)
//! before QEMU reads a byte of guest input, the way Firecracker's jailer
//! does it:
//! - its own uid and gid, allocated per VM from a configured range
//!   (`ids.rs`), never shared by two live VMs;
//! - its own mount namespace whose root is a fresh read-only tmpfs that
//!   holds only QEMU's program files (read-only), the files this VM reads
//!   (kernel, initramfs, the disk's backing chain: read-only), a minimal
//!   `/dev` and the VM's own folder (the only writable place) — no `/proc`,
//!   no `/sys`, nothing of the host's data;
//! - its own PID (QEMU is PID 1 there), IPC and UTS namespaces, and an empty
//!   network namespace unless the VM has outbound internet;
//! - no capabilities (bounding set emptied, then a plain uid), `no_new_privs`,
//!   core dumps off, files it writes capped in size (`RLIMIT_FSIZE`), and
//!   QEMU's own seccomp sandbox on top (`command.rs`);
//! - its own cgroup, joined before any of the above (`cgroup.rs`).
//!
//! Everything QEMU talks to the backend through is an open descriptor it
//! inherits (the monitor and agent sockets, the device-state file), so no
//! file the backend trusts lives where QEMU can write. Every step fails
//! closed: if any of it cannot be done the process never runs QEMU and the
//! launch fails with the step that broke ([`JailError`]).

mod child;
mod ids;
mod plan;
mod runtime;
mod spawn;

use std::path::{Path, PathBuf};

pub(crate) use ids::IdAllocator;
pub use ids::IdRange;
pub(crate) use plan::{Access, MountPlan};
pub(crate) use runtime::QemuRuntime;
pub(crate) use spawn::{spawn, SpawnSpec};

/// How the backend jails its QEMU processes (`QemuConfig::jail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// uids and gids handed to VMs, one of each (same number) per VM.
    pub ids: IdRange,
    /// Host folders whose files may back a VM's disk or RAM. A backing
    /// file outside them (a hostile qcow2 header can name any path) fails
    /// the launch. Empty: any path the caller hands over.
    pub image_roots: Vec<PathBuf>,
}

impl Default for JailConfig {
    fn default() -> Self {
        Self {
            ids: IdRange::DEFAULT,
            image_roots: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jail needs root (CAP_SYS_ADMIN for namespaces and mounts, CAP_SETUID to drop to the VM's uid); run the backend as root")]
    NotRoot,
    #[error("host prerequisite missing for the jail: {0}")]
    Prerequisite(String),
    #[error("no free uid in the VM id range {0} (every id is held by a live VM)")]
    NoFreeId(IdRange),
    #[error("{path}: {reason}")]
    UnsafeFile { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("could not create the jailed process: {0}")]
    Clone(std::io::Error),
    #[error("setting up the jail failed at {step}: {source}")]
    Setup {
        step: String,
        source: std::io::Error,
    },
}

impl JailError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// Checks, once when the backend starts, that this host can jail VMs, so
/// a missing prerequisite is an error at start naming what to fix rather
/// than a failed launch later.
pub(super) fn check_host(config: &JailConfig) -> Result<(), JailError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    // A VM's uid may write only its own folder; without this sysctl it
    // could hard-link files it does not own into that folder, and the
    // backend (root) would later treat them as the VM's.
    let hardlinks = std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").unwrap_or_default();
    if hardlinks.trim() != "1" {
        return Err(JailError::Prerequisite(
            "fs.protected_hardlinks is not 1 (set it: sysctl -w fs.protected_hardlinks=1)".into(),
        ));
    }
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        if !Path::new("/proc/self/ns").join(ns).exists() {
            return Err(JailError::Prerequisite(format!(
                "the kernel has no {ns} namespaces (/proc/self/ns/{ns} missing)"
            )));
        }
    }
    ids::check_unused_by_accounts(config.ids)?;
    Ok(())
}

#[cfg(test)]
mod tests;
