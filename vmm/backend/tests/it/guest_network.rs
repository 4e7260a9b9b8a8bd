//! Egress networking: a guest booted with `Network::Internet` has an
//! address and reaches the internet through user-mode networking, also
//! after a snapshot and restore; a guest without a network has no card.

use crate::common;

use ember_vmm::{Hypervisor, Network, RestoreOptions, Vm, DNS_ADDRESS};

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

    let restored = env
        .hv
        .restore("net-clone", &snap, RestoreOptions::default())
        .await
        .unwrap();
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

/// The egress guard: slirp maps 10.0.2.2 to the host's loopback, and the
/// host's own addresses are one hop away; neither may answer a guest,
/// while the internet still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internet_guest_cannot_reach_the_host() {
    let env = common::env().await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"host-secret\n").await;
        }
    });
    // The host's own global address, as a guest could guess it.
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .unwrap();
    let host_ip = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .unwrap_or("127.0.0.1")
        .to_string();

    let vm = boot_networked(&env, "net-guard").await;
    for target in ["10.0.2.2", host_ip.as_str()] {
        let out = vm
            .agent()
            .sh(&format!(
                "timeout 8 nc {target} {port} </dev/null; echo rc=$?"
            ))
            .await
            .unwrap();
        let text = out.stdout_str();
        assert!(!text.contains("host-secret"), "{target}: {text}");
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the host"
    );
    // The same guest still reaches the internet: the guard, not a dead link.
    let release = fetch_release(&*vm).await;
    assert!(release.contains("Origin: Debian"), "{release}");
    vm.stop().await.unwrap();
}
