"""7. Hostile code artifacts: each is refused at create time or fails its
build with a reason, and nothing is written outside the data dir."""

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_bomb, zip_deflate_bomb, zip_files, zip_slip, zip_symlink_escape
from harness import BUILD_ROLE, BUSYBOX_ARN, error_code, wait_image

DOCKERFILE = "FROM busybox\nCOPY . /app\nCMD [\"sleep\", \"3600\"]\n"
# A bomb may be refused, but never unpacked: the data dir must not grow by
# anything near its unpacked size (3-4 GB).
MAX_GROWTH = 512 << 20


def allocated_bytes(root):
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass  # removed while we walked
    return total


def refusal(client, name, zip_uri):
    """The reason emberd gave: a ValidationException's message, or the failed
    version's stateReason."""
    try:
        client.create_microvm_image(name=name, codeArtifact={"uri": zip_uri},
                                    baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    except ClientError as exc:
        assert error_code(exc) == "ValidationException", exc.response
        return exc.response["Error"]["Message"]
    image = wait_image(client, name, timeout=300)
    version = client.get_microvm_image_version(imageIdentifier=name, imageVersion="1")
    assert image["state"] == "CREATE_FAILED", f"{name} was accepted: {version}"
    assert version["state"] == "FAILED"
    return version.get("stateReason", "")


@pytest.fixture
def sentinel(tmp_path):
    target = tmp_path / "outside"
    target.mkdir()
    yield target
    assert sorted(os.listdir(target)) == [], "an artifact wrote outside the data dir"


def assert_reason(reason, words):
    assert reason, "refused without a reason"
    assert any(w in reason.lower() for w in words), f"reason does not say why: {reason!r}"


def test_zip_slip(client, tmp_path, sentinel):
    path = zip_slip(tmp_path / "slip.zip", sentinel / "pwned", DOCKERFILE)
    reason = refusal(client, "hostile-slip", f"file://{path}")
    assert_reason(reason, ["path", "outside", "..", "escape", "travers", "absolute"])


def test_symlink_escape(client, tmp_path, sentinel):
    path = zip_symlink_escape(tmp_path / "link.zip", sentinel, DOCKERFILE)
    reason = refusal(client, "hostile-symlink", f"file://{path}")
    assert_reason(reason, ["link", "outside", "escape"])


@pytest.mark.parametrize("kind", ["deflate", "overlapping"])
def test_zip_bomb(ember, client, tmp_path, sentinel, kind):
    if kind == "deflate":
        path = zip_deflate_bomb(tmp_path / "bomb.zip", DOCKERFILE)
    else:
        path = zip_bomb(tmp_path / "bomb.zip", DOCKERFILE)
    before = allocated_bytes(ember.data_dir)
    reason = refusal(client, f"hostile-bomb-{kind}", f"file://{path}")
    assert_reason(reason, ["size", "large", "limit", "exceed", "bomb", "overlap", "too many", "ratio"])
    assert allocated_bytes(ember.data_dir) - before < MAX_GROWTH


def test_missing_artifact_file(client):
    with pytest.raises(ClientError) as info:
        client.create_microvm_image(
            name="hostile-missing", codeArtifact={"uri": "file:///nonexistent.zip"},
            baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    assert error_code(info.value) == "ValidationException"
    assert "nonexistent.zip" in info.value.response["Error"]["Message"]


@pytest.mark.parametrize("uri", ["s3://Bucket/app.zip", "ftp://127.0.0.1/app.zip", "file://relative.zip"])
def test_unsupported_artifact_uri(client, uri):
    """A URI emberd cannot fetch (scheme it does not speak, no absolute path)
    is refused up front, not at build time."""
    with pytest.raises(ClientError) as info:
        client.create_microvm_image(
            name="hostile-uri", codeArtifact={"uri": uri},
            baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    assert error_code(info.value) == "ValidationException"


# --- Artifact URIs turned against the host (SSRF) and file roots ---------

# Fails at parse, right after a successful fetch: a build that gets this
# far shows the artifact was accepted and fetched, without booting a VM.
UNBUILDABLE = {"Dockerfile": "FROM busybox\nBOGUS x\n"}
REFUSED = "artifacts are fetched from public addresses only"


class RecordingServer(ThreadingHTTPServer):
    """A real HTTP server that counts the connections it accepted; serves
    `routes` ({path: (status, headers, body)}), anything else 404."""

    daemon_threads = True

    def __init__(self, host, routes):
        self.routes = routes
        self.connections = 0
        self.paths = []
        super().__init__((host, 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def verify_request(self, request, client_address):
        self.connections += 1
        return True

    @property
    def base(self):
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        status, headers, body = self.server.routes.get(self.path, (404, {}, b"not found"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    made = []

    def make(host, routes):
        server = RecordingServer(host, routes)
        made.append(server)
        return server

    yield make
    for server in made:
        server.shutdown()
        server.server_close()


def validation_message(client, name, uri, update=False):
    with pytest.raises(ClientError) as info:
        if update:
            client.update_microvm_image(imageIdentifier=name, codeArtifact={"uri": uri},
                                        baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
        else:
            client.create_microvm_image(name=name, codeArtifact={"uri": uri},
                                        baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    assert error_code(info.value) == "ValidationException", info.value.response
    with pytest.raises(ClientError) as gone:
        client.get_microvm_image(imageIdentifier=name)
    assert error_code(gone.value) == "ResourceNotFoundException", "a refused image was stored"
    return info.value.response["Error"]["Message"]


def zip_routes(tmp_path, files=UNBUILDABLE):
    body = zip_files(tmp_path / "served.zip", files).read_bytes()
    return {"/a.zip": (200, {"Content-Type": "application/zip"}, body)}


def test_non_public_artifact_hosts_are_refused_at_the_api(client, tmp_path, servers):
    """emberd without --allow-private-artifact-hosts: loopback (listening or
    not), a name that resolves to loopback and the metadata address are one
    ValidationException, and the listening server never hears of it."""
    listening = servers("127.0.0.1", zip_routes(tmp_path))
    closed = RecordingServer("127.0.0.1", {})
    closed_port = closed.server_address[1]
    closed.shutdown()
    closed.server_close()
    uris = [
        f"{listening.base}/a.zip",
        f"http://127.0.0.1:{closed_port}/a.zip",
        f"http://localhost:{listening.server_address[1]}/a.zip",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://10.0.0.1/a.zip",
    ]
    shapes = set()
    for i, uri in enumerate(uris):
        for update in (False, True):
            message = validation_message(client, f"ssrf-{i}", uri, update=update)
            assert REFUSED in message, message
            shapes.add(message.replace(uri.replace("[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]"), "URI"))
    assert len(shapes) == 1, shapes
    assert listening.connections == 0, listening.paths


def test_a_redirect_to_loopback_fails_the_build_before_connecting(separate_emberd, tmp_path, servers):
    """The first hop is allowed (--allow-artifact-address 127.0.0.2, a
    loopback address of its own); its redirect to 127.0.0.1 is refused by
    the fetch, and the target saw no request."""
    target = servers("127.0.0.1", zip_routes(tmp_path))
    first = servers("127.0.0.2", {
        "/a.zip": (302, {"Location": f"{target.base}/a.zip"}, b""),
        "/direct.zip": zip_routes(tmp_path)["/a.zip"],
    })
    daemon = separate_emberd("--allow-artifact-address", "127.0.0.2")
    client = daemon.client()
    # The allowed first hop really is fetched from: the build gets past the
    # fetch and fails on the Dockerfile.
    reason = refusal(client, "ssrf-direct", f"{first.base}/direct.zip")
    assert "BOGUS" in reason, reason
    reason = refusal(client, "ssrf-redirect", f"{first.base}/a.zip")
    assert REFUSED in reason, reason
    assert first.paths == ["/direct.zip", "/a.zip"], first.paths
    assert target.connections == 0, target.paths
    # Other loopback addresses stay refused at the API.
    message = validation_message(client, "ssrf-other", f"{target.base}/a.zip")
    assert REFUSED in message, message


def test_allow_private_artifact_hosts_lets_a_local_server_serve(separate_emberd, tmp_path, servers):
    server = servers("127.0.0.1", zip_routes(tmp_path))
    client = separate_emberd("--allow-private-artifact-hosts").client()
    reason = refusal(client, "lab-local", f"{server.base}/a.zip")
    assert "BOGUS" in reason, reason
    assert server.paths == ["/a.zip"], server.paths


def test_artifact_root_limits_file_uris(separate_emberd, tmp_path):
    root = tmp_path / "artifacts"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    inside_zip = zip_files(root / "app.zip", UNBUILDABLE)
    outside_zip = zip_files(outside / "app.zip", UNBUILDABLE)
    (root / "escape.zip").symlink_to(outside_zip)
    (root / "linked").symlink_to(outside)
    client = separate_emberd("--artifact-root", str(root)).client()

    uris = [
        f"file://{outside_zip}",
        f"file://{outside / 'missing.zip'}",
        f"file://{outside}",
        f"file://{root / 'escape.zip'}",
        f"file://{root / 'linked' / 'app.zip'}",
        f"file://{root}/../elsewhere/app.zip",
        "file:///etc/passwd",
        "file:///nonexistent.zip",
    ]
    shapes = set()
    for i, uri in enumerate(uris):
        message = validation_message(client, f"root-out-{i}", uri)
        assert "artifact root" in message, message
        shapes.add(message.replace(uri, "URI"))
    assert len(shapes) == 1, f"the answer depends on the target: {shapes}"

    # Inside the root: accepted, fetched, and failing on its Dockerfile.
    reason = refusal(client, "root-in", f"file://{inside_zip}")
    assert "BOGUS" in reason, reason
