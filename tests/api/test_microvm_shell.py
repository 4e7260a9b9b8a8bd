"""`ember shell`: an interactive shell in a running microVM over emberd's
shell WebSocket, allowed only with the SHELL_INGRESS connector and a shell
token; plus `ember logs` and `ember curl` against the same VM."""

import os
import subprocess
from pathlib import Path

import pytest

from harness import REPO, terminate_quietly, wait_microvm

CLI = Path(os.environ.get("EMBER_CLI_BIN", REPO / "target" / "release" / "ember"))


def ember_cli(ember, *args, stdin=None, timeout=120):
    if not CLI.exists():
        pytest.fail(f"ember CLI not found at {CLI} (set EMBER_CLI_BIN)")
    return subprocess.run([str(CLI), "--data-dir", str(ember.data_dir), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RUST_BACKTRACE": "0"})


@pytest.fixture(scope="module")
def shell_vm(ember, hello_http):
    client = ember.client()
    vm = client.run_microvm(imageIdentifier="hello-http", ingressNetworkConnectors=["SHELL_INGRESS"])
    try:
        wait_microvm(client, vm["microvmId"], "RUNNING", timeout=90)
        yield vm
    finally:
        terminate_quietly(client, vm["microvmId"])


def test_shell_runs_commands_in_the_guest_and_returns_the_exit_code(ember, shell_vm):
    vm_id = shell_vm["microvmId"]
    script = "echo $((6*7)); cat /run/ember-microvm-id; echo; stty size\nexit 3\n"
    out = ember_cli(ember, "shell", vm_id, stdin=script)
    assert out.returncode == 3, out
    assert "\n42" in out.stdout.replace("\r", ""), out.stdout
    # The guest knows its own microVM id.
    assert vm_id in out.stdout, out.stdout
    # Piped input: the default terminal size.
    assert "24 80" in out.stdout, out.stdout


def test_shell_sees_the_apps_memory_state_through_its_files(ember, shell_vm):
    """The shell is in the same guest the endpoint serves: the app's
    processes are there."""
    out = ember_cli(ember, "shell", shell_vm["microvmId"], stdin="ps | grep -c '[h]ttpd'\nexit\n")
    assert out.returncode == 0, out
    lines = [l.strip() for l in out.stdout.replace("\r", "").splitlines()]
    assert "1" in lines, out.stdout


def test_shell_needs_the_shell_ingress_connector(ember, hello_http):
    client = ember.client()
    vm = client.run_microvm(imageIdentifier="hello-http")
    try:
        out = ember_cli(ember, "shell", vm["microvmId"], stdin="exit\n")
        assert out.returncode != 0
        assert "ValidationException" in out.stderr and "SHELL_INGRESS" in out.stderr, out.stderr
    finally:
        terminate_quietly(client, vm["microvmId"])


def test_shell_refuses_endpoint_tokens_and_other_vms_tokens(ember, shell_vm, hello_http):
    import http.client
    import urllib.parse
    client = ember.client()
    vm_id = shell_vm["microvmId"]
    endpoint_token = client.create_microvm_auth_token(
        microvmIdentifier=vm_id, expirationInMinutes=5,
        allowedPorts=[{"allPorts": {}}])["authToken"]["X-aws-proxy-auth"]
    url = urllib.parse.urlparse(ember.url)

    def handshake(token, target):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        headers = {"Connection": "Upgrade", "Upgrade": "websocket",
                   "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        if token:
            headers["X-aws-proxy-auth"] = token
        conn.request("GET", f"/ember/v1/microvms/{target}/shell", headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status

    shell_token = client.create_microvm_shell_auth_token(
        microvmIdentifier=vm_id, expirationInMinutes=5)["authToken"]["X-aws-proxy-auth"]
    # Refused like the endpoint refuses: 403 for a missing or wrong token.
    assert handshake(None, vm_id) == 403
    assert handshake("garbage", vm_id) == 403
    assert handshake(endpoint_token, vm_id) == 403
    assert handshake(shell_token, "another-vm") == 403
    assert handshake(shell_token, vm_id) == 101


def test_logs_and_curl_through_the_cli(ember, shell_vm):
    vm_id = shell_vm["microvmId"]
    first = ember_cli(ember, "curl", vm_id, "/")
    assert first.returncode == 0, first
    assert "hello from ember: request" in first.stdout
    logs = ember_cli(ember, "logs", vm_id)
    assert logs.returncode == 0, logs
    # hello-http prints a start line and httpd logs each request.
    assert "hello-http: serving on port 8080" in logs.stdout, logs.stdout
    assert "url:/" in logs.stdout, logs.stdout


# `timeout`, not wget's -T, which crashes busybox 1.35's wget.
FETCH = ("timeout 60 wget -q -O - http://deb.debian.org/debian/dists/bookworm/Release "
         "| head -c 40; echo; echo fetched=$?\n")
HOST_PROBE = "timeout 10 wget -q -O - http://10.0.2.2:{port}/ ; echo host=$?\n"


def test_egress_connector_gives_internet_and_nothing_else(ember, hello_http):
    """One image, two VMs: with egressNetworkConnectors ["internet"] the
    guest reaches Debian's mirror but not a server on the host's loopback;
    without it, it reaches nothing."""
    import http.server
    import threading
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"host-secret")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    client = ember.client()
    online = client.run_microvm(imageIdentifier="hello-http", egressNetworkConnectors=["internet"],
                                ingressNetworkConnectors=["SHELL_INGRESS"])
    offline = client.run_microvm(imageIdentifier="hello-http",
                                 ingressNetworkConnectors=["SHELL_INGRESS"])
    try:
        got = wait_microvm(client, online["microvmId"], "RUNNING", timeout=90)
        assert got["egressNetworkConnectors"] == ["internet"], got
        wait_microvm(client, offline["microvmId"], "RUNNING", timeout=90)
        out = ember_cli(ember, "shell", online["microvmId"],
                        stdin=FETCH + HOST_PROBE.format(port=port) + "exit\n", timeout=180)
        text = out.stdout.replace("\r", "")
        assert "Origin: Debian" in text, text
        assert "host-secret" not in text, text
        out = ember_cli(ember, "shell", offline["microvmId"],
                        stdin=FETCH + HOST_PROBE.format(port=port) + "exit\n", timeout=180)
        text = out.stdout.replace("\r", "")
        assert "Origin: Debian" not in text, text
        assert "host-secret" not in text, text
        assert hits == [], f"a guest reached the host's loopback server: {hits}"
    finally:
        server.shutdown()
        terminate_quietly(client, online["microvmId"], offline["microvmId"])
