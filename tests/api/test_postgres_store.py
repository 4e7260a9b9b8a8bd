"""emberd on the Postgres state store (`--store postgres://…`), with real
guests: the image, its build and the microVM live in Postgres' tables (no
SQLite file is made), one clientToken makes one VM, a microVM keeps its
memory through suspend, resume and a SIGKILL of emberd, a second emberd on
the same database with the same node id is refused, a database
that cannot be reached stops emberd at start with the reason, and state
changes made while Postgres is down are written once it is back."""

import time

import pytest
from botocore.exceptions import ClientError

from harness import (counter, create_and_wait, endpoint_token, error_code, suspended_tier,
                     terminate_quietly, wait_microvm)
from postgres_server import PostgresServer


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


def test_emberd_keeps_its_state_in_postgres(separate_emberd, hello_zip, postgres):
    url = postgres.create_database("ember_a")
    ember = separate_emberd("--min-idle-seconds", "2", "--store", url)
    assert not (ember.data_dir / "ember.db").exists(), "a SQLite file was made beside Postgres"
    client = ember.client()

    image, version = create_and_wait(client, "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    assert postgres.query("ember_a", "SELECT name, state FROM images") == [["hello-http", "CREATED"]]
    assert postgres.query("ember_a", "SELECT state FROM builds") == [["SUCCESSFUL"]]

    policy = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600,
              "autoResumeEnabled": True}
    run = client.run_microvm(imageIdentifier="hello-http", idlePolicy=policy,
                             clientToken="pg-token-1")
    vm_id = run["microvmId"]
    try:
        again = client.run_microvm(imageIdentifier="hello-http", idlePolicy=policy,
                                   clientToken="pg-token-1")
        assert again["microvmId"] == vm_id, "one clientToken made two microVMs"
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        assert postgres.query("ember_a", "SELECT id, state FROM microvms") == [[vm_id, "RUNNING"]]
        token = endpoint_token(client, vm_id)
        assert [counter(run["endpoint"], token) for _ in range(2)] == [1, 2]

        client.suspend_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "SUSPENDED", timeout=90)
        assert postgres.query("ember_a", "SELECT state FROM microvms") == [["SUSPENDED"]]
        assert counter(run["endpoint"], token) == 3, "the resumed VM lost its memory"
        wait_microvm(client, vm_id, "RUNNING", timeout=30)

        # A second emberd as the same node (both default to the host name)
        # would take this VM for its own at recovery: it is refused before
        # it reads any state.
        with pytest.raises(RuntimeError) as refused:
            separate_emberd("--store", url)
        assert "another emberd already runs as node" in str(refused.value)

        ember.kill9()
        ember.start()
        got = client.get_microvm(microvmIdentifier=vm_id)
        assert got["state"] == "RUNNING", (got, ember.log_tail())
        assert counter(run["endpoint"], token) == 4, "the re-attached VM lost its memory"

        client.terminate_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "TERMINATED", timeout=60)
        assert postgres.query("ember_a", "SELECT state FROM microvms") == [["TERMINATED"]]
        with pytest.raises(ClientError) as info:
            client.get_microvm_image_version(imageIdentifier="hello-http", imageVersion="9")
        assert error_code(info.value) == "ResourceNotFoundException"
    finally:
        terminate_quietly(client, vm_id)


def test_an_unreachable_database_stops_emberd_at_start(separate_emberd, postgres):
    url = postgres.url("no_such_database")
    with pytest.raises(RuntimeError) as info:
        separate_emberd("--store", url)
    message = str(info.value)
    assert "opening the state store postgresql://" in message, message
    assert "no_such_database" in message, message
    with pytest.raises(RuntimeError) as info:
        separate_emberd("--store", "mysql://db/ember")
    assert "unknown store" in str(info.value)


def test_state_changes_during_an_outage_are_written_when_postgres_is_back(
        separate_emberd, hello_zip, postgres):
    url = postgres.create_database("ember_outage")
    # Deep suspends, so the suspend's end shows in the VM's folder.
    ember = separate_emberd("--warm-suspended-mib", "0", "--store", url)
    client = ember.client()
    image, version = create_and_wait(client, "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    policy = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600,
              "autoResumeEnabled": True}
    vm_id = client.run_microvm(imageIdentifier="hello-http", idlePolicy=policy)["microvmId"]
    try:
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        run = client.get_microvm(microvmIdentifier=vm_id)
        token = endpoint_token(client, vm_id)
        assert counter(run["endpoint"], token) == 1

        postgres.pause()
        try:
            # Suspending needs no read: the VM's state lives in emberd.
            client.suspend_microvm(microvmIdentifier=vm_id)
            deadline = time.monotonic() + 60
            while suspended_tier(ember, vm_id) != "disk":
                assert time.monotonic() < deadline, suspended_tier(ember, vm_id)
                time.sleep(0.5)
            # Reads need the store: they fail as the service's error, not a hang.
            with pytest.raises(ClientError) as info:
                ember.client().get_microvm(microvmIdentifier=vm_id)
            assert error_code(info.value) == "InternalServerException", info.value.response
        finally:
            postgres.resume()

        deadline = time.monotonic() + 20
        while postgres.query("ember_outage", "SELECT state FROM microvms") != [["SUSPENDED"]]:
            assert time.monotonic() < deadline, (
                postgres.query("ember_outage", "SELECT state, state_reason FROM microvms"),
                ember.log_tail())
            time.sleep(0.5)
        assert client.get_microvm(microvmIdentifier=vm_id)["state"] == "SUSPENDED"
        # The node lock went with the old server's session: emberd takes it
        # again, and a second emberd as the same node is still refused.
        lock_held = ("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                     "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = 'ember_outage' "
                     "AND a.application_name LIKE 'emberd (node lock %'")
        deadline = time.monotonic() + 20
        while postgres.query("ember_outage", lock_held) != [["1"]]:
            assert time.monotonic() < deadline, ember.log_tail()
            time.sleep(0.5)
        with pytest.raises(RuntimeError) as refused:
            separate_emberd("--store", url)
        assert "another emberd already runs as node" in str(refused.value)
        assert counter(run["endpoint"], token) == 2, "the VM lost its memory"
        wait_microvm(client, vm_id, "RUNNING", timeout=30)
        # A restart reads the state the outage's write left.
        ember.kill9()
        ember.start()
        assert client.get_microvm(microvmIdentifier=vm_id)["state"] == "RUNNING"
        assert counter(run["endpoint"], token) == 3
    finally:
        terminate_quietly(client, vm_id)
