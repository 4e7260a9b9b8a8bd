"""The emberd process the API tests drive, and the few ways to reach it.

Everything here talks to a real emberd over HTTP with real clients (the AWS
CLI and boto3, using the contract model in tests/api/models); nothing is
mocked.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "tests" / "api" / "models"
REGION = "us-east-1"
ACCOUNT = "123456789012"
BUSYBOX_ARN = "arn:aws:lambda:us-east-1:aws:microvm-image:busybox"
DEBIAN_ARN = "arn:aws:lambda:us-east-1:aws:microvm-image:debian12-minimal"
BUILD_ROLE = "arn:aws:iam::123456789012:role/ember-build"
STARTUP_TIMEOUT = 60
TERMINAL_IMAGE_STATES = {"CREATED", "CREATE_FAILED", "UPDATED", "UPDATE_FAILED", "DELETED"}
TERMINAL_VERSION_STATES = {"SUCCESSFUL", "FAILED", "DELETED", "DELETE_FAILED"}


def image_arn(name):
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:microvm-image:{name}"


class Emberd:
    """One emberd process on a data dir; restartable on the same dir and port."""

    def __init__(self, binary, data_dir, log_path, extra_args=()):
        self.binary = Path(binary)
        # Flags beyond the data dir and address (e.g. --min-idle-seconds),
        # given again on every restart.
        self.extra_args = list(extra_args)
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.proc = None
        self._log_offset = 0
        self.url = None
        self.port = 0
        self._clients = {}
        # Every process group we started, so teardown can end the guests a
        # SIGKILLed emberd left behind (and only those).
        self.pgids = []

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        endpoint_file = self.data_dir / "endpoint"
        endpoint_file.unlink(missing_ok=True)
        # Only this start's output counts when looking for the listening line.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "--data-dir", str(self.data_dir),
             "--listen", f"127.0.0.1:{self.port}",
             "--region", REGION, "--account", ACCOUNT, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pgids.append(self.proc.pid)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            url = self._listening_url()
            if url and endpoint_file.exists():
                self.url = url
                self.port = int(url.rsplit(":", 1)[1])
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"emberd exited with {self.proc.returncode} before listening:\n{self.log_tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"emberd did not print its listening line in {STARTUP_TIMEOUT}s:\n{self.log_tail()}")

    def _listening_url(self):
        prefix = "emberd listening on "
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            text = log.read().decode(errors="replace")
        for line in text.splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        return None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self):
        """SIGKILL emberd alone: its guests keep running, like after a crash."""
        self.proc.kill()
        self.proc.wait()

    def restart(self):
        # The restart keeps the port, so clients made before it stay valid.
        self.stop()
        return self.start()

    def end_all(self):
        self.stop()
        for pgid in self.pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        # SIGKILL is delivered, not done: a guest's QEMU still holds its
        # files open for a moment, and a test that unmounts the data dir
        # next would find it busy.
        deadline = time.monotonic() + 20
        for pgid in self.pgids:
            while time.monotonic() < deadline and group_alive(pgid):
                time.sleep(0.05)

    def log_tail(self, lines=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, validate=True):
        key = (self.url, validate)
        if key not in self._clients:
            self._clients[key] = boto3.session.Session().client(
                "lambda-microvms", region_name=REGION, endpoint_url=self.url,
                config=Config(parameter_validation=validate, read_timeout=120,
                              retries={"total_max_attempts": 1}),
            )
        return self._clients[key]

    def signed_get(self, path, timeout=30):
        """GET an Ember-specific path signed with SigV4 (service "lambda")."""
        return self.signed_request("GET", path, timeout=timeout)

    def signed_request(self, method, path, body=None, timeout=30):
        """An Ember-specific request signed with SigV4 (service "lambda");
        urllib's response (an HTTPError for an error status)."""
        creds = boto3.session.Session().get_credentials().get_frozen_credentials()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = AWSRequest(method=method, url=self.url + path, data=body, headers=headers)
        SigV4Auth(creds, "lambda", REGION).add_auth(request)
        prepared = request.prepare()
        return urllib.request.urlopen(
            urllib.request.Request(prepared.url, data=prepared.body,
                                   headers=dict(prepared.headers), method=method),
            timeout=timeout,
        )

    def fork(self, microvm_id, body=None):
        """Ember's fork of a running microVM: (status, answer as JSON).
        `body` is the request's JSON text; None asks for one child."""
        path = f"/ember/v1/microvms/{microvm_id}/fork"
        data = (body if body is not None else '{"count": 1}').encode()
        try:
            with self.signed_request("POST", path, data, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")


CLI = Path(os.environ.get("EMBER_CLI_BIN", REPO / "target" / "release" / "ember"))


def ember_cli(ember, *args, stdin=None, timeout=120):
    """The `ember` CLI against `ember`'s data dir: the finished process."""
    assert CLI.exists(), f"ember CLI not found at {CLI} (set EMBER_CLI_BIN)"
    return subprocess.run([str(CLI), "--data-dir", str(ember.data_dir), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RUST_BACKTRACE": "0"})


def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name (state, ppid,
    pgrp, ...), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def group_alive(pgid):
    """Whether any process of group `pgid` is still running (zombies,
    which hold no files, do not count)."""
    for proc in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(proc.name)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def aws(emberd, *args, check=True, env=None):
    """Runs the AWS CLI from the venv against emberd; returns parsed JSON.
    `env` adds to (or overrides) the environment, e.g. AWS_CONFIG_FILE."""
    cli = Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "aws"
    if not cli.exists():
        cli = Path(os.sys.executable).parent / "aws"
    result = subprocess.run(
        [str(cli), "lambda-microvms", *args, "--endpoint-url", emberd.url, "--output", "json"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout) if result.stdout.strip() else result


def error_code(exc):
    return exc.response["Error"]["Code"]


def wait_image(client, name, timeout=300, interval=1.0):
    """Polls GetMicrovmImage until the image leaves CREATING/UPDATING."""
    deadline = time.monotonic() + timeout
    while True:
        image = client.get_microvm_image(imageIdentifier=name)
        if image["state"] in TERMINAL_IMAGE_STATES:
            return image
        if time.monotonic() > deadline:
            raise AssertionError(f"image {name} still {image['state']} after {timeout}s")
        time.sleep(interval)


def wait_version(client, name, version, timeout=300, interval=1.0):
    deadline = time.monotonic() + timeout
    while True:
        got = client.get_microvm_image_version(imageIdentifier=name, imageVersion=version)
        if got["state"] in TERMINAL_VERSION_STATES:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} version {version} still {got['state']} after {timeout}s")
        time.sleep(interval)


def wait_gone(get, timeout=120, interval=1.0):
    """Polls a Get call until it raises ResourceNotFoundException."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = get()
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return exc
            raise
        if time.monotonic() > deadline:
            raise AssertionError(f"still present after {timeout}s: {got}")
        time.sleep(interval)


def only_build(client, name, version, timeout=60):
    """The build of a version, waiting for it to be recorded."""
    deadline = time.monotonic() + timeout
    while True:
        items = client.list_microvm_image_builds(imageIdentifier=name, imageVersion=version)["items"]
        if items:
            return items[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} version {version} has no build after {timeout}s")
        time.sleep(0.5)


def build_log(emberd, client, name, version):
    build = only_build(client, name, version)
    path = f"/ember/v1/microvm-images/{name}/versions/{version}/builds/{build['buildId']}/log"
    with emberd.signed_get(path) as resp:
        return resp.read().decode(errors="replace")


def create_and_wait(client, name, zip_path, base=BUSYBOX_ARN, timeout=300, **extra):
    """CreateMicrovmImage, then the finished image and its version 1."""
    created = client.create_microvm_image(
        name=name, codeArtifact={"uri": f"file://{zip_path}"},
        baseImageArn=base, buildRoleArn=BUILD_ROLE, **extra)
    image = wait_image(client, name, timeout=timeout)
    version = client.get_microvm_image_version(
        imageIdentifier=name, imageVersion=created["imageVersion"])
    return image, version


# --- microVMs -------------------------------------------------------------

MICROVM_PORT = 8080
COUNTER_LINE = re.compile(r"hello from ember: request (\d+)")


def wait_microvm(client, microvm_id, want, timeout=120, interval=0.5):
    """Polls GetMicrovm until the state is one of `want`; fails early when
    the VM ends up TERMINATED without that being asked for."""
    want = {want} if isinstance(want, str) else set(want)
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        vm = client.get_microvm(microvmIdentifier=microvm_id)
        if not seen or seen[-1] != vm["state"]:
            seen.append(vm["state"])
        if vm["state"] in want:
            return vm
        if vm["state"] == "TERMINATED":
            raise AssertionError(
                f"microVM {microvm_id} TERMINATED while waiting for {sorted(want)}: "
                f"{vm.get('stateReason')} (states seen: {seen})")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"microVM {microvm_id} still {vm['state']} after {timeout}s, wanted {sorted(want)} "
                f"(states seen: {seen}, reason: {vm.get('stateReason')})")
        time.sleep(interval)


def endpoint_request(endpoint, token=None, port=None, path="/", headers=None, timeout=90,
                     method="GET"):
    """One HTTP request through a microVM endpoint (like curl):
    (status, body text, headers with lower-case names)."""
    url = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    sent = {}
    if token is not None:
        sent["X-aws-proxy-auth"] = token
    if port is not None:
        sent["X-aws-proxy-port"] = str(port)
    sent.update(headers or {})
    try:
        conn.request(method, path, headers=sent)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def via_shared_listener(port, host, token, timeout=90):
    """GET / through a shared wildcard-domain listener on loopback `port`,
    naming the microVM by `host` as a resolver would: (status, body)."""
    status, body, _ = endpoint_request(f"http://127.0.0.1:{port}", token,
                                       headers={"Host": host}, timeout=timeout)
    return status, body


def counter(endpoint, token, port=MICROVM_PORT, timeout=90):
    """hello-http's request counter: GET / and the N of its answer."""
    status, body, _ = endpoint_request(endpoint, token, port, timeout=timeout)
    assert status == 200, f"GET / through {endpoint} answered {status}: {body}"
    match = COUNTER_LINE.search(body)
    assert match, f"not hello-http's answer: {body!r}"
    return int(match.group(1))


def endpoint_token(client, microvm_id, port=MICROVM_PORT, minutes=10):
    """A token for the VM's endpoint (`X-aws-proxy-auth`), `port` only."""
    answer = client.create_microvm_auth_token(
        microvmIdentifier=microvm_id, expirationInMinutes=minutes,
        allowedPorts=[{"port": port}])
    return answer["authToken"]["X-aws-proxy-auth"]


def terminate_quietly(client, *microvm_ids):
    """Test clean-up: terminate, ignoring VMs that are already gone."""
    for microvm_id in microvm_ids:
        try:
            client.terminate_microvm(microvmIdentifier=microvm_id)
        except ClientError:
            pass


def microvm_dir(emberd, microvm_id):
    return emberd.data_dir / "microvms" / microvm_id


def qemu_pids(emberd, microvm_id):
    """The QEMUs of a microVM: their working directory is its jail, in a
    folder under the data dir named by its id."""
    return qemu_pids_where(emberd, lambda cwd: f"/{microvm_id}/" in cwd)


def qemu_pids_where(emberd, wanted):
    """The QEMUs under `emberd`'s data dir whose working directory
    `wanted(cwd)` picks."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        inside = cwd.startswith(str(emberd.data_dir)) and wanted(cwd)
        if inside and cmdline.startswith(b"qemu-system"):
            pids.append(int(entry))
    return pids


def assert_gone(ember, vm_id):
    """Within 30 s, no QEMU and no files are left of the microVM."""
    deadline = time.monotonic() + 30
    while qemu_pids(ember, vm_id) or microvm_dir(ember, vm_id).exists():
        assert time.monotonic() < deadline, (
            f"left behind: QEMU {qemu_pids(ember, vm_id)}, files "
            f"{sorted(p.name for p in microvm_dir(ember, vm_id).rglob('*'))}")
        time.sleep(0.5)


def suspended_tier(emberd, microvm_id):
    """Where a SUSPENDED microVM is kept: "warm" (its QEMU paused in place,
    nothing saved) or "disk" (its state saved in its folder, no QEMU);
    anything else describes what was found instead."""
    saved = (microvm_dir(emberd, microvm_id) / "suspended" / "snapshot.ember").exists()
    pids = qemu_pids(emberd, microvm_id)
    if pids and not saved:
        return "warm"
    if saved and not pids:
        return "disk"
    return f"neither (saved state: {saved}, QEMUs: {pids})"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def free_port():
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
