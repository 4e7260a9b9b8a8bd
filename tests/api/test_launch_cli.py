"""1. The launch-post command through the AWS CLI, and what the image it
built looks like afterwards."""

from harness import BUSYBOX_ARN, aws, image_arn


def test_create_returns_the_new_image(hello_http):
    created = hello_http["created"]
    assert created["name"] == "hello-http"
    assert created["imageArn"] == image_arn("hello-http")
    assert created["baseImageArn"] in (BUSYBOX_ARN, "busybox")
    assert created["imageVersion"] == "1"
    assert created["state"] in ("CREATING", "CREATED")


def test_image_is_created(hello_http):
    assert hello_http["image"]["state"] == "CREATED"
    assert hello_http["image"]["latestActiveImageVersion"] == "1"


def test_version_is_successful_and_active(hello_http):
    version = hello_http["version"]
    assert version["state"] == "SUCCESSFUL"
    assert version["status"] == "ACTIVE"
    assert version["imageArn"] == image_arn("hello-http")


def test_one_build_with_snapshot_sizes(ember, hello_http):
    builds = aws(ember, "list-microvm-image-builds", "--image-identifier", "hello-http",
                 "--image-version", "1")["items"]
    assert len(builds) == 1, builds
    build = aws(ember, "get-microvm-image-build", "--image-identifier", "hello-http",
                "--image-version", "1", "--build-id", builds[0]["buildId"])
    assert build["buildState"] == "SUCCESSFUL"
    assert build["architecture"] == "X86_64"
    snapshot = build["snapshotBuild"]
    assert snapshot["memorySnapshotSizeInBytes"] > 0
    assert snapshot["diskSnapshotSizeInBytes"] > 0
