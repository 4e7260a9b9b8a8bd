"""10. The build log, live: lines arrive while the build is still running,
over the signed HTTP endpoint and through `ember image logs --follow`."""

import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from artifacts import zip_files
from harness import BUILD_ROLE, BUSYBOX_ARN, REPO, build_log, only_build, wait_image

NAME = "log-follow"
STEP_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z step \d+/\d+ ")
# The markers checked are computed by the guest's shell, so they can only
# come from the steps' output, never from the echoed step lines.
DOCKERFILE = ("FROM busybox\nRUN echo first-$((6 * 7))\nRUN sleep 15\n"
              "RUN echo after-$((6 * 8))\nCMD [\"sleep\", \"3600\"]\n")


class Follower:
    """Reads a line stream on a thread, noting the version's state when the
    first line arrives."""

    def __init__(self, client, lines):
        self.client, self.lines_iter = client, lines
        self.lines, self.state_at_first_line, self.error = [], None, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for raw in self.lines_iter:
                line = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                if not self.lines:
                    self.state_at_first_line = self.client.get_microvm_image_version(
                        imageIdentifier=NAME, imageVersion="1")["state"]
                self.lines.append(line.rstrip("\n"))
        except Exception as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def join(self, timeout):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the follow stream did not end with the build"
        assert self.error is None, self.error


@pytest.fixture(scope="module")
def followed(ember, tmp_path_factory):
    client = ember.client()
    path = zip_files(tmp_path_factory.mktemp("log") / "app.zip", {"Dockerfile": DOCKERFILE})
    client.create_microvm_image(name=NAME, codeArtifact={"uri": f"file://{path}"},
                                baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    build = only_build(client, NAME, "1")
    url_path = f"/ember/v1/microvm-images/{NAME}/versions/1/builds/{build['buildId']}/log?follow=true"
    http = Follower(client, ember.signed_get(url_path, timeout=300))

    cli_bin = Path(os.environ.get("EMBER_CLI_BIN", REPO / "target" / "release" / "ember"))
    cli = None
    if cli_bin.exists():
        proc = subprocess.Popen([str(cli_bin), "image", "logs", NAME, "--follow",
                                 "--data-dir", str(ember.data_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        cli = (proc, Follower(client, proc.stdout))
    image = wait_image(client, NAME, timeout=300)
    return {"image": image, "http": http, "cli": cli, "cli_bin": cli_bin}


def check_stream(follower):
    follower.join(timeout=60)
    assert follower.lines, "no log lines"
    assert follower.state_at_first_line in ("PENDING", "IN_PROGRESS"), (
        f"the first line came only after the build ended ({follower.state_at_first_line})")
    steps = [line for line in follower.lines if STEP_LINE.match(line)]
    assert steps, "no timestamped step lines:\n" + "\n".join(follower.lines)
    text = "\n".join(follower.lines)
    assert "first-42" in text and "after-48" in text


def test_build_succeeded(followed):
    assert followed["image"]["state"] == "CREATED"


def test_http_follow_streams_while_building(followed):
    check_stream(followed["http"])


def test_cli_follow_streams_while_building(followed):
    if followed["cli"] is None:
        pytest.fail(f"ember CLI not found at {followed['cli_bin']} (set EMBER_CLI_BIN)")
    proc, follower = followed["cli"]
    check_stream(follower)
    assert proc.wait(timeout=30) == 0, proc.stderr.read().decode(errors="replace")


def test_finished_log_without_follow(ember, client, followed):
    log = build_log(ember, client, NAME, "1")
    assert "after-48" in log
    assert len([line for line in log.splitlines() if STEP_LINE.match(line)]) >= 3
