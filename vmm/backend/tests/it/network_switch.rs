//! Choosing a restored VM's network: a snapshot of a VM with a network
//! card restores with outbound internet or fully isolated, whichever it
//! was taken with, and a later suspend keeps what the VM ran with.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ember_vmm::qemu::{QemuConfig, QemuHypervisor};
use ember_vmm::snapshot::{FileRecord, MemoryImage};
use ember_vmm::{
    Accel, Hypervisor, Network, RestoreMemory, RestoreOptions, SnapshotManifest, Vm, VmmError,
    DNS_ADDRESS,
};

const RELEASE_URL: &str = "http://deb.debian.org/debian/dists/bookworm/Release";

fn options(memory: RestoreMemory, network: Option<Network>) -> RestoreOptions {
    RestoreOptions {
        memory,
        network,
        ..RestoreOptions::default()
    }
}

/// Fetches the head of Debian's bookworm Release file, retrying (a slow
/// TCG guest or mirror may need a second go); `None` when it never came.
async fn try_fetch_release(vm: &dyn Vm, attempts: u32) -> Option<String> {
    // `timeout`, not wget's -T, which crashes busybox 1.35's wget.
    let script = format!(
        "for i in $(seq {attempts}); do \
           out=$(timeout 30 wget -q -O - {RELEASE_URL} | head -c 100) \
           && [ -n \"$out\" ] && {{ echo \"$out\"; exit 0; }}; sleep 1; \
         done; exit 1"
    );
    let out = vm.agent().sh(&script).await.expect("exec");
    out.success().then(|| out.stdout_str())
}

/// A TCP listener on the host's loopback counting who got through.
async fn host_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"host-secret\n").await;
        }
    });
    (port, accepted)
}

/// Sends an HTTP/1.1 request straight to `ip`, bypassing DNS. Busybox nc
/// quits when its input ends, so the input stays open for the answer.
async fn http_by_address(vm: &dyn Vm, ip: &str) -> String {
    let out = vm
        .agent()
        .sh(&format!(
            "{{ printf 'HEAD /debian/ HTTP/1.1\\r\\nHost: deb.debian.org\\r\\nConnection: close\\r\\n\\r\\n'; sleep 8; }} \
             | timeout 10 nc {ip} 80; echo rc=$?"
        ))
        .await
        .unwrap();
    out.stdout_str()
}

/// The effective gid of a process, from /proc.
fn process_gid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

