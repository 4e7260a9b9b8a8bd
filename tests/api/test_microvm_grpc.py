"""HTTP/2 and gRPC through a microVM's endpoint, as on AWS Lambda
MicroVMs: clients speak h2 with prior knowledge (h2c), the app is reached
over HTTP/1.1 unless the request says `x-aws-proxy-force-h2: true`, and a
gRPC server in the guest gets its calls (status and trailers included) from
a real grpcio channel on the host.

One image (debian12-minimal + python3 + the venv's grpcio, see
grpc_echo/Dockerfile), one VM, shared by the module's tests."""

import json
import shutil
import socket
import sysconfig
import time
import urllib.parse
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from artifacts import zip_dir
from harness import DEBIAN_ARN, REPO, create_and_wait, endpoint_request, terminate_quietly, wait_microvm

GRPC_PORT = 8080
HTTP1_PORT = 8081
FORCE_H2 = ("x-aws-proxy-force-h2", "true")

pytestmark = pytest.mark.slow


def grpc_context(dest):
    """The build context: the app, its Dockerfile and grpcio (with its one
    dependency) copied from this venv's site-packages."""
    dest.mkdir()
    for name in ("app.py", "Dockerfile"):
        shutil.copy(REPO / "tests" / "api" / "grpc_echo" / name, dest / name)
    site = Path(sysconfig.get_paths()["purelib"])
    shutil.copytree(site / "grpc", dest / "site" / "grpc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(site / "typing_extensions.py", dest / "site" / "typing_extensions.py")
    return dest


@pytest.fixture(scope="module")
def grpc_vm(ember, tmp_path_factory):
    client = ember.client()
    base = tmp_path_factory.mktemp("grpc")
    path = zip_dir(grpc_context(base / "context"), base / "grpc-echo.zip")
    image, version = create_and_wait(client, "grpc-echo", path, base=DEBIAN_ARN, timeout=1500,
                                     egressNetworkConnectors=["internet"])
    assert image["state"] == "CREATED", f"{version.get('stateReason')}\n{ember.log_tail()}"
    vm = client.run_microvm(imageIdentifier="grpc-echo")
    try:
        wait_microvm(client, vm["microvmId"], "RUNNING", timeout=180)
        token = client.create_microvm_auth_token(
            microvmIdentifier=vm["microvmId"], expirationInMinutes=30,
            allowedPorts=[{"port": GRPC_PORT}, {"port": HTTP1_PORT}],
        )["authToken"]["X-aws-proxy-auth"]
        url = urllib.parse.urlsplit(vm["endpoint"])
        yield {"vm": vm, "token": token, "host": url.hostname, "port": url.port}
    finally:
        terminate_quietly(client, vm["microvmId"])


@pytest.fixture(scope="module")
def channel(grpc_vm):
    # Never through an HTTP proxy the environment may name.
    with grpc.insecure_channel(f"{grpc_vm['host']}:{grpc_vm['port']}",
                               options=[("grpc.enable_http_proxy", 0)]) as chan:
        yield chan


def metadata(grpc_vm, *extra):
    return (("x-aws-proxy-auth", grpc_vm["token"]), *extra)


def test_unary_call_with_trailers(grpc_vm, channel):
    call = channel.unary_unary("/ember.Echo/Call")
    reply, info = call.with_call(b"ping", timeout=120,
                                 metadata=metadata(grpc_vm, FORCE_H2, ("x-user", "kept")))
    answer = json.loads(reply)
    assert answer["request"] == "ping"
    assert answer["metadata"].get("x-user") == "kept", answer
    assert not [k for k in answer["metadata"] if k.startswith("x-aws-proxy-")], answer
    assert info.code() == grpc.StatusCode.OK
    assert ("x-echo-trailer", "done") in tuple(info.trailing_metadata())


def test_error_status_and_server_streaming(grpc_vm, channel):
    with pytest.raises(grpc.RpcError) as failed:
        channel.unary_unary("/ember.Echo/Fail")(b"", timeout=60, metadata=metadata(grpc_vm, FORCE_H2))
    # Status and message travel in trailers: only h2 end to end brings them.
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.details() == "asked to fail"

    stream = channel.unary_stream("/ember.Echo/Count")(b"5", timeout=60,
                                                        metadata=metadata(grpc_vm, FORCE_H2))
    assert [m.decode() for m in stream] == ["0", "1", "2", "3", "4"]


def test_grpc_refused_without_token_or_force_h2(grpc_vm, channel):
    call = channel.unary_unary("/ember.Echo/Call")
    with pytest.raises(grpc.RpcError) as no_token:
        call(b"x", timeout=60, metadata=(FORCE_H2,))
    # gRPC maps the proxy's HTTP 403 to PERMISSION_DENIED.
    assert no_token.value.code() == grpc.StatusCode.PERMISSION_DENIED, no_token.value
    with pytest.raises(grpc.RpcError) as over_h1:
        call(b"x", timeout=60, metadata=metadata(grpc_vm))
    # Over HTTP/1.1 the gRPC server cannot answer: the proxy's 502.
    assert over_h1.value.code() == grpc.StatusCode.UNAVAILABLE, over_h1.value


def h2c(grpc_vm, method, path, headers=(), body=b"", timeout=60):
    """One request over a fresh h2c connection (prior knowledge, no
    upgrade): (status, headers, body, trailers)."""
    sock = socket.create_connection((grpc_vm["host"], grpc_vm["port"]), timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8"))
    try:
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", method), (":scheme", "http"),
                                   (":authority", f"{grpc_vm['host']}:{grpc_vm['port']}"),
                                   (":path", path), *headers], end_stream=not body)
        if body:
            conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        status, got, data, trailers = None, {}, b"", {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed the connection before the answer ended"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    got = dict(event.headers)
                    status = int(got[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream reset: {event.error_code}")
                elif isinstance(event, h2.events.StreamEnded):
                    return status, got, data, trailers
            sock.sendall(conn.data_to_send())
        raise AssertionError(f"no complete answer in {timeout}s")
    finally:
        sock.close()


def grpc_frame(message):
    return b"\0" + len(message).to_bytes(4, "big") + message


def test_h2c_without_port_header_reaches_8080(grpc_vm):
    status, got, data, trailers = h2c(grpc_vm, "POST", "/ember.Echo/Call", headers=[
        ("x-aws-proxy-auth", grpc_vm["token"]), FORCE_H2,
        ("content-type", "application/grpc"), ("te", "trailers")], body=grpc_frame(b"raw h2"))
    assert status == 200, (got, data)
    assert trailers.get("grpc-status") == "0", (got, trailers)
    assert json.loads(data[5:])["request"] == "raw h2"


def test_h2c_client_reaches_an_http1_app_by_default(grpc_vm):
    status, got, data, _ = h2c(grpc_vm, "GET", "/over/h1?x=1", headers=[
        ("x-aws-proxy-auth", grpc_vm["token"]), ("x-aws-proxy-port", str(HTTP1_PORT))])
    assert status == 200, (got, data)
    seen = json.loads(data)
    assert seen["protocol"] == "HTTP/1.1" and seen["path"] == "/over/h1?x=1", seen
    # :authority became Host; no proxy header reached the app.
    assert seen["headers"]["host"] == f"{grpc_vm['host']}:{grpc_vm['port']}", seen
    assert not [k for k in seen["headers"] if k.startswith("x-aws-proxy-")], seen


def test_h2c_refusals_carry_their_code(grpc_vm):
    status, got, data, _ = h2c(grpc_vm, "GET", "/", headers=[FORCE_H2])
    assert (status, got.get("x-aws-proxy-error")) == (403, "UNAUTHORIZED"), (got, data)
    status, got, data, _ = h2c(grpc_vm, "GET", "/", headers=[
        ("x-aws-proxy-auth", grpc_vm["token"]), ("x-aws-proxy-port", "22")])
    assert (status, got.get("x-aws-proxy-error")) == (403, "PORT_NOT_ALLOWED"), (got, data)


def test_force_h2_to_an_http1_app_is_502_at_once(grpc_vm):
    endpoint = f"http://{grpc_vm['host']}:{grpc_vm['port']}"
    # A hang would raise the client's timeout: the h1-only app's answer to
    # the HTTP/2 preface must end the attempt.
    status, body, got = endpoint_request(endpoint, grpc_vm["token"], HTTP1_PORT,
                                         headers=dict([FORCE_H2]), timeout=60)
    assert (status, got.get("x-aws-proxy-error")) == (502, "APP_PROTOCOL_ERROR"), (status, body)
