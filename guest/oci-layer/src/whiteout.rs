//! Pass 1: whiteouts, against what lower layers left. Run before any of
//! this layer's entries exist, so an opaque directory removes only what
//! was there before.

use std::os::unix::ffi::OsStrExt;

use crate::paths::{self, EntryPath, Missing};
use crate::{LayerError, LayerStats, Limits};

pub(crate) const PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// AUFS's own metadata (`.wh..wh.plnk`, …): meaningless here.
const META_PREFIX: &[u8] = b".wh..wh.";

pub(crate) fn apply<R: std::io::Read>(
    root: &std::path::Path,
    entry: &mut tar::Entry<'_, R>,
    limits: &Limits,
    stats: &mut LayerStats,
) -> Result<(), LayerError> {
    let path = EntryPath::parse(&entry.path_bytes(), limits)?;
    let Some(name) = path.name() else {
        return Ok(());
    };
    let name = name.as_bytes();
    if !name.starts_with(PREFIX) {
        return Ok(());
    }
    let entry_name = path.display.as_str();
    if name == OPAQUE {
        stats.whiteouts += 1;
        let Some(dir) = paths::resolve_dir(root, path.parent(), Missing::Stop, entry_name)? else {
            return Ok(());
        };
        let children = std::fs::read_dir(&dir)
            .map_err(LayerError::io(entry_name, "listing an opaque directory"))?;
        for child in children {
            let child = child.map_err(LayerError::io(entry_name, "listing an opaque directory"))?;
            paths::remove_any(&child.path())
                .map_err(LayerError::io(entry_name, "removing a lower layer's file"))?;
        }
        return Ok(());
    }
    if name.starts_with(META_PREFIX) {
        return Ok(());
    }
    let target = &name[PREFIX.len()..];
    match target {
        b"" | b"." => return Err(LayerError::invalid(entry_name, "whiteout names nothing")),
        b".." => {
            return Err(LayerError::Escape {
                entry: path.display.clone(),
            })
        }
        _ => {}
    }
    stats.whiteouts += 1;
    if let Some(dir) = paths::resolve_dir(root, path.parent(), Missing::Stop, entry_name)? {
        paths::remove_any(&dir.join(std::ffi::OsStr::from_bytes(target)))
            .map_err(LayerError::io(entry_name, "removing a lower layer's file"))?;
    }
    Ok(())
}
