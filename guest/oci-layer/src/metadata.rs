//! Owner, mode, extended attributes and times, in the order that keeps
//! each: chown clears setuid and file capabilities, so it goes first.

use std::io::Read;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, Timestamps, CWD};

use crate::{LayerError, Limits};

const XATTR_PREFIX: &str = "SCHILY.xattr.";

pub(crate) struct Metadata {
    uid: u32,
    gid: u32,
    mode: u32,
    pub mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Metadata {
    pub fn read<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        limits: &Limits,
    ) -> Result<Self, LayerError> {
        let header = entry.header();
        let bad = |what: &str| LayerError::invalid(name, format!("invalid {what} in its header"));
        let id = |value: std::io::Result<u64>, what: &str| {
            // u32::MAX is -1 to chown: "leave as is", never an owner.
            value
                .ok()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| bad(what))
        };
        let uid = id(header.uid(), "owner")?;
        let gid = id(header.gid(), "group")?;
        let mode = header.mode().map_err(|_| bad("mode"))? & 0o7777;
        let mtime = header
            .mtime()
            .ok()
            .and_then(|t| i64::try_from(t).ok())
            .ok_or_else(|| bad("modification time"))?;
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().map_err(LayerError::Read)? {
            for extension in extensions {
                let extension = extension.map_err(LayerError::Read)?;
                let Ok(key) = extension.key() else { continue };
                let Some(xattr) = key.strip_prefix(XATTR_PREFIX) else {
                    continue;
                };
                let value = extension.value_bytes();
                if value.len() > limits.max_xattr_value_bytes {
                    return Err(LayerError::Limit {
                        what: "xattr value bytes",
                        limit: limits.max_xattr_value_bytes as u64,
                    });
                }
                xattrs.push((xattr.to_string(), value.to_vec()));
            }
        }
        Ok(Self {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }

    /// Everything but the time, which directories get at the end.
    pub fn apply(&self, path: &Path, is_symlink: bool, name: &str) -> Result<(), LayerError> {
        rustix::fs::chownat(
            CWD,
            path,
            Some(rustix::fs::Uid::from_raw(self.uid)),
            Some(rustix::fs::Gid::from_raw(self.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| LayerError::io(name, "setting the owner")(e.into()))?;
        // A symlink has no mode of its own on Linux; chmod would follow it.
        if !is_symlink {
            rustix::fs::chmodat(CWD, path, Mode::from_raw_mode(self.mode), AtFlags::empty())
                .map_err(|e| LayerError::io(name, "setting the mode")(e.into()))?;
        }
        for (xattr, value) in &self.xattrs {
            rustix::fs::lsetxattr(path, xattr.as_str(), value, rustix::fs::XattrFlags::empty())
                .map_err(|e| LayerError::Xattr {
                    entry: name.to_string(),
                    name: xattr.clone(),
                    source: e.into(),
                })?;
        }
        Ok(())
    }
}

pub(crate) fn set_mtime(path: &Path, mtime: i64, name: &str) -> Result<(), LayerError> {
    let time = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| LayerError::io(name, "setting the modification time")(e.into()))
}
