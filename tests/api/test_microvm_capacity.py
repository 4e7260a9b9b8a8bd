"""Capacity limits on an emberd of its own: --max-microvms (live VMs,
ServiceQuotaExceededException) and --max-running-microvms (VMs with a
process, InsufficientCapacityException), for runs, resumes and
auto-resumes."""

import pytest
from botocore.exceptions import ClientError

from harness import (MICROVM_PORT, counter, create_and_wait, endpoint_request, endpoint_token,
                     error_code, terminate_quietly, wait_microvm)

IDLE = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600, "autoResumeEnabled": True}


def refused(code, call, **args):
    with pytest.raises(ClientError) as info:
        call(**args)
    assert error_code(info.value) == code, info.value.response["Error"]


def test_quota_and_running_limit(separate_emberd, hello_zip):
    ember = separate_emberd("--max-running-microvms", "1", "--max-microvms", "2")
    client = ember.client()
    image, version = create_and_wait(client, "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    ids = []

    def run():
        vm = client.run_microvm(imageIdentifier="hello-http", idlePolicy=IDLE)
        ids.append(vm["microvmId"])
        return vm

    try:
        a = run()
        # A PENDING VM is about to run: it must take the one running slot.
        # Checked at the end, so the rest of the limits are tested either way.
        pending_overrun = None
        try:
            extra = client.run_microvm(imageIdentifier="hello-http")
        except ClientError as exc:
            assert error_code(exc) == "InsufficientCapacityException", exc.response["Error"]
        else:
            pending_overrun = extra["microvmId"]
            ids.append(pending_overrun)
            client.terminate_microvm(microvmIdentifier=pending_overrun)
            wait_microvm(client, pending_overrun, "TERMINATED", timeout=90)
        wait_microvm(client, a["microvmId"], "RUNNING", timeout=90)
        refused("InsufficientCapacityException", client.run_microvm, imageIdentifier="hello-http")
        token_a = endpoint_token(client, a["microvmId"])
        assert counter(a["endpoint"], token_a) == 1

        client.suspend_microvm(microvmIdentifier=a["microvmId"])
        wait_microvm(client, a["microvmId"], "SUSPENDED", timeout=90)
        b = run()
        wait_microvm(client, b["microvmId"], "RUNNING", timeout=90)
        # Two live VMs: the quota.
        refused("ServiceQuotaExceededException", client.run_microvm, imageIdentifier="hello-http")
        # B holds the running slot: A can be resumed neither by hand nor by a request.
        refused("InsufficientCapacityException", client.resume_microvm,
                microvmIdentifier=a["microvmId"])
        status, body, _ = endpoint_request(a["endpoint"], token_a, MICROVM_PORT, timeout=60)
        assert status == 503, f"auto-resume past the running limit answered {status}: {body}"
        assert client.get_microvm(microvmIdentifier=a["microvmId"])["state"] == "SUSPENDED"

        client.terminate_microvm(microvmIdentifier=b["microvmId"])
        wait_microvm(client, b["microvmId"], "TERMINATED", timeout=60)
        assert counter(a["endpoint"], token_a) == 2, "A did not wake once the slot was free"
        assert pending_overrun is None, (
            "emberd bug: with --max-running-microvms 1, a RunMicrovm while another microVM was "
            f"still PENDING was admitted ({pending_overrun}): PENDING VMs do not count as running")
    finally:
        terminate_quietly(client, *ids)
