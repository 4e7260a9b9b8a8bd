//! Selecting the guest's kernel modules and ordering them for loading.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::AssetError;

/// Modules the guest needs, relative to `lib/modules/<kver>/kernel/`.
/// Dependencies are listed too: the order is recomputed from `.modinfo`.
pub(crate) const GUEST_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_mmio",
    "drivers/block/virtio_blk",
    "drivers/char/virtio_console",
    "drivers/char/hw_random/virtio-rng",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
    "net/vmw_vsock/vsock",
    "net/vmw_vsock/vmw_vsock_virtio_transport_common",
    "net/vmw_vsock/vmw_vsock_virtio_transport",
];

const COMPRESSED_SUFFIXES: &[&str] = &[".ko.xz", ".ko.zst", ".ko.gz"];

/// Locates each guest module's `.ko` under `kernel_dir`, refusing compressed
/// ones: the initramfs has no decompressor and insmod would need one.
pub(crate) fn locate(kernel_dir: &Path) -> Result<Vec<PathBuf>, AssetError> {
    GUEST_MODULES
        .iter()
        .map(|rel| {
            let ko = kernel_dir.join(format!("{rel}.ko"));
            if ko.is_file() {
                return Ok(ko);
            }
            for suffix in COMPRESSED_SUFFIXES {
                let path = kernel_dir.join(format!("{rel}{suffix}"));
                if path.exists() {
                    return Err(AssetError::CompressedModule { path });
                }
            }
            Err(AssetError::ModuleMissing {
                module: format!("{rel}.ko"),
            })
        })
        .collect()
}

/// The kernel's module name for a file: the stem with '-' folded to '_'.
pub(crate) fn module_name(path: &Path) -> String {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    file.strip_suffix(".ko").unwrap_or(&file).replace('-', "_")
}

/// Extracts the `depends=` value from a module's `.modinfo` section. The
/// section is a run of NUL-terminated `key=value` strings, so requiring a
/// preceding NUL avoids matching the text elsewhere in the file.
pub(crate) fn parse_depends(ko: &[u8]) -> Option<Vec<String>> {
    const KEY: &[u8] = b"\0depends=";
    let start = ko.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = ko[start..].iter().position(|&b| b == 0)?;
    let value = std::str::from_utf8(&ko[start..start + len]).ok()?;
    Some(
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.replace('-', "_"))
            .collect(),
    )
}

pub(crate) fn read_depends(path: &Path) -> Result<Vec<String>, AssetError> {
    let data = fs::read(path).map_err(AssetError::io("read module", path))?;
    parse_depends(&data).ok_or_else(|| AssetError::ModinfoMissing {
        path: path.to_path_buf(),
    })
}

/// Orders `modules` (name, dependencies) so that dependencies come first,
/// keeping the input order where it is free to choose, for a stable result.
pub(crate) fn load_order(modules: &[(String, Vec<String>)]) -> Result<Vec<String>, AssetError> {
    let known: BTreeSet<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
    for (name, deps) in modules {
        if let Some(dep) = deps.iter().find(|d| !known.contains(d.as_str())) {
            return Err(AssetError::ModuleDependencyMissing {
                module: name.clone(),
                dependency: dep.clone(),
            });
        }
    }
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> = modules
        .iter()
        .map(|(n, d)| (n.as_str(), d.iter().map(String::as_str).collect()))
        .collect();
    let mut order = Vec::with_capacity(modules.len());
    while order.len() < modules.len() {
        let next = modules
            .iter()
            .map(|(n, _)| n.as_str())
            .find(|n| remaining.get(n).is_some_and(BTreeSet::is_empty));
        let Some(next) = next else {
            let stuck: Vec<&str> = remaining.keys().copied().collect();
            return Err(AssetError::ModuleCycle(stuck.join(", ")));
        };
        remaining.remove(next);
        for deps in remaining.values_mut() {
            deps.remove(next);
        }
        order.push(next.to_string());
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modinfo(depends: &str) -> Vec<u8> {
        let mut v = b"\x7fELF junk depends=notthis\0".to_vec();
        v.extend_from_slice(b"license=GPL\0");
        v.extend_from_slice(format!("depends={depends}\0").as_bytes());
        v.extend_from_slice(b"retpoline=Y\0name=x\0");
        v
    }

    fn m(name: &str, deps: &[&str]) -> (String, Vec<String>) {
        (name.into(), deps.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn parses_depends_from_modinfo() {
        assert_eq!(
            parse_depends(&modinfo("virtio_ring,virtio,net_failover")).unwrap(),
            vec!["virtio_ring", "virtio", "net_failover"]
        );
        assert_eq!(parse_depends(&modinfo("")).unwrap(), Vec::<String>::new());
        assert_eq!(parse_depends(b"no modinfo here"), None);
    }

    #[test]
    fn orders_dependencies_first() {
        let mods = vec![
            m("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            m("virtio", &["virtio_ring"]),
            m("net_failover", &["failover"]),
            m("failover", &[]),
            m("virtio_ring", &[]),
        ];
        let order = load_order(&mods).unwrap();
        let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert_eq!(order.len(), 5);
        for (name, deps) in &mods {
            for d in deps {
                assert!(pos(d) < pos(name), "{d} must precede {name}: {order:?}");
            }
        }
    }

    #[test]
    fn reports_missing_dependency_and_cycles() {
        let err = load_order(&[m("a", &["b"])]).unwrap_err();
        assert!(matches!(err, AssetError::ModuleDependencyMissing { .. }));
        let err = load_order(&[m("a", &["b"]), m("b", &["a"])]).unwrap_err();
        assert!(matches!(err, AssetError::ModuleCycle(_)));
    }

    #[test]
    fn names_fold_dashes() {
        assert_eq!(module_name(Path::new("x/virtio-rng.ko")), "virtio_rng");
    }
}
