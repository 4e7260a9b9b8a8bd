"""4. Tags on an image ARN through the Lambda tagging paths."""

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_files
from harness import BUILD_ROLE, BUSYBOX_ARN, error_code, image_arn, wait_image


@pytest.fixture(scope="module")
def tagged(ember, tmp_path_factory):
    client = ember.client()
    zip_path = zip_files(tmp_path_factory.mktemp("tags") / "app.zip", {"README.txt": "x\n"})
    client.create_microvm_image(
        name="tagged", codeArtifact={"uri": f"file://{zip_path}"},
        baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE, tags={"created-with": "image"})
    wait_image(client, "tagged", timeout=120)
    return image_arn("tagged")


def test_tags_given_at_create_are_listed(client, tagged):
    assert client.list_tags(Resource=tagged)["Tags"] == {"created-with": "image"}


def test_tag_list_untag(client, tagged):
    client.tag_resource(Resource=tagged, Tags={"team": "ember", "env": "test"})
    assert client.list_tags(Resource=tagged)["Tags"] == {
        "created-with": "image", "team": "ember", "env": "test"}
    client.untag_resource(Resource=tagged, TagKeys=["env", "created-with"])
    assert client.list_tags(Resource=tagged)["Tags"] == {"team": "ember"}
    assert client.get_microvm_image(imageIdentifier="tagged").get("tags") in (None, {"team": "ember"})


def test_tagging_an_unknown_image_is_not_found(client):
    with pytest.raises(ClientError) as info:
        client.tag_resource(Resource=image_arn("never-made"), Tags={"a": "b"})
    assert error_code(info.value) == "ResourceNotFoundException"


def test_bad_tag_key_is_rejected(raw_client, tagged):
    with pytest.raises(ClientError) as info:
        raw_client.tag_resource(Resource=tagged, Tags={"k" * 129: "v"})
    assert error_code(info.value) in ("ValidationException", "InvalidParameterValueException")
