"""3. Pagination through botocore's paginators, on images whose builds fail
fast (an artifact without a Dockerfile)."""

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_files
from harness import BUILD_ROLE, BUSYBOX_ARN, wait_image

NAMES = [f"page-{i}" for i in range(7)]


@pytest.fixture(scope="module")
def failed_images(ember, tmp_path_factory):
    client = ember.client()
    no_dockerfile = zip_files(tmp_path_factory.mktemp("nodocker") / "app.zip",
                              {"README.txt": "no Dockerfile here\n"})
    for name in NAMES:
        client.create_microvm_image(
            name=name, codeArtifact={"uri": f"file://{no_dockerfile}"},
            baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    return {name: wait_image(client, name, timeout=120) for name in NAMES}


def test_missing_dockerfile_fails_the_build(client, failed_images):
    for name, image in failed_images.items():
        assert image["state"] == "CREATE_FAILED", name
        version = client.get_microvm_image_version(imageIdentifier=name, imageVersion="1")
        assert version["state"] == "FAILED"
        assert "dockerfile" in version.get("stateReason", "").lower(), version.get("stateReason")


def test_pages_of_three(client, failed_images):
    pages = client.get_paginator("list_microvm_images").paginate(
        nameFilter="page-", PaginationConfig={"PageSize": 3})
    sizes, names = [], []
    for page in pages:
        sizes.append(len(page["items"]))
        names += [item["name"] for item in page["items"]]
    assert sizes == [3, 3, 1]
    assert sorted(names) == NAMES


def test_unfiltered_listing_holds_every_image(client, failed_images):
    pages = client.get_paginator("list_microvm_images").paginate(PaginationConfig={"PageSize": 2})
    names = [item["name"] for page in pages for item in page["items"]]
    assert set(NAMES) <= set(names)
    assert len(names) == len(set(names)), "an image appeared on two pages"


def test_name_filter_selects(client, failed_images):
    items = client.list_microvm_images(nameFilter="page-4")["items"]
    assert [item["name"] for item in items] == ["page-4"]
    assert client.list_microvm_images(nameFilter="no-image-has-this-name")["items"] == []


def test_next_token_is_opaque_and_checked(raw_client, failed_images):
    first = raw_client.list_microvm_images(nameFilter="page-", maxResults=3)
    assert first.get("nextToken")
    second = raw_client.list_microvm_images(nameFilter="page-", maxResults=3,
                                            nextToken=first["nextToken"])
    assert {i["name"] for i in first["items"]}.isdisjoint(i["name"] for i in second["items"])
    with pytest.raises(ClientError) as info:
        raw_client.list_microvm_images(maxResults=3, nextToken="not-a-token-emberd-made")
    assert info.value.response["Error"]["Code"] == "ValidationException"
