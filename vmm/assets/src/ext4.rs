//! Turning a staged directory tree into a sparse ext4 image.

use std::path::Path;
use std::process::Command;

use crate::cmd::run;
use crate::fsutil::persist_readable;
use crate::AssetError;

/// Builds an ext4 image of `size` bytes holding `stage` and moves it to
/// `image` atomically. Owners, modes (setuid included) and device nodes
/// are copied from the tree as they are.
///
/// The file stays sparse: only metadata and file data are written. The
/// journal is not zeroed (`lazy_journal_init`): a fresh file reads as
/// zeros anyway. The inode tables are zeroed here on purpose
/// (`lazy_itable_init=0`, a few MiB per GiB, written once on the host);
/// left lazy, every guest's kernel would zero them after its first mount
/// and write them into that VM's disk overlay.
pub(crate) fn build_image(
    stage: &Path,
    size: u64,
    label: &str,
    image: &Path,
) -> Result<(), AssetError> {
    let dir = crate::fsutil::parent(image)?;
    let tmp = tempfile::Builder::new()
        .prefix(".rootfs-")
        .tempfile_in(dir)
        .map_err(AssetError::io("create temp image", dir))?;
    // mke2fs -d populates the filesystem in userspace: no loop mount.
    run(Command::new("mkfs.ext4")
        .arg("-q")
        .arg("-d")
        .arg(stage)
        .args(["-L", label])
        .args([
            "-E",
            "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=1",
            "-F",
        ])
        .arg(tmp.path())
        .arg(format!("{}k", size / 1024)))?;
    persist_readable(tmp, image)
}
