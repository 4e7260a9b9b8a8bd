//! Writes empty qcow2 (v3) overlays directly.
//!
//! Every boot and restore needs a fresh copy-on-write disk on top of a
//! read-only base; spawning `qemu-img create` for it cost 15-25 ms of each
//! restore. The empty overlay is four small structures, written here in
//! well under a millisecond: header (with backing file name and format),
//! refcount table, one refcount block, and an all-zero L1 table.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::VmmError;

const MAGIC: u32 = 0x5146_49fb;
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const HEADER_LEN: u32 = 104;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// QEMU refuses longer backing file names.
const MAX_BACKING_NAME: usize = 1023;

/// The guest-visible size of a disk image: a raw file's length, or the
/// size recorded in a qcow2 header.
pub fn virtual_size(path: &Path, format: &str) -> Result<u64, VmmError> {
    let ctx = || format!("read {}", path.display());
    let mut f = std::fs::File::open(path).map_err(VmmError::io(ctx()))?;
    match format {
        "raw" => Ok(f.metadata().map_err(VmmError::io(ctx()))?.len()),
        "qcow2" => {
            let mut h = [0u8; 32];
            f.read_exact(&mut h).map_err(VmmError::io(ctx()))?;
            if u32::from_be_bytes([h[0], h[1], h[2], h[3]]) != MAGIC {
                return Err(VmmError::Tool {
                    tool: "qcow2",
                    message: format!("{} is not a qcow2 image", path.display()),
                });
            }
            let mut size = [0u8; 8];
            size.copy_from_slice(&h[24..32]);
            Ok(u64::from_be_bytes(size))
        }
        other => Err(VmmError::Tool {
            tool: "qcow2",
            message: format!("unsupported backing format {other:?}"),
        }),
    }
}

/// Points the qcow2 image `layer` at a new backing file name without
/// touching its data: for layers whose backing file was hard-linked
/// elsewhere, same contents. The name is rewritten in place in the
/// header cluster (QEMU keeps nothing after it there), which also works
/// while QEMU holds the image open as a read-only backing file, where
/// `qemu-img rebase` is refused by QEMU's image locking.
pub fn rebase_header(layer: &Path, backing: &Path) -> Result<(), VmmError> {
    let name = backing.as_os_str().as_encoded_bytes();
    if name.len() > MAX_BACKING_NAME || !backing.is_absolute() {
        return Err(VmmError::Tool {
            tool: "qcow2",
            message: format!(
                "{}: backing path must be absolute and under 1 KiB: {}",
                layer.display(),
                backing.display()
            ),
        });
    }
    write_backing_name(layer, name)
}

/// Points `layer` at the file `name` in its own folder (QEMU resolves a
/// relative backing name against the folder of the image naming it), so
/// a folder of layers can move as a whole.
pub fn rebase_header_relative(layer: &Path, name: &str) -> Result<(), VmmError> {
    let plain = !name.is_empty()
        && name.len() <= MAX_BACKING_NAME
        && !name.contains(['/', ':', '\0'])
        && name != "."
        && name != "..";
    if !plain {
        return Err(VmmError::Tool {
            tool: "qcow2",
            message: format!(
                "{}: a backing name in the same folder must be a plain file name: {name:?}",
                layer.display()
            ),
        });
    }
    write_backing_name(layer, name.as_bytes())
}

