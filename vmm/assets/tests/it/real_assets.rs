//! Builds the real assets from Debian's packages (downloads ~27 MB).
//! Set EMBER_SKIP_NETWORK_TESTS=1 to skip on a machine without a mirror.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ember_assets::{elf, AssetStore};

fn skip() -> bool {
    let skip = std::env::var_os("EMBER_SKIP_NETWORK_TESTS").is_some();
    if skip {
        eprintln!("EMBER_SKIP_NETWORK_TESTS set; skipping");
    }
    skip
}

fn mtime(path: &Path) -> std::time::SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kernel_and_initramfs() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = AssetStore::new(tmp.path().join("assets"));
    let kernel = store.ensure_kernel().unwrap();

    let vmlinux = fs::read(&kernel.vmlinux).unwrap();
    assert!(vmlinux.starts_with(b"\x7fELF"));
    assert!(elf::pvh_entry(&vmlinux).is_some(), "no Xen PVH entry note");
    assert_eq!(
        kernel.package,
        format!("linux-image-{}", kernel.kernel_release)
    );
    assert_eq!(kernel.deb_sha256.len(), 64);

    let order = kernel.module_order().unwrap();
    assert_eq!(order.len(), 12, "{order:?}");
    let pos = |m: &str| order.iter().position(|o| o == m).unwrap();
    assert!(pos("virtio_ring.ko") < pos("virtio.ko"));
    assert!(pos("failover.ko") < pos("net_failover.ko"));
    assert!(pos("net_failover.ko") < pos("virtio_net.ko"));
    assert!(pos("vsock.ko") < pos("vmw_vsock_virtio_transport.ko"));
    // The unpacked package is gone; only the .debs stay for caching.
    let kdir = store.root().join("kernel");
    let leftovers: Vec<_> = fs::read_dir(&kdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".build-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let manifest = kdir.join("manifest.json");
    let before = mtime(&manifest);
    let start = Instant::now();
    let again = store.ensure_kernel().unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(mtime(&manifest), before);
    assert_eq!(again.vmlinux, kernel.vmlinux);

    let agent = tmp.path().join("agent");
    fs::write(&agent, b"\x7fELF fake agent").unwrap();
    let cpio = store.ensure_initramfs(&kernel, &agent).unwrap();
    let listing = output(Command::new("cpio").args(["-itv", "-F"]).arg(&cpio));
    for want in [
        "init",
        "dev/console",
        "lib/modules/virtio_ring.ko",
        "lib/modules/modules.order",
        "newroot",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {want}"))),
            "{want} missing:\n{listing}"
        );
    }
    let stamp_time = mtime(&cpio);
    assert_eq!(store.ensure_initramfs(&kernel, &agent).unwrap(), cpio);
    assert_eq!(
        mtime(&cpio),
        stamp_time,
        "unchanged inputs must not rebuild"
    );
    let first = fs::read(&cpio).unwrap();
    fs::write(&agent, b"\x7fELF another agent").unwrap();
    store.ensure_initramfs(&kernel, &agent).unwrap();
    assert_ne!(fs::read(&cpio).unwrap(), first, "a new agent must rebuild");
}

#[test]
fn busybox_rootfs_concurrently() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("assets");
    // Two builders racing on one cache: the lock must make them agree.
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || AssetStore::new(root).ensure_busybox_rootfs())
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert_eq!(results[0], results[1]);
    let base = &results[0];
    assert_eq!(base.name, "busybox");
    assert!(base.version.starts_with("busybox-1."), "{}", base.version);

    let image = base.image.to_str().unwrap();
    output(Command::new("e2fsck").args(["-fn", image]));
    // 1 GiB of room, almost none of it on disk.
    assert_eq!(fs::metadata(image).unwrap().len(), 1 << 30);
    let on_disk = fs::metadata(image).unwrap().blocks() * 512;
    assert!(on_disk < 64 << 20, "image not sparse: {on_disk} bytes used");
    let stat = output(Command::new("debugfs").args(["-R", "stat /bin/busybox", image]));
    assert!(stat.contains("Type: regular"), "{stat}");
    let ls = output(Command::new("debugfs").args(["-R", "stat /bin/ls", image]));
    assert!(ls.contains("Type: symlink"), "{ls}");
    let tmpdir = output(Command::new("debugfs").args(["-R", "stat /tmp", image]));
    assert!(tmpdir.contains("Mode:  01777"), "{tmpdir}");
    let os = output(Command::new("debugfs").args(["-R", "cat /etc/os-release", image]));
    assert!(os.contains("ID=ember-busybox"), "{os}");

    let manifest = root.join("busybox/manifest.json");
    let before = mtime(&manifest);
    let start = Instant::now();
    let again = AssetStore::new(&root).ensure_busybox_rootfs().unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(&again, base);
    assert_eq!(mtime(&manifest), before);
}
