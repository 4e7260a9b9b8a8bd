"""The microVM operations' errors, sent past botocore's own validation
(raw_client) so emberd's checks are what answer: each bad input gets the
model's exception."""

import pytest
from botocore.exceptions import ClientError

from harness import (MICROVM_PORT, create_and_wait, error_code, terminate_quietly,
                     wait_microvm)

IMAGE = "hello-http"
UNKNOWN_ID = "mvm-doesnotexist0000"


def expect(code, call, **args):
    with pytest.raises(ClientError) as info:
        call(**args)
    assert error_code(info.value) == code, info.value.response["Error"]
    return info.value


@pytest.fixture(scope="module")
def running(ember, hello_http):
    client = ember.client()
    vm_id = client.run_microvm(imageIdentifier=IMAGE)["microvmId"]
    try:
        yield vm_id
    finally:
        terminate_quietly(client, vm_id)


@pytest.mark.parametrize("args", [
    {"imageIdentifier": "no-such-image"},
    {"imageIdentifier": "arn:aws:lambda:us-east-1:123456789012:microvm-image:no-such-image"},
    {"imageIdentifier": IMAGE, "imageVersion": "99"},
], ids=["unknown-image", "unknown-image-arn", "unknown-version"])
def test_run_unknown_image_or_version(raw_client, hello_http, args):
    expect("ResourceNotFoundException", raw_client.run_microvm, **args)


@pytest.mark.parametrize("args", [
    {"idlePolicy": {"maxIdleDurationSeconds": 1, "suspendedDurationSeconds": 60,
                    "autoResumeEnabled": True}},
    {"maximumDurationInSeconds": 0},
    {"maximumDurationInSeconds": 28801},
    {"ingressNetworkConnectors": ["NO_SUCH_CONNECTOR"]},
    {"ingressNetworkConnectors": ["SHELL_INGRESS"]},
    {"ingressNetworkConnectors": ["ALL_INGRESS", "HTTP_INGRESS"]},
    {"egressNetworkConnectors": ["vpc-0123456789"]},
    {"egressNetworkConnectors": ["arn:aws:lambda:us-east-1:aws:network-connector:HTTP_INGRESS"]},
    {"runHookPayload": "x" * 4097},
    {"idlePolicy": {"maxIdleDurationSeconds": 60}},
], ids=["idle-below-floor", "duration-0", "duration-28801", "unknown-ingress",
        "shell-without-http", "all-ingress-not-alone", "unknown-egress", "ingress-arn-as-egress",
        "hook-payload-4097", "idle-policy-incomplete"])
def test_run_bad_input(client, raw_client, hello_http, args):
    before = {i["microvmId"] for i in client.list_microvms()["items"]}
    expect("ValidationException", raw_client.run_microvm, imageIdentifier=IMAGE, **args)
    after = {i["microvmId"] for i in client.list_microvms()["items"]}
    assert after == before, "a refused RunMicrovm left a microVM behind"


@pytest.mark.parametrize("op", ["get_microvm", "suspend_microvm", "resume_microvm",
                                "terminate_microvm"])
def test_unknown_microvm(raw_client, op):
    expect("ResourceNotFoundException", getattr(raw_client, op), microvmIdentifier=UNKNOWN_ID)


def test_tokens_for_unknown_microvm(raw_client):
    expect("ResourceNotFoundException", raw_client.create_microvm_auth_token,
           microvmIdentifier=UNKNOWN_ID, expirationInMinutes=5, allowedPorts=[{"port": 8080}])
    expect("ResourceNotFoundException", raw_client.create_microvm_shell_auth_token,
           microvmIdentifier=UNKNOWN_ID, expirationInMinutes=5)


def test_token_request_shapes(raw_client, running):
    expect("ValidationException", raw_client.create_microvm_auth_token,
           microvmIdentifier=running, expirationInMinutes=5, allowedPorts=[])
    expect("ValidationException", raw_client.create_microvm_auth_token,
           microvmIdentifier=running, expirationInMinutes=5, allowedPorts=[{"port": 70000}])
    expect("ValidationException", raw_client.create_microvm_auth_token,
           microvmIdentifier=running, expirationInMinutes=5,
           allowedPorts=[{"range": {"startPort": 9000, "endPort": 8000}}])


def test_list_bad_input(raw_client):
    expect("ValidationException", raw_client.list_microvms, maxResults=0)
    expect("ValidationException", raw_client.list_microvms, maxResults=51)
    expect("ValidationException", raw_client.list_microvms, nextToken="not-a-token")


