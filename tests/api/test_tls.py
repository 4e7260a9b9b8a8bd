"""TLS on the API and on endpoints, with the clients users have: the AWS
CLI with `--ca-bundle`, boto3 with `verify=`, the `ember` CLI (`shell` too), urllib and
a WebSocket client over wss. One emberd with `--tls-self-signed` serves
one built hello-http image; `--tls-cert/--tls-key` and their SIGHUP
reload get an emberd of their own (no image); the loopback rule is
checked on emberd's command line."""

import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.parse
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
import websocket
from botocore.config import Config

from harness import (BUILD_ROLE, BUSYBOX_ARN, COUNTER_LINE, REGION, REPO, aws, endpoint_token,
                     terminate_quietly, wait_image, wait_microvm)

CLI = Path(os.environ.get("EMBER_CLI_BIN", REPO / "target" / "release" / "ember"))
FINGERPRINT_LINE = "emberd TLS certificate sha256 "


def tls_client(emberd, verify):
    return boto3.session.Session().client(
        "lambda-microvms", region_name=REGION, endpoint_url=emberd.url, verify=verify,
        config=Config(read_timeout=120, retries={"total_max_attempts": 1}))


def ca_context(ca):
    return ssl.create_default_context(cafile=str(ca))


def served_fingerprint(url):
    """SHA-256 of the certificate a new connection to `url` is shown, in
    emberd's (and openssl's) AB:CD:… form."""
    parts = urllib.parse.urlsplit(url)
    pem = ssl.get_server_certificate((parts.hostname, parts.port), timeout=10)
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def printed_fingerprints(emberd):
    return [line[len(FINGERPRINT_LINE):].split()[0]
            for line in emberd.log_path.read_text(errors="replace").splitlines()
            if line.startswith(FINGERPRINT_LINE)]


