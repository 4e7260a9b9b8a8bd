"""The warm pool (`--warm-pool N`, or the image's `ember:warm-pool` tag):
once an image version is built emberd restores N VMs of it ahead of time,
each under the id it will have; a RunMicrovm claims one (its id is the
pooled VM's, its state is the image's, not another run's), the pool is
topped up again, an emberd restart ends the pooled VMs it left (they have
no record) while the microVMs keep running and fills the pool again, and
deleting the image ends its pool. The tag sets one image's size, checked
when it is set."""

import time

import pytest
from botocore.exceptions import ClientError

from harness import (counter, create_and_wait, endpoint_token, error_code, image_arn, qemu_pids,
                     terminate_quietly, wait_microvm)


def pooled_ids(emberd):
    return sorted(p.name for p in (emberd.data_dir / "pool").iterdir())


def wait_pooled(emberd, exclude=(), timeout=90):
    """The id of a VM restored into the pool (its QEMU up and its restore
    logged), other than `exclude`."""
    deadline = time.monotonic() + timeout
    while True:
        ids = [i for i in pooled_ids(emberd) if i not in exclude]
        restored = [line for line in emberd.log_path.read_text(errors="replace").splitlines()
                    if "warm pool: restored" in line]
        ready = [i for i in ids if qemu_pids(emberd, i) and any(i in line for line in restored)]
        if ready:
            return ready[0]
        assert time.monotonic() < deadline, f"no pooled VM after {timeout} s\n{emberd.log_tail()}"
        time.sleep(0.5)


def test_runs_claim_pooled_vms_and_a_restart_ends_the_pool(separate_emberd, hello_zip):
    emberd = separate_emberd("--warm-pool", "1")
    client = emberd.client()
    image, version = create_and_wait(client, "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    # Filled once the version was built, before any run.
    prefilled = wait_pooled(emberd)

    first = client.run_microvm(imageIdentifier="hello-http")["microvmId"]
    ids = [first]
    try:
        assert first == prefilled, "the first run did not claim the prefilled VM"
        vm = wait_microvm(client, first, "RUNNING")
        first_token = endpoint_token(client, first)
        assert counter(vm["endpoint"], first_token) == 1
        pooled = wait_pooled(emberd, exclude=(first,))

        second = client.run_microvm(imageIdentifier="hello-http")["microvmId"]
        ids.append(second)
        assert second == pooled, "the run did not claim the pooled VM"
        vm2 = wait_microvm(client, second, "RUNNING")
        # The image's state, not the first run's: its own counter.
        assert counter(vm2["endpoint"], endpoint_token(client, second)) == 1
        assert counter(vm["endpoint"], first_token) == 2
        # Claimed means out of the pool, which is topped up again.
        refill = wait_pooled(emberd, exclude=(first, pooled))
        assert second not in pooled_ids(emberd)
        client.terminate_microvm(microvmIdentifier=second)
        wait_microvm(client, second, "TERMINATED")
        assert qemu_pids(emberd, second) == []

        emberd.kill9()
        emberd.start()
        # The pooled VM had no record: ended, not adopted.
        deadline = time.monotonic() + 60
        while qemu_pids(emberd, refill) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert qemu_pids(emberd, refill) == [], "a pooled VM outlived the restart"
        assert refill not in [m["microvmId"] for m in client.list_microvms()["items"]]
        assert counter(vm["endpoint"], first_token) == 3
        # The restarted emberd fills the pool again, without a run.
        after_restart = wait_pooled(emberd, exclude=(first, pooled, refill))

        # Deleting the image ends its pool: nothing may read its snapshot.
        third = client.run_microvm(imageIdentifier="hello-http")["microvmId"]
        ids.append(third)
        wait_microvm(client, third, "RUNNING")
        assert third == after_restart
        last = wait_pooled(emberd, exclude=(first, pooled, refill, after_restart))
        terminate_quietly(client, *ids)
        for vm_id in ids:
            wait_microvm(client, vm_id, "TERMINATED")
        client.delete_microvm_image(imageIdentifier="hello-http")
        deadline = time.monotonic() + 30
        while (qemu_pids(emberd, last) or last in pooled_ids(emberd)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert qemu_pids(emberd, last) == [], "a deleted image's pooled VM lives on"
        assert last not in pooled_ids(emberd)
    finally:
        terminate_quietly(client, *ids)


def test_the_image_tag_sets_its_pool_size(separate_emberd, hello_zip):
    emberd = separate_emberd()  # --warm-pool 0: no pool unless the tag asks
    client = emberd.client()
    with pytest.raises(ClientError) as refused:
        create_and_wait(client, "bad-pool", hello_zip, tags={"ember:warm-pool": "lots"})
    assert error_code(refused.value) == "ValidationException"
    assert "ember:warm-pool" in refused.value.response["Error"]["Message"]

    image, version = create_and_wait(client, "hello-http", hello_zip,
                                     tags={"ember:warm-pool": "2"})
    assert image["state"] == "CREATED", version.get("stateReason")
    one = wait_pooled(emberd)
    two = wait_pooled(emberd, exclude=(one,))
    arn = image_arn("hello-http")
    for bad in ("-1", "17", "2.5", ""):
        with pytest.raises(ClientError) as refused:
            client.tag_resource(Resource=arn, Tags={"ember:warm-pool": bad})
        assert error_code(refused.value) == "ValidationException", bad
    # Down to none: the pooled VMs end at once.
    client.tag_resource(Resource=arn, Tags={"ember:warm-pool": "0"})
    deadline = time.monotonic() + 30
    while (qemu_pids(emberd, one) or qemu_pids(emberd, two) or pooled_ids(emberd)) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pooled_ids(emberd) == [] and not qemu_pids(emberd, one) and not qemu_pids(emberd, two)
    # Untagged, the image falls back to --warm-pool (0): still none, and a
    # run restores as usual.
    client.untag_resource(Resource=arn, TagKeys=["ember:warm-pool"])
    run = client.run_microvm(imageIdentifier="hello-http")["microvmId"]
    try:
        vm = wait_microvm(client, run, "RUNNING")
        assert counter(vm["endpoint"], endpoint_token(client, run)) == 1
        time.sleep(3)
        assert pooled_ids(emberd) == []
    finally:
        terminate_quietly(client, run)
