//! Bad input gets a clear error and leaves no process, overlay or socket.

use crate::common;

use std::path::Path;

use ember_vmm::{Hypervisor, RestoreOptions, VmmError};

/// A named way to break a copy of a snapshot directory.
type Damage = (&'static str, fn(&Path));

fn assert_clean(env: &common::TestEnv, name: &str) {
    assert!(
        !env.hv.vm_dir(name).exists(),
        "runtime dir of {name} left behind"
    );
    assert!(
        env.live_qemus(name).is_empty(),
        "QEMU of {name} left running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_files_and_bad_names_are_refused_before_launch() {
    let env = common::env().await;

    let mut cfg = env.config("nokernel");
    cfg.kernel = "/nonexistent/vmlinux".into();
    let err = env.hv.boot(cfg).await.err().expect("must fail");
    assert!(
        matches!(
            err,
            VmmError::MissingFile {
                what: "guest kernel",
                ..
            }
        ),
        "{err}"
    );
    assert_clean(&env, "nokernel");

    let mut cfg = env.config("norootfs");
    cfg.rootfs = "/nonexistent/rootfs.ext4".into();
    let err = env.hv.boot(cfg).await.err().expect("must fail");
    assert!(
        matches!(
            err,
            VmmError::MissingFile {
                what: "root filesystem",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("/nonexistent/rootfs.ext4"));
    assert_clean(&env, "norootfs");

    for bad in ["../escape", "", "a b"] {
        let err = env.hv.boot(env.config(bad)).await.err().expect("must fail");
        assert!(matches!(err, VmmError::InvalidName(_)), "{err}");
    }
    let err = env
        .hv
        .restore(
            "x",
            Path::new("/nonexistent/snap"),
            RestoreOptions::default(),
        )
        .await
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("not a snapshot directory"),
        "{err}"
    );
    assert_clean(&env, "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_in_use_and_damaged_snapshots_fail_cleanly() {
    let env = common::env().await;
    let vm = env.boot("taken").await;

    // A second VM with the same name fails and does not disturb the first.
    let err = env
        .hv
        .boot(env.config("taken"))
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, VmmError::NameInUse(_)), "{err}");
    assert_eq!(common::sh(&*vm, "echo alive").await, "alive\n");

    let snap = env.state.path().join("snap");
    vm.snapshot(&snap).await.unwrap();
    vm.resume().await.unwrap();
    let err = env
        .hv
        .restore("taken", &snap, RestoreOptions::default())
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, VmmError::NameInUse(_)), "{err}");
    assert_eq!(common::sh(&*vm, "echo still alive").await, "still alive\n");
    vm.stop().await.unwrap();

    // Each kind of damage, applied to a copy of the good snapshot.
    let damage: [Damage; 4] = [
        ("corrupt device state", |d| {
            let p = d.join("state.bin");
            let mut b = std::fs::read(&p).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0xff;
            std::fs::write(p, b).unwrap();
        }),
        ("truncated memory", |d| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("memory.ram"))
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 2).unwrap();
        }),
        ("missing disk", |d| {
            std::fs::remove_file(d.join("disk.qcow2")).unwrap()
        }),
        ("truncated manifest", |d| {
            let p = d.join("snapshot.ember");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(p, &b[..b.len() / 2]).unwrap();
        }),
    ];
    for (i, (what, apply)) in damage.iter().enumerate() {
        let copy = env.state.path().join(format!("damaged{i}"));
        std::fs::create_dir(&copy).unwrap();
        for f in std::fs::read_dir(&snap).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
        }
        apply(&copy);
        let name = format!("damaged{i}");
        let err = env
            .hv
            .restore(&name, &copy, RestoreOptions::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: restore succeeded"));
        assert!(matches!(err, VmmError::Snapshot(_)), "{what}: {err}");
        assert_clean(&env, &name);
    }

    // The undamaged snapshot still restores after all that.
    let ok = env
        .hv
        .restore("good", &snap, RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(common::sh(&*ok, "echo restored").await, "restored\n");
    ok.stop().await.unwrap();
}

/// Boot flakiness is a bug: boot several guests back to back, each must
/// reach its agent (a hang fails on the boot timeout with the console tail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_cold_boots_never_hang() {
    let env = common::env().await;
    let rounds: usize = std::env::var("EMBER_BOOT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for i in 0..rounds {
        let name = format!("boot{i}");
        let vm = env.boot(&name).await;
        assert_eq!(common::sh(&*vm, "echo up").await, "up\n");
        vm.stop().await.unwrap();
        assert_clean(&env, &name);
    }
}
