//! The `busybox` base root filesystem: Debian's static busybox with a
//! symlink per applet and a minimal /etc, as an ext4 image.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cmd::{run, stdout_string};
use crate::debian::{fetch_and_unpack, upstream_version};
use crate::fsutil::{create_dir_all, hex, lock_exclusive, read_json, sha256_file, write_json};
use crate::AssetError;

const PACKAGE: &str = "busybox-static";
/// Room for the user's files in images built on this base; sparse, so
/// the unused part costs no disk.
const IMAGE_SIZE: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRootfs {
    pub image: PathBuf,
    pub name: String,
    /// `busybox-<debian version without epoch>-<12 hex of content hash>`,
    /// or `debian12-minimal-<build date>-<12 hex of the package list hash>`.
    pub version: String,
    /// What the image was built from: busybox-static's Debian version
    /// (epoch included), or the image's `/etc/debian_version`.
    pub package_version: String,
    /// SHA-256 of the busybox-static `.deb`, or of debian12-minimal's
    /// installed package list (`name version` lines, sorted).
    pub deb_sha256: String,
}

pub(crate) fn ensure(root: &Path) -> Result<BaseRootfs, AssetError> {
    ensure_cached(root, "busybox", IMAGE_SIZE, build)
}

/// Room for a registry image and what its build adds; sparse.
const EMPTY_IMAGE_SIZE: u64 = 4 << 30;

pub(crate) fn ensure_empty(root: &Path) -> Result<BaseRootfs, AssetError> {
    ensure_cached(root, "empty", EMPTY_IMAGE_SIZE, |dir, image| {
        let stage = tempfile::Builder::new()
            .prefix(".empty-")
            .tempdir_in(dir)
            .map_err(AssetError::io("create temp dir", dir))?;
        // The staging folder's mode becomes the image's `/`.
        set_mode(stage.path(), 0o755)?;
        crate::ext4::build_image(stage.path(), EMPTY_IMAGE_SIZE, "ember-root", image)?;
        Ok(BaseRootfs {
            image: image.to_path_buf(),
            name: "empty".into(),
            version: format!("empty-ext4-{}g", EMPTY_IMAGE_SIZE >> 30),
            package_version: String::new(),
            deb_sha256: String::new(),
        })
    })
}

/// A base image cached in `root/NAME/` (`rootfs.ext4` + `manifest.json`),
/// built by `build(dir, image)` when missing or stale, under a file lock so
/// concurrent callers build it once.
pub(crate) fn ensure_cached(
    root: &Path,
    name: &str,
    image_size: u64,
    build: impl FnOnce(&Path, &Path) -> Result<BaseRootfs, AssetError>,
) -> Result<BaseRootfs, AssetError> {
    let dir = root.join(name);
    create_dir_all(&dir)?;
    let _lock = lock_exclusive(&dir.join(".lock"))?;
    let manifest = dir.join("manifest.json");
    let image = dir.join("rootfs.ext4");
    if let Some(mut base) = read_json::<BaseRootfs>(&manifest) {
        // Paths are re-derived so the cache survives being moved.
        base.image = image.clone();
        let size = fs::metadata(&image).map(|m| m.len()).ok();
        if size == Some(image_size) {
            tracing::debug!(version = %base.version, "{name} rootfs cached");
            return Ok(base);
        }
        tracing::info!("{name} rootfs cache stale; rebuilding");
    }
    let base = build(&dir, &image)?;
    write_json(&manifest, &base)?;
    tracing::info!(version = %base.version, "{name} rootfs ready");
    Ok(base)
}

fn build(dir: &Path, image: &Path) -> Result<BaseRootfs, AssetError> {
    // Removed when dropped, including on every error path below.
    let unpacked = fetch_and_unpack(dir, PACKAGE, None)?;
    let (work, pkg) = (&unpacked.work, &unpacked.root);
    let package_version = unpacked.version.clone();
    let stage = work.path().join("root");
    stage_tree(
        &pkg.join("bin/busybox"),
        &stage,
        upstream_version(&package_version),
    )?;
    let content = tree_hash(&stage)?;

    crate::ext4::build_image(&stage, IMAGE_SIZE, "ember-root", image)?;

    let plain_version = package_version
        .split_once(':')
        .map_or(package_version.as_str(), |(_, v)| v);
    Ok(BaseRootfs {
        image: image.to_path_buf(),
        name: "busybox".into(),
        version: format!("busybox-{plain_version}-{}", &content[..12]),
        package_version,
        deb_sha256: unpacked.deb_sha256.clone(),
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), AssetError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(AssetError::io("chmod", path))
}

fn write_file(path: &Path, text: &str) -> Result<(), AssetError> {
    fs::write(path, text).map_err(AssetError::io("write", path))?;
    set_mode(path, 0o644)
}

fn stage_tree(busybox: &Path, stage: &Path, busybox_version: &str) -> Result<(), AssetError> {
    let dirs = [
        ("bin", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("root", 0o700),
        ("var", 0o755),
        ("var/log", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("mnt", 0o755),
    ];
    for (d, mode) in dirs {
        let path = stage.join(d);
        create_dir_all(&path)?;
        // Explicit, since create_dir is subject to the umask.
        set_mode(&path, mode)?;
    }
    let target = stage.join("bin/busybox");
    fs::copy(busybox, &target).map_err(AssetError::io("copy busybox", &target))?;
    set_mode(&target, 0o755)?;

    let listing = stdout_string(&run(Command::new(&target).arg("--list-full"))?);
    let mut links = 0;
    for applet in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let rel = Path::new(applet.trim_start_matches('/'));
        // Applet paths come from the binary; keep them inside the tree.
        if rel == Path::new("bin/busybox")
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            continue;
        }
        let link = stage.join(rel);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            create_dir_all(parent)?;
        }
        symlink("/bin/busybox", &link).map_err(AssetError::io("symlink applet", &link))?;
        links += 1;
    }
    tracing::debug!(links, "busybox applet links created");

    let etc = stage.join("etc");
    write_file(
        &etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    write_file(&etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
    write_file(&etc.join("hosts"), "127.0.0.1 localhost\n")?;
    write_file(&etc.join("hostname"), "ember\n")?;
    write_file(
        &etc.join("os-release"),
        &format!("ID=ember-busybox\nNAME=\"Ember busybox\"\nVERSION_ID={busybox_version}\n"),
    )
}

/// Hashes paths, types, permission bits, link targets and file contents in
/// sorted order, so the same tree always gives the same version string.
pub(crate) fn tree_hash(root: &Path) -> Result<String, AssetError> {
    let mut entries = Vec::new();
    collect(root, root, &mut entries)?;
    entries.sort();
    let mut h = Sha256::new();
    for (rel, record) in entries {
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(record.as_bytes());
        h.update([0]);
    }
    Ok(hex(&h.finalize()))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> Result<(), AssetError> {
    for entry in fs::read_dir(dir).map_err(AssetError::io("list", dir))? {
        let path = entry.map_err(AssetError::io("list", dir))?.path();
        let meta = path
            .symlink_metadata()
            .map_err(AssetError::io("stat", &path))?;
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let mode = meta.permissions().mode() & 0o7777;
        let record = if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(AssetError::io("readlink", &path))?;
            format!("l {}", target.display())
        } else if meta.is_dir() {
            collect(root, &path, out)?;
            format!("d {mode:o}")
        } else {
            format!("f {mode:o} {}", sha256_file(&path)?)
        };
        out.push((rel, record));
    }
    Ok(())
}
