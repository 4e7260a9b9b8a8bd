"""Calls the API with the real boto3 client; prints one JSON summary.

Run by tests/boto3.rs with ENDPOINT, ACCESS_KEY, SECRET and AWS_DATA_PATH set.
"""
import datetime
import json
import os

import boto3
from botocore.exceptions import ClientError

ARN = "arn:aws:lambda:us-east-1:123456789012:microvm-image:hello"


def client(secret):
    return boto3.client(
        "lambda-microvms",
        endpoint_url=os.environ["ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=os.environ["ACCESS_KEY"],
        aws_secret_access_key=secret,
    )


def error_of(call):
    try:
        call()
    except ClientError as e:
        return [e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"],
                e.response["Error"].get("Message", "")]
    return None


c = client(os.environ["SECRET"])
out = {}
out["list_tags"] = c.list_tags(Resource=ARN)["Tags"]
out["tag_status"] = c.tag_resource(Resource=ARN, Tags={"team": "ember"})["ResponseMetadata"]["HTTPStatusCode"]
out["untag_status"] = c.untag_resource(Resource=ARN, TagKeys=["team", "cost center"])["ResponseMetadata"]["HTTPStatusCode"]
created = c.create_microvm_image(
    name="hello",
    baseImageArn="arn:aws:lambda:us-east-1:aws:microvm-image:debian12",
    buildRoleArn="arn:aws:iam::123456789012:role/build",
    codeArtifact={"uri": "s3://bucket/app.zip"},
)
out["created"] = {
    "status": created["ResponseMetadata"]["HTTPStatusCode"],
    "imageArn": created["imageArn"],
    "createdAt": created["createdAt"].astimezone(datetime.timezone.utc).isoformat(),
    "request_id": created["ResponseMetadata"].get("RequestId", ""),
}
out["not_found"] = error_of(lambda: c.get_microvm(microvmIdentifier="vm-404"))
out["invalid_name"] = error_of(lambda: c.create_microvm_image(
    name="x y", baseImageArn="b", buildRoleArn="arn:aws:iam::123456789012:role/build",
    codeArtifact={"uri": "u"}))
out["pages"] = [len(p["items"]) for p in c.get_paginator("list_microvms").paginate(imageIdentifier="hello")]
out["wrong_secret"] = error_of(lambda: client("wrong").list_microvms())
print(json.dumps(out))
