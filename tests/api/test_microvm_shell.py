"""The shell at a microVM's own endpoint, as the real service serves it:
`GET <endpoint>/shell` upgraded to a WebSocket with the subprotocols
`lambda-microvms`, `lambda-microvms.authentication.<shell token>`; text
`session_init` first, binary terminal bytes both ways, text resize, and
close 1000 "shell exited" (after Ember's `{"type":"exit","code":N}`).
Allowed only with the SHELL_INGRESS connector and a shell token; driven
here by a WebSocket client written to that framing and by `ember shell`;
plus `ember logs` and `ember curl` against the same VM."""

import re

import pytest
import websocket
from botocore.exceptions import ClientError

from harness import (ember_cli, endpoint_request, endpoint_token, error_code, terminate_quietly,
                     wait_microvm)
from shell_client import (open_shell, read_to_close, resize_then_exit, session_init, shell_token,
                          type_and_read)

# The session emberd's idle floor is 2 s (conftest): the shell VM idles
# out between tests, so every test also exercises an auto-resume.
IDLE_SECONDS = 2
SHELL_IDLE = {"maxIdleDurationSeconds": IDLE_SECONDS, "suspendedDurationSeconds": 3600,
              "autoResumeEnabled": True}


@pytest.fixture(scope="module")
def shell_vm(ember, hello_http):
    client = ember.client()
    # botocore holds the model's 60 s floor; emberd's is lowered.
    vm = ember.client(validate=False).run_microvm(
        imageIdentifier="hello-http", idlePolicy=SHELL_IDLE,
        ingressNetworkConnectors=["HTTP_INGRESS", "SHELL_INGRESS"])
    try:
        yield wait_microvm(client, vm["microvmId"], "RUNNING", timeout=90)
    finally:
        terminate_quietly(client, vm["microvmId"])


def refused_status(endpoint, token, by_header=False, path="/shell"):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        open_shell(endpoint, token, by_header=by_header, path=path).close()
    return refused.value.status_code


def test_websocket_shell_is_framed_like_the_service(ember, shell_vm):
    client = ember.client()
    vm_id, endpoint = shell_vm["microvmId"], shell_vm["endpoint"]
    ws = open_shell(endpoint, shell_token(client, vm_id))
    try:
        assert ws.subprotocol == "lambda-microvms"
        assert session_init(ws).version == 4
        # Output comes back as raw terminal bytes; the guest is the VM.
        out = type_and_read(ws, "echo $((6*7)); cat /run/ember-microvm-id; echo\n",
                            re.escape(vm_id))
        assert re.search(r"\n42\r?\n", out), out
        assert re.search(r"24 80\r?\n", type_and_read(ws, "stty size\n", r"\d+ \d+\r?\n"))
        # Text frames that are not a resize change nothing and end nothing.
        for ignored in ["hello", '{"type":"resize","cols":0,"rows":5}', '{"type":"nope"}']:
            ws.send(ignored)
        resize_then_exit(ws, code=7)
    finally:
        ws.close()


def test_header_token_opens_the_shell_too(ember, shell_vm):
    client = ember.client()
    ws = open_shell(shell_vm["endpoint"], shell_token(client, shell_vm["microvmId"]),
                    by_header=True)
    try:
        # Nothing offered, nothing named.
        assert ws.subprotocol is None
        session_init(ws)
        assert "shell-ok" in type_and_read(ws, "echo shell-$((1))ok | tr -d 1\n", r"shell-ok")
    finally:
        ws.close()


def test_an_idle_shell_is_closed_and_a_suspended_vm_resumes_for_one(ember, shell_vm):
    """A shell with no byte either way is closed after the endpoint idle
    timeout (1 s here, half the 2 s idle floor) with 1001 "idle", so a
    forgotten shell does not keep the VM awake: it idles out; a shell to
    the suspended VM resumes it (autoResumeEnabled)."""
    client = ember.client()
    vm_id, endpoint = shell_vm["microvmId"], shell_vm["endpoint"]
    ws = open_shell(endpoint, shell_token(client, vm_id))
    try:
        session_init(ws)
        assert "still-here" in type_and_read(ws, "echo still-$((0))here | tr -d 0\n",
                                             "still-here")
        _, code, reason = read_to_close(ws)
        assert (code, reason) == (1001, "idle")
    finally:
        ws.close()
    wait_microvm(client, vm_id, "SUSPENDED", timeout=60)
    ws = open_shell(endpoint, shell_token(client, vm_id))
    try:
        session_init(ws)
        assert "woke" in type_and_read(ws, "echo w$((0))oke | tr -d 0\n", "woke")
        assert client.get_microvm(microvmIdentifier=vm_id)["state"] == "RUNNING"
    finally:
        ws.close()


