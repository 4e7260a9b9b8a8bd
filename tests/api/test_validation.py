"""2. Managed base images, and the server's own validation: botocore's
client-side checks are off (raw_client), so each bad request reaches emberd."""

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_files
from harness import BUILD_ROLE, BUSYBOX_ARN, DEBIAN_ARN, error_code

BASE_NAMES = {"busybox": BUSYBOX_ARN, "debian12-minimal": DEBIAN_ARN}


def test_managed_images_list_busybox_and_debian(client):
    arns = {item["imageArn"] for item in client.list_managed_microvm_images()["items"]}
    assert set(BASE_NAMES.values()) <= arns


@pytest.mark.parametrize("name", sorted(BASE_NAMES))
def test_managed_image_versions(client, name):
    for identifier in (name, BASE_NAMES[name]):
        versions = client.list_managed_microvm_image_versions(imageIdentifier=identifier)["items"]
        assert versions, f"no versions for {identifier}"
        assert all(v["imageArn"] == BASE_NAMES[name] for v in versions)


@pytest.fixture(scope="module")
def valid_zip(tmp_path_factory):
    return zip_files(tmp_path_factory.mktemp("valid") / "app.zip",
                     {"Dockerfile": "FROM busybox\nCMD [\"sleep\", \"3600\"]\n"})


def create_args(valid_zip, **override):
    args = {"name": "valid-name", "codeArtifact": {"uri": f"file://{valid_zip}"},
            "baseImageArn": BUSYBOX_ARN, "buildRoleArn": BUILD_ROLE}
    args.update(override)
    return {k: v for k, v in args.items() if v is not None}


BAD_CREATES = {
    "bad name pattern": {"name": "bad name!"},
    "name too long": {"name": "n" * 65},
    "missing buildRoleArn": {"name": "missing-role", "buildRoleArn": None},
    "missing codeArtifact": {"name": "missing-code", "codeArtifact": None},
    "bad role ARN": {"name": "bad-role", "buildRoleArn": "arn:aws:iam::12:user/x"},
    "101 environment variables": {
        "name": "many-env", "environmentVariables": {f"V{i}": "x" for i in range(101)}},
    "hooks port out of range": {"name": "bad-hook-port", "hooks": {"port": 70000}},
    "two egress connectors": {"name": "two-egress", "egressNetworkConnectors": ["INTERNET_EGRESS", "INTERNET_EGRESS"]},
    "unknown egress connector": {"name": "bad-egress", "egressNetworkConnectors": ["vpc-1"]},
    "vm hooks without ready": {"name": "no-ready", "hooks": {"port": 9000, "microvmHooks": {"run": "ENABLED"}}},
    **{f"reserved env {k}": {"name": f"reserved-{i}", "environmentVariables": {k: "x"}}
       for i, k in enumerate(["AWS_LAMBDA_MICROVM_IMAGE_NAME", "AWS_LAMBDA_MICROVM_IMAGE_ARN",
                              "AWS_LAMBDA_MICROVM_IMAGE_VERSION", "AWS_REGION"])},
}


@pytest.mark.parametrize("case", sorted(BAD_CREATES))
def test_create_rejects(raw_client, valid_zip, case):
    with pytest.raises(ClientError) as info:
        raw_client.create_microvm_image(**create_args(valid_zip, **BAD_CREATES[case]))
    assert error_code(info.value) == "ValidationException", info.value.response
    assert info.value.response["Error"]["Message"], "a validation error must say what is wrong"
    # Nothing was created under the rejected name.
    name = BAD_CREATES[case].get("name")
    if name and len(name) <= 64 and " " not in name:
        with pytest.raises(ClientError) as missing:
            raw_client.get_microvm_image(imageIdentifier=name)
        assert error_code(missing.value) == "ResourceNotFoundException"


def test_bad_version_status_enum(raw_client, hello_http):
    with pytest.raises(ClientError) as info:
        raw_client.update_microvm_image_version(
            imageIdentifier="hello-http", imageVersion="1", status="SOMETIMES")
    assert error_code(info.value) == "ValidationException"


@pytest.mark.parametrize("max_results", [0, 51, -1])
def test_max_results_out_of_range(raw_client, max_results):
    with pytest.raises(ClientError) as info:
        raw_client.list_microvm_images(maxResults=max_results)
    assert error_code(info.value) == "ValidationException"


def test_unknown_image_is_not_found(client):
    with pytest.raises(ClientError) as info:
        client.get_microvm_image(imageIdentifier="no-such-image")
    assert error_code(info.value) == "ResourceNotFoundException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_existing_name_conflicts(client, hello_http, hello_zip):
    with pytest.raises(ClientError) as info:
        client.create_microvm_image(
            name="hello-http", codeArtifact={"uri": f"file://{hello_zip}"},
            baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    assert error_code(info.value) == "ConflictException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