fn write_backing_name(layer: &Path, name: &[u8]) -> Result<(), VmmError> {
    use std::io::{Seek, SeekFrom};
    let ctx = || format!("rebase {}", layer.display());
    let bad = |message: String| VmmError::Tool {
        tool: "qcow2",
        message: format!("{}: {message}", layer.display()),
    };
    // The layer sits in a folder a VM writes: never through a symlink.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(layer)
        .map_err(VmmError::io(ctx()))?;
    let mut h = [0u8; 24];
    f.read_exact(&mut h).map_err(VmmError::io(ctx()))?;
    let be32 = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    if be32(0) != MAGIC || be32(4) != 3 {
        return Err(bad("not a qcow2 v3 image".into()));
    }
    let mut off = [0u8; 8];
    off.copy_from_slice(&h[8..16]);
    let offset = u64::from_be_bytes(off);
    let cluster = 1u64 << be32(20).min(21);
    if offset == 0 || offset + name.len() as u64 > cluster {
        return Err(bad(format!(
            "no room for a {}-byte backing name",
            name.len()
        )));
    }
    f.seek(SeekFrom::Start(offset))
        .map_err(VmmError::io(ctx()))?;
    f.write_all(name).map_err(VmmError::io(ctx()))?;
    f.seek(SeekFrom::Start(16)).map_err(VmmError::io(ctx()))?;
    f.write_all(&(name.len() as u32).to_be_bytes())
        .map_err(VmmError::io(ctx()))?;
    f.sync_all().map_err(VmmError::io(ctx()))
}

/// Longest backing chain followed; builds make one layer per step.
const MAX_CHAIN: usize = 128;

/// The files below `top` in its backing chain, nearest first. The names
/// come from qcow2 headers a VM may have written, so only plain file
/// names are accepted (no `json:` or protocol names), each at most once.
pub fn backing_chain(top: &Path) -> Result<Vec<PathBuf>, VmmError> {
    let mut chain: Vec<PathBuf> = Vec::new();
    let mut current = top.to_path_buf();
    loop {
        let Some(name) = backing_name(&current)? else {
            return Ok(chain);
        };
        let bad = |reason: &str| VmmError::UnsafeBacking {
            path: current.clone(),
            reason: format!("{reason}: {:?}", String::from_utf8_lossy(&name)),
        };
        let text = std::str::from_utf8(&name).map_err(|_| bad("not UTF-8"))?;
        // QEMU reads "proto:..." (nbd:, json:, file:) as a protocol.
        let before_slash = text.split('/').next().unwrap_or("");
        if text.is_empty() || before_slash.contains(':') || text.contains('\0') {
            return Err(bad("not a plain file name"));
        }
        let path = Path::new(text);
        let next = if path.is_absolute() {
            path.to_path_buf()
        } else {
            current.parent().unwrap_or(Path::new("/")).join(path)
        };
        if chain.contains(&next) || next == top || chain.len() >= MAX_CHAIN {
            return Err(bad("a loop or a chain too long"));
        }
        chain.push(next.clone());
        current = next;
    }
}

/// The backing file name in a qcow2 header, or `None` for a raw image or
/// a qcow2 image without one.
pub(super) fn backing_name(path: &Path) -> Result<Option<Vec<u8>>, VmmError> {
    use std::io::{Seek, SeekFrom};
    let ctx = || format!("read {}", path.display());
    let mut f = std::fs::File::open(path).map_err(VmmError::io(ctx()))?;
    let mut h = [0u8; 20];
    if f.read_exact(&mut h).is_err() || u32::from_be_bytes([h[0], h[1], h[2], h[3]]) != MAGIC {
        return Ok(None);
    }
    let mut off = [0u8; 8];
    off.copy_from_slice(&h[8..16]);
    let offset = u64::from_be_bytes(off);
    let len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as usize;
    if offset == 0 || len == 0 {
        return Ok(None);
    }
    if len > MAX_BACKING_NAME {
        return Err(VmmError::UnsafeBacking {
            path: path.to_path_buf(),
            reason: format!("a {len}-byte backing name"),
        });
    }
    let mut name = vec![0u8; len];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut name))
        .map_err(VmmError::io(ctx()))?;
    Ok(Some(name))
}

/// "qcow2" when `path` starts with the qcow2 magic, else "raw": a root
/// filesystem is either a base image or a layer an image build left.
pub fn detect_format(path: &Path) -> Result<&'static str, VmmError> {
    let mut f =
        std::fs::File::open(path).map_err(VmmError::io(format!("read {}", path.display())))?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) if u32::from_be_bytes(magic) == MAGIC => Ok("qcow2"),
        _ => Ok("raw"),
    }
}

