"""Recovery of many microVMs at once: N VMs RUNNING, emberd SIGKILLed and
started again on the same data dir. The API answers for every VM as soon
as emberd listens (attaching runs in the background), and every VM ends
RUNNING with its memory (its counter goes on) or TERMINATED with a
reason. Prints one JSON line with how long the API and the VMs took.

Off in `make test` (EMBER_RECOVERY_VMS=0): `make soak` runs it with 100
VMs. An idle hello-http VM is ~92 MiB RSS under TCG, so 100 fit in 24 GiB."""

import concurrent.futures
import json
import os
import time

import pytest

from harness import counter, create_and_wait, endpoint_token, terminate_quietly, wait_microvm

VMS = int(os.environ.get("EMBER_RECOVERY_VMS", "0"))
IDLE = {"maxIdleDurationSeconds": 3600, "suspendedDurationSeconds": 3600,
        "autoResumeEnabled": True}


def all_pages(client):
    pages = client.get_paginator("list_microvms").paginate()
    return [item for page in pages for item in page["items"]]


@pytest.mark.skipif(VMS <= 0, reason="EMBER_RECOVERY_VMS is 0 (make soak sets it)")
def test_many_microvms_recovered_in_parallel(separate_emberd, hello_zip):
    ember = separate_emberd("--max-microvms", str(VMS))
    client = ember.client()
    image, version = create_and_wait(client, "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    vms = [client.run_microvm(imageIdentifier="hello-http", idlePolicy=IDLE) for _ in range(VMS)]
    ids = [vm["microvmId"] for vm in vms]
    try:
        for vm_id in ids:
            wait_microvm(client, vm_id, "RUNNING", timeout=600)
        tokens = {vm_id: endpoint_token(client, vm_id, minutes=60) for vm_id in ids}
        for vm in vms:
            assert counter(vm["endpoint"], tokens[vm["microvmId"]]) == 1

        ember.kill9()
        started = time.monotonic()
        ember.start()
        listening = time.monotonic() - started
        listed = all_pages(client)
        api = time.monotonic() - started
        # Every VM is known at once, attached or not, with a state.
        assert {vm["microvmId"] for vm in listed} >= set(ids)
        assert all(vm["state"] for vm in listed)

        def settle(vm):
            vm_id = vm["microvmId"]
            got = wait_microvm(client, vm_id, {"RUNNING", "TERMINATED"}, timeout=900)
            if got["state"] == "TERMINATED":
                assert got.get("stateReason"), got
                return "terminated", time.monotonic() - started
            # The same process re-attached: its memory is whole.
            assert counter(vm["endpoint"], tokens[vm_id], timeout=300) == 2, vm_id
            return "running", time.monotonic() - started

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            outcomes = list(pool.map(settle, vms))
        answering = [t for how, t in outcomes if how == "running"]
        print(json.dumps({
            "bench": "recovery", "vms": VMS, "listening_s": round(listening, 2),
            "api_s": round(api, 2), "running": len(answering),
            "terminated": VMS - len(answering),
            "all_answering_s": round(max(t for _, t in outcomes), 2)}))
        assert answering, "no VM came back"
    finally:
        terminate_quietly(client, *ids)
