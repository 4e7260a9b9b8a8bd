"""Images on every node (issue 14, item 5): two real emberd nodes on one
Postgres and one S3-compatible object store (moto's server). A build on n1
uploads its snapshot as content-addressed chunks before its version is
SUCCESSFUL; a run sent to any node may then be placed on either, and n2,
which never built the image, fetches the snapshot (digest-checked) into
its cache and restores it. A chunk damaged in the store is caught when a
node fetches it: the run ends TERMINATED saying so. Runs go only to nodes
of the snapshot's compatibility class, and `--cluster-max-microvms` counts
both nodes' microVMs."""

import shutil
import time
import urllib.parse

import pytest

from artifacts import zip_dir
from cluster_nodes import listed_nodes, set_drain, start_nodes
from botocore.exceptions import ClientError
from harness import (REPO, create_and_wait, endpoint_token, error_code, terminate_quietly,
                     wait_microvm)
from postgres_server import PostgresServer
from s3_server import moto_server, s3_client

DOMAIN = "vms.blobs.test"
IMAGE = "hello-blobs"
BUCKET = "ember-images"
PREFIX = "cluster/"
CLUSTER_QUOTA = 3
POLICY = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600,
          "autoResumeEnabled": True}


def fetched(node):
    """The snapshots `node` fetched into its cache."""
    cache = node.emberd.data_dir / "fetched"
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


def run_drained(via, drained, vms):
    """A run sent to `via` while node `drained` takes none."""
    set_drain(via, drained, True)
    try:
        return run_on(via, vms)
    finally:
        set_drain(via, drained, False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("s3")) as url:
        client = s3_client(url)
        client.create_bucket(Bucket=BUCKET)
        yield url, client


def keys(client, under):
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX + under)
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(module_emberd, store, postgres, tmp_path_factory):
    s3_url, _ = store
    url = postgres.create_database("ember_blobs")
    nodes = start_nodes(module_emberd, url, tmp_path_factory.mktemp("cluster"), DOMAIN,
                        ("n1", "n2"), "--blob-store", f"s3://{BUCKET}/{PREFIX}",
                        "--s3-endpoint", s3_url, "--cluster-max-microvms", str(CLUSTER_QUOTA))
    n1, n2 = nodes
    zip_path = zip_dir(REPO / "examples" / "hello-http",
                       tmp_path_factory.mktemp("zips") / "hello.zip")
    image, version = create_and_wait(n1.client(), IMAGE, zip_path)
    assert image["state"] == "CREATED", version.get("stateReason")
    yield n1, n2


def run_on(via, vms):
    run = via.client().run_microvm(imageIdentifier=IMAGE, idlePolicy=POLICY)
    vms.append(run["microvmId"])
    assert run["state"] == "PENDING", run
    return run


def test_the_build_uploads_its_snapshot_as_chunks(cluster, store):
    n1, _ = cluster
    _, client = store
    indexes = keys(client, "snapshots/")
    chunks = keys(client, "chunks/")
    assert len(indexes) == 1, indexes
    assert chunks, "no chunk was uploaded"
    # The RAM image is mostly zero pages, which are not stored: the chunks
    # hold far less than the guest's memory plus its disk.
    stored = sum(client.head_object(Bucket=BUCKET, Key=k)["ContentLength"] for k in chunks)
    assert stored < 200 << 20, stored
    # n1 built it from its own data dir: nothing fetched.
    assert fetched(n1) == []


def test_a_node_that_never_built_the_image_fetches_and_runs_it(cluster):
    n1, n2 = cluster
    vms = []
    try:
        # n1 draining: the run sent to n1 can only go to n2.
        run = run_drained(n1, "n1", vms)
        vm_id = run["microvmId"]
        wait_microvm(n1.client(), vm_id, "RUNNING", timeout=120)
        assert listed_nodes(n2)["n2"]["liveMicrovms"] == 1
        assert len(fetched(n2)) == 1, fetched(n2)
        host = urllib.parse.urlsplit(run["endpoint"]).netloc
        token = endpoint_token(n1.client(), vm_id)
        assert n1.counter(host, token) == 1
        assert n2.counter(host, token) == 2
        # It keeps its state across a suspend and an auto-resume on n2.
        n1.client().suspend_microvm(microvmIdentifier=vm_id)
        wait_microvm(n1.client(), vm_id, "SUSPENDED", timeout=90)
        assert n1.counter(host, token) == 3

        # Undrained, the next runs spread by free memory: n2 has one VM
        # fewer MiB free, so n1 takes the next.
        second = run_on(n2, vms)
        wait_microvm(n2.client(), second["microvmId"], "RUNNING", timeout=120)
        listed = listed_nodes(n2)
        assert listed["n1"]["liveMicrovms"] >= 1 and listed["n2"]["liveMicrovms"] >= 1, listed
        # A second run on n2 restores from its cache: still one copy.
        assert len(fetched(n2)) == 1, fetched(n2)

        # A restarted n2 takes its VM back, still on the fetched snapshot,
        # which it keeps; a suspend and resume there work as before.
        n2.emberd.restart()
        assert n1.counter(host, token) == 4
        n1.client().suspend_microvm(microvmIdentifier=vm_id)
        wait_microvm(n1.client(), vm_id, "SUSPENDED", timeout=90)
        n2.client().resume_microvm(microvmIdentifier=vm_id)
        wait_microvm(n2.client(), vm_id, "RUNNING", timeout=90)
        assert n2.counter(host, token) == 5
        assert len(fetched(n2)) == 1, fetched(n2)
    finally:
        for vm_id in vms:
            terminate_quietly(n1.client(), vm_id)