def app_shell_requests(ember, vm_id):
    """How many requests for /shell the app logged (httpd -vv logs each URL)."""
    with ember.signed_get(f"/ember/v1/microvms/{vm_id}/log") as resp:
        return resp.read().decode(errors="replace").count("url:/shell")


def test_only_a_shell_token_opens_the_shell_and_refusals_reach_nothing(ember, shell_vm):
    client = ember.client()
    vm_id, endpoint = shell_vm["microvmId"], shell_vm["endpoint"]
    token = shell_token(client, vm_id)
    before = app_shell_requests(ember, vm_id)
    # No token, a forged one: refused before anything reaches the guest.
    assert refused_status(endpoint, "", by_header=True) in (401, 403)
    assert refused_status(endpoint, token[:-4] + "AAAA") in (401, 403)
    # A shell token opens /shell only.
    assert refused_status(endpoint, token, path="/") == 403
    assert refused_status(endpoint, token, path="/shell/x") == 403
    # An endpoint token on /shell is a request for the app (hello-http has
    # no /shell: busybox httpd's 404 page, not the proxy's JSON).
    status, body, _ = endpoint_request(endpoint, endpoint_token(client, vm_id), 8080,
                                       path="/shell")
    assert status == 404 and "404 Not Found" in body and "message" not in body, (status, body)
    assert app_shell_requests(ember, vm_id) == before + 1


def test_shell_token_of_another_vm_and_vms_without_shell_ingress(ember, shell_vm, hello_http):
    client = ember.client()
    vm = client.run_microvm(imageIdentifier="hello-http")
    try:
        plain = wait_microvm(client, vm["microvmId"], "RUNNING", timeout=90)
        with pytest.raises(ClientError) as refused:
            shell_token(client, plain["microvmId"])
        assert error_code(refused.value) == "ValidationException"
        assert "SHELL_INGRESS" in str(refused.value)
        out = ember_cli(ember, "shell", plain["microvmId"], stdin="exit\n")
        assert out.returncode != 0
        assert "ValidationException" in out.stderr and "SHELL_INGRESS" in out.stderr, out.stderr
        # The shell VM's token does not open this VM's shell.
        other = shell_token(client, shell_vm["microvmId"])
        assert refused_status(plain["endpoint"], other) == 403
        assert refused_status(plain["endpoint"], other, by_header=True) == 403
    finally:
        terminate_quietly(client, vm["microvmId"])


def test_ember_shell_runs_piped_commands_and_returns_the_exit_code(ember, shell_vm):
    vm_id = shell_vm["microvmId"]
    script = "echo $((6*7)); cat /run/ember-microvm-id; echo; stty size\nexit 3\n"
    out = ember_cli(ember, "shell", vm_id, stdin=script)
    assert out.returncode == 3, out
    assert "\n42" in out.stdout.replace("\r", ""), out.stdout
    # The guest knows its own microVM id.
    assert vm_id in out.stdout, out.stdout
    # Piped input: the default terminal size.
    assert "24 80" in out.stdout, out.stdout


def test_shell_sees_the_apps_processes(ember, shell_vm):
    """The shell is in the same guest the endpoint serves: the app's
    processes are there."""
    out = ember_cli(ember, "shell", shell_vm["microvmId"], stdin="ps | grep -c '[h]ttpd'\nexit\n")
    assert out.returncode == 0, out
    lines = [l.strip() for l in out.stdout.replace("\r", "").splitlines()]
    assert "1" in lines, out.stdout


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
    """One image, two VMs: with egressNetworkConnectors ["INTERNET_EGRESS"] the
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
    online = client.run_microvm(imageIdentifier="hello-http", egressNetworkConnectors=["INTERNET_EGRESS"],
                                ingressNetworkConnectors=["HTTP_INGRESS", "SHELL_INGRESS"])
    offline = client.run_microvm(imageIdentifier="hello-http",
                                 ingressNetworkConnectors=["HTTP_INGRESS", "SHELL_INGRESS"])
    try:
        got = wait_microvm(client, online["microvmId"], "RUNNING", timeout=90)
        assert got["egressNetworkConnectors"] == ["INTERNET_EGRESS"], got
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
