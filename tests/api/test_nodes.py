"""Nodes on one Postgres store (issue 14, item 2): two real emberd nodes,
n1 and n2, with a 4 s lease. Each reads every microVM but acts only on its
own; a node id runs once; a drained node takes no new microVMs; a node
that cannot reach the store fences itself (vCPUs paused, endpoints 503)
and continues with memory intact once it can; a node that stops renewing
is declared dead by the other, its VMs TERMINATED with the reason, and
when it wakes it ends their QEMUs and registers again."""

import json
import signal
import time
import urllib.error

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_files
from harness import (COUNTER_LINE, REPO, counter, create_and_wait, endpoint_request,
                     endpoint_token, ember_cli, error_code, qemu_pids, terminate_quietly, wait_microvm)
from postgres_server import PostgresServer

LEASE = "4"
IMAGE = "hello-uptime"
# hello-http with a CGI that prints the guest's clock (/proc/uptime), which
# stands still while the VM's vCPUs are paused.
UPTIME_CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo
cut -d' ' -f1 /proc/uptime
"""


def zip_hello_uptime(dest):
    src = REPO / "examples" / "hello-http"
    files = {str(p.relative_to(src)): p.read_text() for p in src.rglob("*") if p.is_file()}
    files["www/cgi-bin/uptime.cgi"] = UPTIME_CGI
    files["Dockerfile"] = files["Dockerfile"].replace(
        "EXPOSE", "RUN chmod 755 /www/cgi-bin/uptime.cgi\nEXPOSE")
    return zip_files(dest, files)


def guest_uptime(endpoint, token):
    status, body, _ = endpoint_request(endpoint, token, path="/cgi-bin/uptime.cgi", timeout=10)
    assert status == 200, (status, body)
    return float(body.split()[0])
POLICY = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600,
          "autoResumeEnabled": True}


@pytest.fixture(scope="module")
def cluster(module_emberd, tmp_path_factory):
    server = PostgresServer().start()
    url = server.create_database("ember_nodes")
    n1 = module_emberd("--store", url, "--node-id", "n1", "--node-lease-seconds", LEASE)
    n2 = module_emberd("--store", url, "--node-id", "n2", "--node-lease-seconds", LEASE)
    zip_path = zip_hello_uptime(tmp_path_factory.mktemp("nodes") / "hello-uptime.zip")
    image, version = create_and_wait(n1.client(), IMAGE, zip_path)
    assert image["state"] == "CREATED", version.get("stateReason")
    yield server, url, n1, n2
    server.stop()


def nodes(ember):
    with ember.signed_get("/ember/v1/nodes") as resp:
        return {n["nodeId"]: n for n in json.loads(resp.read())["nodes"]}


def post(ember, path):
    try:
        with ember.signed_request("POST", path, b"") as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.25)


def test_nodes_share_the_store_and_each_acts_on_its_own(cluster, separate_emberd):
    _, url, n1, n2 = cluster
    listed = nodes(n2)
    assert {k: (v["state"], v["epoch"]) for k, v in listed.items()} == {
        "n1": ("READY", 1), "n2": ("READY", 1)}, listed
    assert listed["n2"]["thisNode"] and not listed["n1"]["thisNode"]
    assert 0 < listed["n1"]["leaseSecondsLeft"] <= 4
    # The operator's view, through the CLI (this node starred).
    shown = ember_cli(n1, "node", "ls")
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split()[1:4] for line in shown.stdout.splitlines()[1:]}
    assert rows == {"n1*": ["READY", "1", rows["n1*"][2]], "n2": ["READY", "1", rows["n2"][2]]}, \
        shown.stdout

    # One process per node id; the second is refused before it touches state.
    with pytest.raises(RuntimeError) as refused:
        separate_emberd("--store", url, "--node-id", "n1")
    assert "another emberd already runs as node n1" in str(refused.value)
    with pytest.raises(RuntimeError) as refused:
        separate_emberd("--node-id", "no spaces")
    assert "is not a node id" in str(refused.value)

    vm_id = n1.client().run_microvm(imageIdentifier=IMAGE, idlePolicy=POLICY)["microvmId"]
    try:
        # Reads come from the store, through either node.
        wait_microvm(n2.client(), vm_id, "RUNNING", timeout=90)
        assert nodes(n2)["n1"]["liveMicrovms"] == 1
        # Changes only through the owner: the other says where it runs.
        for act in (n2.client().suspend_microvm, n2.client().terminate_microvm):
            with pytest.raises(ClientError) as info:
                act(microvmIdentifier=vm_id)
            assert error_code(info.value) == "ConflictException"
            assert "runs on node n1" in str(info.value), info.value
        assert n1.client().get_microvm(microvmIdentifier=vm_id)["state"] == "RUNNING"
        # n1's snapshot is in n1's data dir, and without cluster mode n2
        # cannot place the run there: it says so rather than fail a restore.
        with pytest.raises(ClientError) as info:
            n2.client().run_microvm(imageIdentifier=IMAGE)
        assert error_code(info.value) == "ConflictException"
        assert "was built by node n1" in str(info.value), info.value
        assert "only in cluster mode" in str(info.value), info.value

        # A drain set through n2 reaches n1 at its next renewal; the VM it
        # runs goes on.
        status, answer = post(n2, "/ember/v1/nodes/n1/drain")
        assert status == 200 and answer["state"] == "DRAINING", answer

        def refused_on_n1():
            try:
                extra = n1.client().run_microvm(imageIdentifier=IMAGE)
            except ClientError as e:
                return error_code(e) == "InsufficientCapacityException" and "draining" in str(e)
            terminate_quietly(n1.client(), extra["microvmId"])
            return False
        wait_for("n1 refuses runs while draining", refused_on_n1, 10)
        assert n1.client().get_microvm(microvmIdentifier=vm_id)["state"] == "RUNNING"
        shown = ember_cli(n2, "node", "undrain", "n1")
        assert shown.returncode == 0 and "READY" in shown.stdout, (shown.stdout, shown.stderr)

        def runs_on_n1():
            try:
                extra = n1.client().run_microvm(imageIdentifier=IMAGE)
            except ClientError as e:
                assert "draining" in str(e), e
                return False
            terminate_quietly(n1.client(), extra["microvmId"])
            return True
        wait_for("n1 takes runs again once undrained", runs_on_n1, 10)
        status, answer = post(n2, "/ember/v1/nodes/n9/drain")
        assert status == 404, answer
    finally:
        terminate_quietly(n1.client(), vm_id)


def test_a_node_cut_off_from_the_store_holds_still_and_goes_on_after(cluster):
    server, _, n1, n2 = cluster
    client = n1.client()
    vm_id = client.run_microvm(imageIdentifier=IMAGE, idlePolicy=POLICY)["microvmId"]
    try:
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        endpoint = client.get_microvm(microvmIdentifier=vm_id)["endpoint"]
        token = endpoint_token(client, vm_id)
        assert counter(endpoint, token) == 1
        clock_before, wall_before = guest_uptime(endpoint, token), time.monotonic()

        # Requests that land before the fence count; the count goes on
        # from the last one after it.
        last = [1]

        def fenced():
            status, body, _ = endpoint_request(endpoint, token, timeout=10)
            if status == 200:
                last[0] = int(COUNTER_LINE.search(body).group(1))
            return status == 503 and "lease" in body

        server.pause()
        try:
            wait_for("the endpoint answers 503 while fenced", fenced, 10)
            with pytest.raises(ClientError) as info:
                client.suspend_microvm(microvmIdentifier=vm_id)
            assert error_code(info.value) == "InternalServerException"
            assert "lease" in str(info.value)
            # Longer than the lease: both leases expire in the store's clock.
            time.sleep(3)
        finally:
            server.resume()

        def answers():
            status, body, _ = endpoint_request(endpoint, token, timeout=10)
            return status == 200 and int(COUNTER_LINE.search(body).group(1))
        first = wait_for("the endpoint answers again", answers, 20)
        assert first == last[0] + 1, "the VM lost its memory while fenced"
        # The guest's clock stood still while its vCPUs were paused: it
        # fell behind the host's by most of the outage (over 4 s of it).
        clock_gain = guest_uptime(endpoint, token) - clock_before
        wall_gain = time.monotonic() - wall_before
        assert wall_gain - clock_gain > 3, (wall_gain, clock_gain)
        # Nobody was declared dead for the store's own outage.
        time.sleep(5)
        listed = nodes(n2)
        assert {k: (v["state"], v["epoch"]) for k, v in listed.items()} == {
            "n1": ("READY", 1), "n2": ("READY", 1)}, listed
        assert client.get_microvm(microvmIdentifier=vm_id)["state"] == "RUNNING"
    finally:
        terminate_quietly(client, vm_id)


def test_a_node_that_stops_renewing_is_declared_dead_and_ends_its_vms_on_waking(cluster):
    _, _, n1, n2 = cluster
    client = n1.client()
    vm_id = client.run_microvm(imageIdentifier=IMAGE, idlePolicy=POLICY)["microvmId"]
    wait_microvm(client, vm_id, "RUNNING", timeout=90)
    assert qemu_pids(n1, vm_id)
    n1.proc.send_signal(signal.SIGSTOP)
    try:
        dead = wait_for("n2 declares n1 dead",
                        lambda: nodes(n2)["n1"]["state"] == "DEAD" and nodes(n2)["n1"], 15)
        assert dead["epoch"] == 2, dead
        assert "stopped renewing its lease" in dead["stateReason"], dead
        vm = n2.client().get_microvm(microvmIdentifier=vm_id)
        assert vm["state"] == "TERMINATED", vm
        assert "memory and disk were on that host and are lost" in vm["stateReason"], vm
    finally:
        n1.proc.send_signal(signal.SIGCONT)

    # Awake, n1 learns it lost its lease: it ends the VM's QEMU, keeps the
    # row as the other node wrote it, and registers again.
    wait_for("n1 ends the QEMU it no longer owns", lambda: not qemu_pids(n1, vm_id), 20)
    again = wait_for("n1 registers again",
                     lambda: nodes(n2)["n1"]["state"] == "READY" and nodes(n2)["n1"], 20)
    assert again["epoch"] == 3, again
    vm = n1.client().get_microvm(microvmIdentifier=vm_id)
    assert vm["state"] == "TERMINATED" and "lost" in vm["stateReason"], vm
    fresh = client.run_microvm(imageIdentifier=IMAGE)["microvmId"]
    try:
        wait_microvm(client, fresh, "RUNNING", timeout=90)
        assert nodes(n2)["n1"]["liveMicrovms"] == 1
    finally:
        terminate_quietly(client, fresh)
