"""Soak: one microVM suspended and resumed over and over keeps 64 MiB of
guest memory and a growing file on its disk intact, checked after every
cycle, and many runs/terminates; emberd's RSS and open file descriptors
stay flat throughout.

`make test` runs a short soak (EMBER_SOAK_CYCLES=6, EMBER_SOAK_RUNS=8
by default); `make soak` runs the full one (100 cycles, 300 runs)."""

import os
import time

from harness import create_and_wait, endpoint_token, terminate_quietly, wait_microvm
from memory_app import get, zip_memory_app

CYCLES = int(os.environ.get("EMBER_SOAK_CYCLES", "6"))
RUNS = int(os.environ.get("EMBER_SOAK_RUNS", "8"))
# How much emberd may grow over the soak: allocator noise and the store's
# page cache, not a leak (a leak per cycle would pass these quickly).
RSS_SLACK_KIB = 24 * 1024
FD_SLACK = 8


def emberd_usage(emberd):
    """(RSS in KiB, open fds) of the emberd process."""
    pid = emberd.proc.pid
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def test_suspend_resume_cycles_and_runs_keep_state_and_emberd_flat(separate_emberd, tmp_path):
    emberd = separate_emberd()
    client = emberd.client()
    zip_path = zip_memory_app(tmp_path / "soak.zip")
    image, version = create_and_wait(client, "soak", zip_path, timeout=600)
    assert image["state"] == "CREATED", version.get("stateReason")

    microvm_id = client.run_microvm(imageIdentifier="soak")["microvmId"]
    try:
        vm = wait_microvm(client, microvm_id, "RUNNING")
        token = endpoint_token(client, microvm_id, minutes=60)
        memory_sum, _, lines = get(vm, token, "/cgi-bin/sum.cgi")
        assert lines == "0"
        baseline = None
        for cycle in range(1, CYCLES + 1):
            assert get(vm, token, f"/cgi-bin/append.cgi?cycle-{cycle}") == [str(cycle)]
            _, disk_sum, _ = get(vm, token, "/cgi-bin/sum.cgi")
            client.suspend_microvm(microvmIdentifier=microvm_id)
            wait_microvm(client, microvm_id, "SUSPENDED")
            client.resume_microvm(microvmIdentifier=microvm_id)
            vm = wait_microvm(client, microvm_id, "RUNNING")
            after = get(vm, token, "/cgi-bin/sum.cgi")
            assert after == [memory_sum, disk_sum, str(cycle)], f"cycle {cycle}: {after}"
            if cycle == min(3, CYCLES):
                # After a few cycles: caches and pools are warm.
                baseline = emberd_usage(emberd)
        end = emberd_usage(emberd)
    finally:
        terminate_quietly(client, microvm_id)
    assert end[0] - baseline[0] < RSS_SLACK_KIB, f"emberd RSS {baseline[0]} -> {end[0]} KiB"
    assert end[1] - baseline[1] <= FD_SLACK, f"emberd fds {baseline[1]} -> {end[1]}"

    baseline = None
    for n in range(1, RUNS + 1):
        run_id = client.run_microvm(imageIdentifier="soak")["microvmId"]
        try:
            vm = wait_microvm(client, run_id, "RUNNING")
            token = endpoint_token(client, run_id)
            # Every run starts from the image's snapshot: the same memory,
            # an empty log.
            assert get(vm, token, "/cgi-bin/sum.cgi")[0::2] == [memory_sum, "0"], f"run {n}"
        finally:
            client.terminate_microvm(microvmIdentifier=run_id)
        wait_microvm(client, run_id, "TERMINATED")
        if n == min(4, RUNS):
            baseline = emberd_usage(emberd)
    # Terminated VMs' listeners and files are released, not just hidden.
    time.sleep(1)
    end = emberd_usage(emberd)
    assert end[0] - baseline[0] < RSS_SLACK_KIB, f"emberd RSS {baseline[0]} -> {end[0]} KiB"
    assert end[1] - baseline[1] <= FD_SLACK, f"emberd fds {baseline[1]} -> {end[1]}"
