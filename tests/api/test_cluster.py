"""Routing between nodes (issue 14, item 4): two real emberd nodes, n1 and
n2, on one Postgres with one cluster key, each serving every endpoint on
its own wildcard-domain listener. A microVM run through n1 answers through
n2 (a tunnel to n1 over n1's internal listener) with a token minted
through either node, WebSocket-style upgrades included; Suspend, Resume
and Terminate sent to n2 are carried out by n1, and requests through both
nodes to a suspended VM share one resume. The internal listener takes
only requests signed with the cluster key. The shell of n1's VM opens
through n2's listener, and a fork asked of n2 is made by n1. A run asked of
n2 of the image n1 built is placed on n1 (issue 14, item 3), or refused at
once with the model's capacity error when n1 cannot take it."""

import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_files
from cluster_nodes import listed_nodes, set_drain, start_nodes
from harness import (COUNTER_LINE, REPO, create_and_wait, endpoint_token, error_code,
                     terminate_quietly, wait_microvm)
from postgres_server import PostgresServer
from shell_client import open_shell, resize_then_exit, session_init, shell_token, type_and_read

DOMAIN = "vms.cluster.test"
IMAGE = "hello-echo"
ECHO_PORT = 9001
POLICY = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600,
          "autoResumeEnabled": True}

# An upgrade on port 9001: busybox nc runs this per connection; it answers
# 101 and then echoes every byte, as a WebSocket echo server would.
ECHO_SH = r"""#!/bin/sh
while read -r line; do
    line=$(printf '%s' "$line" | tr -d '\r')
    [ -z "$line" ] && break
done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'
exec cat
"""


def zip_hello_echo(dest):
    src = REPO / "examples" / "hello-http"
    files = {str(p.relative_to(src)): p.read_text() for p in src.rglob("*") if p.is_file()}
    files["echo.sh"] = ECHO_SH
    files["start.sh"] = files["start.sh"].replace(
        "exec ", f"nc -ll -p {ECHO_PORT} -e /app/echo.sh &\nexec ", 1)
    files["Dockerfile"] = files["Dockerfile"].replace(
        "COPY start.sh", "COPY echo.sh start.sh").replace(
        "RUN chmod 755", "RUN chmod 755 /app/echo.sh")
    return zip_files(dest, files)


@pytest.fixture(scope="module")
def cluster(module_emberd, tmp_path_factory):
    server = PostgresServer().start()
    url = server.create_database("ember_cluster")
    nodes = start_nodes(module_emberd, url, tmp_path_factory.mktemp("cluster"), DOMAIN,
                        ("n1", "n2"))
    n1, n2 = nodes
    zip_path = zip_hello_echo(tmp_path_factory.mktemp("echo") / "hello-echo.zip")
    image, version = create_and_wait(n1.client(), IMAGE, zip_path)
    assert image["state"] == "CREATED", version.get("stateReason")
    yield n1, n2
    server.stop()


@pytest.fixture
def vm(cluster):
    n1, n2 = cluster
    run = n1.client().run_microvm(imageIdentifier=IMAGE, idlePolicy=POLICY)
    vm_id = run["microvmId"]
    wait_microvm(n2.client(), vm_id, "RUNNING", timeout=90)
    assert run["endpoint"].startswith(f"http://{vm_id}.{DOMAIN}:"), run
    yield vm_id, urllib.parse.urlsplit(run["endpoint"]).netloc
    terminate_quietly(n1.client(), vm_id)


