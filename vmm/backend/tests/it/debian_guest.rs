//! The debian12-minimal base boots with Ember's kernel and initramfs and
//! is a working Debian. Building the image needs root (debootstrap), so the
//! test is skipped otherwise; the image is cached with the other assets.

use crate::common;

use ember_assets::AssetStore;
use ember_vmm::agent::ExecRequest;
use ember_vmm::{Hypervisor, Network, DNS_ADDRESS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian12_minimal_boots_and_runs_apt() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot build debian12-minimal; skipping");
        return;
    }
    let env = common::env().await;
    let store = AssetStore::new(common::assets_dir());
    let base = tokio::task::spawn_blocking(move || store.ensure_debian_rootfs())
        .await
        .unwrap()
        .unwrap();
    let mut config = env.config("debian");
    config.rootfs = base.image.clone();
    config.network = Network::Internet;
    let vm = env.hv.boot(config).await.unwrap();

    let version = common::sh(&*vm, "cat /etc/debian_version").await;
    assert!(version.starts_with("12."), "{version}");
    let apt = common::sh(&*vm, "apt-get --version").await;
    assert!(apt.starts_with("apt "), "{apt}");
    // The agent's mounts are there on a real distribution too, and root's
    // files are root's.
    let owners = common::sh(&*vm, "stat -c '%U %a' /usr/bin/passwd /tmp").await;
    assert_eq!(owners, "root 4755\nroot 1777\n");

    // glibc's resolver (NSS, unlike static busybox) finds the mirror through
    // the egress network, and a TCP connection reaches it. (`apt-get
    // update` would be the real check, but takes over a minute under TCG.)
    common::sh(
        &*vm,
        &format!("echo 'nameserver {DNS_ADDRESS}' > /etc/resolv.conf"),
    )
    .await;
    let hosts = common::sh(&*vm, "getent hosts deb.debian.org").await;
    assert!(hosts.contains("deb.debian.org"), "{hosts}");
    // bash, for /dev/tcp (the agent's `sh` is dash here).
    let out = vm
        .agent()
        .exec(ExecRequest {
            argv: vec![
                "/bin/bash".into(),
                "-c".into(),
                "exec 3<>/dev/tcp/deb.debian.org/80 && \
                 printf 'HEAD /debian/dists/bookworm/Release HTTP/1.1\\r\\nHost: deb.debian.org\\r\\nConnection: close\\r\\n\\r\\n' >&3 && \
                 timeout 60 head -n 1 <&3"
                    .into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let status = out.stdout_str();
    assert!(out.success(), "{status} {}", out.stderr_str());
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    vm.stop().await.unwrap();
}
