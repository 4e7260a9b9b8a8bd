//! Every QEMU in its own jail: its own uid, no capabilities, its own
//! namespaces, a root holding only its files; from inside one VM's jail
//! another VM's files cannot be opened; snapshots, suspends and restores
//! still work, and what a VM leaves behind is taken back by root.

use crate::common;

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ember_vmm::{Hypervisor, RestoreMemory, RestoreOptions};

/// A `Name:` line of /proc/PID/status, as numbers.
fn status_ids(pid: u32, field: &str) -> Vec<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|v| u64::from_str_radix(v, if field.starts_with("Cap") { 16 } else { 10 }).unwrap())
        .collect()
}

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

/// Enters `pid`'s mount namespace as `uid` in a forked child and tries to
/// open each path there: one byte per path, 1 for opened.
fn open_from_inside(pid: u32, uid: u32, paths: &[&Path]) -> Vec<bool> {
    let ns = CString::new(format!("/proc/{pid}/ns/mnt")).unwrap();
    let cpaths: Vec<CString> = paths
        .iter()
        .map(|p| CString::new(p.to_str().unwrap()).unwrap())
        .collect();
    let mut fds = [0; 2];
    // SAFETY: pipe with a two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child makes raw syscalls on strings prepared before the
    // fork, writes to the pipe and exits; it never returns into the test.
    unsafe {
        let child = libc::fork();
        assert!(child >= 0);
        if child == 0 {
            let fd = libc::open(ns.as_ptr(), libc::O_RDONLY);
            if fd < 0 || libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                libc::_exit(2);
            }
            if libc::setresgid(uid, uid, uid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
                libc::_exit(3);
            }
            for p in &cpaths {
                let ok = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) >= 0;
                libc::write(fds[1], [u8::from(ok)].as_ptr().cast(), 1);
            }
            libc::_exit(0);
        }
        libc::close(fds[1]);
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the probe could not enter the jail"
        );
    }
    // SAFETY: the read end is ours alone.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(read), &mut out).unwrap();
    out.into_iter().map(|b| b == 1).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vm_is_jailed_alone_and_cannot_reach_another_vms_files() {
    let env = common::env().await;
    let a = env.boot("jail-a").await;
    common::sh(&*a, "echo kept > /tmp/mem; echo disk > /root/disk; sync").await;
    let snap = env.state.path().join("snap");
    a.snapshot(&snap).await.unwrap();
    a.resume().await.unwrap();
    let b = env
        .hv
        .restore("jail-b", &snap, RestoreOptions::memory(RestoreMemory::Copy))
        .await
        .unwrap();
    assert_eq!(
        common::sh(&*b, "cat /tmp/mem /root/disk").await,
        "kept\ndisk\n"
    );

    let (pa, pb) = (a.stats().unwrap().pid, b.stats().unwrap().pid);
    let ua = status_ids(pa, "Uid:");
    let ub = status_ids(pb, "Uid:");
    assert!(ua[0] != 0 && ub[0] != 0, "QEMU runs as root: {ua:?} {ub:?}");
    assert_ne!(ua[0], ub[0], "two VMs share a uid");
    for (pid, uid) in [(pa, ua[0]), (pb, ub[0])] {
        assert_eq!(status_ids(pid, "Uid:"), vec![uid; 4]);
        assert_eq!(status_ids(pid, "Gid:"), vec![uid; 4]);
        assert!(status_ids(pid, "Groups:").is_empty());
        for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(status_ids(pid, caps), vec![0], "{caps} of {pid}");
        }
        assert_eq!(status_ids(pid, "NoNewPrivs:"), vec![1]);
        assert_eq!(
            status_ids(pid, "Seccomp:"),
            vec![2],
            "QEMU's sandbox is off"
        );
        for kind in ["mnt", "pid", "ipc", "uts", "net"] {
            assert_ne!(
                ns(&pid.to_string(), kind),
                ns("self", kind),
                "{kind} namespace shared with the host"
            );
        }
        // QEMU is PID 1 of its own PID namespace.
        let nspid = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = nspid.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert!(line.trim_end().ends_with("\t1"), "{line}");
    }
    assert_ne!(ns(&pa.to_string(), "mnt"), ns(&pb.to_string(), "mnt"));

    // Files: the VM folder is root's, the writable one the VM's alone.
    let (da, db) = (env.hv.vm_dir("jail-a"), env.hv.vm_dir("jail-b"));
    let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
    assert_eq!((meta(&da).uid(), meta(&da).mode() & 0o777), (0, 0o700));
    assert_eq!(meta(&da.join("qmp.sock")).uid(), 0);
    assert_eq!(meta(&da.join("runtime.ember")).uid(), 0);
    let jail_a = da.join("jail");
    assert_eq!(
        (meta(&jail_a).uid(), meta(&jail_a).mode() & 0o777),
        (ua[0] as u32, 0o700)
    );
    assert_eq!(meta(&jail_a.join("memory.ram")).uid(), ua[0] as u32);

    // From inside A's jail, as A's uid: its own RAM file opens; B's files,
    // B's sockets, the host's secrets and A's own sockets do not exist.
    let probes: Vec<std::path::PathBuf> = vec![
        jail_a.join("memory.ram"),
        db.join("jail/memory.ram"),
        db.join("jail/disk.qcow2"),
        db.join("qmp.sock"),
        da.join("qmp.sock"),
        da.join("runtime.ember"),
        "/etc/shadow".into(),
        "/etc/passwd".into(),
        "/proc/1/environ".into(),
        snap.join("memory.ram"),
    ];
    let refs: Vec<&Path> = probes.iter().map(|p| p.as_path()).collect();
    let opened = open_from_inside(pa, ua[0] as u32, &refs);
    assert!(opened[0], "the probe did not run inside A's jail");
    for (path, ok) in probes.iter().zip(&opened).skip(1) {
        assert!(!ok, "{} can be opened from inside A's jail", path.display());
    }

    // A suspend takes the VM's files back for root; a consuming restore
    // gives them to the new VM's uid.
    let suspended = env.state.path().join("suspended");
    b.suspend(&suspended).await.unwrap();
    for f in ["memory.ram", "disk.qcow2"] {
        let m = meta(&suspended.join(f));
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600), "{f}");
    }
    let b = env
        .hv
        .restore(
            "jail-b",
            &suspended,
            RestoreOptions::memory(RestoreMemory::Consume),
        )
        .await
        .unwrap();
    assert_eq!(common::sh(&*b, "cat /tmp/mem").await.trim(), "kept");
    let ub2 = status_ids(b.stats().unwrap().pid, "Uid:")[0];
    assert_ne!(ub2, ua[0]);
    assert_eq!(meta(&db.join("jail/memory.ram")).uid(), ub2 as u32);
    b.stop().await.unwrap();
    a.stop().await.unwrap();
    assert!(!da.exists() && !db.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_left_by_a_vm_is_refused_at_suspend() {
    let env = common::env().await;
    let vm = env.boot("jail-link").await;
    let jail = env.hv.vm_dir("jail-link").join("jail");
    // What a QEMU its guest took over could do in its own folder.
    std::fs::write(env.state.path().join("secret"), b"root's").unwrap();
    // (QEMU keeps its RAM mapped; the name is all that changes.)
    std::fs::rename(jail.join("memory.ram"), jail.join("real.ram")).unwrap();
    std::os::unix::fs::symlink(env.state.path().join("secret"), jail.join("memory.ram")).unwrap();
    let out = env.state.path().join("suspended");
    let err = vm.suspend(&out).await.unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(
        std::fs::symlink_metadata(out.join("memory.ram")).is_err(),
        "the VM's symlink was taken into the snapshot"
    );
    // The secret was neither read into the snapshot nor re-owned.
    assert_eq!(
        std::fs::metadata(env.state.path().join("secret"))
            .unwrap()
            .uid(),
        0
    );
    let _ = vm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_fills_its_disk_gets_enospc_and_the_host_keeps_its_space() {
    let env = common::env().await;
    let vm = env.boot("jail-fill").await;
    let out = vm
        .agent()
        .sh("dd if=/dev/zero of=/root/fill bs=1M 2>&1; sync; df -k / | tail -1")
        .await
        .unwrap();
    let text = out.stdout_str();
    assert!(text.contains("No space left on device"), "{text}");
    // The VM lives on, its disk full.
    assert_eq!(common::sh(&*vm, "echo alive").await.trim(), "alive");
    let disk = env.hv.vm_dir("jail-fill").join("jail/disk.qcow2");
    let written = std::fs::metadata(&disk).unwrap().len();
    let virtual_size = std::fs::metadata(&env.rootfs).unwrap().len();
    assert!(
        written <= virtual_size + (256 << 20),
        "the writable layer grew to {written} bytes on a {virtual_size}-byte disk"
    );
    // Freeing space in the guest works again (the disk discards).
    common::sh(&*vm, "rm /root/fill; sync; echo ok > /root/after").await;
    vm.stop().await.unwrap();
}
