"""The warm suspended tier: a suspend parks the VM in place (its QEMU
paused, guest memory handed back to the host), a resume continues the same
process with memory and disk intact; beyond `--warm-suspended-mib` the
oldest parked VMs move to disk (and resume from there)."""

import os
import signal
import time

import pytest

from harness import (create_and_wait, endpoint_token, qemu_pids, rss_kib, suspended_tier,
                     terminate_quietly, wait_microvm)
from memory_app import get, zip_memory_app


def build(client, tmp_path):
    image, version = create_and_wait(client, "warm", zip_memory_app(tmp_path / "warm.zip"),
                                     timeout=600)
    assert image["state"] == "CREATED", version.get("stateReason")


@pytest.fixture(scope="module")
def warm_image(ember, tmp_path_factory):
    build(ember.client(), tmp_path_factory.mktemp("warm"))


IDLE = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600, "autoResumeEnabled": True}


def running(client):
    microvm_id = client.run_microvm(imageIdentifier="warm", idlePolicy=IDLE)["microvmId"]
    vm = wait_microvm(client, microvm_id, "RUNNING")
    return microvm_id, vm, endpoint_token(client, microvm_id)


def suspend(client, microvm_id):
    client.suspend_microvm(microvmIdentifier=microvm_id)
    return wait_microvm(client, microvm_id, "SUSPENDED", timeout=90)


def test_a_parked_vm_releases_its_memory_and_wakes_in_the_same_process(ember, warm_image):
    emberd = ember
    client = emberd.client()
    microvm_id, vm, token = running(client)
    try:
        # Reading the 64 MiB brings them into host memory.
        memory_sum, _, _ = get(vm, token, "/cgi-bin/sum.cgi")
        assert get(vm, token, "/cgi-bin/append.cgi?before") == ["1"]
        _, disk_sum, _ = get(vm, token, "/cgi-bin/sum.cgi")
        [pid] = qemu_pids(emberd, microvm_id)
        before = rss_kib(pid)

        suspend(client, microvm_id)
        assert suspended_tier(emberd, microvm_id) == "warm"
        assert qemu_pids(emberd, microvm_id) == [pid]
        after = rss_kib(pid)
        assert after < before - 48 * 1024, \
            f"parking kept the guest's memory: QEMU RSS {before} -> {after} KiB"

        # A request wakes it: the same process, the same memory and disk.
        assert get(vm, token, "/cgi-bin/sum.cgi") == [memory_sum, disk_sum, "1"]
        assert client.get_microvm(microvmIdentifier=microvm_id)["state"] == "RUNNING"
        assert qemu_pids(emberd, microvm_id) == [pid]

        # ResumeMicrovm wakes it too, and the guest's clock was stepped
        # past the time it spent parked.
        suspend(client, microvm_id)
        time.sleep(3)
        client.resume_microvm(microvmIdentifier=microvm_id)
        wait_microvm(client, microvm_id, "RUNNING")
        assert get(vm, token, "/cgi-bin/append.cgi?after") == ["2"]
        assert qemu_pids(emberd, microvm_id) == [pid]

        # A parked VM is terminated like any other: nothing of it left.
        suspend(client, microvm_id)
        client.terminate_microvm(microvmIdentifier=microvm_id)
        wait_microvm(client, microvm_id, "TERMINATED")
        assert qemu_pids(emberd, microvm_id) == []
    finally:
        terminate_quietly(client, microvm_id)


def test_a_parked_vm_whose_qemu_is_killed_is_terminated_with_the_reason(ember, warm_image):
    client = ember.client()
    microvm_id, _, _ = running(client)
    try:
        suspend(client, microvm_id)
        [pid] = qemu_pids(ember, microvm_id)
        os.kill(pid, signal.SIGKILL)
        gone = wait_microvm(client, microvm_id, "TERMINATED", timeout=30)
        assert "its memory was lost" in gone.get("stateReason", ""), gone
    finally:
        terminate_quietly(client, microvm_id)


def test_beyond_the_budget_the_oldest_parked_vm_moves_to_disk(separate_emberd, tmp_path):
    # Room for one parked VM (QEMU keeps tens of MiB of its own), not two.
    emberd = separate_emberd("--warm-suspended-mib", "100")
    client = emberd.client()
    build(client, tmp_path)
    first, vm, token = running(client)
    second, _, _ = running(client)
    try:
        memory_sum, _, _ = get(vm, token, "/cgi-bin/sum.cgi")
        suspend(client, first)
        assert suspended_tier(emberd, first) == "warm"
        suspend(client, second)
        deadline = time.monotonic() + 60
        while suspended_tier(emberd, first) != "disk":
            assert time.monotonic() < deadline, \
                f"the older VM stayed {suspended_tier(emberd, first)}\n{emberd.log_tail()}"
            time.sleep(0.5)
        assert suspended_tier(emberd, second) == "warm"
        # From disk it resumes as before, memory intact.
        assert get(vm, token, "/cgi-bin/sum.cgi")[0] == memory_sum
    finally:
        terminate_quietly(client, first, second)
