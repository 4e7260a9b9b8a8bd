"""emberd SIGKILLed with one microVM RUNNING and one SUSPENDED, then started
again on the same data dir: the running VM is re-attached (same endpoint,
same process, so its in-memory counter goes on), the suspended one still
wakes with its memory, tokens minted before still work, idle timers still
fire and the quota still counts both. Runs on an emberd of its own so the
kill cannot disturb the other tests."""

import pytest
from botocore.exceptions import ClientError

from harness import (counter, create_and_wait, endpoint_token, error_code, microvm_dir,
                     qemu_pids, suspended_tier, terminate_quietly, wait_microvm)

MAX_IDLE = 8


def test_sigkill_and_restart_keeps_microvms(separate_emberd, hello_zip):
    ember = separate_emberd("--min-idle-seconds", "2", "--max-microvms", "2")
    client, raw = ember.client(), ember.client(validate=False)
    image, version = create_and_wait(client, "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")

    awake = raw.run_microvm(imageIdentifier="hello-http", idlePolicy={
        "maxIdleDurationSeconds": MAX_IDLE, "suspendedDurationSeconds": 600,
        "autoResumeEnabled": True})
    asleep = client.run_microvm(imageIdentifier="hello-http", idlePolicy={
        "maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600,
        "autoResumeEnabled": True})
    ids = [awake["microvmId"], asleep["microvmId"]]
    try:
        for vm_id in ids:
            wait_microvm(client, vm_id, "RUNNING", timeout=90)
        awake_token = endpoint_token(client, awake["microvmId"])
        asleep_token = endpoint_token(client, asleep["microvmId"])
        assert [counter(asleep["endpoint"], asleep_token) for _ in range(2)] == [1, 2]
        client.suspend_microvm(microvmIdentifier=asleep["microvmId"])
        wait_microvm(client, asleep["microvmId"], "SUSPENDED", timeout=90)
        assert [counter(awake["endpoint"], awake_token) for _ in range(2)] == [1, 2]
        assert client.get_microvm(microvmIdentifier=awake["microvmId"])["state"] == "RUNNING"
        assert suspended_tier(ember, asleep["microvmId"]) == "warm"
        parked_qemus = qemu_pids(ember, asleep["microvmId"])

        ember.kill9()
        ember.start()

        got = client.get_microvm(microvmIdentifier=awake["microvmId"])
        assert got["state"] == "RUNNING", (
            f"the RUNNING microVM was not re-attached after the restart: {got['state']} "
            f"({got.get('stateReason')})\n{ember.log_tail()}")
        assert got["endpoint"] == awake["endpoint"], "the endpoint moved with the restart"
        assert counter(awake["endpoint"], awake_token) == 3, \
            "the re-attached VM lost its memory (the app was restarted)"

        slept = client.get_microvm(microvmIdentifier=asleep["microvmId"])
        assert slept["state"] == "SUSPENDED", slept
        assert slept["endpoint"] == asleep["endpoint"]
        # Still parked in the same QEMU: a restart keeps the warm tier warm.
        assert suspended_tier(ember, asleep["microvmId"]) == "warm"
        assert qemu_pids(ember, asleep["microvmId"]) == parked_qemus
        assert counter(asleep["endpoint"], asleep_token) == 3, \
            "the suspended VM did not wake with its memory after the restart"

        # The quota still counts the two recovered VMs.
        with pytest.raises(ClientError) as info:
            client.run_microvm(imageIdentifier="hello-http")
        assert error_code(info.value) == "ServiceQuotaExceededException"

        # The re-attached VM's idle timer still runs.
        idle = wait_microvm(client, awake["microvmId"], "SUSPENDED", timeout=60)
        assert "maxIdleDurationSeconds" in idle.get("stateReason", ""), idle
        assert counter(awake["endpoint"], awake_token) == 4

        for vm_id in ids:
            client.terminate_microvm(microvmIdentifier=vm_id)
        for vm_id in ids:
            wait_microvm(client, vm_id, "TERMINATED", timeout=60)
            assert not microvm_dir(ember, vm_id).exists()
    finally:
        terminate_quietly(client, *ids)


