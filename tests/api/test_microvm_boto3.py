"""MicroVMs through boto3: the launch-post flow, the idle timers, VMs that
share an image but not their memory, listing, a burst of requests waking a
suspended VM, and a VM that must stay asleep."""

import threading
import time

import pytest
from botocore.exceptions import ClientError

from harness import (COUNTER_LINE, MICROVM_PORT, counter, endpoint_request, endpoint_token,
                     error_code, image_arn, microvm_dir, suspended_tier, terminate_quietly,
                     wait_microvm)

IMAGE = "hello-http"


@pytest.fixture
def started(client, hello_http):
    """run(client, **args) starts hello-http and returns the RunMicrovm
    answer; every VM started is terminated after the test."""
    ids = []

    def run(using=None, **args):
        answer = (using or client).run_microvm(imageIdentifier=IMAGE, **args)
        ids.append(answer["microvmId"])
        return answer

    yield run
    terminate_quietly(client, *ids)


def idle(max_idle, suspended=600, auto_resume=True):
    return {"maxIdleDurationSeconds": max_idle, "suspendedDurationSeconds": suspended,
            "autoResumeEnabled": auto_resume}


def conflict(call, **args):
    with pytest.raises(ClientError) as info:
        call(**args)
    assert error_code(info.value) == "ConflictException", info.value.response
    return info.value


def test_run_suspend_resume_idle_terminate(ember, client, raw_client, started):
    run = started(using=raw_client, idlePolicy=idle(3))
    vm_id, endpoint = run["microvmId"], run["endpoint"]
    assert run["state"] == "PENDING"
    wait_microvm(client, vm_id, "RUNNING", timeout=90)
    token = endpoint_token(client, vm_id)
    assert [counter(endpoint, token) for _ in range(2)] == [1, 2]

    # Resuming a RUNNING VM succeeds and changes nothing, as on the real service.
    client.resume_microvm(microvmIdentifier=vm_id)
    assert counter(endpoint, token) == 3
    assert client.suspend_microvm(microvmIdentifier=vm_id)["ResponseMetadata"]["HTTPStatusCode"] == 200
    wait_microvm(client, vm_id, "SUSPENDED", timeout=90)
    # So does suspending a SUSPENDED one.
    client.suspend_microvm(microvmIdentifier=vm_id)
    assert client.get_microvm(microvmIdentifier=vm_id)["state"] == "SUSPENDED"
    client.resume_microvm(microvmIdentifier=vm_id)
    wait_microvm(client, vm_id, "RUNNING", timeout=90)
    assert counter(endpoint, token) == 4

    slept = wait_microvm(client, vm_id, "SUSPENDED", timeout=60)
    assert "maxIdleDurationSeconds" in slept.get("stateReason", ""), slept
    assert suspended_tier(ember, vm_id) == "warm"
    assert counter(endpoint, token) == 5
    assert client.get_microvm(microvmIdentifier=vm_id)["state"] == "RUNNING"

    client.terminate_microvm(microvmIdentifier=vm_id)
    gone = wait_microvm(client, vm_id, "TERMINATED", timeout=60)
    assert gone["terminatedAt"] >= gone["startedAt"]
    assert not microvm_dir(ember, vm_id).exists()
    client.terminate_microvm(microvmIdentifier=vm_id)  # idempotent
    conflict(client.suspend_microvm, microvmIdentifier=vm_id)
    conflict(client.resume_microvm, microvmIdentifier=vm_id)


def test_suspended_too_long_is_terminated(ember, client, raw_client, started):
    vm_id = started(using=raw_client, idlePolicy=idle(2, suspended=2))["microvmId"]
    wait_microvm(client, vm_id, "RUNNING", timeout=90)
    seen = []
    deadline = time.monotonic() + 90
    while True:
        vm = client.get_microvm(microvmIdentifier=vm_id)
        if not seen or seen[-1] != vm["state"]:
            seen.append(vm["state"])
        if vm["state"] == "SUSPENDED":
            assert suspended_tier(ember, vm_id) == "warm"
        if vm["state"] == "TERMINATED":
            break
        assert time.monotonic() < deadline, f"not terminated after 90 s: {seen}"
        time.sleep(0.25)
    assert "SUSPENDED" in seen, f"terminated without being suspended first: {seen}"
    assert "suspendedDurationSeconds" in vm.get("stateReason", ""), vm
    assert vm.get("terminatedAt")
    assert not microvm_dir(ember, vm_id).exists(), "the suspended state outlived the VM"