/// Creates `overlay` (which must not exist) backed by `backing`.
pub fn create_overlay(
    backing: &Path,
    backing_format: &str,
    overlay: &Path,
) -> Result<(), VmmError> {
    let size = virtual_size(backing, backing_format)?;
    let name = backing.as_os_str().as_encoded_bytes();
    if name.len() > MAX_BACKING_NAME || !backing.is_absolute() {
        return Err(VmmError::Tool {
            tool: "qcow2",
            message: format!(
                "backing path must be absolute and under 1 KiB: {}",
                backing.display()
            ),
        });
    }
    // Each L2 table maps CLUSTER/8 clusters.
    let l1_entries = size.div_ceil(CLUSTER * (CLUSTER / 8)).max(1);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
    let (refcount_table, refcount_block, l1_table) = (CLUSTER, 2 * CLUSTER, 3 * CLUSTER);
    let total_clusters = 3 + l1_clusters;
    if total_clusters > CLUSTER / 2 {
        return Err(VmmError::Tool {
            tool: "qcow2",
            message: format!("backing image of {size} bytes is too large"),
        });
    }

    let mut header = Vec::with_capacity(512);
    let be32 = |h: &mut Vec<u8>, v: u32| h.extend_from_slice(&v.to_be_bytes());
    let be64 = |h: &mut Vec<u8>, v: u64| h.extend_from_slice(&v.to_be_bytes());
    let fmt = backing_format.as_bytes();
    let ext_len = 8 + fmt.len().next_multiple_of(8) + 8;
    let name_offset = u64::from(HEADER_LEN) + ext_len as u64;
    be32(&mut header, MAGIC);
    be32(&mut header, 3); // version
    be64(&mut header, name_offset);
    be32(&mut header, name.len() as u32);
    be32(&mut header, CLUSTER_BITS);
    be64(&mut header, size);
    be32(&mut header, 0); // no encryption
    be32(&mut header, l1_entries as u32);
    be64(&mut header, l1_table);
    be64(&mut header, refcount_table);
    be32(&mut header, 1); // refcount table clusters
    be32(&mut header, 0); // snapshots
    be64(&mut header, 0);
    be64(&mut header, 0); // incompatible features
    be64(&mut header, 0); // compatible features
    be64(&mut header, 0); // autoclear features
    be32(&mut header, 4); // refcount order: 16-bit refcounts
    be32(&mut header, HEADER_LEN);
    be32(&mut header, EXT_BACKING_FORMAT);
    be32(&mut header, fmt.len() as u32);
    header.extend_from_slice(fmt);
    header.resize(header.len().next_multiple_of(8), 0);
    be32(&mut header, 0); // end of extensions
    be32(&mut header, 0);
    header.extend_from_slice(name);

    let mut refcounts = Vec::new();
    for _ in 0..total_clusters {
        refcounts.extend_from_slice(&1u16.to_be_bytes());
    }

    let ctx = || format!("create {}", overlay.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(overlay)
        .map_err(VmmError::io(ctx()))?;
    let mut write = || -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        f.set_len(total_clusters * CLUSTER)?;
        f.write_all(&header)?;
        f.seek(SeekFrom::Start(refcount_table))?;
        f.write_all(&refcount_block.to_be_bytes())?;
        f.seek(SeekFrom::Start(refcount_block))?;
        f.write_all(&refcounts)
    };
    write().map_err(VmmError::io(ctx()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's own parser is the judge (qemu-utils is installed by `make`).
    fn qemu_img(args: &[&str]) -> String {
        let out = std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img runs");
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn backing_chains_are_read_and_hostile_names_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![1u8; 1 << 20]).unwrap();
        let mid = dir.path().join("mid.qcow2");
        create_overlay(&base, "raw", &mid).unwrap();
        let top = dir.path().join("top.qcow2");
        create_overlay(&mid, "qcow2", &top).unwrap();
        assert_eq!(backing_chain(&top).unwrap(), [mid.clone(), base.clone()]);
        assert!(backing_chain(&base).unwrap().is_empty());
        // A VM that rewrote its layer's header to reach a host service or
        // to loop.
        let hostile = dir.path().join("hostile.qcow2");
        create_overlay(&mid, "qcow2", &hostile).unwrap();
        let mut bytes = std::fs::read(&hostile).unwrap();
        let off = u64::from_be_bytes(bytes[8..16].try_into().unwrap()) as usize;
        let name = b"json:{\"file\":{\"driver\":\"nbd\"}}";
        bytes[off..off + name.len()].copy_from_slice(name);
        bytes[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        std::fs::write(&hostile, &bytes).unwrap();
        assert!(matches!(
            backing_chain(&hostile),
            Err(VmmError::UnsafeBacking { .. })
        ));
        rebase_header(&mid, &top).unwrap();
        rebase_header(&top, &mid).unwrap();
        assert!(matches!(
            backing_chain(&top),
            Err(VmmError::UnsafeBacking { .. })
        ));
    }

    #[test]
    fn qemu_img_accepts_our_overlays_on_raw_and_qcow2() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![1u8; 3 << 20]).unwrap();
        let mid = dir.path().join("mid.qcow2");
        create_overlay(&base, "raw", &mid).unwrap();
        let top = dir.path().join("top.qcow2");
        create_overlay(&mid, "qcow2", &top).unwrap();
        assert_eq!(virtual_size(&top, "qcow2").unwrap(), 3 << 20);
        assert!(
            create_overlay(&mid, "qcow2", &top).is_err(),
            "must not overwrite"
        );
        let info = qemu_img(&["info", "--output=json", top.to_str().unwrap()]);
        assert!(
            info.contains(&format!("\"backing-filename\": \"{}\"", mid.display())),
            "{info}"
        );
        assert!(
            info.contains("\"backing-filename-format\": \"qcow2\""),
            "{info}"
        );
        qemu_img(&["check", top.to_str().unwrap()]);
        qemu_img(&["check", mid.to_str().unwrap()]);
        // Reads fall through both layers to the base.
        let out = dir.path().join("out.raw");
        qemu_img(&[
            "convert",
            "-O",
            "raw",
            top.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert_eq!(std::fs::read(out).unwrap(), vec![1u8; 3 << 20]);
    }

    #[test]
    fn bad_backing_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let not_qcow = dir.path().join("x");
        std::fs::write(&not_qcow, vec![0u8; 64]).unwrap();
        assert!(create_overlay(&not_qcow, "qcow2", &dir.path().join("o")).is_err());
        assert!(create_overlay(&not_qcow, "vmdk", &dir.path().join("o")).is_err());
        assert!(create_overlay(Path::new("relative"), "raw", &dir.path().join("o")).is_err());
    }

    #[test]
    fn rebase_header_repoints_a_qemu_made_layer() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        let mid = dir.path().join("mid.qcow2");
        create_overlay(&base, "raw", &mid).unwrap();
        // As QEMU leaves it after blockdev-snapshot-sync: a relative name.
        let top = dir.path().join("top.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "mid.qcow2",
            top.to_str().unwrap(),
        ]);
        let kept = dir.path().join("kept-mid.qcow2");
        std::fs::hard_link(&mid, &kept).unwrap();
        rebase_header(&top, &kept).unwrap();
        let info = qemu_img(&["info", "--output=json", top.to_str().unwrap()]);
        assert!(
            info.contains(&format!("\"backing-filename\": \"{}\"", kept.display())),
            "{info}"
        );
        qemu_img(&["check", top.to_str().unwrap()]);
        std::fs::remove_file(&mid).unwrap();
        let out = dir.path().join("out.raw");
        qemu_img(&[
            "convert",
            "-O",
            "raw",
            top.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert_eq!(std::fs::read(out).unwrap(), vec![7u8; 1 << 20]);
        assert!(rebase_header(&base, &kept).is_err(), "not a qcow2 image");
        assert!(rebase_header(&top, Path::new("relative")).is_err());
    }
}
