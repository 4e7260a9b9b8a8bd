"""A guest whose disk layer must grow while the data dir's filesystem is
full: QEMU pauses the VM (its `werror=enospc` default) and keeps the
failed write. emberd notices within seconds, keeps the VM RUNNING with a
reason saying what happened, answers its endpoint with a 503 at once
instead of letting requests hang, and continues the VM by itself once
there is space again: the write completes and the guest's memory is as
it was. Terminate works on such a VM too.

emberd runs on a data dir of its own on a small tmpfs made here (root is
needed to mount it), as in test_microvm_snapshot_faults.py: a
size-limited tmpfs answers ENOSPC exactly at its size."""

import errno
import os
import time

import pytest

from artifacts import zip_files
from harness import (assert_gone, create_and_wait, endpoint_request, endpoint_token, qemu_pids,
                     terminate_quietly, wait_microvm)
from small_fs import emberd_on_tmpfs

PORT = 8080
# Room for the image, its build cache and snapshot, and two VMs' RAM files.
DATA_FS_MIB = 1536
# What the filler leaves free: less than the guest writes, so its disk
# layer cannot hold the write.
LEFT_MIB = 4
WRITE_MIB = 24
# Bounds, not performance figures (TCG).
NOTICED_WITHIN_S = 15
ANSWERED_WITHIN_S = 5
CONTINUED_WITHIN_S = 20
DISK_FULL = "paused by the host: the data disk is full"
IDLE = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600, "autoResumeEnabled": True}

START = f"""#!/bin/sh
set -eu
# The source lives in guest RAM only: what the disk copy must equal, and
# memory state that must survive the pause.
dd if=/dev/urandom of=/dev/shm/src bs=1M count={WRITE_MIB} 2>/dev/null
echo 0 > /dev/shm/n
mkdir -p /var/data
exec httpd -f -p {PORT} -h /www
"""

# A counter in guest memory.
COUNT_CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo
n=$(( $(cat /dev/shm/n) + 1 ))
echo $n > /dev/shm/n
echo $n
"""

# Copies the source to the disk in the background (the answer does not
# wait for the disk) and records the copy's checksum once it is synced.
WRITE_CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo
( cp /dev/shm/src /var/data/copy && sync && md5sum /var/data/copy | cut -d' ' -f1 > /var/data/done \
  && sync ) </dev/null >/dev/null 2>&1 &
echo started
"""

# The source's checksum, the copy's once written (or "pending"), the counter.
SUM_CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo
md5sum /dev/shm/src | cut -d' ' -f1
cat /var/data/done 2>/dev/null || echo pending
cat /dev/shm/n
"""

DOCKERFILE = f"""FROM busybox
COPY start.sh /app/start.sh
COPY count.cgi write.cgi sum.cgi /www/cgi-bin/
RUN chmod 755 /app/start.sh /www/cgi-bin/count.cgi /www/cgi-bin/write.cgi /www/cgi-bin/sum.cgi
EXPOSE {PORT}
CMD ["/bin/sh", "/app/start.sh"]
"""


@pytest.fixture(scope="module")
def full_disk_emberd(ember, tmp_path_factory):
    with emberd_on_tmpfs(ember, DATA_FS_MIB, "ember-guest-disk-full", "--vm-io-mbps", "0",
                         "--disk-reserve-mib", "0", "--warm-suspended-mib", "0") as (daemon, data_fs):
        app = zip_files(tmp_path_factory.mktemp("app") / "app.zip", {
            "Dockerfile": DOCKERFILE, "start.sh": START, "count.cgi": COUNT_CGI,
            "write.cgi": WRITE_CGI, "sum.cgi": SUM_CGI})
        image, version = create_and_wait(daemon.client(), "disk-writer", app, timeout=600)
        assert image["state"] == "CREATED", version.get("stateReason")
        yield daemon, data_fs


def cgi(vm, token, name, timeout=90):
    status, body, _ = endpoint_request(vm["endpoint"], token, PORT, f"/cgi-bin/{name}",
                                       timeout=timeout)
    assert status == 200, (name, status, body)
    return body.split()


def fill_leaving(path, left_mib):
    """Writes `path` until its filesystem is full, then gives `left_mib`
    back: tmpfs frees a truncated file's pages at once."""
    with open(path, "wb", buffering=0) as out:
        for block in (b"\xff" * (1 << 20), b"\xff" * 4096):
            try:
                while True:
                    out.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    size = os.path.getsize(path)
    os.truncate(path, max(0, size - left_mib * (1 << 20)))


