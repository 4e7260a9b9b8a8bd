//! The jail with real programs (dash, coreutils' `id`) in place of QEMU:
//! what the jailed process sees, who it runs as, what it can write, and
//! that a step that cannot be done stops the launch.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::plan::{Access, MountPlan};
use super::runtime::QemuRuntime;
use super::spawn::{spawn, SpawnSpec};
use super::JailError;

const UID: u32 = 1_900_065_000;

struct Jailed {
    _tmp: tempfile::TempDir,
    vm_dir: PathBuf,
    out: PathBuf,
}

fn setup() -> (Jailed, PathBuf, MountPlan) {
    let tmp = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let root_mount = base.join("root");
    let vm_dir = base.join("vm/jail");
    std::fs::create_dir_all(&root_mount).unwrap();
    std::fs::create_dir_all(&vm_dir).unwrap();
    std::os::unix::fs::chown(&vm_dir, Some(UID), Some(UID)).unwrap();
    let mut plan = MountPlan::default();
    for program in ["/bin/sh", "/usr/bin/id"] {
        let rt = QemuRuntime::discover(Path::new(program)).unwrap();
        for p in rt.read_only {
            plan.add(&p, Access::Program).unwrap();
        }
    }
    plan.add(Path::new("/dev/null"), Access::Device).unwrap();
    plan.add(&vm_dir, Access::Writable).unwrap();
    let out = base.join("out");
    (
        Jailed {
            _tmp: tmp,
            vm_dir,
            out,
        },
        root_mount,
        plan,
    )
}

fn run(
    j: &Jailed,
    root_mount: &Path,
    plan: &MountPlan,
    script: &str,
    cgroup_procs: &[PathBuf],
) -> Result<(i32, String), JailError> {
    let out = std::fs::File::create(&j.out).unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let args = vec!["-c".to_string(), script.to_string()];
    let child = spawn(&SpawnSpec {
        program: Path::new("/bin/sh"),
        args: &args,
        root_mount,
        plan,
        cwd: &j.vm_dir,
        ids: (UID, UID),
        own_network: true,
        hostname: "jail-test",
        cgroup_procs,
        fds: vec![(null.as_fd(), 0), (out.as_fd(), 1), (out.as_fd(), 2)],
        die_with_parent: true,
        max_file_bytes: Some(1 << 20),
    })?;
    // SAFETY: waitid on our own child's pidfd with a zeroed siginfo.
    let status = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        assert_eq!(
            libc::waitid(
                libc::P_PIDFD,
                child.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED
            ),
            0
        );
        info.si_status()
    };
    Ok((status, std::fs::read_to_string(&j.out).unwrap()))
}

#[test]
fn the_jailed_process_is_pid_1_as_its_own_uid_and_sees_only_its_files() {
    let (j, root, plan) = setup();
    let script = "echo pid=$$; echo uid=$(id -u) gid=$(id -g) groups=$(id -G); \
                  echo top: /*; echo dev: /dev/*; \
                  [ -e /etc/shadow ] || echo no-shadow; [ -e /proc/1 ] || echo no-proc; \
                  echo hi > here && echo wrote-own; (echo x > /evil) 2>/dev/null || echo root-read-only";
    let (status, out) = run(&j, &root, &plan, script, &[]).unwrap();
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(
        out.contains(&format!("uid={UID} gid={UID} groups={UID}\n")),
        "{out}"
    );
    let top = out.lines().find(|l| l.starts_with("top:")).unwrap();
    // Only what the plan put there: program folders, /dev, the VM's folder's
    // parents, the symlinks of a merged /usr.
    for entry in top.split_whitespace().skip(1) {
        assert!(
            ["/bin", "/dev", "/etc", "/lib", "/lib64", "/usr", "/tmp"].contains(&entry),
            "unexpected {entry} in the jail's root: {top}"
        );
    }
    assert!(out.contains("dev: /dev/null\n"), "{out}");
    assert!(
        out.contains("no-shadow") && out.contains("no-proc"),
        "{out}"
    );
    assert!(
        out.contains("wrote-own") && out.contains("root-read-only"),
        "{out}"
    );
    let made = j.vm_dir.join("here").metadata().unwrap();
    assert_eq!((made.uid(), made.gid()), (UID, UID));
    // Nothing of the jail leaked into the host's mount table.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(root.to_str().unwrap()), "{mounts}");
}

#[test]
fn writes_past_the_file_cap_fail_instead_of_filling_the_disk() {
    let (j, root, plan) = setup();
    // 40,000 lines of 41 bytes: 1.6 MB through the shell's own redirection.
    let script = "i=0; while [ $i -lt 40000 ]; do \
                  echo 0123456789012345678901234567890123456789; i=$((i+1)); done > big; echo done";
    let (_, out) = run(&j, &root, &plan, script, &[]).unwrap();
    let size = j.vm_dir.join("big").metadata().unwrap().len();
    assert!(
        size <= 1 << 20,
        "the 1 MiB cap let {size} bytes through ({out})"
    );
    assert!(size > 0, "{out}");
}

#[test]
fn a_step_that_cannot_be_done_stops_the_launch_with_its_name() {
    let (j, root, plan) = setup();
    let missing = PathBuf::from("/sys/fs/cgroup/nonexistent-ember-test/cgroup.procs");
    let err = run(&j, &root, &plan, "echo ran > ran", &[missing]).unwrap_err();
    assert!(
        matches!(&err, JailError::Setup { step, .. } if step.contains("cgroup")),
        "{err}"
    );
    assert!(
        !j.vm_dir.join("ran").exists(),
        "the program ran despite the failed step"
    );
}

#[test]
fn a_strict_umask_in_the_parent_does_not_lock_the_program_out() {
    let (j, root, plan) = setup();
    // emberd runs with umask 077; the jail's folders must still be 0755.
    // SAFETY: umask only swaps this process's creation mask.
    let old = unsafe { libc::umask(0o077) };
    let result = run(&j, &root, &plan, "echo ok; echo made > f", &[]);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let (status, out) = result.unwrap();
    assert_eq!((status, out.as_str()), (0, "ok\n"));
    let mode = j.vm_dir.join("f").metadata().unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "what the program makes is its own alone");
}
