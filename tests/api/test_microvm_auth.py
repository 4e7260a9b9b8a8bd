"""Who gets through a microVM's endpoint: tokens from
CreateMicrovmAuthToken, in the X-aws-proxy-auth header or in WebSocket
subprotocols; everything else is turned away before the guest sees it,
with a status and an `x-aws-proxy-error` code as AWS Lambda MicroVMs does:
403 UNAUTHORIZED for a missing or wrong token."""

import base64
import json
import time

import pytest
from botocore.exceptions import ClientError

from harness import (COUNTER_LINE, MICROVM_PORT, counter, endpoint_request, endpoint_token,
                     error_code, terminate_quietly, wait_microvm)


@pytest.fixture(scope="module")
def pair(ember, hello_http):
    """Two running hello-http VMs; A allows a shell, B does not."""
    client = ember.client()
    a = client.run_microvm(imageIdentifier="hello-http", ingressNetworkConnectors=["HTTP_INGRESS", "SHELL_INGRESS"])
    b = client.run_microvm(imageIdentifier="hello-http")
    try:
        for vm in (a, b):
            wait_microvm(client, vm["microvmId"], "RUNNING", timeout=90)
        yield {"a": a, "b": b,
               "token_a": endpoint_token(client, a["microvmId"]),
               "token_b": endpoint_token(client, b["microvmId"])}
    finally:
        terminate_quietly(client, a["microvmId"], b["microvmId"])


def rejected(endpoint, token, port=MICROVM_PORT, headers=None):
    """(status, body) of a request the proxy should answer itself."""
    status, body, _ = rejected_with_code(endpoint, token, port, headers)
    return status, body


def rejected_with_code(endpoint, token, port=MICROVM_PORT, headers=None):
    """(status, body, x-aws-proxy-error) of a request the proxy answers itself."""
    status, body, got = endpoint_request(endpoint, token, port, headers=headers, timeout=30)
    if status >= 400:
        assert got.get("content-type", "").startswith("application/json"), got
        assert "message" in json.loads(body), body
        assert got.get("x-aws-proxy-error"), f"the proxy's {status} has no x-aws-proxy-error: {got}"
    return status, body, got.get("x-aws-proxy-error")


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_the_right_token_gets_through(pair):
    assert counter(pair["a"]["endpoint"], pair["token_a"]) >= 1
    assert counter(pair["b"]["endpoint"], pair["token_b"]) >= 1


def test_missing_and_garbage_tokens_are_403_unauthorized(pair):
    endpoint = pair["a"]["endpoint"]
    for token in (None, "garbage", "a.b", ""):
        status, body, code = rejected_with_code(endpoint, token)
        assert (status, code) == (403, "UNAUTHORIZED"), (token, status, body)
    # No port header either: still the token that is refused first.
    status, _, code = rejected_with_code(endpoint, None, port=None)
    assert (status, code) == (403, "UNAUTHORIZED")


def test_no_port_header_reaches_8080(pair):
    status, body, _ = endpoint_request(pair["a"]["endpoint"], pair["token_a"], port=None)
    assert status == 200 and COUNTER_LINE.search(body), (status, body)


def test_port_errors_have_their_codes(client, pair):
    endpoint = pair["a"]["endpoint"]
    for bad in ("0", "65536", "http", "-1", "80 80"):
        status, body, code = rejected_with_code(endpoint, pair["token_a"], port=bad)
        assert (status, code) == (400, "INVALID_PORT"), (bad, status, body)
    status, body, code = rejected_with_code(endpoint, pair["token_a"], port=9999)
    assert (status, code) == (403, "PORT_NOT_ALLOWED"), (status, body)
    # A token for another port only: the default port 8080 is not in it.
    other = endpoint_token(client, pair["a"]["microvmId"], port=9999)
    status, body, code = rejected_with_code(endpoint, other, port=None)
    assert (status, code) == (403, "PORT_NOT_ALLOWED"), (status, body)
    # Allowed, but nothing listens there in the guest.
    status, body, code = rejected_with_code(endpoint, other, port=9999)
    assert (status, code) == (502, "APP_CONNECT_FAILED"), (status, body)


