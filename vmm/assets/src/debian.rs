//! Fetching and unpacking Debian packages with the host's apt and dpkg.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cmd::{run, stdout_string};
use crate::fsutil::create_dir_all;
use crate::AssetError;

/// A fresh machine has no package lists; updating once per process is enough
/// and avoids hammering the mirror when several assets are fetched.
static UPDATED: AtomicBool = AtomicBool::new(false);

/// Returns the cached `.deb` for `package` in `debs_dir`, downloading it when
/// absent. `version` pins an exact version (as a meta package's Depends does).
pub(crate) fn fetch_deb(
    debs_dir: &Path,
    package: &str,
    version: Option<&str>,
) -> Result<PathBuf, AssetError> {
    create_dir_all(debs_dir)?;
    if let Some(existing) = find_cached(debs_dir, package, version)? {
        tracing::debug!(path = %existing.display(), "reusing downloaded package");
        return Ok(existing);
    }
    // Download into a private dir and move into place so an interrupted
    // download never looks like a cached package.
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(debs_dir)
        .map_err(AssetError::io("create download dir", debs_dir))?;
    let spec = match version {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    tracing::info!(package = %spec, "downloading Debian package");
    if let Err(first) = apt_download(tmp.path(), &spec) {
        if UPDATED.swap(true, Ordering::SeqCst) {
            return Err(first);
        }
        tracing::info!(error = %first, "apt-get download failed; running apt-get update once");
        run(Command::new("apt-get")
            .args(["-q", "-o", "DPkg::Lock::Timeout=300", "update"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        apt_download(tmp.path(), &spec)?;
    }
    let downloaded =
        find_cached(tmp.path(), package, None)?.ok_or_else(|| AssetError::Package {
            package: package.to_string(),
            reason: "apt-get download produced no .deb".into(),
        })?;
    let name = downloaded.file_name().unwrap_or_default().to_owned();
    let dest = debs_dir.join(name);
    fs::rename(&downloaded, &dest).map_err(AssetError::io("move downloaded package", &dest))?;
    Ok(dest)
}

fn apt_download(dir: &Path, spec: &str) -> Result<(), AssetError> {
    // As root apt warns that _apt cannot write the dir and downloads
    // unsandboxed instead; that is harmless, so stderr is only logged.
    run(Command::new("apt-get")
        .args(["-q", "download", spec])
        .current_dir(dir)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// apt names files `<package>_<version>_<arch>.deb` with ':' escaped as %3a.
fn find_cached(
    dir: &Path,
    package: &str,
    version: Option<&str>,
) -> Result<Option<PathBuf>, AssetError> {
    let prefix = match version {
        Some(v) => format!("{package}_{}_", v.replace(':', "%3a")),
        None => format!("{package}_"),
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(AssetError::io("list directory", dir))? {
        let entry = entry.map_err(AssetError::io("list directory", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            found.push(entry.path());
        }
    }
    // Several versions means an older cache plus a newer download; prefer
    // fetching afresh over guessing which one is wanted.
    Ok(if found.len() == 1 { found.pop() } else { None })
}

pub(crate) fn deb_field(deb: &Path, field: &str) -> Result<String, AssetError> {
    let out = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))?;
    let value = stdout_string(&out);
    if value.is_empty() {
        return Err(AssetError::Package {
            package: deb.display().to_string(),
            reason: format!("no {field} field"),
        });
    }
    Ok(value)
}

pub(crate) fn extract(deb: &Path, dest: &Path) -> Result<(), AssetError> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))?;
    Ok(())
}

/// Parses the first dependency of a Depends field, e.g.
/// `linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2), foo` into its name and,
/// when pinned with `=`, its version.
pub(crate) fn first_dependency(depends: &str) -> Option<(String, Option<String>)> {
    let first = depends.split(',').next()?.split('|').next()?.trim();
    let (name, rest) = match first.find('(') {
        Some(i) => (first[..i].trim(), Some(&first[i..])),
        None => (first, None),
    };
    if name.is_empty() {
        return None;
    }
    let version = rest.and_then(|r| {
        let inner = r.trim_start_matches('(').trim_end_matches(')').trim();
        inner.strip_prefix('=').map(|v| v.trim().to_string())
    });
    Some((name.to_string(), version))
}

/// Debian `[epoch:]upstream[-revision]` to the upstream part.
pub(crate) fn upstream_version(version: &str) -> &str {
    let no_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    no_epoch.rsplit_once('-').map_or(no_epoch, |(v, _)| v)
}

/// A downloaded package unpacked into a private staging directory inside
/// the cache dir; dropping it removes the staging directory, also on every
/// error path of the caller.
pub(crate) struct Unpacked {
    pub version: String,
    pub deb_sha256: String,
    /// The package's file tree.
    pub root: PathBuf,
    pub work: tempfile::TempDir,
}

/// Fetches (or reuses) `package` into `dir/debs` and unpacks it under `dir`.
pub(crate) fn fetch_and_unpack(
    dir: &Path,
    package: &str,
    version: Option<&str>,
) -> Result<Unpacked, AssetError> {
    let deb = fetch_deb(&dir.join("debs"), package, version)?;
    let version = deb_field(&deb, "Version")?;
    let deb_sha256 = crate::fsutil::sha256_file(&deb)?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(dir)
        .map_err(AssetError::io("create build dir", dir))?;
    let root = work.path().join("pkg");
    extract(&deb, &root)?;
    Ok(Unpacked {
        version,
        deb_sha256,
        root,
        work,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pinned_dependency() {
        let d = "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2), other";
        assert_eq!(
            first_dependency(d),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".into(),
                Some("6.1.192-2".into())
            ))
        );
        assert_eq!(
            first_dependency("foo (>= 1) | bar"),
            Some(("foo".into(), None))
        );
    }

    #[test]
    fn strips_epoch_and_revision() {
        assert_eq!(upstream_version("1:1.35.0-4+deb12u1+b1"), "1.35.0");
        assert_eq!(upstream_version("1.2"), "1.2");
    }
}
