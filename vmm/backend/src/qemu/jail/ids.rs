//! One uid (and the gid of the same number) per live VM.
//!
//! A live VM's writable folder is owned by its id, and that ownership is
//! the only record: an id is taken by giving a new VM's folder to it, under
//! a lock on the folder all VMs live in, so every backend on that folder
//! (emberd runs one for builds and one for microVMs, a restarted emberd
//! finds VMs an earlier one launched) sees the same ids in use. An id is
//! free again once its VM's folder is gone, which happens only after its
//! process has ended.

use std::collections::BTreeSet;
use std::fmt;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::JailError;

/// An inclusive range of ids, e.g. `1900000000-1900065535`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl IdRange {
    /// Far above the ids distributions give users and the subordinate
    /// ranges (`/etc/subuid`) they hand to user namespaces.
    pub const DEFAULT: IdRange = IdRange {
        first: 1_900_000_000,
        last: 1_900_065_535,
    };

    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for IdRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected FIRST-LAST, e.g. 1900000000-1900065535");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        // 0 is root; u32::MAX is "no id" to the kernel (chown's -1).
        if first == 0 || last == u32::MAX || first > last {
            return Err(format!(
                "{s:?}: the range must be ascending, above 0 and below {}",
                u32::MAX
            ));
        }
        Ok(Self { first, last })
    }
}

/// Hands out ids from a range to VMs' folders under one folder.
#[derive(Debug)]
pub(crate) struct IdAllocator {
    range: IdRange,
    /// `<state_dir>/vms`: each live VM's folder holds its writable folder.
    vms_dir: PathBuf,
}

impl IdAllocator {
    pub fn new(range: IdRange, vms_dir: PathBuf) -> Self {
        Self { range, vms_dir }
    }

    /// Gives `jail_dir` (a new VM's writable folder, inside its folder
    /// under `vms_dir`) the lowest id of the range no VM's folder owns,
    /// and returns it.
    pub fn claim(&self, jail_dir: &Path) -> Result<u32, JailError> {
        let lock = std::fs::File::open(&self.vms_dir)
            .map_err(JailError::io(format!("open {}", self.vms_dir.display())))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(JailError::io(format!("lock {}", self.vms_dir.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        let taken = owners_on_disk(&self.vms_dir, self.range)?;
        let id = (self.range.first..=self.range.last)
            .find(|id| !taken.contains(id))
            .ok_or(JailError::NoFreeId(self.range))?;
        std::os::unix::fs::lchown(jail_dir, Some(id), Some(id)).map_err(JailError::io(format!(
            "give {} to uid {id}",
            jail_dir.display()
        )))?;
        Ok(id)
    }
}

/// Ids owning `<vms_dir>/<vm>/<anything>`: a VM's writable folder (and any
/// file the VM made) is owned by its id.
fn owners_on_disk(vms_dir: &Path, range: IdRange) -> Result<BTreeSet<u32>, JailError> {
    let mut ids = BTreeSet::new();
    let entries = match std::fs::read_dir(vms_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(JailError::io(format!("list {}", vms_dir.display()))(e)),
    };
    for vm in entries.flatten() {
        let Ok(inner) = std::fs::read_dir(vm.path()) else {
            continue;
        };
        for entry in inner.flatten() {
            if let Ok(meta) = entry.path().symlink_metadata() {
                if range.contains(meta.uid()) {
                    ids.insert(meta.uid());
                }
            }
        }
    }
    Ok(ids)
}

/// Refuses a range that overlaps an account of this host: a VM must never
/// run as a uid or gid that owns anything else.
pub(super) fn check_unused_by_accounts(range: IdRange) -> Result<(), JailError> {
    for (file, what) in [("/etc/passwd", "user"), ("/etc/group", "group")] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(name) = account_in_range(&text, range) {
            return Err(JailError::Prerequisite(format!(
                "the VM id range {range} holds the {what} {name:?} of {file}; choose another range"
            )));
        }
    }
    Ok(())
}

fn account_in_range(text: &str, range: IdRange) -> Option<String> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        range.contains(id).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_root_and_nonsense() {
        let r: IdRange = "100-200".parse().unwrap();
        assert_eq!((r.first, r.last), (100, 200));
        assert!(r.contains(100) && r.contains(200) && !r.contains(201));
        for bad in ["0-10", "10-5", "abc", "5", "1-4294967295"] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
        assert_eq!(IdRange::DEFAULT.to_string().parse(), Ok(IdRange::DEFAULT));
    }

    /// A new VM's folder, as `claim_dir` makes it.
    fn vm_folder(vms: &Path, name: &str) -> PathBuf {
        let jail = vms.join(name).join("jail");
        std::fs::create_dir_all(&jail).unwrap();
        jail
    }

    #[test]
    fn claims_are_distinct_and_an_id_is_free_once_its_folder_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdAllocator::new("500-502".parse().unwrap(), dir.path().into());
        let claimed: Vec<u32> = ["a", "b", "c"]
            .iter()
            .map(|n| ids.claim(&vm_folder(dir.path(), n)).unwrap())
            .collect();
        assert_eq!(claimed, [500, 501, 502]);
        let owner = std::fs::metadata(dir.path().join("b/jail")).unwrap();
        assert_eq!((owner.uid(), owner.gid()), (501, 501));
        let full = ids.claim(&vm_folder(dir.path(), "d"));
        assert!(matches!(full, Err(JailError::NoFreeId(_))));
        std::fs::remove_dir_all(dir.path().join("b")).unwrap();
        assert_eq!(ids.claim(&vm_folder(dir.path(), "d")).unwrap(), 501);
        // Another backend on the same folder (emberd's other one, or a
        // restarted emberd) sees the same ids in use.
        let other = IdAllocator::new("500-503".parse().unwrap(), dir.path().into());
        assert_eq!(other.claim(&vm_folder(dir.path(), "e")).unwrap(), 503);
    }

    #[test]
    fn ids_owning_a_vm_folder_are_not_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let jail = dir.path().join("vm-a/jail");
        std::fs::create_dir_all(&jail).unwrap();
        std::os::unix::fs::chown(&jail, Some(600), Some(600)).unwrap();
        let ids = IdAllocator::new("600-601".parse().unwrap(), dir.path().into());
        assert_eq!(ids.claim(&vm_folder(dir.path(), "vm-b")).unwrap(), 601);
    }

    #[test]
    fn accounts_inside_the_range_are_found() {
        let passwd = "root:x:0:0::/root:/bin/sh\nbob:x:1500:1500::/home/bob:/bin/sh\n";
        assert_eq!(
            account_in_range(passwd, "1000-2000".parse().unwrap()),
            Some("bob".into())
        );
        assert_eq!(account_in_range(passwd, IdRange::DEFAULT), None);
    }
}
