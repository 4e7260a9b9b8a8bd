//! The initramfs: the agent as `/init` plus the guest kernel modules.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;
use crate::fsutil::{create_dir_all, hex, lock_exclusive, persist_readable, write_atomic};
use crate::kernel::MODULES_ORDER;
use crate::{AssetError, GuestKernel};

/// Bump when the archive layout changes so cached archives are rebuilt.
const LAYOUT_VERSION: &str = "ember-initramfs-v1";

struct Inputs {
    agent: Vec<u8>,
    order: Vec<u8>,
    modules: Vec<(String, Vec<u8>)>,
}

impl Inputs {
    fn load(kernel: &GuestKernel, agent: &Path) -> Result<Self, AssetError> {
        let agent = fs::read(agent).map_err(AssetError::io("read agent binary", agent))?;
        let order_path = kernel.modules_dir.join(MODULES_ORDER);
        let order = fs::read(&order_path).map_err(AssetError::io("read", &order_path))?;
        let mut modules = Vec::new();
        for name in kernel.module_order()? {
            if name.contains('/') {
                return Err(AssetError::ModuleMissing { module: name });
            }
            let path = kernel.modules_dir.join(&name);
            let data = fs::read(&path).map_err(AssetError::io("read module", &path))?;
            modules.push((name, data));
        }
        Ok(Self {
            agent,
            order,
            modules,
        })
    }

    /// Length-prefixed so that moving bytes between fields changes the hash.
    fn digest(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(LAYOUT_VERSION.as_bytes());
        field(&self.agent);
        field(&self.order);
        for (name, data) in &self.modules {
            field(name.as_bytes());
            field(data);
        }
        hex(&h.finalize())
    }

    fn write_archive<W: Write>(&self, out: W) -> std::io::Result<W> {
        let mut w = CpioWriter::new(out);
        w.dir("dev", 0o755)?;
        // The kernel opens /dev/console before anything mounts devtmpfs.
        w.char_dev("dev/console", 0o600, 5, 1)?;
        for d in ["proc", "sys", "newroot", "lib", "lib/modules"] {
            w.dir(d, 0o755)?;
        }
        w.file("init", 0o755, &self.agent)?;
        for (name, data) in &self.modules {
            w.file(&format!("lib/modules/{name}"), 0o644, data)?;
        }
        w.file(&format!("lib/modules/{MODULES_ORDER}"), 0o644, &self.order)?;
        w.finish()
    }
}

pub(crate) fn ensure(
    root: &Path,
    kernel: &GuestKernel,
    agent: &Path,
) -> Result<PathBuf, AssetError> {
    create_dir_all(root)?;
    let _lock = lock_exclusive(&root.join(".initramfs.lock"))?;
    let output = root.join("initramfs.cpio");
    let stamp = root.join("initramfs.cpio.inputs");
    let inputs = Inputs::load(kernel, agent)?;
    let digest = inputs.digest();
    if output.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == digest) {
        tracing::debug!(path = %output.display(), "initramfs cached");
        return Ok(output);
    }
    // Drop the stamp first: a crash after replacing the archive must not
    // leave an old stamp vouching for new contents.
    match fs::remove_file(&stamp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(AssetError::io("remove", &stamp)(e));
        }
        _ => {}
    }
    let tmp = tempfile::Builder::new()
        .prefix(".initramfs-")
        .tempfile_in(root)
        .map_err(AssetError::io("create temp file", root))?;
    let written = inputs
        .write_archive(BufWriter::new(tmp.as_file()))
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all());
    written.map_err(AssetError::io("write initramfs", tmp.path()))?;
    persist_readable(tmp, &output)?;
    write_atomic(&stamp, format!("{digest}\n").as_bytes())?;
    tracing::info!(path = %output.display(), modules = inputs.modules.len(), "initramfs built");
    Ok(output)
}
