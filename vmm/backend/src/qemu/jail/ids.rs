//! One uid (and the gid of the same number) per live VM.
//!
//! An id is held from the launch until the VM's process is gone and its
//! folder removed: a live VM's writable folder is owned by its id, so the
//! ids in use are those folders' owners (which also covers VMs a previous
//! backend instance launched and a restarted one has not attached yet)
//! plus the leases of launches in flight.

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

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

/// Hands out ids; cheap to share.
#[derive(Debug)]
pub(crate) struct IdAllocator {
    range: IdRange,
    /// `<state_dir>/vms`: each live VM's folder holds its writable folder.
    vms_dir: PathBuf,
    /// Ids leased by this process and not yet released.
    leased: Arc<Mutex<BTreeSet<u32>>>,
}

/// An id held for one VM; released when dropped, by which time the VM's
/// folder (the other record of the id) must be gone.
#[derive(Debug)]
pub struct IdLease {
    id: u32,
    leased: Arc<Mutex<BTreeSet<u32>>>,
}

impl IdLease {
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        if let Ok(mut leased) = self.leased.lock() {
            leased.remove(&self.id);
        }
    }
}

impl IdAllocator {
    pub fn new(range: IdRange, vms_dir: PathBuf) -> Self {
        Self {
            range,
            vms_dir,
            leased: Arc::default(),
        }
    }

    /// The lowest id neither leased nor owning a VM folder on disk.
    pub fn allocate(&self) -> Result<IdLease, JailError> {
        let mut leased = self
            .leased
            .lock()
            .map_err(|_| JailError::Prerequisite("the id allocator's lock is poisoned".into()))?;
        let on_disk = owners_on_disk(&self.vms_dir, self.range)?;
        let id = (self.range.first..=self.range.last)
            .find(|id| !leased.contains(id) && !on_disk.contains(id))
            .ok_or(JailError::NoFreeId(self.range))?;
        leased.insert(id);
        Ok(IdLease {
            id,
            leased: Arc::clone(&self.leased),
        })
    }

    /// Records the id of a VM taken over from an earlier instance, so it
    /// stays held after that VM's folder is gone until the handle drops.
    pub fn adopt(&self, id: u32) -> Option<IdLease> {
        if !self.range.contains(id) {
            return None;
        }
        let mut leased = self.leased.lock().ok()?;
        leased.insert(id);
        Some(IdLease {
            id,
            leased: Arc::clone(&self.leased),
        })
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

    #[test]
    fn leases_are_distinct_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdAllocator::new("500-502".parse().unwrap(), dir.path().into());
        let a = ids.allocate().unwrap();
        let b = ids.allocate().unwrap();
        let c = ids.allocate().unwrap();
        assert_eq!([a.id(), b.id(), c.id()], [500, 501, 502]);
        assert!(matches!(ids.allocate(), Err(JailError::NoFreeId(_))));
        drop(b);
        assert_eq!(ids.allocate().unwrap().id(), 501);
    }

    #[test]
    fn ids_owning_a_vm_folder_are_not_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let jail = dir.path().join("vm-a/jail");
        std::fs::create_dir_all(&jail).unwrap();
        std::os::unix::fs::chown(&jail, Some(600), Some(600)).unwrap();
        let ids = IdAllocator::new("600-601".parse().unwrap(), dir.path().into());
        assert_eq!(ids.allocate().unwrap().id(), 601);
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