def https_get(endpoint, ca, headers):
    parts = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=90,
                                       context=ca_context(ca))
    try:
        conn.request("GET", "/", headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tls_emberd(module_emberd):
    emberd = module_emberd("--tls-self-signed")
    ca = emberd.data_dir / "tls" / "cert.pem"
    return emberd, ca


@pytest.fixture(scope="module")
def tls_image(tls_emberd, hello_zip):
    """hello-http built through boto3 over TLS."""
    emberd, ca = tls_emberd
    client = tls_client(emberd, str(ca))
    client.create_microvm_image(
        name="hello-tls", codeArtifact={"uri": f"file://{hello_zip}"},
        baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    image = wait_image(client, "hello-tls")
    assert image["state"] == "CREATED", (image, emberd.log_tail())
    return image


@pytest.fixture(scope="module")
def tls_vm(tls_emberd, tls_image):
    emberd, ca = tls_emberd
    client = tls_client(emberd, str(ca))
    vm = client.run_microvm(imageIdentifier="hello-tls",
                            ingressNetworkConnectors=["HTTP_INGRESS", "SHELL_INGRESS"])
    try:
        yield wait_microvm(client, vm["microvmId"], "RUNNING", timeout=90)
    finally:
        terminate_quietly(client, vm["microvmId"])


def test_self_signed_api_takes_the_aws_cli_and_boto3_with_the_ca(tls_emberd, tls_image):
    emberd, ca = tls_emberd
    assert emberd.url.startswith("https://127.0.0.1:"), emberd.url
    assert (emberd.data_dir / "endpoint").read_text().strip() == emberd.url
    # The printed fingerprint is the one clients are shown.
    assert printed_fingerprints(emberd) == [served_fingerprint(emberd.url)]

    listed = aws(emberd, "list-microvm-images", "--ca-bundle", str(ca))
    assert "hello-tls" in [i["name"] for i in listed["items"]], listed
    assert tls_client(emberd, str(ca)).get_microvm_image(
        imageIdentifier="hello-tls")["state"] == "CREATED"

    # Without the CA the handshake fails: nothing was served in clear.
    with pytest.raises(botocore.exceptions.SSLError):
        tls_client(emberd, True).list_microvm_images()
    refused = aws(emberd, "list-microvm-images", check=False)
    assert refused.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr


def test_self_signed_certificate_is_reused_across_restarts(tls_emberd, tls_image):
    emberd, ca = tls_emberd
    before = ca.read_bytes()
    emberd.restart()
    assert ca.read_bytes() == before
    fingerprints = printed_fingerprints(emberd)
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1], fingerprints
    assert served_fingerprint(emberd.url) == fingerprints[0]


def test_endpoint_answers_over_https_and_wss(tls_emberd, tls_vm):
    emberd, ca = tls_emberd
    client = tls_client(emberd, str(ca))
    vm_id, endpoint = tls_vm["microvmId"], tls_vm["endpoint"]
    assert endpoint.startswith("https://"), endpoint
    assert client.get_microvm(microvmIdentifier=vm_id)["endpoint"] == endpoint

    token = endpoint_token(client, vm_id)
    status, body = https_get(endpoint, ca, {"X-aws-proxy-auth": token})
    assert status == 200 and COUNTER_LINE.search(body), (status, body)
    # No plain HTTP on the endpoint either.
    parts = urllib.parse.urlsplit(endpoint)
    plain = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        plain.request("GET", "/", headers={"X-aws-proxy-auth": token})
        plain.getresponse().read()
    plain.close()

    shell_token = client.create_microvm_shell_auth_token(
        microvmIdentifier=vm_id, expirationInMinutes=5)["authToken"]["X-aws-proxy-auth"]
    ws = websocket.create_connection(
        f"wss://{parts.hostname}:{parts.port}/shell", timeout=90,
        sslopt={"ca_certs": str(ca)},
        subprotocols=["lambda-microvms", f"lambda-microvms.authentication.{shell_token}"])
    try:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_TEXT, (opcode, frame.data)
        assert json.loads(frame.data)["type"] == "session_init"
        ws.send_binary(b"echo tls-$((6*7))\n")
        out, deadline = "", time.monotonic() + 60
        while "tls-42" not in out:
            assert time.monotonic() < deadline, out
            opcode, frame = ws.recv_data_frame(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_BINARY, (opcode, frame.data, out)
            out += frame.data.decode(errors="replace")
    finally:
        ws.close()


def test_ember_cli_over_tls(tls_emberd, tls_vm):
    emberd, ca = tls_emberd
    if not CLI.exists():
        pytest.fail(f"ember CLI not found at {CLI} (set EMBER_CLI_BIN)")

    def ember(*args, env=None):
        return subprocess.run([str(CLI), "--data-dir", str(emberd.data_dir), *args],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RUST_BACKTRACE": "0", **(env or {})})

    vm_id = tls_vm["microvmId"]
    shown = ember("--ca-bundle", str(ca), "get", vm_id)
    assert shown.returncode == 0, shown.stderr
    assert tls_vm["endpoint"] in shown.stdout, shown.stdout
    # AWS_CA_BUNDLE, as the AWS CLI reads it; `curl` goes through the
    # endpoint's TLS with the same trust.
    curled = ember("curl", vm_id, "/", env={"AWS_CA_BUNDLE": str(ca)})
    assert curled.returncode == 0, curled.stderr
    assert COUNTER_LINE.search(curled.stdout), curled.stdout
    untrusted = ember("get", vm_id)
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr.lower(), untrusted.stderr

    # `ember shell` over wss, trusting the same bundle.
    def shell(*args):
        return subprocess.run([str(CLI), "--data-dir", str(emberd.data_dir), *args],
                              input="echo $((6*7))\nexit 3\n", capture_output=True, text=True,
                              timeout=120, env={**os.environ, "RUST_BACKTRACE": "0"})

    shelled = shell("--ca-bundle", str(ca), "shell", vm_id)
    assert shelled.returncode == 3, shelled
    assert "\n42" in shelled.stdout.replace("\r", ""), shelled.stdout


def make_pair(dest, name):
    cert, key = dest / f"{name}.crt", dest / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext",
         "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


def test_cert_files_reload_on_sighup_and_a_bad_pair_keeps_the_old(separate_emberd, tmp_path):
    cert, key = make_pair(tmp_path, "first")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    emberd = separate_emberd("--tls-cert", str(live_cert), "--tls-key", str(live_key))
    first = served_fingerprint(emberd.url)
    assert printed_fingerprints(emberd) == [first]
    listed = tls_client(emberd, str(cert)).list_microvm_images()
    assert "items" in listed

    new_cert, new_key = make_pair(tmp_path, "second")
    live_key.write_bytes(new_key.read_bytes())
    live_cert.write_bytes(new_cert.read_bytes())
    emberd.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while len(printed_fingerprints(emberd)) < 2:
        assert time.monotonic() < deadline, emberd.log_tail()
        time.sleep(0.2)
    second = printed_fingerprints(emberd)[1]
    assert second != first
    assert served_fingerprint(emberd.url) == second
    assert "items" in tls_client(emberd, str(new_cert)).list_microvm_images()

    # A key that is not the certificate's: refused, the second pair stays.
    live_key.write_bytes(key.read_bytes())
    emberd.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "keeping the TLS certificate in use" not in emberd.log_tail(200):
        assert time.monotonic() < deadline, emberd.log_tail()
        time.sleep(0.2)
    assert emberd.proc.poll() is None
    assert served_fingerprint(emberd.url) == second
    assert len(printed_fingerprints(emberd)) == 2


def test_plain_http_off_loopback_needs_insecure_http(ember, tmp_path):
    def emberd(name, *flags):
        # The log goes to a file: a pipe nobody reads could fill and stall it.
        log = open(tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen(
            [str(ember.binary), "--data-dir", str(tmp_path / name), "--listen", "0.0.0.0:0",
             *flags],
            stdout=subprocess.PIPE, stderr=log, text=True, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        return proc

    refused = emberd("refused")
    refused.communicate(timeout=60)
    assert refused.returncode != 0
    stderr = (tmp_path / "refused.log").read_text()
    for flag in ("--tls-cert", "--tls-key", "--tls-self-signed", "--insecure-http"):
        assert flag in stderr, stderr

    accepted = emberd("accepted", "--insecure-http")
    try:
        line = accepted.stdout.readline()
        assert line.startswith("emberd listening on http://0.0.0.0:"), (
            line, (tmp_path / "accepted.log").read_text())
    finally:
        accepted.send_signal(signal.SIGTERM)
        accepted.communicate(timeout=30)
