//! Files in a VM's writable folder, handled by the backend (root).
//!
//! That folder belongs to the VM's uid, and a QEMU taken over by its guest
//! can put anything there: a symlink to `/etc/shadow` named `memory.ram`,
//! a FIFO, another file. So root never follows a name there: it opens
//! with `O_NOFOLLOW`, checks with `fstat` that it got a regular file of
//! the VM's own, and works on that descriptor (re-owning, linking).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::VmmError;

/// Gives files root made in the VM's folder, before its QEMU ever ran, to
/// the VM's ids (nothing of the VM's could have replaced them yet).
pub(super) fn give(paths: &[&Path], (uid, gid): (u32, u32)) -> Result<(), VmmError> {
    for path in paths {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(VmmError::io(format!(
            "give {} to uid {uid}",
            path.display()
        )))?;
    }
    Ok(())
}

/// Opens `path` for reading if it is a regular file owned by `owner` (or
/// by root), never through a symlink.
pub(super) fn open_checked(path: &Path, owner: u32) -> Result<File, VmmError> {
    let (file, meta) = open_regular(path)?;
    if meta.uid() != owner && meta.uid() != 0 {
        return Err(refused(
            path,
            &format!("belongs to uid {}, not the VM's {owner}", meta.uid()),
        ));
    }
    Ok(file)
}

/// Opens `path` if it is a regular file, never through a symlink (and
/// without blocking on a FIFO put in its place).
pub(super) fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), VmmError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refused(path, "is a symlink")
            } else {
                VmmError::io(format!("open {}", path.display()))(e)
            }
        })?;
    let meta = file
        .metadata()
        .map_err(VmmError::io(format!("stat {}", path.display())))?;
    if !meta.file_type().is_file() {
        return Err(refused(path, "is not a regular file"));
    }
    Ok((file, meta))
}

/// Takes a file of a VM whose process has ended back for root: checks it
/// as [`open_checked`] does, then makes it root's and private, so the next
/// VM given this uid cannot reach it and root can trust it from now on.
pub(super) fn take_back(path: &Path, owner: u32) -> Result<File, VmmError> {
    let file = open_checked(path, owner)?;
    own_as_root(&file, path, 0o600)?;
    Ok(file)
}

/// Makes an open file root's with `mode`.
pub(super) fn own_as_root(file: &File, path: &Path, mode: u32) -> Result<(), VmmError> {
    let fd = file.as_raw_fd();
    // SAFETY: fchown and fchmod on a descriptor we own.
    let rc = unsafe {
        if libc::fchown(fd, 0, 0) != 0 {
            -1
        } else {
            libc::fchmod(fd, mode)
        }
    };
    if rc != 0 {
        return Err(VmmError::io(format!("re-own {}", path.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Hard-links the open `file` (not whatever its name points to by now) to
/// `dest`, which must not exist.
pub(super) fn link_open(file: &File, dest: &Path) -> Result<(), VmmError> {
    let src = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| refused(dest, "bad descriptor path"))?;
    let dst = std::ffi::CString::new(dest.as_os_str().as_encoded_bytes())
        .map_err(|_| refused(dest, "contains a NUL byte"))?;
    // SAFETY: linkat with two NUL-terminated paths; AT_SYMLINK_FOLLOW makes
    // the magic /proc link resolve to the open file itself.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        return Err(VmmError::io(format!("link to {}", dest.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Lets VMs' uids read a shared, read-only file (a base image, a kernel,
/// an image's snapshot disk) that a jail binds in read-only. The folders
/// above it stay root's alone: no host user reaches it by path.
pub(super) fn make_world_readable(path: &Path) -> Result<(), VmmError> {
    let (file, meta) = open_regular(path)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o444 != 0o444 || mode & 0o7022 != 0 {
        // Readable by all, writable by root only, no set-id bits.
        let wanted = (mode | 0o444) & !0o7022;
        // SAFETY: fchmod on a descriptor we own.
        if unsafe { libc::fchmod(file.as_raw_fd(), wanted) } != 0 {
            return Err(VmmError::io(format!("chmod {}", path.display()))(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

fn refused(path: &Path, reason: &str) -> VmmError {
    VmmError::UnsafeVmFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_fifos_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("secret"), b"root only").unwrap();
        std::os::unix::fs::symlink(d.join("secret"), d.join("memory.ram")).unwrap();
        let err = take_back(&d.join("memory.ram"), 4242).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");

        let fifo = std::ffi::CString::new(d.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = open_checked(&d.join("fifo"), 4242).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");

        std::fs::write(d.join("other"), b"x").unwrap();
        std::os::unix::fs::chown(d.join("other"), Some(4343), Some(4343)).unwrap();
        let err = open_checked(&d.join("other"), 4242).unwrap_err();
        assert!(err.to_string().contains("4343"), "{err}");
    }

    #[test]
    fn taking_back_makes_the_file_root_private_and_linking_uses_the_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("disk"), b"layer").unwrap();
        give(&[&d.join("disk")], (4242, 4242)).unwrap();
        let file = take_back(&d.join("disk"), 4242).unwrap();
        let meta = std::fs::metadata(d.join("disk")).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
        // The name now points elsewhere; the link still takes the file.
        std::fs::rename(d.join("disk"), d.join("moved")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("disk")).unwrap();
        link_open(&file, &d.join("cached")).unwrap();
        assert_eq!(std::fs::read(d.join("cached")).unwrap(), b"layer");
        make_world_readable(&d.join("cached")).unwrap();
        let mode = std::fs::metadata(d.join("cached")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}