def upgrade_echo(node, host, token):
    """An upgrade to the guest's echo port through `node`; then one line
    each way."""
    with socket.create_connection(("127.0.0.1", node.endpoint_port), timeout=30) as s:
        s.sendall((f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
                   f"Upgrade: websocket\r\nX-aws-proxy-auth: {token}\r\n"
                   f"X-aws-proxy-port: {ECHO_PORT}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, f"closed before the upgrade's answer: {head!r}"
            head += chunk
        status_line = head.split(b"\r\n", 1)[0]
        rest = head.split(b"\r\n\r\n", 1)[1]
        s.sendall(b"ping through the tunnel\n")
        while b"\n" not in rest:
            chunk = s.recv(4096)
            assert chunk, f"closed before the echo: {rest!r}"
            rest += chunk
        return status_line.decode(), rest.decode()


def test_any_node_serves_the_endpoint_of_a_microvm_another_runs(cluster, vm):
    n1, n2 = cluster
    vm_id, host = vm
    # Tokens are signed with the cluster's key: one minted through either
    # node opens the endpoint through both, and the count is one VM's.
    token_n2 = endpoint_token(n2.client(), vm_id)
    token_n1 = endpoint_token(n1.client(), vm_id)
    assert n2.counter(host, token_n2) == 1
    assert n1.counter(host, token_n2) == 2
    assert n2.counter(host, token_n1) == 3
    # Keep-alive requests on one client connection through n2 share one
    # tunnel and stay in order.
    conn = http.client.HTTPConnection("127.0.0.1", n2.endpoint_port, timeout=60)
    try:
        for want in (4, 5, 6):
            conn.request("GET", "/", headers={"Host": host, "X-aws-proxy-auth": token_n1})
            resp = conn.getresponse()
            body = resp.read().decode()
            assert resp.status == 200 and COUNTER_LINE.search(body).group(1) == str(want), body
    finally:
        conn.close()
    # A token that does not verify is refused by the node it reaches,
    # before anything is tunnelled.
    status, body = n2.get(host, token_n1[:-4] + "AAAA")
    assert status == 403, (status, body)

    # An upgraded connection through the tunnel moves bytes both ways.
    echo_token = n2.client().create_microvm_auth_token(
        microvmIdentifier=vm_id, expirationInMinutes=10,
        allowedPorts=[{"port": ECHO_PORT}])["authToken"]["X-aws-proxy-auth"]
    status_line, echoed = upgrade_echo(n2, host, echo_token)
    assert " 101 " in status_line, status_line
    assert echoed == "ping through the tunnel\n", echoed

    # The internal listener n2 tunnels through takes only signed requests.
    listed = listed_nodes(n2)
    address = listed["n1"]["internalAddress"]
    assert listed["n2"]["internalAddress"] != address
    ip, port = address.rsplit(":", 1)
    path = f"/ember/internal/v1/microvms/{vm_id}/ports/8080"
    forged = {"x-ember-node": "n2", "x-ember-time": str(int(time.time())),
              "x-ember-nonce": "00" * 16, "x-ember-signature": "ab" * 32,
              "Connection": "Upgrade", "Upgrade": "ember-tunnel"}
    # It speaks TLS only: a plain request gets no HTTP answer.
    with socket.create_connection((ip, int(port)), timeout=10) as plain:
        plain.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        try:
            answer = plain.recv(64)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/"), answer
    # Its certificate is derived from the cluster key; a caller without
    # the key can still do TLS without checking it, and is refused.
    unchecked = ssl.create_default_context()
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE
    for headers in ({"Connection": "Upgrade", "Upgrade": "ember-tunnel"}, forged):
        conn = http.client.HTTPSConnection(ip, int(port), timeout=10, context=unchecked)
        try:
            conn.request("POST", path, headers=headers)
            resp = conn.getresponse()
            assert resp.status == 403, (resp.status, resp.read())
            assert "cluster key" in json.loads(resp.read())["message"]
        finally:
            conn.close()
    # Nothing of that reached the guest: its count goes on from 6.
    assert n1.counter(host, token_n1) == 7


def test_lifecycle_actions_sent_to_any_node_reach_the_owner(cluster, vm):
    n1, n2 = cluster
    vm_id, host = vm
    token = endpoint_token(n1.client(), vm_id)
    assert n2.counter(host, token) == 1

    n2.client().suspend_microvm(microvmIdentifier=vm_id)
    wait_microvm(n1.client(), vm_id, "SUSPENDED", timeout=90)
    # Requests through both nodes at once to the suspended VM: one resume
    # on its owner serves them all, with the memory it was suspended with.
    got, errors = [], []

    def ask(node):
        try:
            got.append(node.counter(host, token))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
    threads = [threading.Thread(target=ask, args=(node,)) for node in (n1, n2) * 5]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(got) == list(range(2, 12)), got
    vm_state = n2.client().get_microvm(microvmIdentifier=vm_id)
    assert vm_state["state"] == "RUNNING", vm_state

    # An explicit Resume through n2, after a suspend through n2.
    n2.client().suspend_microvm(microvmIdentifier=vm_id)
    wait_microvm(n2.client(), vm_id, "SUSPENDED", timeout=90)
    n2.client().resume_microvm(microvmIdentifier=vm_id)
    wait_microvm(n2.client(), vm_id, "RUNNING", timeout=90)
    assert n2.counter(host, token) == 12

    # The owner's own refusals come back through n2 as n1 gives them.
    with pytest.raises(ClientError) as via_n2:
        n2.client().resume_microvm(microvmIdentifier=vm_id + "-nope")
    assert error_code(via_n2.value) == "ResourceNotFoundException"

    n2.client().terminate_microvm(microvmIdentifier=vm_id)
    ended = wait_microvm(n1.client(), vm_id, "TERMINATED", timeout=60)
    assert ended.get("stateReason"), ended
    status, _ = n2.get(host, token)
    assert status == 404
    # Suspending a terminated VM is refused alike through either node.
    codes = []
    for node in (n1, n2):
        with pytest.raises(ClientError) as info:
            node.client().suspend_microvm(microvmIdentifier=vm_id)
        codes.append(error_code(info.value))
    assert codes[0] == codes[1] == "ConflictException", codes


def test_shell_and_fork_through_a_node_that_does_not_run_the_vm(cluster):
    n1, n2 = cluster
    run = n1.client().run_microvm(imageIdentifier=IMAGE, idlePolicy=POLICY,
                                  ingressNetworkConnectors=["HTTP_INGRESS", "SHELL_INGRESS"])
    vm_id, children = run["microvmId"], []
    try:
        wait_microvm(n2.client(), vm_id, "RUNNING", timeout=90)
        host = urllib.parse.urlsplit(run["endpoint"]).netloc
        token = endpoint_token(n1.client(), vm_id)
        assert n2.counter(host, token) == 1

        # The shell, framed as the service frames it, through n2: typed
        # bytes, a resize and the exit status all cross the tunnel.
        ws = open_shell(f"http://127.0.0.1:{n2.endpoint_port}", shell_token(n2.client(), vm_id),
                        host=host)
        try:
            session_init(ws)
            out = type_and_read(ws, "cat /run/ember-microvm-id; echo; echo $((6*7))\n",
                                r"\n42\r?\n")
            assert vm_id in out, out
            resize_then_exit(ws, code=7)
        finally:
            ws.close()

        # A fork asked of n2 is made where the parent's memory is: n1.
        before = listed_nodes(n1)
        status, answer = n2.emberd.fork(vm_id, '{"count": 2}')
        assert status == 200, answer
        children = [(m["microvmId"], urllib.parse.urlsplit(m["endpoint"]).netloc)
                    for m in answer["microvms"]]
        assert len(children) == 2, answer
        for child, child_host in children:
            wait_microvm(n2.client(), child, "RUNNING", timeout=120)
            # Each child goes on from the parent's memory, through n2.
            assert n2.counter(child_host, endpoint_token(n2.client(), child)) == 2
        after = listed_nodes(n1)
        assert after["n1"]["liveMicrovms"] == before["n1"]["liveMicrovms"] + 2, after
        assert after["n2"]["liveMicrovms"] == before["n2"]["liveMicrovms"], after
        assert n2.counter(host, token) == 2

        # The owner's refusal comes back through n2 as n1 gives it.
        n2.client().suspend_microvm(microvmIdentifier=vm_id)
        wait_microvm(n2.client(), vm_id, "SUSPENDED", timeout=90)
        refusals = [node.emberd.fork(vm_id) for node in (n1, n2)]
        assert refusals[0] == refusals[1], refusals
        status, answer = refusals[1]
        assert status == 409 and re.search(r"only a RUNNING microVM can be forked",
                                           answer["message"]), refusals
    finally:
        for child, _ in children:
            terminate_quietly(n1.client(), child)
        terminate_quietly(n1.client(), vm_id)


def test_a_run_through_a_node_without_the_image_is_placed_where_it_is(cluster):
    n1, n2 = cluster
    before = listed_nodes(n2)
    # n1 reports what it can take; placement counts on it.
    assert before["n1"].get("freeMemoryMib", 0) >= 512, before
    vm_id = None
    try:
        run = n2.client().run_microvm(imageIdentifier=IMAGE, idlePolicy=POLICY)
        vm_id = run["microvmId"]
        assert run["state"] == "PENDING", run
        assert run["endpoint"].startswith(f"http://{vm_id}.{DOMAIN}:"), run
        wait_microvm(n2.client(), vm_id, "RUNNING", timeout=90)
        # Nothing in this module runs on n2 (the other tests' VMs may
        # still be ending on n1, so n1's count is no baseline).
        after = listed_nodes(n2)
        assert after["n2"]["liveMicrovms"] == 0, after
        assert after["n1"]["liveMicrovms"] >= 1, after
        host = urllib.parse.urlsplit(run["endpoint"]).netloc
        token = endpoint_token(n2.client(), vm_id)
        assert n2.counter(host, token) == 1
        assert n1.counter(host, token) == 2

        # n1 draining: nowhere to place it, said at once, nothing recorded.
        listed = len(n2.client().list_microvms()["items"])
        set_drain(n2, "n1", True)
        try:
            with pytest.raises(ClientError) as info:
                n2.client().run_microvm(imageIdentifier=IMAGE, idlePolicy=POLICY)
        finally:
            set_drain(n2, "n1", False)
        assert error_code(info.value) == "InsufficientCapacityException", info.value
        assert "node n1 is DRAINING" in str(info.value), info.value
        assert len(n2.client().list_microvms()["items"]) == listed
        # The placed VM is n1's like any other: n2 forwards its suspend.
        n2.client().suspend_microvm(microvmIdentifier=vm_id)
        wait_microvm(n2.client(), vm_id, "SUSPENDED", timeout=90)
        assert n2.counter(host, token) == 3
    finally:
        if vm_id:
            terminate_quietly(n2.client(), vm_id)


def test_one_client_token_sent_to_both_nodes_at_once_makes_one_vm(cluster):
    n1, n2 = cluster
    token = f"cluster-{os.urandom(6).hex()}"
    before = {m["microvmId"] for m in n2.client().list_microvms()["items"]}
    answers, errors = [], []
    barrier = threading.Barrier(6)

    def run(node):
        client = node.client()
        barrier.wait()
        try:
            answers.append(client.run_microvm(imageIdentifier=IMAGE, idlePolicy=POLICY,
                                              clientToken=token)["microvmId"])
        except ClientError as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(node,)) for node in (n1, n2) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = {m["microvmId"] for m in n2.client().list_microvms()["items"]} - before
    try:
        assert not errors, errors
        assert len(answers) == 6 and len(set(answers)) == 1, answers
        assert made == set(answers), made
        wait_microvm(n1.client(), answers[0], "RUNNING", timeout=90)
    finally:
        for vm_id in made:
            terminate_quietly(n1.client(), vm_id)
