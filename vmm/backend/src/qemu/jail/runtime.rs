//! What QEMU itself needs to run inside the jail: its binary, the folders
//! of the shared libraries it links (its loadable modules, such as the
//! TCG accelerator, live in one of them) and its firmware. Found once,
//! when the backend starts, with `ldd`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::JailError;

/// Firmware and data QEMU reads at start (the microvm BIOS and the
/// option ROMs it links to), where Debian and most distributions put it.
const DATA_DIRS: [&str; 3] = [
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/share/qemu-firmware",
];
/// The dynamic loader's cache: without it the loader still finds libraries
/// in its built-in paths, but not in multiarch folders.
const LD_CACHE: &str = "/etc/ld.so.cache";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QemuRuntime {
    /// The binary as exec'd (absolute; may pass through symlinks).
    pub binary: PathBuf,
    /// Paths bound read-only into every jail, each at its own path.
    pub read_only: Vec<PathBuf>,
}

impl QemuRuntime {
    pub fn discover(binary: &Path) -> Result<Self, JailError> {
        let binary = resolve_program(binary)?;
        let out = Command::new("ldd")
            .arg(&binary)
            .output()
            .map_err(JailError::io("run ldd (from libc-bin) on QEMU"))?;
        if !out.status.success() {
            return Err(JailError::Prerequisite(format!(
                "ldd {} failed: {}",
                binary.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let libs = parse_ldd(&String::from_utf8_lossy(&out.stdout))?;
        let mut read_only = vec![binary.clone()];
        for lib in libs {
            // The whole folder: QEMU dlopen()s modules (accel-tcg-*.so)
            // that ldd does not list, from next to its libraries.
            if let Some(dir) = lib
                .canonicalize()
                .ok()
                .and_then(|l| l.parent().map(Path::to_path_buf))
            {
                if !read_only.contains(&dir) {
                    read_only.push(dir);
                }
            }
            // The loader and libraries are opened by the names ldd shows,
            // which may run through symlinked folders (/lib -> usr/lib).
            if !read_only.contains(&lib) {
                read_only.push(lib);
            }
        }
        for dir in DATA_DIRS.iter().chain([&LD_CACHE]) {
            let path = PathBuf::from(dir);
            if path.exists() && !read_only.contains(&path) {
                read_only.push(path);
            }
        }
        Ok(Self { binary, read_only })
    }
}

/// An absolute path for the binary: as given when it has a slash, else
/// found on `PATH`.
fn resolve_program(binary: &Path) -> Result<PathBuf, JailError> {
    if binary.components().count() > 1 {
        return std::path::absolute(binary)
            .map_err(JailError::io(format!("resolve {}", binary.display())));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
        .ok_or_else(|| JailError::Prerequisite(format!("{} not found on PATH", binary.display())))
}

/// The absolute library paths in `ldd` output; a library it could not
/// find means QEMU cannot start, so that is an error here already.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, JailError> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(JailError::Prerequisite(format!(
                "QEMU needs a library this host lacks: {line}"
            )));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_absolute_paths_and_missing_libraries_fail() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007fd1)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007fd2)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
