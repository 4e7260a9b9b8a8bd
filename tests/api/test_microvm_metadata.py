"""The execution role's credentials inside a guest, found the way AWS SDKs
find them on the real service: IMDSv2 at 169.254.169.254, answered by
emberd (from `--role-credentials`) over the agent's channel, with no
network card in the VM.

The guest runs the AWS CLI itself: the venv's awscli 1.x (pure Python)
on the host's Debian python3.11, both copied into a debian12-minimal image
(host and guest are Debian 12, so the interpreter and its few libraries
run there unchanged). Commands reach the guest through a tiny command
server behind the VM's endpoint."""

import json
import shutil
import sys
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from artifacts import zip_dir
from harness import (DEBIAN_ARN, create_and_wait, endpoint_request, endpoint_token,
                     terminate_quietly, wait_microvm)

ROLE = "arn:aws:iam::123456789012:role/ember-app"
OTHER_ROLE = "arn:aws:iam::123456789012:role/no-keys-for-this-one"
KEYS = {
    "accessKeyId": "AKIAEMBERTESTQ7Z4",
    "secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEMBERKEY",
    "sessionToken": "IQoJb3JpZ2luX2VjEMBER//session+token=",
    "expiration": "2031-02-03T04:05:06Z",
}
ROTATED_KEY = "AKIAROTATEDKEY0009"
HOST_PYTHON = Path("/usr/bin/python3.11")
SITE = Path(sys.prefix) / "lib" / "python3.11" / "site-packages"
# awscli's own packages, pure Python; botocore is vendored inside awscli.
CLI_PACKAGES = ["awscli", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3",
                "docutils", "yaml", "rsa", "pyasn1", "colorama"]
# Service models the CLI needs to start (its customizations rename or wrap
# these commands) plus sts; the other 440 are left out of the image.
CLI_SERVICES = {"sts", "s3", "sdb", "codedeploy", "config", "sagemaker-runtime", "sms-voice"}
CLI_DATA_FILES = {"endpoints.json", "partitions.json", "sdk-default-configuration.json",
                  "_retry.json"}
# What the Debian interpreter needs that debian12-minimal lacks.
HOST_LIBS = ["libexpat.so.1", "libssl.so.3", "libcrypto.so.3"]
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "pydoc_data", "site-packages", "dist-packages", "__pycache__"}

APP = r'''
import http.server, subprocess, urllib.parse

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        script = query.get("c", [""])[0]
        done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, timeout=280)
        body = done.stdout + done.stderr
        self.send_response(200)
        self.send_header("X-Exit", str(done.returncode))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
'''

# An IMDSv2 client as simple as SDKs' own: token first, then GETs with it.
IMDS_CLIENT = r'''
import json, urllib.error, urllib.request

def call(method, path, headers):
    req = urllib.request.Request("http://169.254.169.254" + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return [resp.status, resp.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]

status, token = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"})
auth = {"X-aws-ec2-metadata-token": token}
creds = "/latest/meta-data/iam/security-credentials/"
print(json.dumps({
    "token_status": status,
    "without_token": call("GET", creds, {})[0],
    "listing": call("GET", creds, auth),
    "entry": call("GET", creds + "execution_role", auth),
    "region": call("GET", "/latest/meta-data/placement/region", auth),
}))
'''

BIND_80 = ("/usr/bin/python3.11 -c 'import socket; s = socket.socket(); "
           "s.bind((\"0.0.0.0\", 80)); s.listen(); print(\"bound\")'")

DOCKERFILE = """FROM debian12-minimal
COPY python/ /
COPY site/ /opt/awscli/
COPY app.py imds.py /app/
COPY aws /usr/local/bin/aws
RUN chmod 755 /usr/local/bin/aws /usr/bin/python3.11
ENV PYTHONPATH=/opt/awscli
EXPOSE 8080
CMD ["/usr/bin/python3.11", "/app/app.py"]
"""


