"""Every QEMU emberd starts is jailed, builds included, also when the data
dir sits under a 0700 folder (what `mktemp -d` makes): none runs as root,
no two share a uid, each has a mount namespace of its own; and nothing in
the data dir can be read by another user of the host."""

import os
import re
import stat
import subprocess
import threading
import time
from pathlib import Path

from harness import MICROVM_PORT, counter, create_and_wait, endpoint_token, terminate_quietly, wait_microvm

IDLE = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600, "autoResumeEnabled": True}
NOBODY = 65534


def qemus_under(data_dir):
    """{pid: (uid, mount namespace)} of the QEMUs working under data_dir."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
            mnt = os.readlink(entry / "ns" / "mnt")
        except OSError:
            continue
        if cwd.startswith(str(data_dir)) and cmdline.startswith(b"qemu-system"):
            uid = int(next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1])
            found[int(entry.name)] = (uid, mnt)
    return found


def opened_as(uid, paths):
    """The paths that `uid` can open, tried by a forked child."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            opened = []
            for path in paths:
                try:
                    os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
                    opened.append(str(path))
                except OSError:
                    pass
            os.write(write_fd, "\n".join(opened).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    out = b""
    while chunk := os.read(read_fd, 65536):
        out += chunk
    os.close(read_fd)
    os.waitpid(pid, 0)
    return [p for p in out.decode().split("\n") if p]


def test_builds_and_microvms_run_jailed_under_a_private_data_dir(separate_emberd, hello_zip):
    ember = separate_emberd()
    data_dir = ember.data_dir
    parent_mode = stat.S_IMODE(data_dir.parent.parent.stat().st_mode)
    assert parent_mode == 0o700, f"the test means a data dir under a 0700 folder, got {parent_mode:o}"
    host_mnt = os.readlink("/proc/self/ns/mnt")
    client = ember.client()

    # Watch the build's QEMUs (build VM, then the image's VM) while it runs.
    seen, done = {}, threading.Event()
    shared = []

    def watch():
        while not done.is_set():
            now = qemus_under(data_dir)
            uids = [uid for uid, _ in now.values()]
            if len(set(uids)) != len(uids):
                shared.append(now)
            seen.update(now)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        image, version = create_and_wait(client, "jailed", hello_zip)
    finally:
        done.set()
        watcher.join()
    assert image["state"] == "CREATED", version.get("stateReason")
    assert len(seen) >= 2, f"saw {len(seen)} build QEMUs: {seen}"
    build_uids = {uid for uid, _ in seen.values()}
    assert 0 not in build_uids, f"a build QEMU ran as root: {seen}"
    # The build VM and the image's VM run one after the other, and an id
    # is free again once its VM is gone; two at once never share one.
    assert not shared, f"QEMUs running at once shared a uid: {shared}"
    assert all(mnt != host_mnt for _, mnt in seen.values()), seen
    # The egress guard polices the build VMs' sockets too (both of emberd's
    # backends install it; it must cover every id either hands out).
    rules = subprocess.run(["/usr/sbin/nft", "list", "table", "inet", "ember_egress_guard"],
                           check=True, capture_output=True, text=True).stdout
    first, last = map(int, re.search(r"meta skgid (\d+)-(\d+) jump", rules).groups())
    assert all(first <= uid <= last for uid in build_uids), (build_uids, rules)

    ids = []
    try:
        for _ in range(2):
            vm = client.run_microvm(imageIdentifier="jailed", idlePolicy=IDLE)
            ids.append(vm["microvmId"])
            wait_microvm(client, vm["microvmId"], "RUNNING")
        for vm_id in ids:
            vm = client.get_microvm(microvmIdentifier=vm_id)
            token = endpoint_token(client, vm_id)
            assert counter(vm["endpoint"], token, MICROVM_PORT) == 1
        running = qemus_under(data_dir)
        assert len(running) == 2, running
        uids = [uid for uid, _ in running.values()]
        mnts = [mnt for _, mnt in running.values()]
        assert 0 not in uids and len(set(uids)) == 2, running
        assert len(set(mnts)) == 2 and host_mnt not in mnts, running

        # Nothing under the data dir opens for another user: not the
        # database (environment variables), credentials, keys, VM memory.
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for name in ["ember.db", "credentials", "token.key"]:
            mode = stat.S_IMODE((data_dir / name).stat().st_mode)
            assert mode == 0o600, f"{name} is {mode:o}"
        everything = [data_dir, *data_dir.rglob("*")]
        assert len(everything) > 50, everything
        opened = opened_as(NOBODY, everything)
        assert opened == [], f"another user can open: {opened[:10]}"
        # The probe itself works: a world-readable file outside opens.
        assert opened_as(NOBODY, ["/etc/passwd"]) == ["/etc/passwd"]
    finally:
        terminate_quietly(client, *ids)


def test_a_vm_whose_jail_cannot_be_set_up_does_not_start_and_says_why(separate_emberd, hello_zip):
    # Two ids, shared by the build's VMs (one at a time) and the microVMs:
    # a third microVM finds no free uid, and must not run without one.
    ember = separate_emberd("--vm-id-range", "1900100000-1900100001")
    client = ember.client()
    image, version = create_and_wait(client, "jailed-few", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    ids = []
    try:
        for _ in range(2):
            vm = client.run_microvm(imageIdentifier="jailed-few", idlePolicy=IDLE)
            ids.append(vm["microvmId"])
            wait_microvm(client, vm["microvmId"], "RUNNING")
        third = client.run_microvm(imageIdentifier="jailed-few", idlePolicy=IDLE)
        ids.append(third["microvmId"])
        vm = wait_microvm(client, third["microvmId"], "TERMINATED")
        assert "no free uid" in vm["stateReason"], vm["stateReason"]
        assert len(qemus_under(ember.data_dir)) == 2
        # The others are untouched, and a freed id is handed out again.
        client.terminate_microvm(microvmIdentifier=ids[0])
        wait_microvm(client, ids[0], "TERMINATED")
        again = client.run_microvm(imageIdentifier="jailed-few", idlePolicy=IDLE)
        ids.append(again["microvmId"])
        wait_microvm(client, again["microvmId"], "RUNNING")
        uids = sorted(uid for uid, _ in qemus_under(ember.data_dir).values())
        assert uids == [1900100000, 1900100001], uids
    finally:
        terminate_quietly(client, *ids)
