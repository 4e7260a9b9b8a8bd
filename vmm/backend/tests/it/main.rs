//! The backend's integration tests: real QEMU guests, one test binary (one link of the
//! backend and its dependencies instead of one per file). `hostile_agent` is a
//! binary of its own: it bounds its whole process's memory growth.

mod common;

mod bad_input;
mod cgroups;
mod debian_guest;
mod guest_basics;
mod guest_network;
mod jail;
mod main_exit;
mod memory_delta;
mod network_switch;
mod oci_layer;
mod pty;
mod reattach;
mod snapshot_restore;