def test_state_conflicts(client, running):
    state = client.get_microvm(microvmIdentifier=running)["state"]
    if state == "PENDING":
        # Still starting: it cannot be suspended yet.
        expect("ConflictException", client.suspend_microvm, microvmIdentifier=running)
    wait_microvm(client, running, "RUNNING", timeout=90)
    # Resuming a running VM is a success that changes nothing, as on the
    # real service.
    client.resume_microvm(microvmIdentifier=running)
    assert client.get_microvm(microvmIdentifier=running)["state"] == "RUNNING"


@pytest.mark.parametrize("given, stored", [
    ({"ingressNetworkConnectors": ["arn:aws:lambda:us-east-1:aws:network-connector:ALL_INGRESS"],
      "egressNetworkConnectors": ["arn:aws:lambda:us-east-1:aws:network-connector:INTERNET_EGRESS"]},
     (["ALL_INGRESS"], ["INTERNET_EGRESS"])),
    ({"ingressNetworkConnectors": ["HTTP_INGRESS", "SHELL_INGRESS"]},
     (["HTTP_INGRESS", "SHELL_INGRESS"], None)),
    ({}, (["HTTP_INGRESS"], None)),
], ids=["arns", "http-and-shell", "defaults"])
def test_connectors_by_name_or_arn(client, hello_http, given, stored):
    vm_id = client.run_microvm(imageIdentifier=IMAGE, **given)["microvmId"]
    try:
        got = client.get_microvm(microvmIdentifier=vm_id)
        assert got.get("ingressNetworkConnectors") == stored[0], got
        assert got.get("egressNetworkConnectors") == stored[1], got
        shell_ok = "SHELL_INGRESS" in stored[0] or "ALL_INGRESS" in stored[0]
        if shell_ok:
            client.create_microvm_shell_auth_token(microvmIdentifier=vm_id, expirationInMinutes=5)
        else:
            expect("ValidationException", client.create_microvm_shell_auth_token,
                   microvmIdentifier=vm_id, expirationInMinutes=5)
    finally:
        terminate_quietly(client, vm_id)


def test_image_in_use_cannot_be_deleted(client, hello_zip):
    name = "hello-in-use"
    image, _ = create_and_wait(client, name, hello_zip)
    assert image["state"] == "CREATED"
    vm_id = client.run_microvm(imageIdentifier=name)["microvmId"]
    try:
        err = expect("ConflictException", client.delete_microvm_image, imageIdentifier=name)
        assert vm_id in err.response["Error"]["Message"]
        expect("ConflictException", client.delete_microvm_image_version,
               imageIdentifier=name, imageVersion="1")
        assert client.get_microvm_image(imageIdentifier=name)["state"] == "CREATED"
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        client.terminate_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "TERMINATED", timeout=60)
        # With no live microVM left the delete goes through.
        client.delete_microvm_image(imageIdentifier=name)
    finally:
        terminate_quietly(client, vm_id)


def test_client_token_replay_is_one_microvm(client, hello_http):
    first = client.run_microvm(imageIdentifier=IMAGE, clientToken="run-replay-1")
    started = [first["microvmId"]]
    try:
        again = client.run_microvm(imageIdentifier=IMAGE, clientToken="run-replay-1")
        started.append(again["microvmId"])
        assert again["microvmId"] == first["microvmId"], (
            "emberd bug: a RunMicrovm retried with the same clientToken ran a second microVM "
            "(the reply is not recorded for replay)")
        assert again["endpoint"] == first["endpoint"]
        ours = [i for i in client.list_microvms()["items"] if i["microvmId"] == first["microvmId"]]
        assert len(ours) == 1
        # The same token for another request is refused, and runs nothing.
        before = len(client.list_microvms()["items"])
        expect("ConflictException", client.run_microvm, imageIdentifier=IMAGE,
               clientToken="run-replay-1", maximumDurationInSeconds=600)
        assert len(client.list_microvms()["items"]) == before
    finally:
        terminate_quietly(client, *started)


def test_port_spec_of_token_names_the_port(client, running):
    # A range token: the port header is then required to pick a port.
    answer = client.create_microvm_auth_token(
        microvmIdentifier=running, expirationInMinutes=5,
        allowedPorts=[{"range": {"startPort": MICROVM_PORT, "endPort": MICROVM_PORT + 1}}])
    assert set(answer["authToken"]) == {"X-aws-proxy-auth"}
