"""5. Idempotent creates: clientToken."""

import threading

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_files
from harness import BUILD_ROLE, BUSYBOX_ARN, error_code


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return zip_files(tmp_path_factory.mktemp("token") / "app.zip", {"README.txt": "x\n"})


def create(client, artifact, name, token, **extra):
    return client.create_microvm_image(
        name=name, codeArtifact={"uri": f"file://{artifact}"}, baseImageArn=BUSYBOX_ARN,
        buildRoleArn=BUILD_ROLE, clientToken=token, **extra)


def test_same_token_same_request_is_one_image(client, artifact):
    first = create(client, artifact, "token-a", "token-1")
    again = create(client, artifact, "token-a", "token-1")
    keys = ("imageArn", "name", "imageVersion", "createdAt")
    assert {k: again[k] for k in keys} == {k: first[k] for k in keys}
    assert [i["name"] for i in client.list_microvm_images(nameFilter="token-a")["items"]] == ["token-a"]
    versions = client.list_microvm_image_versions(imageIdentifier="token-a")["items"]
    assert len(versions) == 1


def test_same_token_other_request_is_refused(client, artifact):
    create(client, artifact, "token-b", "token-2")
    with pytest.raises(ClientError) as info:
        create(client, artifact, "token-c", "token-2")
    status = info.value.response["ResponseMetadata"]["HTTPStatusCode"]
    assert 400 <= status < 500
    assert error_code(info.value) in ("ConflictException", "ValidationException")
    assert "token" in info.value.response["Error"]["Message"].lower()
    with pytest.raises(ClientError) as missing:
        client.get_microvm_image(imageIdentifier="token-c")
    assert error_code(missing.value) == "ResourceNotFoundException"


def test_concurrent_requests_with_one_token_make_one_image(client, artifact):
    """Retries that race the first request (a client timing out and
    retrying at once) wait for its answer instead of acting again."""
    barrier = threading.Barrier(6)
    replies, errors = [], []

    def send():
        try:
            barrier.wait()
            replies.append(create(client, artifact, "token-race", "token-race-1"))
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    keys = ("imageArn", "name", "imageVersion", "createdAt")
    assert len({tuple(r[k] for k in keys) for r in replies}) == 1, replies
    versions = client.list_microvm_image_versions(imageIdentifier="token-race")["items"]
    assert len(versions) == 1
    builds = client.list_microvm_image_builds(imageIdentifier="token-race", imageVersion="1")
    assert len(builds["items"]) == 1
