"""A data dir moved to another path while emberd was stopped: started on
the new path, emberd still runs the image built before the move, wakes a
microVM suspended to disk before it with its memory, serves the old build's
log, and builds again from the layer cache it moved along. Nothing it
keeps names the old path (the store holds paths relative to the data dir;
disk layers, which name their backing files by absolute path, are pointed
at the new place at start)."""

import subprocess

from harness import (BUILD_ROLE, BUSYBOX_ARN, build_log, counter, create_and_wait,
                     endpoint_token, suspended_tier, terminate_quietly, wait_microvm,
                     wait_version)

IDLE = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600,
        "autoResumeEnabled": True}


def test_a_moved_data_dir_keeps_its_images_and_suspended_microvms(separate_emberd, hello_zip):
    # No warm tier: a suspended VM is on disk, the case a move must carry.
    ember = separate_emberd("--warm-suspended-mib", "0")
    client = ember.client()
    image, version = create_and_wait(client, "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    log_before = build_log(ember, client, "hello-http", "1")

    vm = client.run_microvm(imageIdentifier="hello-http", idlePolicy=IDLE)
    ids = [vm["microvmId"]]
    try:
        wait_microvm(client, vm["microvmId"], "RUNNING", timeout=90)
        token = endpoint_token(client, vm["microvmId"])
        assert [counter(vm["endpoint"], token) for _ in range(2)] == [1, 2]
        client.suspend_microvm(microvmIdentifier=vm["microvmId"])
        wait_microvm(client, vm["microvmId"], "SUSPENDED", timeout=90)
        assert suspended_tier(ember, vm["microvmId"]) == "disk"

        ember.stop()
        old = ember.data_dir
        moved = old.parent / "moved-data"
        old.rename(moved)
        ember.data_dir = moved
        ember.start()

        named = subprocess.run(["grep", "-rlsa", "--", str(old), str(moved / "images"),
                                str(moved / "cache"), str(moved / "microvms")],
                               capture_output=True, text=True).stdout.split()
        assert not named, f"files that still name the old data dir: {named}"

        # The VM suspended before the move wakes with its memory.
        assert counter(vm["endpoint"], token) == 3, ember.log_tail()
        assert client.get_microvm(microvmIdentifier=vm["microvmId"])["state"] == "RUNNING"

        # The image built before the move runs.
        fresh = client.run_microvm(imageIdentifier="hello-http")
        ids.append(fresh["microvmId"])
        got = wait_microvm(client, fresh["microvmId"], "RUNNING", timeout=90)
        assert got["state"] == "RUNNING", (got.get("stateReason"), ember.log_tail())
        assert counter(fresh["endpoint"], endpoint_token(client, fresh["microvmId"])) == 1

        assert build_log(ember, client, "hello-http", "1") == log_before

        # A build of the same content takes its layers from the moved cache.
        update = client.update_microvm_image(
            imageIdentifier="hello-http", codeArtifact={"uri": f"file://{hello_zip}"},
            baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
        v2 = wait_version(client, "hello-http", update["imageVersion"], timeout=300)
        assert v2["state"] == "SUCCESSFUL", (v2.get("stateReason"), ember.log_tail())
        second = client.run_microvm(imageIdentifier="hello-http",
                                    imageVersion=update["imageVersion"])
        ids.append(second["microvmId"])
        wait_microvm(client, second["microvmId"], "RUNNING", timeout=90)
        assert counter(second["endpoint"], endpoint_token(client, second["microvmId"])) == 1
    finally:
        terminate_quietly(client, *ids)