async fn mirror_ipv4() -> String {
    tokio::net::lookup_host("deb.debian.org:80")
        .await
        .unwrap()
        .find(|a| a.is_ipv4())
        .expect("an IPv4 address for deb.debian.org")
        .ip()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_snapshot_restores_with_internet_or_isolated() {
    let env = common::env().await;
    let (port, accepted) = host_listener().await;
    let mirror = mirror_ipv4().await;

    let mut config = env.config("sw-origin");
    config.network = Network::Isolated;
    let origin = env.hv.boot(config).await.expect("boot isolated");
    // Addressed as an internet VM would be, and the image builder's
    // resolv.conf is in place.
    let addr = common::sh(&*origin, "ip -4 addr show dev eth0").await;
    assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");
    common::sh(
        &*origin,
        &format!("echo 'nameserver {DNS_ADDRESS}' > /etc/resolv.conf"),
    )
    .await;
    let mac = common::sh(&*origin, "cat /sys/class/net/eth0/address").await;
    // A failed attempt before the snapshot leaves the gateway unresolved
    // in the guest's neighbour table: the restore must recover from that.
    let probe = common::sh(
        &*origin,
        &format!("timeout 5 nc 10.0.2.2 {port} </dev/null; echo rc=$?"),
    )
    .await;
    assert!(!probe.contains("host-secret"), "{probe}");
    let snap = env.state.path().join("isolated-snap");
    origin.snapshot(&snap).await.unwrap();
    origin.stop().await.unwrap();
    assert_eq!(
        SnapshotManifest::load(&snap).unwrap().vm.network,
        Network::Isolated
    );

    // Plugged into the internet at restore: same card, and it reaches out.
    let online = env
        .hv
        .restore(
            "sw-inet",
            &snap,
            options(RestoreMemory::Copy, Some(Network::Internet)),
        )
        .await
        .expect("restore with internet");
    assert_eq!(
        common::sh(&*online, "cat /sys/class/net/eth0/address").await,
        mac
    );
    let release = try_fetch_release(&*online, 3).await;
    assert!(
        release.as_deref().unwrap_or("").contains("Origin: Debian"),
        "{release:?}"
    );
    let direct = http_by_address(&*online, &mirror).await;
    assert!(
        direct.contains("HTTP/1.1"),
        "the probe itself works: {direct}"
    );
    assert!(
        ember_vmm::qemu::IdRange::DEFAULT.contains(process_gid(online.stats().unwrap().pid)),
        "the egress guard polices the restored VM's sockets (gids of the jail's range)"
    );

    // The same snapshot isolated: no DNS, no mirror by address, no host.
    let offline = env
        .hv
        .restore(
            "sw-iso",
            &snap,
            options(RestoreMemory::Clone, Some(Network::Isolated)),
        )
        .await
        .expect("restore isolated");
    assert_eq!(try_fetch_release(&*offline, 1).await, None);
    let direct = http_by_address(&*offline, &mirror).await;
    assert!(!direct.contains("HTTP/"), "{direct}");
    let ping = offline.agent().sh("ping -c 1 -W 3 10.0.2.2").await.unwrap();
    assert!(
        !ping.success(),
        "the gateway answered: {}",
        ping.stdout_str()
    );
    for target in ["10.0.2.2", "10.0.2.3"] {
        let out = common::sh(
            &*offline,
            &format!("timeout 5 nc {target} {port} </dev/null; echo rc=$?"),
        )
        .await;
        assert!(!out.contains("host-secret"), "{target}: {out}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the host"
    );
    offline.stop().await.unwrap();

    // Suspended, the internet VM records the network it ran with, and
    // comes back with it when resumed without asking.
    let suspended = env.state.path().join("inet-suspended");
    online.suspend(&suspended).await.unwrap();
    assert_eq!(
        SnapshotManifest::load(&suspended).unwrap().vm.network,
        Network::Internet
    );
    let resumed = env
        .hv
        .restore(
            "sw-back",
            &suspended,
            RestoreOptions::memory(RestoreMemory::Consume),
        )
        .await
        .expect("resume");
    let release = try_fetch_release(&*resumed, 3).await;
    assert!(
        release.as_deref().unwrap_or("").contains("Origin: Debian"),
        "{release:?}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the host"
    );
    resumed.stop().await.unwrap();
}

/// A snapshot directory whose manifest describes a VM on `network`; the
/// network check comes before anything would read the files' contents.
fn fake_snapshot(env: &common::TestEnv, dir: &Path, network: Network) {
    std::fs::create_dir(dir).unwrap();
    std::fs::write(dir.join("state"), b"device").unwrap();
    std::fs::write(dir.join("disk"), b"disk").unwrap();
    let mut vm = env.config("sw-fake");
    vm.network = network;
    SnapshotManifest {
        vm,
        accel: Accel::Tcg,
        vmm_version: env.hv.qemu_version().to_string(),
        created_unix_ms: 1,
        memory: MemoryImage::InStream,
        device_state: FileRecord {
            name: "state".into(),
            size: 6,
            crc32: Some(crc32fast::hash(b"device")),
        },
        disk: FileRecord {
            name: "disk".into(),
            size: 4,
            crc32: None,
        },
    }
    .write(dir)
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_card_cannot_be_added_or_removed_at_restore() {
    let env = common::env().await;
    let cases = [
        (Network::None, Network::Internet, false),
        (Network::None, Network::Isolated, false),
        (Network::Isolated, Network::None, true),
        (Network::Internet, Network::None, true),
    ];
    for (i, (taken, asked, had_card)) in cases.into_iter().enumerate() {
        let snap = env.state.path().join(format!("fake-{i}"));
        fake_snapshot(&env, &snap, taken);
        let name = format!("sw-mismatch-{i}");
        let err = env
            .hv
            .restore(&name, &snap, options(RestoreMemory::Clone, Some(asked)))
            .await
            .err()
            .expect("refused");
        match &err {
            VmmError::NetworkMismatch {
                snapshot_has_card,
                requested,
                ..
            } => {
                assert_eq!(*snapshot_has_card, had_card, "{err}");
                assert_eq!(*requested, asked, "{err}");
            }
            other => panic!("{taken:?} -> {asked:?}: {other}"),
        }
        assert!(err.to_string().contains("network card"), "{err}");
        assert!(!env.hv.vm_dir(&name).exists(), "nothing left behind");
        assert!(snap.join(ember_vmm::snapshot::MANIFEST_FILE).exists());
    }
}

/// A daemon restart between the restore and the suspend: the runtime
/// record `attach` reads carries the network the VM was restored with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reattached_vm_keeps_the_network_it_was_restored_with() {
    let keep_running = |cfg: &mut QemuConfig| cfg.die_with_parent = false;
    let env = common::env_with(keep_running).await;
    let mut config = env.config("sw-kept-origin");
    config.network = Network::Isolated;
    let origin = env.hv.boot(config).await.expect("boot isolated");
    let snap = env.state.path().join("kept-snap");
    origin.snapshot(&snap).await.unwrap();
    origin.stop().await.unwrap();
    let vm = env
        .hv
        .restore(
            "sw-kept",
            &snap,
            options(RestoreMemory::Copy, Some(Network::Internet)),
        )
        .await
        .unwrap();
    drop(vm);

    let mut cfg = QemuConfig::new(env.state.path());
    if let Ok(a) = std::env::var("EMBER_ACCEL") {
        cfg.accel = a.parse().unwrap();
    }
    keep_running(&mut cfg);
    let hv = QemuHypervisor::new(cfg).await.unwrap();
    let vm = hv.attach("sw-kept").await.unwrap();
    let suspended = env.state.path().join("kept-suspended");
    vm.suspend(&suspended).await.unwrap();
    assert_eq!(
        SnapshotManifest::load(&suspended).unwrap().vm.network,
        Network::Internet
    );
}
