//! The `debian12-minimal` base root filesystem: `debootstrap --variant=
//! minbase bookworm`, trimmed of package caches, as a sparse ext4 image.
//! debootstrap chroots and sets file owners, so building needs root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::cmd::{run, stdout_string};
use crate::fsutil::hex;
use crate::rootfs::BaseRootfs;
use crate::AssetError;

const NAME: &str = "debian12-minimal";
const SUITE: &str = "bookworm";
/// Room for what users install on top (apt-get install of a toolchain);
/// sparse, so the unused part costs no disk.
const IMAGE_SIZE: u64 = 4 << 30;
const HOSTNAME: &str = "ember";
/// Pointed at Debian's CDN rather than the build host's mirror: the image
/// runs elsewhere, where the host's mirror may not be reachable.
const SOURCES_LIST: &str = "\
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
";
const HOSTS: &str = "\
127.0.0.1\tlocalhost
127.0.1.1\tember
::1\t\tlocalhost ip6-localhost ip6-loopback
";

pub(crate) fn ensure(root: &Path) -> Result<BaseRootfs, AssetError> {
    crate::rootfs::ensure_cached(root, NAME, IMAGE_SIZE, |dir, image| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(AssetError::NeedsRoot { image: NAME });
        }
        let started = Instant::now();
        let base = build(dir, image)?;
        tracing::info!(secs = started.elapsed().as_secs(), "{NAME} built");
        Ok(base)
    })
}

fn build(dir: &Path, image: &Path) -> Result<BaseRootfs, AssetError> {
    let work = Staging::new(dir)?;
    let stage = work.path().join("root");
    let mirror = crate::mirror::host_mirror(Path::new("/etc/apt"));
    tracing::info!(%mirror, "debootstrap --variant=minbase {SUITE}: expect a minute or more");
    let started = Instant::now();
    run(Command::new(debootstrap_program())
        .args(["--variant=minbase", SUITE])
        .arg(&stage)
        .arg(&mirror)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    tracing::info!(secs = started.elapsed().as_secs(), "debootstrap finished");

    trim_package_caches(&stage)?;
    configure(&stage)?;
    let packages = package_list(&stage)?;
    let packages_sha256 = hex(&Sha256::digest(packages.as_bytes()));
    let debian_version = fs::read_to_string(stage.join("etc/debian_version"))
        .map_err(AssetError::io("read", stage.join("etc/debian_version")))?
        .trim()
        .to_string();
    tracing::info!(
        packages = packages.lines().count(),
        %debian_version,
        "writing the {NAME} ext4 image"
    );
    crate::ext4::build_image(&stage, IMAGE_SIZE, "ember-root", image)?;
    Ok(BaseRootfs {
        image: image.to_path_buf(),
        name: NAME.into(),
        version: format!(
            "{NAME}-{}-{}",
            yyyymmdd(SystemTime::now()),
            &packages_sha256[..12]
        ),
        package_version: debian_version,
        deb_sha256: packages_sha256,
    })
}

/// debootstrap lives in /usr/sbin, which a non-login root shell may lack
/// on its PATH.
fn debootstrap_program() -> PathBuf {
    let sbin = Path::new("/usr/sbin/debootstrap");
    if sbin.is_file() {
        sbin.to_path_buf()
    } else {
        PathBuf::from("debootstrap")
    }
}

/// Downloaded packages and package lists are dead weight in the image;
/// the directories stay, apt expects them.
fn trim_package_caches(stage: &Path) -> Result<(), AssetError> {
    let archives = stage.join("var/cache/apt/archives");
    for path in list(&archives)? {
        if path.extension().is_some_and(|e| e == "deb") {
            fs::remove_file(&path).map_err(AssetError::io("remove", &path))?;
        }
    }
    let lists = stage.join("var/lib/apt/lists");
    for path in list(&lists)? {
        let meta = path
            .symlink_metadata()
            .map_err(AssetError::io("stat", &path))?;
        if meta.is_dir() {
            // `partial/`: emptied, kept.
            for inner in list(&path)? {
                fs::remove_file(&inner).map_err(AssetError::io("remove", &inner))?;
            }
        } else {
            fs::remove_file(&path).map_err(AssetError::io("remove", &path))?;
        }
    }
    Ok(())
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, AssetError> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(AssetError::io("list", dir)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(AssetError::io("list", dir)(e)),
    }
}

fn configure(stage: &Path) -> Result<(), AssetError> {
    let etc = stage.join("etc");
    write(&etc.join("hostname"), &format!("{HOSTNAME}\n"))?;
    write(&etc.join("hosts"), HOSTS)?;
    write(&etc.join("apt/sources.list"), SOURCES_LIST)?;
    // debootstrap copied the build host's; the image builder writes the
    // one a VM uses.
    let resolv = etc.join("resolv.conf");
    match fs::remove_file(&resolv) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(AssetError::io("remove", resolv)(e))
        }
        _ => Ok(()),
    }
}