def free_mib(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / (1 << 20)


def wait_reason(client, vm_id, text, timeout):
    deadline = time.monotonic() + timeout
    while True:
        vm = client.get_microvm(microvmIdentifier=vm_id)
        if text in (vm.get("stateReason") or ""):
            return vm
        assert time.monotonic() < deadline, (
            f"no {text!r} in the reason after {timeout}s: {vm['state']}, {vm.get('stateReason')}")
        time.sleep(0.5)


def running_app(client):
    vm = client.run_microvm(imageIdentifier="disk-writer", idlePolicy=IDLE)
    vm = wait_microvm(client, vm["microvmId"], "RUNNING", timeout=120)
    token = endpoint_token(client, vm["microvmId"], port=PORT)
    return vm, token


def pause_on_a_full_disk(client, data_fs, vm, token):
    """Fills the data dir and has the guest write more than is left; the
    VM must be seen paused by the host. Returns the filler."""
    filler = data_fs / "filler"
    fill_leaving(filler, LEFT_MIB)
    assert free_mib(data_fs) < WRITE_MIB
    assert cgi(vm, token, "write.cgi") == ["started"]
    got = wait_reason(client, vm["microvmId"], DISK_FULL, NOTICED_WITHIN_S)
    assert got["state"] == "RUNNING", got
    assert got["stateReason"] == (
        "paused by the host: the data disk is full (a write to the guest's disk failed: no "
        "space left on device); it continues by itself once space is free"), got
    return filler


def assert_unavailable_at_once(vm, token):
    asked = time.monotonic()
    status, body, headers = endpoint_request(vm["endpoint"], token, PORT, "/cgi-bin/count.cgi",
                                             timeout=ANSWERED_WITHIN_S + 30)
    took = time.monotonic() - asked
    assert status == 503, (status, body, headers)
    assert headers.get("x-aws-proxy-error") == "MICROVM_UNAVAILABLE", headers
    assert DISK_FULL in body, body
    assert took < ANSWERED_WITHIN_S, f"the 503 took {took:.1f}s"


def test_a_guest_paused_on_a_full_disk_continues_once_there_is_space(full_disk_emberd):
    ember, data_fs = full_disk_emberd
    client = ember.client()
    vm, token = running_app(client)
    vm_id = vm["microvmId"]
    filler = data_fs / "filler"
    try:
        assert cgi(vm, token, "count.cgi") == ["1"]
        assert cgi(vm, token, "count.cgi") == ["2"]
        source, pending, _ = cgi(vm, token, "sum.cgi")
        assert pending == "pending"

        pause_on_a_full_disk(client, data_fs, vm, token)
        assert_unavailable_at_once(vm, token)
        # Still paused a while later: nothing continued it onto a full disk.
        time.sleep(3)
        got = client.get_microvm(microvmIdentifier=vm_id)
        assert got["state"] == "RUNNING" and DISK_FULL in got["stateReason"], got
        assert len(qemu_pids(ember, vm_id)) == 1

        filler.unlink()
        got = wait_reason(client, vm_id, "continued: the data disk has space again",
                          CONTINUED_WITHIN_S)
        assert got["state"] == "RUNNING", got
        # The retried write completed: the copy on the disk equals its
        # source in memory; the counter went on where it was.
        deadline = time.monotonic() + 60
        while (sums := cgi(vm, token, "sum.cgi"))[1] == "pending":
            assert time.monotonic() < deadline, f"the guest's write never completed: {sums}"
            time.sleep(0.5)
        assert sums == [source, source, "2"], sums
        assert cgi(vm, token, "count.cgi") == ["3"]
        got = client.get_microvm(microvmIdentifier=vm_id)
        assert DISK_FULL not in (got.get("stateReason") or ""), got

        client.terminate_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "TERMINATED", timeout=60)
        assert_gone(ember, vm_id)
    finally:
        filler.unlink(missing_ok=True)
        terminate_quietly(client, vm_id)


def test_a_guest_paused_on_a_full_disk_can_be_terminated(full_disk_emberd):
    ember, data_fs = full_disk_emberd
    client = ember.client()
    vm, token = running_app(client)
    vm_id = vm["microvmId"]
    filler = data_fs / "filler"
    try:
        pause_on_a_full_disk(client, data_fs, vm, token)
        # A suspend would write to the full disk and need the guest's hook.
        with pytest.raises(client.exceptions.ConflictException, match="paused by the host"):
            client.suspend_microvm(microvmIdentifier=vm_id)
        client.terminate_microvm(microvmIdentifier=vm_id)
        got = wait_microvm(client, vm_id, "TERMINATED", timeout=60)
        assert "TerminateMicrovm" in (got.get("stateReason") or ""), got
        assert_gone(ember, vm_id)
    finally:
        filler.unlink(missing_ok=True)
        terminate_quietly(client, vm_id)
