//! The managed base images a Dockerfile's `FROM` can name.

use std::path::PathBuf;

use ember_assets::AssetStore;

/// One managed base image. Its `version` is the version of Ember's recipe
/// for it; the content it produced is recorded in `content_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedBase {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
}

pub const MANAGED_BASES: &[ManagedBase] = &[
    ManagedBase {
        name: "busybox",
        version: "1",
        description: "Debian's static busybox: a shell and the usual tools, tiny",
    },
    ManagedBase {
        name: "debian12-minimal",
        version: "1",
        description: "Debian 12 (bookworm), debootstrap --variant=minbase, with apt",
    },
];

pub fn find(name: &str) -> Option<&'static ManagedBase> {
    MANAGED_BASES.iter().find(|b| b.name == name)
}

/// A base root filesystem ready to boot.
#[derive(Debug, Clone)]
pub struct BaseRootfs {
    pub name: String,
    pub version: String,
    /// What the recipe produced on this host (package versions, content hash).
    pub content_version: String,
    pub image: PathBuf,
}

/// Builds the base on first use (debootstrap for Debian: minutes), then
/// returns the cached image. Blocking.
pub fn ensure(assets: &AssetStore, base: &ManagedBase) -> Result<BaseRootfs, String> {
    let built = match base.name {
        "busybox" => assets.ensure_busybox_rootfs(),
        "debian12-minimal" => assets.ensure_debian_rootfs(),
        other => return Err(format!("unknown managed base image {other}")),
    }
    .map_err(|e| format!("preparing base image {}: {e}", base.name))?;
    Ok(BaseRootfs {
        name: base.name.to_string(),
        version: base.version.to_string(),
        content_version: built.version,
        image: built.image,
    })
}