def _copy_site(dest):
    def ignore(dirpath, names):
        d = Path(dirpath)
        skip = {n for n in names if n == "__pycache__" or n.endswith(".so")}
        if d == SITE / "awscli":
            skip.add("examples")
        if d.name == "data" and d.parent.name == "botocore":
            skip |= {n for n in names if n not in CLI_SERVICES | CLI_DATA_FILES}
        return skip

    for name in CLI_PACKAGES:
        src = SITE / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _copy_python(dest):
    (dest / "usr" / "bin").mkdir(parents=True)
    shutil.copy2(HOST_PYTHON, dest / "usr" / "bin" / "python3.11")
    shutil.copytree(Path("/usr/lib/python3.11"), dest / "usr" / "lib" / "python3.11",
                    ignore=lambda d, names: {n for n in names
                                             if n in STDLIB_SKIP or n.startswith("config-")})
    libs = dest / "usr" / "lib" / "x86_64-linux-gnu"
    libs.mkdir(parents=True)
    for lib in HOST_LIBS:
        # Resolved: the image gets the file under the name the loader asks for.
        shutil.copyfile(Path("/usr/lib/x86_64-linux-gnu") / lib, libs / lib)


@pytest.fixture(scope="module")
def role_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("roles") / "role-credentials.json"
    path.write_text(json.dumps({ROLE: KEYS}))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def metadata_ember(module_emberd, role_file, tmp_path_factory):
    """An emberd serving `role_file`, with the AWS CLI image built."""
    if not HOST_PYTHON.exists() or not (SITE / "awscli").is_dir():
        pytest.skip("needs Debian 12's python3.11 on the host and awscli in the venv")
    ember = module_emberd("--min-idle-seconds", "2", "--role-credentials", str(role_file))
    src = tmp_path_factory.mktemp("aws-cli-image")
    _copy_python(src / "python")
    _copy_site(src / "site")
    (src / "app.py").write_text(APP)
    (src / "imds.py").write_text(IMDS_CLIENT)
    (src / "aws").write_text('#!/bin/sh\nexec /usr/bin/python3.11 -m awscli "$@"\n')
    (src / "Dockerfile").write_text(DOCKERFILE)
    path = zip_dir(src, tmp_path_factory.mktemp("zips") / "aws-cli.zip")
    client = ember.client()
    image, version = create_and_wait(client, "aws-cli", path, base=DEBIAN_ARN, timeout=900)
    assert image["state"] == "CREATED", f"{version.get('stateReason')}\n{ember.log_tail()}"
    return ember


def _guest_sh(vm, token, script):
    path = "/sh?" + urllib.parse.urlencode({"c": script})
    status, body, headers = endpoint_request(vm["endpoint"], token, 8080, path=path, timeout=300)
    assert status == 200, body
    return body, headers.get("x-exit")


def _imds(vm, token):
    body, code = _guest_sh(vm, token, "/usr/bin/python3.11 /app/imds.py")
    assert code == "0", body
    return json.loads(body)


def _run(client, **extra):
    vm = client.run_microvm(imageIdentifier="aws-cli", **extra)
    wait_microvm(client, vm["microvmId"], "RUNNING", timeout=180)
    return vm, endpoint_token(client, vm["microvmId"])


