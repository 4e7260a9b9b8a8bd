//! The VM backend seam.
//!
//! Everything above this crate (image builder, lifecycle engine, proxy)
//! talks to [`Hypervisor`] and [`Vm`] only; QEMU is one implementation
//! ([`qemu::QemuHypervisor`]), a native KVM VMM can be another. The guest is
//! reached through the backend-neutral [`agent::AgentClient`], which only
//! needs a byte stream to the in-guest agent.

pub mod agent;
mod backend;
mod error;
/// Public: ember-blobstore's snapshot index uses the same header.
pub mod framed;
pub mod memory_delta;
pub mod qemu;
pub mod snapshot;

pub use backend::{
    validate_vm_name, Accel, AccelChoice, HostPause, Hypervisor, Isolation, Network, PortableFile,
    RestoreDisk, RestoreMemory, RestoreOptions, Vm, VmConfig, VmStats, DNS_ADDRESS,
    GATEWAY_ADDRESS, GUEST_ADDRESS, GUEST_PREFIX_LEN,
};
pub use error::VmmError;
pub use snapshot::{SnapshotInfo, SnapshotManifest};
