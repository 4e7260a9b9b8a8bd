"""6 and 12. An image's life: update to version 2 (the same artifact, so the
rebuild is served from the build cache), versions, deactivation, deletion.
Uses its own image so hello-http stays for the other tests."""

import re

import pytest
from botocore.exceptions import ClientError

from harness import (BUILD_ROLE, BUSYBOX_ARN, build_log, create_and_wait, error_code,
                     wait_gone, wait_image, wait_version)

NAME = "hello-lifecycle"


@pytest.fixture(scope="module")
def updated(ember, hello_zip):
    client = ember.client()
    image, v1 = create_and_wait(client, NAME, hello_zip)
    assert image["state"] == "CREATED", v1.get("stateReason")
    response = client.update_microvm_image(
        imageIdentifier=NAME, codeArtifact={"uri": f"file://{hello_zip}"},
        baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    v2 = wait_version(client, NAME, response["imageVersion"])
    return {"response": response, "v2": v2, "image": wait_image(client, NAME)}


def test_update_builds_version_2(updated):
    assert updated["response"]["imageVersion"] == "2"
    assert updated["v2"]["state"] == "SUCCESSFUL", updated["v2"].get("stateReason")
    assert updated["image"]["state"] in ("UPDATED", "CREATED")
    assert updated["image"]["latestActiveImageVersion"] == "2"


def test_rebuild_of_same_artifact_is_cached(ember, client, updated):
    log = build_log(ember, client, NAME, "2")
    step_lines = [line for line in log.splitlines() if re.search(r"\bstep \d+/\d+", line)]
    assert step_lines, f"no step lines in the log:\n{log}"
    cached = [line for line in step_lines if "CACHED" in line]
    assert cached, "the rebuild of an unchanged artifact ran its steps again:\n" + "\n".join(step_lines)


def test_versions_listed(client, updated):
    items = client.list_microvm_image_versions(imageIdentifier=NAME)["items"]
    assert sorted(v["imageVersion"] for v in items) == ["1", "2"]


def test_deactivate_and_delete_version_1(client, updated):
    response = client.update_microvm_image_version(
        imageIdentifier=NAME, imageVersion="1", status="INACTIVE")
    assert response["status"] == "INACTIVE"
    got = client.get_microvm_image_version(imageIdentifier=NAME, imageVersion="1")
    assert got["status"] == "INACTIVE"
    client.delete_microvm_image_version(imageIdentifier=NAME, imageVersion="1")
    wait_gone(lambda: _version_unless_deleted(client, "1"))
    items = client.list_microvm_image_versions(imageIdentifier=NAME)["items"]
    assert [v["imageVersion"] for v in items if v["state"] != "DELETED"] == ["2"]


def _version_unless_deleted(client, version):
    got = client.get_microvm_image_version(imageIdentifier=NAME, imageVersion=version)
    if got["state"] == "DELETED":
        # A deleted version reported as such counts as gone.
        raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "deleted"}},
                          "GetMicrovmImageVersion")
    return got


def test_delete_image(client, updated):
    client.delete_microvm_image(imageIdentifier=NAME)
    exc = wait_gone(lambda: client.get_microvm_image(imageIdentifier=NAME))
    assert error_code(exc) == "ResourceNotFoundException"
    names = [i["name"] for i in client.list_microvm_images(nameFilter=NAME)["items"]]
    assert NAME not in names
