"""Session fixtures: one emberd on a temp data dir, clients that know the
lambda-microvms contract through AWS_DATA_PATH, and images shared between
tests (builds run under TCG here, so each one costs tens of seconds)."""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from artifacts import zip_dir
from harness import (BUILD_ROLE, BUSYBOX_ARN, MODELS, REPO, TERMINAL_IMAGE_STATES, Emberd, aws)

# Client configuration must be in place before any boto3/botocore import
# resolves a session, and must never read or write the user's ~/.aws.
for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
    os.environ.pop(var, None)
os.environ["AWS_DATA_PATH"] = str(MODELS)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
# Guests need the kernel/agent the Makefile builds; these are its paths.
os.environ.setdefault("EMBER_ASSETS_DIR", str(REPO / "build" / "data" / "assets"))
os.environ.setdefault(
    "EMBER_AGENT_BIN", str(REPO / "target" / "x86_64-unknown-linux-gnu" / "guest" / "ember-agent"))


SESSION_EMBERD_ARGS = ("--min-idle-seconds", "2")


def _binary(env, default):
    path = Path(os.environ.get(env, REPO / default))
    return path if path.is_absolute() else REPO / path


@pytest.fixture(scope="session")
def ember(tmp_path_factory):
    binary = _binary("EMBER_BIN", "target/release/emberd")
    if not binary.exists():
        pytest.fail(f"emberd not found at {binary} (build it, or set EMBER_BIN)")
    base = tmp_path_factory.mktemp("ember")
    data_dir = base / "data"
    config = base / "aws-config"
    config.write_text("[default]\nregion = us-east-1\noutput = json\n")
    os.environ["AWS_CONFIG_FILE"] = str(config)
    # emberd writes its credentials in shared-credentials format: the
    # clients read them straight from there.
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(data_dir / "credentials")
    # A low idle floor so the microVM tests can watch idle suspends in
    # seconds (the model's floor is 60).
    daemon = Emberd(binary, data_dir, base / "emberd.log", extra_args=SESSION_EMBERD_ARGS)
    daemon.start()
    yield daemon
    daemon.end_all()


@pytest.fixture
def client(ember):
    return ember.client()


@pytest.fixture
def raw_client(ember):
    """A client that skips botocore's own parameter validation, so invalid
    requests reach emberd and its validation is what gets tested."""
    return ember.client(validate=False)


@pytest.fixture(scope="session")
def hello_zip(tmp_path_factory):
    return zip_dir(REPO / "examples" / "hello-http", tmp_path_factory.mktemp("zips") / "hello-http.zip")


@pytest.fixture(scope="session")
def hello_http(ember, hello_zip):
    """examples/hello-http built through the AWS CLI, exactly as a user types
    it (plus --endpoint-url): the launch-post command."""
    created = aws(
        ember, "create-microvm-image",
        "--code-artifact", f"uri=file://{hello_zip}",
        "--name", "hello-http",
        "--base-image-arn", BUSYBOX_ARN,
        "--build-role-arn", BUILD_ROLE)
    deadline = time.monotonic() + 300
    while True:
        image = aws(ember, "get-microvm-image", "--image-identifier", "hello-http")
        if image["state"] in TERMINAL_IMAGE_STATES:
            break
        assert time.monotonic() < deadline, f"hello-http still {image['state']} after 5 min"
        time.sleep(3)
    version = aws(ember, "get-microvm-image-version", "--image-identifier", "hello-http",
                  "--image-version", created["imageVersion"])
    if image["state"] != "CREATED":
        pytest.fail(f"hello-http is {image['state']}: {version.get('stateReason')}\n{ember.log_tail()}")
    return {"created": created, "image": image, "version": version}


class SeparateEmberds:
    """Emberds of a test's (or a module's) own on fresh data dirs: they
    share the session's credentials, so the usual clients work."""

    def __init__(self, ember):
        self.ember = ember
        self.made = []
        # Short paths: VM sockets live under the data dir and a unix socket
        # path must fit in 108 bytes, which pytest's tmp_path does not.
        self.root = Path(tempfile.mkdtemp(prefix="emb-"))

    def __call__(self, *extra_args):
        base = self.root / str(len(self.made))
        data_dir = base / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        credentials = data_dir / "credentials"
        credentials.write_bytes((self.ember.data_dir / "credentials").read_bytes())
        credentials.chmod(0o600)
        daemon = Emberd(self.ember.binary, data_dir, base / "emberd.log", extra_args=extra_args)
        self.made.append(daemon)
        return daemon.start()

    def end_all(self):
        """Ends all of them, and the guests they left behind."""
        for daemon in self.made:
            daemon.end_all()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def separate_emberd(ember):
    """`make(*args)` starts an emberd of the test's own; all of them are
    ended after the test."""
    made = SeparateEmberds(ember)
    yield made
    made.end_all()


@pytest.fixture(scope="module")
def module_emberd(ember):
    """Like `separate_emberd`, shared by one module's tests (so they can
    share its images) and ended after the module."""
    made = SeparateEmberds(ember)
    yield made
    made.end_all()
