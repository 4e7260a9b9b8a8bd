//! Builds debian12-minimal with debootstrap (downloads ~40 MB, a minute or
//! more). Skipped when not root, or with EMBER_SKIP_NETWORK_TESTS=1.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use ember_assets::{AssetError, AssetStore};

fn debugfs(image: &str, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request, image])
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs {request}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// debugfs's `stat` prints `Mode:  04755` and `User:     0   Group:     0`.
fn owner_and_mode(stat: &str) -> (u32, u32, String) {
    let field = |name: &str| -> String {
        let rest = stat.split(name).nth(1).unwrap_or_else(|| panic!("{stat}"));
        rest.split_whitespace().next().unwrap().to_string()
    };
    (
        field("User:").parse().unwrap(),
        field("Group:").parse().unwrap(),
        field("Mode:"),
    )
}

#[test]
fn debian12_minimal() {
    if std::env::var_os("EMBER_SKIP_NETWORK_TESTS").is_some() {
        eprintln!("EMBER_SKIP_NETWORK_TESTS set; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = AssetStore::new(tmp.path().join("assets"));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let err = store.ensure_debian_rootfs().unwrap_err();
        assert!(matches!(err, AssetError::NeedsRoot { .. }), "{err}");
        assert!(err.to_string().contains("needs root"), "{err}");
        eprintln!("not root; only checked the error");
        return;
    }
    let started = Instant::now();
    let base = store.ensure_debian_rootfs().unwrap();
    eprintln!("built in {:?}: {base:?}", started.elapsed());
    assert_eq!(base.name, "debian12-minimal");
    let parts: Vec<&str> = base.version.rsplitn(3, '-').collect();
    assert_eq!(parts.len(), 3, "{}", base.version);
    assert_eq!(parts[0].len(), 12, "{}", base.version);
    assert!(
        parts[1].len() == 8 && parts[1].starts_with("20"),
        "{}",
        base.version
    );
    assert_eq!(parts[2], "debian12-minimal");
    assert!(base.package_version.starts_with("12."), "{base:?}");

    let image = base.image.to_str().unwrap();
    let meta = fs::metadata(image).unwrap();
    assert_eq!(meta.len(), 4 << 30);
    assert!(meta.blocks() * 512 < 1 << 30, "image not sparse");
    let fsck = Command::new("e2fsck")
        .args(["-fn", image])
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");

    // Owners and special bits survived mkfs.ext4 -d.
    let (uid, gid, mode) = owner_and_mode(&debugfs(image, "stat /usr/bin/passwd"));
    assert_eq!((uid, gid, mode.as_str()), (0, 0, "04755"));
    let (uid, gid, mode) = owner_and_mode(&debugfs(image, "stat /usr/bin/chage"));
    assert_eq!((uid, mode.as_str()), (0, "02755"));
    assert_ne!(gid, 0, "chage belongs to group shadow");
    let (_, _, mode) = owner_and_mode(&debugfs(image, "stat /tmp"));
    assert_eq!(mode, "01777");

    assert_eq!(debugfs(image, "cat /etc/hostname"), "ember\n");
    let sources = debugfs(image, "cat /etc/apt/sources.list");
    assert!(sources.contains("deb http://deb.debian.org/debian-security bookworm-security main"));
    assert!(sources.contains("bookworm-updates"));
    let resolv = debugfs(image, "stat /etc/resolv.conf");
    assert!(!resolv.contains("Inode:"), "resolv.conf left in the image");
    let archives = debugfs(image, "ls -l /var/cache/apt/archives");
    assert!(!archives.contains(".deb"), "{archives}");
    assert!(archives.contains("partial"), "{archives}");
    let lists = debugfs(image, "ls /var/lib/apt/lists");
    assert!(!lists.contains("Packages"), "{lists}");

    // Nothing left of the build.
    let dir = store.root().join("debian12-minimal");
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".build-") || n.starts_with(".rootfs-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let start = Instant::now();
    assert_eq!(store.ensure_debian_rootfs().unwrap(), base);
    assert!(start.elapsed() < Duration::from_secs(2));
}
