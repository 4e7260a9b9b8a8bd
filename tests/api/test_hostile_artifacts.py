"""7. Hostile code artifacts: each is refused at create time or fails its
build with a reason, and nothing is written outside the data dir."""

import os

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_bomb, zip_deflate_bomb, zip_slip, zip_symlink_escape
from harness import BUILD_ROLE, BUSYBOX_ARN, error_code, wait_image

DOCKERFILE = "FROM busybox\nCOPY . /app\nCMD [\"sleep\", \"3600\"]\n"
# A bomb may be refused, but never unpacked: the data dir must not grow by
# anything near its unpacked size (3-4 GB).
MAX_GROWTH = 512 << 20


def allocated_bytes(root):
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass  # removed while we walked
    return total


def refusal(client, name, zip_uri):
    """The reason emberd gave: a ValidationException's message, or the failed
    version's stateReason."""
    try:
        client.create_microvm_image(name=name, codeArtifact={"uri": zip_uri},
                                    baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    except ClientError as exc:
        assert error_code(exc) == "ValidationException", exc.response
        return exc.response["Error"]["Message"]
    image = wait_image(client, name, timeout=300)
    version = client.get_microvm_image_version(imageIdentifier=name, imageVersion="1")
    assert image["state"] == "CREATE_FAILED", f"{name} was accepted: {version}"
    assert version["state"] == "FAILED"
    return version.get("stateReason", "")


@pytest.fixture
def sentinel(tmp_path):
    target = tmp_path / "outside"
    target.mkdir()
    yield target
    assert sorted(os.listdir(target)) == [], "an artifact wrote outside the data dir"


def assert_reason(reason, words):
    assert reason, "refused without a reason"
    assert any(w in reason.lower() for w in words), f"reason does not say why: {reason!r}"


def test_zip_slip(client, tmp_path, sentinel):
    path = zip_slip(tmp_path / "slip.zip", sentinel / "pwned", DOCKERFILE)
    reason = refusal(client, "hostile-slip", f"file://{path}")
    assert_reason(reason, ["path", "outside", "..", "escape", "travers", "absolute"])


def test_symlink_escape(client, tmp_path, sentinel):
    path = zip_symlink_escape(tmp_path / "link.zip", sentinel, DOCKERFILE)
    reason = refusal(client, "hostile-symlink", f"file://{path}")
    assert_reason(reason, ["link", "outside", "escape"])


@pytest.mark.parametrize("kind", ["deflate", "overlapping"])
def test_zip_bomb(ember, client, tmp_path, sentinel, kind):
    if kind == "deflate":
        path = zip_deflate_bomb(tmp_path / "bomb.zip", DOCKERFILE)
    else:
        path = zip_bomb(tmp_path / "bomb.zip", DOCKERFILE)
    before = allocated_bytes(ember.data_dir)
    reason = refusal(client, f"hostile-bomb-{kind}", f"file://{path}")
    assert_reason(reason, ["size", "large", "limit", "exceed", "bomb", "overlap", "too many", "ratio"])
    assert allocated_bytes(ember.data_dir) - before < MAX_GROWTH


def test_missing_artifact_file(client):
    with pytest.raises(ClientError) as info:
        client.create_microvm_image(
            name="hostile-missing", codeArtifact={"uri": "file:///nonexistent.zip"},
            baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    assert error_code(info.value) == "ValidationException"
    assert "nonexistent.zip" in info.value.response["Error"]["Message"]


@pytest.mark.parametrize("uri", ["s3://bucket/app.zip", "ftp://127.0.0.1/app.zip", "file://relative.zip"])
def test_unsupported_artifact_uri(client, uri):
    """A URI emberd cannot fetch (scheme it does not speak, no absolute path)
    is refused up front, not at build time."""
    with pytest.raises(ClientError) as info:
        client.create_microvm_image(
            name="hostile-uri", codeArtifact={"uri": uri},
            baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    assert error_code(info.value) == "ValidationException"