def test_the_aws_cli_in_the_guest_finds_the_role_credentials(metadata_ember, role_file):
    client = metadata_ember.client()
    vm, token = _run(client, executionRoleArn=ROLE)
    try:
        listed, code = _guest_sh(vm, token, "aws configure list")
        assert code == "0", listed
        key_line = next((l for l in listed.splitlines() if l.split()[:1] == ["access_key"]), "")
        assert KEYS["accessKeyId"][-4:] in key_line and "iam-role" in key_line, listed

        # The agent does not hold port 80: an app may listen on 0.0.0.0:80
        # (connections to the metadata address are steered to the agent).
        bound, code = _guest_sh(vm, token, BIND_80)
        assert code == "0" and "bound" in bound, bound

        seen = _imds(vm, token)
        assert seen["token_status"] == 200
        assert seen["without_token"] == 401
        assert seen["listing"] == [200, "execution_role"]
        assert seen["region"] == [200, "us-east-1"]
        status, text = seen["entry"]
        assert status == 200, text
        creds = json.loads(text)
        assert creds.pop("LastUpdated").endswith("Z")
        assert creds == {
            "Code": "Success", "Type": "AWS-HMAC",
            "AccessKeyId": KEYS["accessKeyId"], "SecretAccessKey": KEYS["secretAccessKey"],
            "Token": KEYS["sessionToken"], "Expiration": KEYS["expiration"],
        }

        # Keys rotate without a restart: the file is read again when it changes.
        role_file.write_text(json.dumps({ROLE: {**KEYS, "accessKeyId": ROTATED_KEY}}))
        # A suspended and resumed VM still has its endpoint (the listener
        # is agent state, kept in the snapshot; emberd serves the new session).
        client.suspend_microvm(microvmIdentifier=vm["microvmId"])
        wait_microvm(client, vm["microvmId"], "SUSPENDED", timeout=120)
        client.resume_microvm(microvmIdentifier=vm["microvmId"])
        wait_microvm(client, vm["microvmId"], "RUNNING", timeout=120)
        status, text = _imds(vm, token)["entry"]
        assert status == 200 and json.loads(text)["AccessKeyId"] == ROTATED_KEY, text
    finally:
        role_file.write_text(json.dumps({ROLE: KEYS}))
        terminate_quietly(client, vm["microvmId"])


def test_a_vm_without_configured_credentials_gets_none(metadata_ember):
    """Run without a role, and with a role that has no keys configured:
    neither VM gets credentials. Both are checked at once (each spends
    most of its time in the guest's AWS CLI)."""
    client = metadata_ember.client()

    def check(role):
        vm, token = _run(client, **({"executionRoleArn": role} if role else {}))
        try:
            seen = _imds(vm, token)
            assert seen["token_status"] == 200, (role, seen)
            assert seen["listing"] == [200, ""], (role, seen)
            assert seen["entry"][0] == 404, (role, seen)
            assert seen["region"] == [200, "us-east-1"], (role, seen)
            listed, code = _guest_sh(vm, token, "aws configure list")
            assert code == "0", (role, listed)
            key_line = next((l for l in listed.splitlines() if l.split()[:1] == ["access_key"]), "")
            assert "<not set>" in key_line and "iam-role" not in key_line, (role, listed)
        finally:
            terminate_quietly(client, vm["microvmId"])

    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in [pool.submit(check, role) for role in (None, OTHER_ROLE)]:
            done.result()


def test_a_credentials_file_others_can_read_is_refused_at_start(separate_emberd, tmp_path):
    path = tmp_path / "roles.json"
    path.write_text(json.dumps({ROLE: KEYS}))
    path.chmod(0o644)
    with pytest.raises(RuntimeError) as info:
        separate_emberd("--role-credentials", str(path))
    message = str(info.value)
    assert "exited" in message and "0600" in message and str(path) in message, message


def test_a_vm_taken_back_after_an_emberd_crash_still_gets_its_credentials(metadata_ember):
    """Last in the module: it kills the module's emberd (the VM lives on)."""
    client = metadata_ember.client()
    vm, token = _run(client, executionRoleArn=ROLE)
    try:
        assert _imds(vm, token)["entry"][0] == 200
        metadata_ember.kill9()
        metadata_ember.start()
        assert client.get_microvm(microvmIdentifier=vm["microvmId"])["state"] == "RUNNING"
        status, text = _imds(vm, token)["entry"]
        assert status == 200, text
        assert json.loads(text)["AccessKeyId"] == KEYS["accessKeyId"]
    finally:
        terminate_quietly(client, vm["microvmId"])
