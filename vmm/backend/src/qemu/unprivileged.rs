//! Running QEMU as an unprivileged user (`QemuConfig::run_as`).
//!
//! The VM's runtime directory and the files QEMU writes (RAM file, disk
//! overlay; sockets and the console log it creates itself) belong to that
//! user. Everything shared stays root's and read-only to it: kernel,
//! initramfs, root filesystems and cached layers, snapshot disks (backing
//! files of overlays) must be world-readable with traversable parents,
//! as Ember's asset and data directories are (0755/0644). Snapshot files
//! are read back by the daemon as root, whoever owns them.
//!
//! One exception: a `RestoreMemory::Clone` restore maps the snapshot's RAM
//! image privately, but QEMU 7.2 opens `mem-path` read-write even then
//! (read-only opening of private mappings, `rom=on`, came in QEMU 8.2).
//! Letting the unprivileged user write a RAM image that every clone maps
//! would let one compromised QEMU corrupt them all, so Clone restores keep
//! running QEMU as root (with the `ember-vm` group); `Vm::isolation` says so.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::egress_guard::{group_gid, run, GROUP};
use crate::VmmError;

/// The user QEMU runs as when the daemon sets one up.
pub const USER: &str = "ember-vm";

/// Creates the system user `ember-vm` (primary group `ember-vm`, no home,
/// no login shell) if missing, and returns its uid and gid. Idempotent;
/// needs root.
pub fn ensure_vm_user() -> Result<(u32, u32), VmmError> {
    if group_gid(GROUP).is_none() {
        // Another process may create it at the same moment; what counts is
        // that it exists afterwards.
        let created = run("groupadd", &["--system", GROUP], None);
        if group_gid(GROUP).is_none() {
            created?;
        }
    }
    if user_ids(USER).is_none() {
        let created = run(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                GROUP,
                USER,
            ],
            None,
        );
        if user_ids(USER).is_none() {
            created?;
        }
    }
    user_ids(USER).ok_or_else(|| VmmError::Tool {
        tool: "useradd",
        message: format!("user {USER} missing after creating it"),
    })
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = line.trim().split(':').skip(2);
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    Some((uid, gid))
}

/// Lets other users pass through the state directory to the VM directories
/// (not list it), and checks that every directory above allows the same.
/// On `Err`, the reason QEMU could not run unprivileged here.
pub(super) fn open_state_dir(state_dir: &Path) -> Result<(), String> {
    for dir in [state_dir.to_path_buf(), state_dir.join("vms")] {
        let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o001 == 0 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o111))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    for dir in state_dir.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} is not searchable by other users (mode {:o}); QEMU running as \
                 another user could not reach its VM directories",
                dir.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

/// Gives the VM directory and the named files in it to `uid:gid`.
pub(super) fn hand_over(
    dir: &Path,
    files: &[&str],
    (uid, gid): (u32, u32),
) -> Result<(), VmmError> {
    let chown = |path: &Path| {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(VmmError::io(format!(
            "give {} to uid {uid}",
            path.display()
        )))
    };
    chown(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(VmmError::io(format!("chmod {}", dir.display())))?;
    for name in files {
        let path = dir.join(name);
        if path.exists() {
            chown(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_becomes_searchable_but_not_listable() {
        let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
        std::fs::create_dir(dir.path().join("vms")).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        open_state_dir(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o711);
        let hidden = dir.path().join("vms/private/state");
        std::fs::create_dir_all(&hidden).unwrap();
        std::fs::set_permissions(
            dir.path().join("vms/private"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        assert!(open_state_dir(&hidden).is_err());
    }
}
