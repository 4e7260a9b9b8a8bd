//! Pass 2: every entry but the whiteouts, each replacing what is there
//! without ever writing through it (it may be a hard link shared with a
//! lower layer, or a symlink).

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, CWD};
use tar::EntryType;

use crate::metadata::{self, Metadata};
use crate::paths::{self, EntryPath, Missing};
use crate::{whiteout, LayerError, LayerStats, Limits};

pub(crate) struct Extractor<'a> {
    root: &'a Path,
    limits: &'a Limits,
    /// Directories' times, set once nothing more is added to them.
    dir_times: Vec<(Vec<OsString>, String, i64)>,
}

impl<'a> Extractor<'a> {
    pub fn new(root: &'a Path, limits: &'a Limits) -> Self {
        Self {
            root,
            limits,
            dir_times: Vec::new(),
        }
    }

    pub fn extract<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        stats: &mut LayerStats,
    ) -> Result<(), LayerError> {
        let path = EntryPath::parse(&entry.path_bytes(), self.limits)?;
        if path
            .name()
            .is_some_and(|n| n.as_bytes().starts_with(whiteout::PREFIX))
        {
            return Ok(());
        }
        let name = path.display.as_str();
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Char | EntryType::Block => {
                return Err(LayerError::DeviceNode {
                    entry: path.display.clone(),
                })
            }
            // Global PAX records describe the archive, not a file.
            EntryType::XGlobalHeader => return Ok(()),
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Fifo => {}
            other => {
                return Err(LayerError::UnsupportedType {
                    entry: path.display.clone(),
                    kind: format!("{other:?}"),
                })
            }
        }
        let link_name = match kind {
            EntryType::Symlink | EntryType::Link => Some(self.link_name(entry, name)?),
            _ => None,
        };
        let meta = Metadata::read(entry, name, self.limits)?;
        stats.entries += 1;
        let Some(file_name) = path.name() else {
            if kind != EntryType::Directory {
                return Err(LayerError::invalid(name, "would replace the image root"));
            }
            meta.apply(self.root, false, name)?;
            self.dir_times
                .push((Vec::new(), path.display.clone(), meta.mtime));
            return Ok(());
        };
        let target = paths::make_dir(self.root, path.parent(), name)?.join(file_name);
        match kind {
            EntryType::Directory => {
                // Over a directory: keep its children. Over anything else
                // (a symlink included): replace it.
                let keep = match std::fs::symlink_metadata(&target) {
                    Ok(existing) if existing.is_dir() => true,
                    Ok(_) => {
                        std::fs::remove_file(&target)
                            .map_err(LayerError::io(name, "removing what was there"))?;
                        false
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(LayerError::io(name, "looking at what is there")(e)),
                };
                if !keep {
                    std::fs::create_dir(&target)
                        .map_err(LayerError::io(name, "creating the directory"))?;
                }
                meta.apply(&target, false, name)?;
                self.dir_times
                    .push((path.components.clone(), path.display.clone(), meta.mtime));
                return Ok(());
            }
            EntryType::Regular | EntryType::Continuous => {
                clear(&target, name)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc_o_nofollow())
                    .open(&target)
                    .map_err(LayerError::io(name, "creating the file"))?;
                stats.bytes +=
                    io::copy(entry, &mut file).map_err(LayerError::io(name, "writing the file"))?;
            }
            EntryType::Symlink => {
                clear(&target, name)?;
                let link = link_name.unwrap_or_default();
                rustix::fs::symlinkat(OsStr::from_bytes(&link), CWD, &target)
                    .map_err(|e| LayerError::io(name, "creating the symlink")(e.into()))?;
            }
            EntryType::Link => {
                let source = self.hard_link_source(&link_name.unwrap_or_default(), name)?;
                clear(&target, name)?;
                rustix::fs::linkat(CWD, &source, CWD, &target, AtFlags::empty())
                    .map_err(|e| LayerError::io(name, "creating the hard link")(e.into()))?;
                // The link shares its target's inode, owner and mode.
                return Ok(());
            }
            _ => {
                clear(&target, name)?;
                rustix::fs::mknodat(CWD, &target, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| LayerError::io(name, "creating the FIFO")(e.into()))?;
            }
        }
        meta.apply(&target, kind == EntryType::Symlink, name)?;
        metadata::set_mtime(&target, meta.mtime, name)
    }

    /// Directories' times, now that nothing more goes into them. Each is
    /// looked up again within the root: a later entry may have replaced a
    /// directory on its way with a symlink.
    pub fn finish(self) -> Result<(), LayerError> {
        for (components, name, mtime) in self.dir_times.iter().rev() {
            let target = match components.split_last() {
                None => self.root.to_path_buf(),
                Some((last, parent)) => {
                    match paths::resolve_dir(self.root, parent, Missing::Stop, name)? {
                        Some(dir) => dir.join(last),
                        None => continue,
                    }
                }
            };
            if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                metadata::set_mtime(&target, *mtime, name)?;
            }
        }
        Ok(())
    }

    fn link_name<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Vec<u8>, LayerError> {
        let link = entry
            .link_name_bytes()
            .ok_or_else(|| LayerError::invalid(name, "link without a target"))?;
        if link.len() > self.limits.max_link_target_len {
            return Err(LayerError::Limit {
                what: "link target length",
                limit: self.limits.max_link_target_len as u64,
            });
        }
        Ok(link.into_owned())
    }

    /// A hard link's target, resolved within the root like any entry path:
    /// it must already exist and must not be a directory.
    fn hard_link_source(&self, link: &[u8], name: &str) -> Result<PathBuf, LayerError> {
        let components = paths::normal_components(link, name)?;
        let missing = || LayerError::invalid(name, "hard link target does not exist");
        let (last, parent) = components.split_last().ok_or_else(missing)?;
        let dir =
            paths::resolve_dir(self.root, parent, Missing::Stop, name)?.ok_or_else(missing)?;
        let source = dir.join(last);
        match std::fs::symlink_metadata(&source) {
            Ok(meta) if meta.is_dir() => {
                Err(LayerError::invalid(name, "hard link target is a directory"))
            }
            Ok(_) => Ok(source),
            Err(_) => Err(missing()),
        }
    }
}

/// Makes room for a non-directory: whatever is there goes, a directory
/// with everything in it.
fn clear(target: &Path, name: &str) -> Result<(), LayerError> {
    paths::remove_any(target).map_err(LayerError::io(name, "removing what was there"))
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}
