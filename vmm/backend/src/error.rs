use std::path::PathBuf;

use crate::agent::AgentError;
use crate::qemu::{QmpError, RecordError};
use crate::snapshot::SnapshotError;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(
        "invalid VM name {0:?}: use 1-64 characters from [A-Za-z0-9_-], not starting with '-'"
    )]
    InvalidName(String),
    #[error("a VM named {0:?} already exists on this host")]
    NameInUse(String),
    #[error("{what} not found at {path}")]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("path {0} is too long for a unix socket; use a shorter state directory")]
    SocketPathTooLong(PathBuf),
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The VM's process (QEMU here) ended during a launch or restore.
    #[error("the VM process exited unexpectedly ({status}); last console lines:\n{console_tail}")]
    ProcessExited {
        status: String,
        console_tail: String,
    },
    #[error("timed out after {seconds}s waiting for {what}; last console lines:\n{console_tail}")]
    Timeout {
        what: &'static str,
        seconds: u64,
        console_tail: String,
    },
    /// The VM process's control channel (QMP here) failed.
    #[error("VM monitor: {0}")]
    Monitor(#[from] QmpError),
    #[error("guest agent: {0}")]
    Agent(#[from] AgentError),
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("snapshot memory: {0}")]
    MemoryDelta(#[from] crate::memory_delta::MemoryDeltaError),
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("the VM is {0}")]
    WrongState(&'static str),
    #[error("VM runtime record: {0}")]
    Record(#[from] RecordError),
    #[error(
        "snapshot {snapshot} was taken {}, so it cannot be restored with network {}: \
         its device state only loads into a VM with the same devices",
        if *snapshot_has_card { "with a network card" } else { "without a network card" },
        requested.as_str()
    )]
    NetworkMismatch {
        snapshot: PathBuf,
        snapshot_has_card: bool,
        requested: crate::Network,
    },
    #[error("no running VM named {name:?} to attach to: {reason}")]
    NotRunning { name: String, reason: String },
    #[error("the VM's jail: {0}")]
    Jail(#[from] crate::qemu::jail::JailError),
    #[error("refusing {path}, a file of the VM's: it {reason}")]
    UnsafeVmFile { path: PathBuf, reason: String },
    #[error("the disk {path} names a backing file the VM may not read: {reason}")]
    UnsafeBacking { path: PathBuf, reason: String },
}

impl VmmError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