fn write(path: &Path, text: &str) -> Result<(), AssetError> {
    fs::write(path, text).map_err(AssetError::io("write", path))
}

/// `name version` of every installed package, sorted: what the image is.
fn package_list(stage: &Path) -> Result<String, AssetError> {
    let out = run(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            stage.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${binary:Package} ${Version}\\n"]))?;
    let text = stdout_string(&out);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    Ok(lines.join("\n") + "\n")
}

/// The UTC date as `YYYYMMDD`.
fn yyyymmdd(now: SystemTime) -> String {
    let days = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The build directory. debootstrap mounts /proc, /sys and /dev/pts inside
/// its target and unmounts them on exit; should one survive (a killed
/// debootstrap), it is detached before the tree is removed, and if even
/// that fails the tree is left in place rather than recursing into a
/// mounted filesystem.
struct Staging {
    path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Staging {
    fn new(parent: &Path) -> Result<Self, AssetError> {
        let dir = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(parent)
            .map_err(AssetError::io("create build dir", parent))?;
        Ok(Self {
            path: dir.path().to_path_buf(),
            dir: Some(dir),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if let Err(mount) = detach_mounts_under(dir.path()) {
            let kept = dir.keep();
            tracing::warn!(
                %mount,
                dir = %kept.display(),
                "cannot unmount inside the build dir; leaving it for manual removal"
            );
        }
    }
}

/// Lazily unmounts every mount at or below `dir`, deepest first; the error
/// names the first mount point that would not go.
fn detach_mounts_under(dir: &Path) -> Result<(), String> {
    let prefix = dir.to_string_lossy().into_owned();
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let Ok(c) = std::ffi::CString::new(point) else {
            return Err(point.to_string());
        };
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(point.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_utc_calendar_days() {
        let at = |secs| yyyymmdd(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "19700101");
        assert_eq!(at(951_782_400), "20000229"); // a leap day
        assert_eq!(at(1_767_225_599), "20251231"); // last second of 2025
        assert_eq!(at(1_767_225_600), "20260101");
    }

    #[test]
    fn trimming_keeps_directories_and_drops_caches() {
        let tmp = tempfile::tempdir().unwrap();
        let stage = tmp.path();
        let archives = stage.join("var/cache/apt/archives");
        let lists = stage.join("var/lib/apt/lists");
        fs::create_dir_all(archives.join("partial")).unwrap();
        fs::create_dir_all(lists.join("partial")).unwrap();
        fs::write(archives.join("bash_5.2_amd64.deb"), b"x").unwrap();
        fs::write(archives.join("lock"), b"").unwrap();
        fs::write(lists.join("deb.debian.org_Packages"), b"x").unwrap();
        fs::write(lists.join("partial/half"), b"x").unwrap();
        trim_package_caches(stage).unwrap();
        assert!(!archives.join("bash_5.2_amd64.deb").exists());
        assert!(archives.join("lock").exists());
        assert!(archives.join("partial").is_dir());
        assert!(lists.join("partial").is_dir());
        assert_eq!(fs::read_dir(&lists).unwrap().count(), 1);
        assert_eq!(fs::read_dir(lists.join("partial")).unwrap().count(), 0);
    }
}