def test_two_vms_of_one_image_keep_their_own_memory_and_list(client, started):
    a = started()
    b = started()
    for vm in (a, b):
        wait_microvm(client, vm["microvmId"], "RUNNING", timeout=90)
    assert a["endpoint"] != b["endpoint"]
    ta, tb = endpoint_token(client, a["microvmId"]), endpoint_token(client, b["microvmId"])
    got = [counter(a["endpoint"], ta), counter(a["endpoint"], ta), counter(b["endpoint"], tb),
           counter(a["endpoint"], ta), counter(b["endpoint"], tb)]
    assert got == [1, 2, 1, 3, 2], "the two microVMs share a counter"

    ours = {a["microvmId"], b["microvmId"]}

    def listed(**filters):
        items = client.list_microvms(**filters)["items"]
        return [i["microvmId"] for i in items if i["microvmId"] in ours]

    in_order = [a["microvmId"], b["microvmId"]]
    assert listed() == in_order
    assert listed(imageIdentifier=IMAGE) == in_order
    assert listed(imageIdentifier=image_arn(IMAGE)) == in_order
    assert listed(imageIdentifier=IMAGE, imageVersion="1") == in_order
    assert listed(imageIdentifier=IMAGE, imageVersion="2") == []
    try:
        assert listed(imageIdentifier="no-such-image") == []
    except ClientError as exc:
        assert error_code(exc) == "ResourceNotFoundException"
    item = next(i for i in client.list_microvms(imageIdentifier=IMAGE)["items"]
                if i["microvmId"] == a["microvmId"])
    assert item["state"] == "RUNNING"
    assert item["imageArn"] == image_arn(IMAGE) and item["imageVersion"] == "1"

    first = client.list_microvms(imageIdentifier=IMAGE, maxResults=1)
    assert len(first["items"]) == 1 and first.get("nextToken"), first
    pages = list(client.get_paginator("list_microvms").paginate(
        imageIdentifier=IMAGE, PaginationConfig={"PageSize": 1}))
    assert all(len(p["items"]) <= 1 for p in pages)
    paged = [i["microvmId"] for p in pages for i in p["items"]]
    assert len(paged) == len(set(paged)), f"a microVM listed twice: {paged}"
    assert [i for i in paged if i in ours] == in_order
    assert paged == [i["microvmId"] for i in client.list_microvms(imageIdentifier=IMAGE)["items"]]


def test_burst_of_requests_wakes_a_suspended_vm_once(client, started):
    vm = started(idlePolicy=idle(600))
    vm_id, endpoint = vm["microvmId"], vm["endpoint"]
    wait_microvm(client, vm_id, "RUNNING", timeout=90)
    token = endpoint_token(client, vm_id)
    client.suspend_microvm(microvmIdentifier=vm_id)
    wait_microvm(client, vm_id, "SUSPENDED", timeout=90)

    results = [None] * 20
    go = threading.Barrier(20)

    def hit(i):
        go.wait()
        try:
            results[i] = endpoint_request(endpoint, token, MICROVM_PORT, timeout=120)[:2]
        except Exception as exc:  # noqa: BLE001 - reported below with the others
            results[i] = ("error", repr(exc))

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    failed = [r for r in results if r is None or r[0] != 200]
    assert not failed, f"{len(failed)} of 20 requests to a waking VM failed: {failed[:5]}"
    numbers = sorted(int(COUNTER_LINE.search(body).group(1)) for _, body in results)
    assert numbers == list(range(1, 21)), f"counter values: {numbers}"
    assert client.get_microvm(microvmIdentifier=vm_id)["state"] == "RUNNING"
    assert counter(endpoint, token) == 21


def test_no_auto_resume_answers_503(client, started):
    vm = started(idlePolicy=idle(600, auto_resume=False))
    vm_id, endpoint = vm["microvmId"], vm["endpoint"]
    wait_microvm(client, vm_id, "RUNNING", timeout=90)
    token = endpoint_token(client, vm_id)
    assert counter(endpoint, token) == 1
    client.suspend_microvm(microvmIdentifier=vm_id)
    wait_microvm(client, vm_id, "SUSPENDED", timeout=90)
    status, body, _ = endpoint_request(endpoint, token, MICROVM_PORT, timeout=30)
    assert status == 503, f"a SUSPENDED VM without autoResume answered {status}: {body}"
    time.sleep(1)
    assert client.get_microvm(microvmIdentifier=vm_id)["state"] == "SUSPENDED", \
        "a request woke a VM whose idle policy says autoResumeEnabled=false"
    client.resume_microvm(microvmIdentifier=vm_id)
    wait_microvm(client, vm_id, "RUNNING", timeout=90)
    assert counter(endpoint, token) == 2
