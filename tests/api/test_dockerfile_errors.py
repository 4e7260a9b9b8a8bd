"""8. Dockerfiles emberd cannot or will not build: each fails with a reason
that points at the line or step."""

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_files
from harness import BUILD_ROLE, BUSYBOX_ARN, error_code, wait_image


def failure(client, tmp_path, name, dockerfile):
    """ValidationException message at create, or the failed version's stateReason."""
    path = zip_files(tmp_path / f"{name}.zip", {"Dockerfile": dockerfile})
    try:
        client.create_microvm_image(name=name, codeArtifact={"uri": f"file://{path}"},
                                    baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    except ClientError as exc:
        assert error_code(exc) == "ValidationException", exc.response
        return exc.response["Error"]["Message"]
    image = wait_image(client, name, timeout=300)
    version = client.get_microvm_image_version(imageIdentifier=name, imageVersion="1")
    assert image["state"] == "CREATE_FAILED", f"{name} built: {version}"
    assert version["state"] == "FAILED"
    return version.get("stateReason", "")


def test_onbuild_names_the_line(client, tmp_path):
    reason = failure(client, tmp_path, "df-onbuild",
                     "FROM busybox\nRUN true\nONBUILD RUN echo later\nCMD [\"sleep\", \"9\"]\n")
    assert "ONBUILD" in reason, reason
    assert "3" in reason, f"the reason should name line 3: {reason!r}"


def test_failing_run_names_the_step_and_shows_output(client, tmp_path):
    reason = failure(client, tmp_path, "df-exit3",
                     "FROM busybox\nRUN echo first-marker\n"
                     "RUN echo last-words-$((6 * 7)) && exit 3\nCMD [\"sleep\", \"9\"]\n")
    # "last-words-42" is only in the step's output, not in its command text.
    assert "last-words-42" in reason, f"no log tail in the reason: {reason!r}"
    assert "3" in reason
    assert "RUN" in reason or "step" in reason.lower(), reason


def test_from_must_match_base_image(client, tmp_path):
    reason = failure(client, tmp_path, "df-mismatch",
                     "FROM debian12-minimal\nCMD [\"sleep\", \"9\"]\n")
    assert "debian12-minimal" in reason and "busybox" in reason, reason


UNPARSABLE = {"empty": "", "no-from": "RUN echo no-from\n", "unknown": "FROM busybox\nBOGUS x\n"}


@pytest.mark.parametrize("case", sorted(UNPARSABLE))
def test_unparsable_dockerfile(client, tmp_path, case):
    reason = failure(client, tmp_path, f"df-bad-{case}", UNPARSABLE[case])
    assert reason, "refused without a reason"