def test_a_vm_whose_run_record_is_unreadable_is_ended_at_restart(separate_emberd, hello_zip):
    """No orphan: its QEMU is stopped and its row says why, while the
    other VMs are taken back as usual."""
    import sqlite3
    import time

    ember = separate_emberd()
    client = ember.client()
    image, version = create_and_wait(client, "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    broken = client.run_microvm(imageIdentifier="hello-http")["microvmId"]
    fine = client.run_microvm(imageIdentifier="hello-http")["microvmId"]
    try:
        for vm_id in (broken, fine):
            wait_microvm(client, vm_id, "RUNNING", timeout=90)
        fine_token = endpoint_token(client, fine)
        ember.kill9()
        db = sqlite3.connect(ember.data_dir / "ember.db")
        with db:
            db.execute("UPDATE microvms SET spec = '{not json' WHERE id = ?", (broken,))
        db.close()
        ember.start()


        got = client.get_microvm(microvmIdentifier=broken)
        assert got["state"] == "TERMINATED", got
        assert "could not read this microVM's run record" in got.get("stateReason", ""), got
        deadline = time.monotonic() + 30
        while qemu_pids(ember, broken):
            assert time.monotonic() < deadline, "the unreadable VM's QEMU still runs"
            time.sleep(0.5)
        assert wait_microvm(client, fine, "RUNNING")["state"] == "RUNNING"
        assert counter(client.get_microvm(microvmIdentifier=fine)["endpoint"], fine_token) == 1
    finally:
        terminate_quietly(client, broken, fine)


@pytest.mark.parametrize("operation", ["run", "suspend", "resume", "terminate"])
def test_sigkill_in_the_middle_of_an_operation_leaves_no_stuck_state(separate_emberd, hello_zip,
                                                                     operation):
    """emberd SIGKILLed right after it accepted an operation (the VM in
    PENDING, SUSPENDING or TERMINATING, or resuming): after the restart
    the VM settles in a state a user can act on, with no QEMU left over
    for a VM that ended."""
    import time

    ember = separate_emberd()
    client = ember.client()
    image, version = create_and_wait(client, "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    idle = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600,
            "autoResumeEnabled": True}
    vm_id = None
    if operation != "run":
        vm_id = client.run_microvm(imageIdentifier="hello-http", idlePolicy=idle)["microvmId"]
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        if operation == "resume":
            client.suspend_microvm(microvmIdentifier=vm_id)
            wait_microvm(client, vm_id, "SUSPENDED", timeout=90)
    try:
        if operation == "run":
            vm_id = client.run_microvm(imageIdentifier="hello-http", idlePolicy=idle)["microvmId"]
        elif operation == "suspend":
            client.suspend_microvm(microvmIdentifier=vm_id)
        elif operation == "resume":
            client.resume_microvm(microvmIdentifier=vm_id)
        else:
            client.terminate_microvm(microvmIdentifier=vm_id)
        ember.kill9()
        ember.start()
        settled = {"run": {"RUNNING", "TERMINATED"}, "suspend": {"SUSPENDED", "RUNNING"},
                   "resume": {"RUNNING", "SUSPENDED"}, "terminate": {"TERMINATED"}}[operation]
        deadline = time.monotonic() + 90
        while True:
            got = client.get_microvm(microvmIdentifier=vm_id)
            if got["state"] in settled:
                break
            assert time.monotonic() < deadline, (
                f"{operation}: still {got['state']} 90 s after the restart "
                f"({got.get('stateReason')})\n{ember.log_tail()}")
            time.sleep(0.5)
        if got["state"] == "TERMINATED":
            assert got.get("stateReason"), got
            deadline = time.monotonic() + 30
            while qemu_pids(ember, vm_id) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not qemu_pids(ember, vm_id), f"{operation}: a QEMU of the TERMINATED VM still runs"
        elif got["state"] == "RUNNING":
            token = endpoint_token(client, vm_id)
            assert counter(got["endpoint"], token) >= 1
        else:
            client.resume_microvm(microvmIdentifier=vm_id)
            got = wait_microvm(client, vm_id, "RUNNING", timeout=90)
            assert counter(got["endpoint"], endpoint_token(client, vm_id)) >= 1
    finally:
        if vm_id:
            terminate_quietly(client, vm_id)
