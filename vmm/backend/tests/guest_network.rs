//! Egress networking: a guest booted with `Network::Internet` has an
//! address and reaches the internet through user-mode networking, also
//! after a snapshot and restore; a guest without a network has no card.

mod common;

use ember_vmm::{Hypervisor, Network, Vm, DNS_ADDRESS};

/// Fetches the head of Debian's bookworm Release file over plain HTTP.
async fn fetch_release(vm: &dyn Vm) -> String {
    // The image builder owns resolv.conf; tests play that part.
    common::sh(
        vm,
        &format!("echo 'nameserver {DNS_ADDRESS}' > /etc/resolv.conf"),
    )
    .await;
    // Retried: a slow TCG guest or a slow mirror may need a second go.
    // `timeout`, not wget's -T, which crashes busybox 1.35's wget.
    let script = "for i in 1 2 3; do \
                    out=$(timeout 60 wget -q -O - http://deb.debian.org/debian/dists/bookworm/Release | head -c 100) \
                    && [ -n \"$out\" ] && { echo \"$out\"; exit 0; }; sleep 1; \
                  done; exit 1";
    common::sh(vm, script).await
}

async fn boot_networked(env: &common::TestEnv, name: &str) -> std::sync::Arc<dyn Vm> {
    let mut config = env.config(name);
    config.network = Network::Internet;
    env.hv.boot(config).await.expect("boot with network")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internet_guest_has_an_address_and_reaches_out() {
    let env = common::env().await;
    let vm = boot_networked(&env, "net-on").await;

    let addr = common::sh(&*vm, "ip -4 addr show dev eth0").await;
    assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");
    let routes = common::sh(&*vm, "ip route").await;
    assert!(routes.contains("default via 10.0.2.2 dev eth0"), "{routes}");

    let release = fetch_release(&*vm).await;
    assert!(release.contains("Origin: Debian"), "{release}");
    vm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_without_network_has_no_card() {
    let env = common::env().await;
    let vm = env.boot("net-off").await;
    let out = vm.agent().sh("ls /sys/class/net").await.unwrap();
    assert_eq!(
        out.stdout_str().split_whitespace().collect::<Vec<_>>(),
        ["lo"]
    );
    let out = vm.agent().sh("ip link show eth0").await.unwrap();
    assert!(!out.success(), "eth0 exists: {}", out.stdout_str());
    vm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_survives_snapshot_and_restore() {
    let env = common::env().await;
    let vm = boot_networked(&env, "net-origin").await;
    let mac = common::sh(&*vm, "cat /sys/class/net/eth0/address").await;
    let snap = env.state.path().join("snap");
    vm.snapshot(&snap).await.unwrap();
    vm.stop().await.unwrap();

    let restored = env.hv.restore("net-clone", &snap).await.unwrap();
    // Same card, same MAC as the guest saw at boot, and it still works
    // through the new process's fresh slirp instance.
    assert_eq!(
        common::sh(&*restored, "cat /sys/class/net/eth0/address").await,
        mac
    );
    let addr = common::sh(&*restored, "ip -4 addr show dev eth0").await;
    assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");
    let release = fetch_release(&*restored).await;
    assert!(release.contains("Origin: Debian"), "{release}");
    restored.stop().await.unwrap();
}
