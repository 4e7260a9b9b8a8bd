"""Faults in the middle of a deep suspend (the snapshot written to the data
dir): the VM's QEMU SIGKILLed before its state is written and after, and
the data dir's filesystem full. Each time the VM ends up resumable from a
whole snapshot, still RUNNING, or TERMINATED with a reason that says what
happened; never stuck in SUSPENDING, no files or QEMU left behind, and the
image still runs.

emberd runs on a data dir of its own on a small tmpfs made here (root is
needed to mount it): a size-limited tmpfs answers ENOSPC exactly at its
size, with no ext4 reserve that root may still write into. The kill
lands at a given step by holding emberd's opens of the snapshot's state
file (`open_gate.py`), not by timing."""

import errno
import os
import signal
import time

import pytest

from harness import (assert_gone, counter, create_and_wait, endpoint_token, microvm_dir,
                     proc_stat, qemu_pids, terminate_quietly, wait_microvm)
from open_gate import OpenGate
from small_fs import emberd_on_tmpfs

# The emberd flags that make SuspendMicrovm write the snapshot to disk
# (the deep suspend) rather than keep a paused QEMU.
DEEP_SUSPEND_FLAGS = ("--warm-suspended-mib", "0")
# Room for the hello-http image, its build cache and two VMs' touched RAM.
DATA_FS_MIB = 1536
IDLE = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600, "autoResumeEnabled": True}


@pytest.fixture(scope="module")
def small_fs_emberd(ember, hello_zip):
    # tmpfs has no block device to cap I/O on; the host's reserve is the
    # rest of the host's business, this filesystem is the test's.
    with emberd_on_tmpfs(ember, DATA_FS_MIB, "ember-faults", "--vm-io-mbps", "0",
                         "--disk-reserve-mib", "0", *DEEP_SUSPEND_FLAGS) as (daemon, data_fs):
        image, version = create_and_wait(daemon.client(), "hello-http", hello_zip)
        assert image["state"] == "CREATED", version.get("stateReason")
        yield daemon, data_fs


def kill_and_reap_wait(pid):
    """SIGKILL, then wait until the process is dead (a zombie emberd has
    not reaped yet counts)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        fields = proc_stat(pid)
        if fields is None or fields[0] == "Z":
            return
        time.sleep(0.01)
    raise AssertionError(f"QEMU {pid} still alive 10 s after SIGKILL")


def running_vm(client):
    vm = client.run_microvm(imageIdentifier="hello-http", idlePolicy=IDLE)
    wait_microvm(client, vm["microvmId"], "RUNNING", timeout=90)
    token = endpoint_token(client, vm["microvmId"])
    assert counter(vm["endpoint"], token) == 1
    return vm["microvmId"], vm["endpoint"], token


def settled(client, vm_id, timeout=60):
    """The state the VM settles in after a suspend, which must not stay
    SUSPENDING."""
    deadline = time.monotonic() + timeout
    while True:
        vm = client.get_microvm(microvmIdentifier=vm_id)
        if vm["state"] != "SUSPENDING":
            return vm
        assert time.monotonic() < deadline, f"still SUSPENDING after {timeout}s: {vm}"
        time.sleep(0.2)


def suspend_killing_qemu_at_open(ember, client, vm_id, nth):
    """SuspendMicrovm with the VM's QEMU SIGKILLed while emberd opens the
    snapshot's state file for the `nth` time: 1 is its creation (the VM is
    paused, nothing written yet), 2 is its checksum (the state is whole,
    the memory and disk not yet moved in)."""
    state_file = str(microvm_dir(ember, vm_id) / "suspended" / "state.bin")
    pids = qemu_pids(ember, vm_id)
    assert len(pids) == 1, pids
    opens = []

    def on_open(path):
        if path == state_file:
            opens.append(path)
            if len(opens) == nth:
                kill_and_reap_wait(pids[0])

    with OpenGate(ember.data_dir, on_open):
        client.suspend_microvm(microvmIdentifier=vm_id)
        got = settled(client, vm_id)
    assert len(opens) >= nth, f"emberd opened {state_file} {len(opens)} times, not {nth}"
    return got


def test_qemu_killed_before_its_state_is_written(small_fs_emberd):
    ember, _ = small_fs_emberd
    client = ember.client()
    vm_id, _, _ = running_vm(client)
    try:
        got = suspend_killing_qemu_at_open(ember, client, vm_id, 1)
        # No state, no snapshot: the memory is lost, and the reason says so.
        assert got["state"] == "TERMINATED", got
        reason = got.get("stateReason", "")
        assert "suspend failed" in reason and "killed by signal 9" in reason, got
        assert_gone(ember, vm_id)
        again, _, _ = running_vm(client)
        terminate_quietly(client, again)
    finally:
        terminate_quietly(client, vm_id)


def test_qemu_killed_after_its_state_is_written(small_fs_emberd):
    ember, _ = small_fs_emberd
    client = ember.client()
    vm_id, endpoint, token = running_vm(client)
    try:
        assert counter(endpoint, token) == 2
        got = suspend_killing_qemu_at_open(ember, client, vm_id, 2)
        # The state was whole and the VM paused: the snapshot is good.
        assert got["state"] == "SUSPENDED", got
        assert qemu_pids(ember, vm_id) == []
        client.resume_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        assert counter(endpoint, token) == 3, "the VM lost its memory"
    finally:
        terminate_quietly(client, vm_id)


def fill(path):
    """Writes `path` until its filesystem has no byte left."""
    with open(path, "wb", buffering=0) as out:
        for block in (b"\xff" * (1 << 20), b"\xff" * 4096):
            try:
                while True:
                    out.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


def test_a_full_data_disk_fails_the_suspend_and_loses_nothing(small_fs_emberd):
    ember, fs_root = small_fs_emberd
    client = ember.client()
    vm_id, endpoint, token = running_vm(client)
    filler = fs_root / "filler"
    try:
        fill(filler)
        client.suspend_microvm(microvmIdentifier=vm_id)
        got = settled(client, vm_id)
        # No reason here: the store cannot record one on a full disk (its
        # row keeps RUNNING, which stays true).
        assert got["state"] in ("RUNNING", "TERMINATED"), got
        assert not (microvm_dir(ember, vm_id) / "suspended").exists(), "a half snapshot was kept"
        if got["state"] == "RUNNING":
            assert counter(endpoint, token) == 2
        else:
            assert got["state"] == "TERMINATED", got
        filler.unlink()
        # Space again: what the store holds agrees, and the VM (or, if it
        # ended, the image) goes on.
        got = client.get_microvm(microvmIdentifier=vm_id)
        assert got["state"] in ("RUNNING", "TERMINATED"), got
        if got["state"] == "RUNNING":
            client.suspend_microvm(microvmIdentifier=vm_id)
            wait_microvm(client, vm_id, "SUSPENDED", timeout=90)
            client.resume_microvm(microvmIdentifier=vm_id)
            wait_microvm(client, vm_id, "RUNNING", timeout=90)
            assert counter(endpoint, token) == 3, "the VM lost its memory"
        again, _, _ = running_vm(client)
        terminate_quietly(client, again)
    finally:
        filler.unlink(missing_ok=True)
        terminate_quietly(client, vm_id)
