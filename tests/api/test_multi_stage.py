"""Multi-stage Dockerfiles through the AWS CLI: a build stage makes a file
with RUN, the image's stage copies it with COPY --from, and the running
microVM serves it; a --from that names no earlier stage fails the build
with the line."""

import time

from artifacts import zip_files
from harness import (BUILD_ROLE, BUSYBOX_ARN, MICROVM_PORT, TERMINAL_IMAGE_STATES, aws,
                     endpoint_request, terminate_quietly)

DOCKERFILE = """\
FROM busybox AS build
RUN mkdir -p /out && echo "made by $(id -u) in the build stage" > /out/made.txt
FROM busybox
COPY --from=build /out/ /www/
EXPOSE 8080
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"""


def cli_build(ember, tmp_path, name, dockerfile):
    """create-microvm-image and get-microvm-image until it is done: the
    image, and its version 1."""
    path = zip_files(tmp_path / f"{name}.zip", {"Dockerfile": dockerfile})
    aws(ember, "create-microvm-image", "--code-artifact", f"uri=file://{path}",
        "--name", name, "--base-image-arn", BUSYBOX_ARN, "--build-role-arn", BUILD_ROLE)
    deadline = time.monotonic() + 400
    while True:
        image = aws(ember, "get-microvm-image", "--image-identifier", name)
        if image["state"] in TERMINAL_IMAGE_STATES:
            break
        assert time.monotonic() < deadline, f"{name} still {image['state']}"
        time.sleep(2)
    version = aws(ember, "get-microvm-image-version", "--image-identifier", name,
                  "--image-version", "1")
    return image, version


def test_copy_from_a_build_stage(ember, client, tmp_path):
    image, version = cli_build(ember, tmp_path, "multi-stage", DOCKERFILE)
    assert image["state"] == "CREATED", version.get("stateReason")
    run = aws(ember, "run-microvm", "--image-identifier", "multi-stage")
    microvm_id = run["microvmId"]
    try:
        deadline = time.monotonic() + 120
        while aws(ember, "get-microvm", "--microvm-identifier", microvm_id)["state"] != "RUNNING":
            assert time.monotonic() < deadline, "the microVM never ran"
            time.sleep(0.5)
        token = aws(ember, "create-microvm-auth-token", "--microvm-identifier", microvm_id,
                    "--expiration-in-minutes", "10", "--allowed-ports",
                    f"port={MICROVM_PORT}")["authToken"]["X-aws-proxy-auth"]
        status, body, _ = endpoint_request(run["endpoint"], token, MICROVM_PORT,
                                           path="/made.txt")
        assert (status, body) == (200, "made by 0 in the build stage\n")
    finally:
        terminate_quietly(client, microvm_id)


def test_copy_from_an_unknown_stage_names_the_line(ember, tmp_path):
    image, version = cli_build(
        ember, tmp_path, "multi-stage-typo",
        "FROM busybox AS build\nRUN true\nFROM busybox\nCOPY --from=biuld /out /www/\n")
    assert image["state"] == "CREATE_FAILED"
    assert version["state"] == "FAILED"
    reason = version.get("stateReason", "")
    assert "line 4" in reason and "biuld" in reason, reason
