"""Fork (`POST /ember/v1/microvms/{id}/fork`, Ember's own): N new microVMs
that start from a running microVM's memory and disk at the moment of the
call, then live their own lives: their own id, endpoint and tokens, their
own RNG, memory and disk that diverge from the parent's, and a fork of a
fork works. Bad requests get the model's error shapes and create nothing."""

import json

import pytest

from harness import (create_and_wait, ember_cli, endpoint_request, endpoint_token, terminate_quietly,
                     wait_microvm)
from memory_app import PORT, get, zip_memory_app

IMAGE = "fork-app"


@pytest.fixture(scope="module")
def fork_app(ember, tmp_path_factory):
    client = ember.client()
    zip_path = zip_memory_app(tmp_path_factory.mktemp("fork") / "fork.zip")
    image, version = create_and_wait(client, IMAGE, zip_path, timeout=600)
    assert image["state"] == "CREATED", version.get("stateReason")
    return IMAGE


def running(client, microvm_id):
    """(GetMicrovm answer once RUNNING, a token for its endpoint)."""
    vm = wait_microvm(client, microvm_id, "RUNNING")
    return vm, endpoint_token(client, microvm_id)


def live_ids(client):
    return {m["microvmId"] for m in client.list_microvms()["items"]
            if m["state"] not in ("TERMINATING", "TERMINATED")}


def test_forks_start_from_the_parents_state_and_then_diverge(ember, client, fork_app):
    parent_id = client.run_microvm(imageIdentifier=fork_app)["microvmId"]
    ids = [parent_id]
    try:
        parent, parent_token = running(client, parent_id)
        assert get(parent, parent_token, "/cgi-bin/append.cgi?parent-1") == ["1"]
        memory_sum, disk_sum, lines = get(parent, parent_token, "/cgi-bin/sum.cgi")
        assert lines == "1"

        status, answer = ember.fork(parent_id, '{"count": 2}')
        assert status == 200, answer
        children = answer["microvms"]
        ids += [c["microvmId"] for c in children]
        assert len(children) == 2
        assert len(set(ids)) == 3, ids
        assert len({parent["endpoint"]} | {c["endpoint"] for c in children}) == 3
        for child in children:
            assert child["state"] == "PENDING"
            assert child["imageArn"] == parent["imageArn"]
            assert child["imageVersion"] == parent["imageVersion"]

        vms = {}
        for child in children:
            vm, token = running(client, child["microvmId"])
            assert vm["stateReason"] == f"forked from {parent_id}"
            vms[child["microvmId"]] = (vm, token)
            # The parent's memory and disk at the fork.
            assert get(vm, token, "/cgi-bin/sum.cgi") == [memory_sum, disk_sum, "1"]
            # Tokens are per microVM: the parent's opens no child.
            status = endpoint_request(vm["endpoint"], parent_token, PORT,
                                      path="/cgi-bin/sum.cgi")[0]
            assert status != 200, f"the parent's token opened child {child['microvmId']}"
        (a, a_token), (b, b_token) = vms.values()

        # Each knows who it is, and no two draw the same random bytes.
        whoami = {}
        for microvm_id, (vm, token) in [(parent_id, (parent, parent_token)), *vms.items()]:
            name, random_sum = get(vm, token, "/cgi-bin/whoami.cgi")
            assert name == microvm_id
            whoami[microvm_id] = random_sum
        assert len(set(whoami.values())) == 3, f"forks share their RNG: {whoami}"

        # Their disks diverge from here.
        assert get(a, a_token, "/cgi-bin/append.cgi?a-2") == ["2"]
        assert get(parent, parent_token, "/cgi-bin/append.cgi?parent-2") == ["2"]
        a_sums, parent_sums = (get(a, a_token, "/cgi-bin/sum.cgi"),
                               get(parent, parent_token, "/cgi-bin/sum.cgi"))
        assert a_sums[1] != parent_sums[1]
        assert get(b, b_token, "/cgi-bin/sum.cgi") == [memory_sum, disk_sum, "1"]

        # A fork of a fork, of one child, with the CLI: from A's state,
        # not the parent's.
        out = ember_cli(ember, "fork", a["microvmId"], "--count", "1")
        assert out.returncode == 0, out.stderr
        [grandchild] = json.loads(out.stdout)
        ids.append(grandchild["microvmId"])
        assert grandchild["state"] == "RUNNING", grandchild
        g_token = endpoint_token(client, grandchild["microvmId"])
        assert get(grandchild, g_token, "/cgi-bin/sum.cgi") == a_sums

        # The children need nothing of the parent: it ends, they go on,
        # and survive a suspend and resume with their memory and disk.
        client.terminate_microvm(microvmIdentifier=parent_id)
        wait_microvm(client, parent_id, "TERMINATED")
        client.suspend_microvm(microvmIdentifier=b["microvmId"])
        wait_microvm(client, b["microvmId"], "SUSPENDED")
        client.resume_microvm(microvmIdentifier=b["microvmId"])
        b, _ = running(client, b["microvmId"])
        assert get(b, b_token, "/cgi-bin/sum.cgi") == [memory_sum, disk_sum, "1"]
        assert get(a, a_token, "/cgi-bin/sum.cgi") == a_sums
        # Every fork's snapshot went once its children had started.
        assert list((ember.data_dir / "forks").iterdir()) == []
    finally:
        terminate_quietly(client, *ids)


def test_bad_forks_are_refused_and_make_nothing(ember, client, fork_app):
    parent_id = client.run_microvm(imageIdentifier=fork_app)["microvmId"]
    try:
        wait_microvm(client, parent_id, "RUNNING")
        before = live_ids(client)
        for body in ('{"count": 0}', '{"count": 17}', '{"count": -1}', '{"count": "2"}',
                     '{"count": 1, "memory": 4096}', 'not json'):
            status, answer = ember.fork(parent_id, body)
            assert (status, answer.get("__type")) == (400, "ValidationException"), (body, answer)
        status, answer = ember.fork("mvm-doesnotexist")
        assert (status, answer.get("__type")) == (404, "ResourceNotFoundException"), answer

        client.suspend_microvm(microvmIdentifier=parent_id)
        wait_microvm(client, parent_id, "SUSPENDED")
        status, answer = ember.fork(parent_id)
        assert (status, answer.get("__type")) == (409, "ConflictException"), answer
        assert "only a RUNNING microVM can be forked" in answer["message"]
        assert live_ids(client) == before
    finally:
        terminate_quietly(client, parent_id)