def test_tampered_tokens_are_403(pair):
    endpoint, token = pair["a"]["endpoint"], pair["token_a"]
    claims_part, mac_part = token.split(".")
    mac = bytearray(unb64(mac_part))
    mac[0] ^= 0x01
    assert rejected(endpoint, f"{claims_part}.{b64(bytes(mac))}")[0] == 403, "a bad MAC was accepted"

    claims = json.loads(unb64(claims_part))
    assert claims["vm"] == pair["a"]["microvmId"], claims
    # An expired token: the same claims with exp in the past. Without the
    # key the MAC cannot match, so it is refused like any expired token.
    expired = dict(claims, exp=int(time.time()) - 60)
    _, _, code = rejected_with_code(endpoint, f"{b64(json.dumps(expired).encode())}.{mac_part}")
    assert code == "UNAUTHORIZED"
    # Claims moved to another VM with A's MAC: not B's token.
    moved = dict(claims, vm=pair["b"]["microvmId"])
    status, _ = rejected(pair["b"]["endpoint"], f"{b64(json.dumps(moved).encode())}.{mac_part}")
    assert status == 403, f"a re-addressed token got {status}"
    # More ports, same MAC.
    widened = dict(claims, p="all")
    assert rejected_with_code(endpoint, f"{b64(json.dumps(widened).encode())}.{mac_part}", port=22)[2] == "UNAUTHORIZED"


def test_other_vms_token_and_other_ports_are_403(client, pair):
    assert rejected(pair["b"]["endpoint"], pair["token_a"])[0] == 403, "A's token opened B"
    assert rejected(pair["a"]["endpoint"], pair["token_b"])[0] == 403, "B's token opened A"
    assert rejected(pair["a"]["endpoint"], pair["token_a"], port=9999)[0] == 403


def test_shell_tokens_do_not_open_the_endpoint(client, pair):
    shell = client.create_microvm_shell_auth_token(
        microvmIdentifier=pair["a"]["microvmId"], expirationInMinutes=5)["authToken"]
    token = next(iter(shell.values()))
    assert rejected(pair["a"]["endpoint"], token)[0] == 403
    with pytest.raises(ClientError) as info:
        client.create_microvm_shell_auth_token(
            microvmIdentifier=pair["b"]["microvmId"], expirationInMinutes=5)
    assert error_code(info.value) == "ValidationException", "a shell token for a VM without SHELL_INGRESS"


@pytest.mark.parametrize("minutes", [0, 61, -5])
def test_token_lifetime_is_bounded(raw_client, pair, minutes):
    with pytest.raises(ClientError) as info:
        raw_client.create_microvm_auth_token(
            microvmIdentifier=pair["a"]["microvmId"], expirationInMinutes=minutes,
            allowedPorts=[{"port": MICROVM_PORT}])
    assert error_code(info.value) == "ValidationException"


def test_token_for_a_terminated_vm_is_a_conflict(client, hello_http):
    vm_id = client.run_microvm(imageIdentifier="hello-http")["microvmId"]
    try:
        client.terminate_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "TERMINATED", timeout=90)
        for mint in (lambda: endpoint_token(client, vm_id),
                     lambda: client.create_microvm_shell_auth_token(
                         microvmIdentifier=vm_id, expirationInMinutes=5)):
            with pytest.raises(ClientError) as info:
                mint()
            assert error_code(info.value) == "ConflictException"
    finally:
        terminate_quietly(client, vm_id)


def websocket_handshake(endpoint, protocols):
    key = base64.b64encode(b"ember-test-key-1").decode()
    return endpoint_request(endpoint, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": key, "Sec-WebSocket-Protocol": ", ".join(protocols)}, timeout=30)


def test_websocket_subprotocol_auth(pair):
    endpoint, token = pair["a"]["endpoint"], pair["token_a"]
    status, body, _ = websocket_handshake(endpoint, [
        "lambda-microvms", f"lambda-microvms.authentication.{token}",
        f"lambda-microvms.port.{MICROVM_PORT}"])
    # busybox httpd does not upgrade: it answers the GET. What matters is
    # that the proxy let the handshake through to it.
    assert status not in (400, 401, 403), f"subprotocol auth refused: {status} {body}"
    assert status == 200 and COUNTER_LINE.search(body), (status, body)

    status, body, _ = websocket_handshake(endpoint, [
        "lambda-microvms", "lambda-microvms.authentication.not-a-token",
        f"lambda-microvms.port.{MICROVM_PORT}"])
    assert status == 403, f"a wrong subprotocol token got {status}: {body}"
    status, body, _ = websocket_handshake(pair["b"]["endpoint"], [
        "lambda-microvms", f"lambda-microvms.authentication.{token}"])
    assert status == 403, f"A's subprotocol token on B got {status}: {body}"
