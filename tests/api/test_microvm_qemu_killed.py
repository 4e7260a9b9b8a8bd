"""A microVM whose QEMU process dies (SIGKILL from outside, a crash) is
TERMINATED at once with a reason that says so, not left RUNNING until
emberd restarts; its endpoint stops answering and nothing of it is left
running."""

import os
import signal
import time

from harness import endpoint_token, qemu_pids, terminate_quietly, wait_microvm

IDLE = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600, "autoResumeEnabled": True}


def test_a_killed_qemu_terminates_its_microvm_with_the_reason(ember, client, hello_http):
    microvm_id = client.run_microvm(imageIdentifier="hello-http", idlePolicy=IDLE)["microvmId"]
    try:
        wait_microvm(client, microvm_id, "RUNNING")
        endpoint_token(client, microvm_id)
        pids = qemu_pids(ember, microvm_id)
        assert len(pids) == 1, f"QEMUs of {microvm_id}: {pids}"
        os.kill(pids[0], signal.SIGKILL)
        # Seconds, not a restart: the agent session's end is noticed.
        deadline = time.monotonic() + 30
        while True:
            vm = client.get_microvm(microvmIdentifier=microvm_id)
            if vm["state"] == "TERMINATED":
                break
            assert time.monotonic() < deadline, f"still {vm['state']} 30 s after its QEMU was killed"
            time.sleep(0.5)
        assert "process ended unexpectedly" in vm.get("stateReason", ""), vm
        assert "killed by signal 9" in vm["stateReason"] or "exited" in vm["stateReason"], vm
        assert qemu_pids(ember, microvm_id) == []
    finally:
        terminate_quietly(client, microvm_id)
