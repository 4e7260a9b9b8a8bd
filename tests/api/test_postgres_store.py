"""emberd on the Postgres state store (`--store postgres://…`), with real
guests: the image, its build and the microVM live in Postgres' tables (no
SQLite file is made), one clientToken makes one VM, a microVM keeps its
memory through suspend, resume and a SIGKILL of emberd, a second emberd on
the same database is refused (hosts cannot share one yet), and a database
that cannot be reached stops emberd at start with the reason."""

import pytest
from botocore.exceptions import ClientError

from harness import (counter, create_and_wait, endpoint_token, error_code,
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

        # A second emberd on the same database would take this VM for its
        # own at recovery: it is refused before it reads any state.
        with pytest.raises(RuntimeError) as refused:
            separate_emberd("--store", url)
        assert "another emberd already uses this Postgres database" in str(refused.value)

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
