//! Guest assets for Ember microVMs, built into a cache directory:
//! the Debian cloud kernel as a PVH-bootable `vmlinux` with its virtio
//! modules, an initramfs wrapping the guest agent, and the ext4 base root
//! filesystems (busybox, and debian12-minimal from debootstrap). Every
//! `ensure_*` is idempotent and safe to call from several processes at once.

mod cmd;
mod cpio;
mod debian;
mod debian_rootfs;
pub mod elf;
mod error;
mod ext4;
mod fsutil;
mod initramfs;
mod kernel;
mod kmod;
mod lz4_legacy;
mod mirror;
mod rootfs;

use std::path::{Path, PathBuf};

pub use error::AssetError;
pub use kernel::GuestKernel;
pub use rootfs::BaseRootfs;

/// A cache directory of guest assets, e.g. `<data-dir>/assets`.
#[derive(Debug, Clone)]
pub struct AssetStore {
    root: PathBuf,
}

impl AssetStore {
    /// A relative `root` is resolved against the current directory now, so
    /// the paths handed out stay valid after a later `chdir`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Fetches/extracts the kernel if not cached.
    pub fn ensure_kernel(&self) -> Result<GuestKernel, AssetError> {
        kernel::ensure(&self.root)
    }

    /// Builds (or reuses) the initramfs for this agent binary + kernel modules.
    pub fn ensure_initramfs(
        &self,
        kernel: &GuestKernel,
        agent_binary: &Path,
    ) -> Result<PathBuf, AssetError> {
        initramfs::ensure(&self.root, kernel, agent_binary)
    }

    /// Builds (or reuses) the busybox base rootfs image.
    pub fn ensure_busybox_rootfs(&self) -> Result<BaseRootfs, AssetError> {
        rootfs::ensure(&self.root)
    }

    /// Builds (or reuses) the `debian12-minimal` base rootfs: debootstrap
    /// minbase bookworm in a 4 GiB sparse ext4 image. The first build takes
    /// a minute or more and needs root; a cached image does not.
    pub fn ensure_debian_rootfs(&self) -> Result<BaseRootfs, AssetError> {
        debian_rootfs::ensure(&self.root)
    }

    /// Builds (or reuses) an empty 4 GiB sparse ext4 image: the disk a
    /// registry image's layers are applied to, inside a build VM.
    pub fn ensure_empty_rootfs(&self) -> Result<BaseRootfs, AssetError> {
        rootfs::ensure_empty(&self.root)
    }

    /// Everything a busybox guest needs, with `agent_binary` as PID 1.
    pub fn ensure_guest(&self, agent_binary: &Path) -> Result<GuestAssets, AssetError> {
        let kernel = self.ensure_kernel()?;
        let initramfs = self.ensure_initramfs(&kernel, agent_binary)?;
        let rootfs = self.ensure_busybox_rootfs()?;
        Ok(GuestAssets {
            kernel: kernel.vmlinux,
            kernel_package: kernel.package,
            kernel_version: kernel.version,
            kernel_deb_sha256: kernel.deb_sha256,
            initramfs,
            rootfs: rootfs.image,
            rootfs_version: rootfs.version,
        })
    }
}

/// The three files a VM boots from, and where they came from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GuestAssets {
    pub kernel: PathBuf,
    pub kernel_package: String,
    pub kernel_version: String,
    pub kernel_deb_sha256: String,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub rootfs_version: String,
}
