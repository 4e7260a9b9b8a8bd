//! The guest kernel: Debian's cloud kernel, unpacked to an ELF `vmlinux`
//! plus the handful of modules the guest loads from its initramfs.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::debian::{deb_field, fetch_and_unpack, fetch_deb, first_dependency};
use crate::fsutil::{create_dir_all, lock_exclusive, read_json, write_atomic, write_json};
use crate::{elf, kmod, lz4_legacy, AssetError};

const META_PACKAGE: &str = "linux-image-cloud-amd64";
pub(crate) const MODULES_ORDER: &str = "modules.order";
const VMLINUX: &str = "vmlinux";
const MODULES_DIR: &str = "modules";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestKernel {
    pub vmlinux: PathBuf,
    /// Flat directory of `.ko` files plus `modules.order`.
    pub modules_dir: PathBuf,
    pub package: String,
    pub version: String,
    pub deb_sha256: String,
    /// `uname -r` of the guest, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
}

impl GuestKernel {
    /// Module file names in load order (dependencies first).
    pub fn module_order(&self) -> Result<Vec<String>, AssetError> {
        let path = self.modules_dir.join(MODULES_ORDER);
        let text = fs::read_to_string(&path).map_err(AssetError::io("read", &path))?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    fn is_complete(&self) -> bool {
        self.vmlinux.is_file()
            && self.module_order().is_ok_and(|m| {
                !m.is_empty() && m.iter().all(|f| self.modules_dir.join(f).is_file())
            })
    }
}

pub(crate) fn ensure(root: &Path) -> Result<GuestKernel, AssetError> {
    let dir = root.join("kernel");
    create_dir_all(&dir)?;
    let _lock = lock_exclusive(&dir.join(".lock"))?;
    let manifest = dir.join("manifest.json");
    if let Some(mut kernel) = read_json::<GuestKernel>(&manifest) {
        // Paths are re-derived so the cache survives being moved.
        kernel.vmlinux = dir.join(VMLINUX);
        kernel.modules_dir = dir.join(MODULES_DIR);
        if kernel.is_complete() {
            tracing::debug!(release = %kernel.kernel_release, "guest kernel cached");
            return Ok(kernel);
        }
        tracing::info!("guest kernel cache incomplete; rebuilding");
    }
    let kernel = build(&dir)?;
    write_json(&manifest, &kernel)?;
    tracing::info!(release = %kernel.kernel_release, version = %kernel.version, "guest kernel ready");
    Ok(kernel)
}

fn build(dir: &Path) -> Result<GuestKernel, AssetError> {
    let debs = dir.join("debs");
    let meta = fetch_deb(&debs, META_PACKAGE, None)?;
    let depends = deb_field(&meta, "Depends")?;
    let (package, pinned) = first_dependency(&depends).ok_or_else(|| AssetError::Package {
        package: META_PACKAGE.into(),
        reason: format!("cannot parse Depends: {depends}"),
    })?;
    // Everything is staged in `unpacked.work` and moved into place at the
    // end; dropping it removes the (large) extracted package even on error.
    let unpacked = fetch_and_unpack(dir, &package, pinned.as_deref())?;
    let (work, pkg) = (&unpacked.work, &unpacked.root);
    let kernel_release = kernel_release(pkg, &package)?;

    let vmlinux_tmp = work.path().join("vmlinux");
    let vmlinuz = pkg.join("boot").join(format!("vmlinuz-{kernel_release}"));
    write_atomic(&vmlinux_tmp, &decompress_kernel(&vmlinuz)?)?;

    let modules_tmp = work.path().join("modules");
    stage_modules(
        &pkg.join("lib/modules").join(&kernel_release).join("kernel"),
        &modules_tmp,
    )?;
    fs::remove_dir_all(pkg).map_err(AssetError::io("remove extracted package", pkg))?;

    let vmlinux = dir.join(VMLINUX);
    let modules_dir = dir.join(MODULES_DIR);
    if modules_dir.exists() {
        fs::remove_dir_all(&modules_dir)
            .map_err(AssetError::io("remove old modules", &modules_dir))?;
    }
    fs::rename(&modules_tmp, &modules_dir)
        .map_err(AssetError::io("install modules", &modules_dir))?;
    fs::rename(&vmlinux_tmp, &vmlinux).map_err(AssetError::io("install vmlinux", &vmlinux))?;
    Ok(GuestKernel {
        vmlinux,
        modules_dir,
        package,
        version: unpacked.version.clone(),
        deb_sha256: unpacked.deb_sha256.clone(),
        kernel_release,
    })
}

/// The package must ship exactly one `lib/modules/<release>`; its name is
/// the release the modules were built for, which need not match the package.
fn kernel_release(pkg: &Path, package: &str) -> Result<String, AssetError> {
    let modules = pkg.join("lib/modules");
    let mut releases = Vec::new();
    for entry in fs::read_dir(&modules).map_err(AssetError::io("list", &modules))? {
        let entry = entry.map_err(AssetError::io("list", &modules))?;
        if entry.path().is_dir() {
            releases.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(AssetError::Package {
            package: package.into(),
            reason: format!("expected one lib/modules/<release>, found {releases:?}"),
        }),
    }
}

fn decompress_kernel(vmlinuz: &Path) -> Result<Vec<u8>, AssetError> {
    let image = fs::read(vmlinuz).map_err(AssetError::io("read kernel image", vmlinuz))?;
    let bad = |reason: &str| AssetError::KernelImage {
        path: vmlinuz.to_path_buf(),
        reason: reason.into(),
    };
    let elf = lz4_legacy::find_elf_payload(&image)
        .ok_or_else(|| bad("no LZ4 legacy payload that decodes to an ELF file"))?;
    // Catch a kernel built without PVH support here rather than as an
    // opaque QEMU boot failure later.
    elf::pvh_entry(&elf).ok_or_else(|| bad("vmlinux has no Xen PVH entry note"))?;
    Ok(elf)
}

fn stage_modules(kernel_dir: &Path, dest: &Path) -> Result<(), AssetError> {
    create_dir_all(dest)?;
    let paths = kmod::locate(kernel_dir)?;
    let mut info = Vec::with_capacity(paths.len());
    for path in &paths {
        info.push((kmod::module_name(path), kmod::read_depends(path)?));
    }
    let order = kmod::load_order(&info)?;
    let mut listing = String::new();
    for name in &order {
        // `order` only holds names taken from `paths`, so this always finds one.
        let Some(src) = paths.iter().find(|p| &kmod::module_name(p) == name) else {
            continue;
        };
        let file = src.file_name().unwrap_or_default();
        let target = dest.join(file);
        fs::copy(src, &target).map_err(AssetError::io("copy module", &target))?;
        listing.push_str(&file.to_string_lossy());
        listing.push('\n');
    }
    write_atomic(&dest.join(MODULES_ORDER), listing.as_bytes())
}