def test_a_damaged_chunk_is_caught_by_the_node_that_fetches_it(cluster, store):
    n1, n2 = cluster
    _, client = store
    for vm_id in [m["microvmId"] for m in n2.client().list_microvms()["items"]
                  if m["state"] not in ("TERMINATED", "TERMINATING")]:
        terminate_quietly(n2.client(), vm_id)
    # n2 forgets its copy (no VM of its uses it now) and must fetch again.
    for name in fetched(n2):
        shutil.rmtree(n2.emberd.data_dir / "fetched" / name)
    biggest = max(keys(client, "chunks/"),
                  key=lambda k: client.head_object(Bucket=BUCKET, Key=k)["ContentLength"])
    body = client.get_object(Bucket=BUCKET, Key=biggest)["Body"].read()
    damaged = bytes([body[0] ^ 0xFF]) + body[1:]
    client.put_object(Bucket=BUCKET, Key=biggest, Body=damaged)
    vms = []
    try:
        run = run_drained(n1, "n1", vms)
        vm = wait_microvm(n1.client(), run["microvmId"], "TERMINATED", timeout=120)
        reason = vm.get("stateReason", "")
        assert "fetching snapshot" in reason, vm
        assert "sha256" in reason or "digest" in reason, vm
        assert fetched(n2) == []
    finally:
        client.put_object(Bucket=BUCKET, Key=biggest, Body=body)
        for vm_id in vms:
            terminate_quietly(n1.client(), vm_id)


def test_runs_go_only_to_nodes_that_restore_the_snapshot(cluster, postgres):
    """A node records its class (QEMU version, accelerator, CPU) at start,
    the build the class of the snapshot it uploaded. Nodes recorded with
    another class, as a node with another QEMU would be, get no run."""
    n1, n2 = cluster
    listed = listed_nodes(n1)
    ours = listed["n1"].get("compatibilityClass", "")
    assert ours.startswith("qemu ") and listed["n2"].get("compatibilityClass") == ours, listed

    def set_class(node, cls):
        quoted = cls.replace("'", "''")
        postgres.psql("ember_blobs", f"UPDATE nodes SET compat_class = '{quoted}' "
                                     f"WHERE id = '{node}'")

    other = "qemu 0.0.0 kvm Another CPU"
    vms = []
    try:
        for node in ("n1", "n2"):
            set_class(node, other)
        with pytest.raises(ClientError) as info:
            n2.client().run_microvm(imageIdentifier=IMAGE)
        assert error_code(info.value) == "InsufficientCapacityException"
        message = info.value.response["Error"]["Message"]
        assert ours in message and f"n1: {other}" in message, message

        # n1 of the class again: the run sent to n2 is placed there.
        set_class("n1", ours)
        before = listed_nodes(n2)["n1"]["liveMicrovms"]
        run = run_on(n2, vms)
        assert listed_nodes(n2)["n1"]["liveMicrovms"] == before + 1
        wait_microvm(n2.client(), run["microvmId"], "RUNNING", timeout=120)
    finally:
        for node in ("n1", "n2"):
            set_class(node, ours)
        for vm_id in vms:
            terminate_quietly(n1.client(), vm_id)


def live(node):
    return [m["microvmId"] for m in node.client().list_microvms()["items"]
            if m["state"] != "TERMINATED"]


def test_the_cluster_quota_counts_both_nodes_microvms(cluster):
    n1, n2 = cluster
    deadline = time.monotonic() + 60
    while live(n1) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not live(n1), "the earlier tests' VMs did not end"
    vms = []
    try:
        for via in [n1, n2, n1][:CLUSTER_QUOTA]:
            run_on(via, vms)
        # A resume of a run its owner may not have started yet is a
        # success, as for any VM that is starting.
        n2.client().resume_microvm(microvmIdentifier=vms[0])
        for via in (n1, n2):
            with pytest.raises(ClientError) as info:
                via.client().run_microvm(imageIdentifier=IMAGE)
            assert error_code(info.value) == "ServiceQuotaExceededException"
            message = info.value.response["Error"]["Message"]
            assert f"at most {CLUSTER_QUOTA} microVMs" in message, message
        # An ended VM makes room, wherever it ran.
        n2.client().terminate_microvm(microvmIdentifier=vms[0])
        wait_microvm(n2.client(), vms[0], "TERMINATED", timeout=60)
        run_on(n2, vms)
    finally:
        for vm_id in vms:
            terminate_quietly(n1.client(), vm_id)
