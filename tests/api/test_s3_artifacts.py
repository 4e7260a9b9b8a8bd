"""`s3://bucket/key` code artifacts, fetched by emberd (AWS SDK for Rust,
its own credential chain) from a real S3-compatible HTTP server: moto's
server from the pinned venv, with buckets and objects put by boto3."""

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_dir
from harness import BUILD_ROLE, BUSYBOX_ARN, REPO, aws, error_code, wait_image
from s3_server import moto_server, s3_client

BUCKET = "ember-artifacts"


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("s3")) as url:
        yield url


@pytest.fixture(scope="module")
def s3(s3_url, tmp_path_factory):
    client = s3_client(s3_url)
    client.create_bucket(Bucket=BUCKET)
    hello = zip_dir(REPO / "examples" / "hello-http", tmp_path_factory.mktemp("zips") / "hello.zip")
    client.upload_file(str(hello), BUCKET, "apps/hello-http.zip")
    client.put_object(Bucket=BUCKET, Key="apps/readme.txt", Body=b"not a zip\n")
    return client


@pytest.fixture(scope="module")
def s3_emberd(module_emberd, s3_url, s3):
    return module_emberd("--s3-endpoint", s3_url)


def failed_reason(client, name, uri):
    client.create_microvm_image(name=name, codeArtifact={"uri": uri},
                                baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    image = wait_image(client, name, timeout=120)
    version = client.get_microvm_image_version(imageIdentifier=name, imageVersion="1")
    assert image["state"] == "CREATE_FAILED", version
    assert version["state"] == "FAILED", version
    return version.get("stateReason", "")


def test_image_from_s3_through_the_cli(s3_emberd):
    aws(s3_emberd, "create-microvm-image",
        "--code-artifact", f"uri=s3://{BUCKET}/apps/hello-http.zip",
        "--name", "from-s3", "--base-image-arn", BUSYBOX_ARN, "--build-role-arn", BUILD_ROLE)
    image = wait_image(s3_emberd.client(), "from-s3", timeout=300)
    version = aws(s3_emberd, "get-microvm-image-version",
                  "--image-identifier", "from-s3", "--image-version", "1")
    assert image["state"] == "CREATED", f"{version.get('stateReason')}\n{s3_emberd.log_tail()}"
    assert version["state"] == "SUCCESSFUL"


@pytest.mark.parametrize("uri, words", [
    (f"s3://{BUCKET}/apps/missing.zip", "the key does not exist"),
    ("s3://no-such-bucket/apps/hello-http.zip", "the bucket does not exist"),
    (f"s3://{BUCKET}/apps/readme.txt", "not a readable zip"),
])
def test_failed_fetch_says_why(s3_emberd, uri, words):
    name = "s3-" + uri.rsplit("/", 1)[1].split(".")[0] + ("-nb" if "no-such" in uri else "")
    reason = failed_reason(s3_emberd.client(), name, uri)
    assert words in reason, reason
    assert uri in reason, reason
    leftovers = [p for p in (s3_emberd.data_dir).rglob("context") if p.is_dir()]
    assert leftovers == [], f"a failed fetch left {leftovers}"


@pytest.mark.parametrize("uri", ["s3://Bad_Bucket/app.zip", "s3://ember-artifacts", "s3://ab/app.zip",
                                 "s3://ember-artifacts/"])
def test_malformed_s3_uri_is_a_validation_error(s3_emberd, uri):
    with pytest.raises(ClientError) as info:
        s3_emberd.client(validate=False).create_microvm_image(
            name="s3-bad", codeArtifact={"uri": uri},
            baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    assert error_code(info.value) == "ValidationException"
    assert "codeArtifact.uri" in info.value.response["Error"]["Message"]
