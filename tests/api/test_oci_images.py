"""`FROM <registry>/<name>:<tag>` and `@sha256:` builds against real local
registries (Debian's docker-registry), with images written in
oci_images.py: the image config is inherited, whiteouts honoured, hostile
layers refused with nothing left behind, auth from a docker config.json,
shared layers fetched once, and an unnamed loopback registry refused."""

import os
import time

import pytest

from artifacts import zip_files
from harness import (REPO, create_and_wait, endpoint_request, endpoint_token, only_build,
                     terminate_quietly, wait_microvm)
import oci_images as oci

ASSETS = os.environ.get("EMBER_ASSETS_DIR", str(REPO / "build" / "data" / "assets"))
CLEANUP_TIMEOUT = 60
# The base's Env, WorkingDir and User, as a RUN step sees them.
BUILT = 'RUN echo "built as $(id -u) in $(pwd) with $GREETING" > www/built.txt\n'
# `$#` counts what follows "entry": the base's Cmd, if it were kept.
PINNED_ENTRYPOINT = (
    'ENTRYPOINT ["/bin/sh", "-c", "echo args=$# uid=$(id -u) > /srv/www/index.html; '
    'exec httpd -f -p 8080 -h /srv/www", "entry"]\n')


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    """Anonymous, htpasswd-auth, and one no flag names (the SSRF guard's)."""
    root = tmp_path_factory.mktemp("registries")
    made = {"anon": oci.Registry(root / "anon"), "auth": oci.Registry(root / "auth", auth=True),
            "unnamed": oci.Registry(root / "unnamed")}
    try:
        for registry in made.values():
            registry.start()
        yield made
    finally:
        for registry in made.values():
            registry.stop()


def bare_layer(busybox):
    layer = oci.Layer().dir("bin").file("bin/busybox", busybox, mode=0o755)
    layer.symlink("bin/httpd", "busybox")
    return layer.dir("www").file("www/index.html", "bare\n")


@pytest.fixture(scope="module")
def images(registries, tmp_path_factory):
    """Pushes the images; {name: digests} (see Layout.image)."""
    root = tmp_path_factory.mktemp("layouts")
    busybox = oci.static_busybox(ASSETS, root / "deb")
    layout = oci.Layout(root / "layout")
    app_layers = oci.app_layers(busybox)
    pushed = {
        "app": layout.image("app", app_layers, oci.APP_CONFIG),
        # Shares the app's first layer, blob for blob.
        "other": layout.image("other", [app_layers[0], oci.Layer().dir("srv").dir("srv/www")
                                        .file("srv/www/index.html", "other\n")],
                              {**oci.APP_CONFIG, "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]}),
        "escape": layout.image("escape", [oci.busybox_layer(busybox),
                                          oci.Layer().file("../escape", "out of the root\n")],
                               oci.APP_CONFIG),
        # No /etc at all, like a FROM-scratch image with one program.
        "bare": layout.image("bare", [bare_layer(busybox)],
                             {"Cmd": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
                              "ExposedPorts": {"8080/tcp": {}}}),
        "device": layout.image("device", [oci.busybox_layer(busybox),
                                          oci.Layer().dir("dev").char_device("dev/evil")],
                               oci.APP_CONFIG),
    }
    for name in pushed:
        registries["anon"].push(layout, name, f"test/{name}")
    registries["auth"].push(layout, "app", "test/app")
    registries["unnamed"].push(layout, "app", "test/app")
    return pushed


@pytest.fixture(scope="module")
def oci_emberd(module_emberd, registries, images, tmp_path_factory):
    config = oci.docker_config(tmp_path_factory.mktemp("docker") / "config.json", registries["auth"])
    return module_emberd("--insecure-registry", registries["anon"].host,
                         "--insecure-registry", registries["auth"].host,
                         "--docker-config", str(config))


def build(emberd, tmp_path, name, dockerfile):
    path = zip_files(tmp_path / f"{name}.zip", {"Dockerfile": dockerfile})
    return create_and_wait(emberd.client(), name, path, timeout=600)


def built(emberd, tmp_path, name, dockerfile):
    image, version = build(emberd, tmp_path, name, dockerfile)
    assert image["state"] == "CREATED", f"{version.get('stateReason')}\n{emberd.log_tail()}"
    assert version["state"] == "SUCCESSFUL", version
    return image


def failed(emberd, tmp_path, name, dockerfile):
    """The stateReason of a build that must fail."""
    image, version = build(emberd, tmp_path, name, dockerfile)
    assert image["state"] == "CREATE_FAILED", f"{name} was built: {version}"
    assert version["state"] == "FAILED", version
    reason = version.get("stateReason", "")
    assert reason, "failed without a reason"
    return reason


def assert_nothing_left(emberd, name):
    """No QEMU of the build still running, no snapshot or file of the
    failed version, no device node or escaped file in the data dir."""
    build_id = only_build(emberd.client(), name, "1")["buildId"]
    deadline = time.monotonic() + CLEANUP_TIMEOUT
    while oci.qemus_under(emberd.data_dir, build_id[:12]):
        assert time.monotonic() < deadline, f"the build's QEMU still runs {CLEANUP_TIMEOUT}s after"
        time.sleep(0.5)
    image_dir = emberd.data_dir / "images" / name
    files = [os.path.join(d, f) for d, _, fs in os.walk(image_dir) for f in fs]
    assert files == [], f"a failed build left {files}"
    assert not (emberd.data_dir / "builds" / build_id).exists(), "the build's scratch is left"
    assert oci.hostile_leftovers(emberd.data_dir.parent) == []


@pytest.fixture(scope="module")
def app_image(oci_emberd, registries, tmp_path_factory):
    """The app image with one RUN step and no CMD of its own."""
    dockerfile = f"FROM {registries['anon'].host}/test/app:app\n{BUILT}"
    return built(oci_emberd, tmp_path_factory.mktemp("app"), "oci-app", dockerfile)


def served(emberd, name, *paths):
    """Runs a microVM of `name` and GETs `paths` through its endpoint:
    [(status, body)]."""
    client = emberd.client()
    microvm_id = client.run_microvm(imageIdentifier=name)["microvmId"]
    try:
        vm = wait_microvm(client, microvm_id, "RUNNING")
        token = endpoint_token(client, microvm_id)
        return [endpoint_request(vm["endpoint"], token, 8080, path=path)[:2] for path in paths]
    finally:
        terminate_quietly(client, microvm_id)


def test_the_image_config_and_layers_are_honoured(oci_emberd, app_image):
    (status, index), built_txt = served(oci_emberd, "oci-app", "/index.html", "/built.txt")
    assert status == 200, index
    # Env, WorkingDir, User; only the opaque dir's own file; the whiteout.
    assert index.splitlines() == ["greeting=from-oci", "pwd=/srv", "uid=1000", "old=c",
                                  "gone=absent"], index
    assert built_txt == (200, "built as 1000 in /srv with from-oci\n")


def test_a_digest_pinned_reference_builds(oci_emberd, registries, images, tmp_path):
    """Pinned by digest, with an ENTRYPOINT of its own: it runs as the
    base's User, and without the base's Cmd as arguments (as in Docker)."""
    digest = images["app"]["manifest"]
    built(oci_emberd, tmp_path, "oci-pinned",
          f"FROM {registries['anon'].host}/test/app@{digest}\n{PINNED_ENTRYPOINT}")
    assert served(oci_emberd, "oci-pinned", "/") == [(200, "args=0 uid=1000\n")]


@pytest.mark.parametrize("case, reference", [
    ("digest", "test/app@sha256:" + "0" * 64),
    ("tag", "test/app:no-such-tag"),
    ("repository", "test/no-such-image:app"),
], ids=["digest", "tag", "repository"])
def test_a_missing_image_fails_and_says_so(oci_emberd, registries, tmp_path, case, reference):
    name = f"oci-missing-{case}"
    reason = failed(oci_emberd, tmp_path, name, f"FROM {registries['anon'].host}/{reference}\n")
    assert "not found" in reason.lower() or "unknown" in reason.lower(), reason
    assert_nothing_left(oci_emberd, name)


@pytest.mark.parametrize("image, words", [
    ("escape", "escapes the image root"),
    ("device", "is a device node"),
], ids=["escape", "device"])
def test_a_hostile_layer_fails_with_nothing_left(oci_emberd, registries, tmp_path, image, words):
    name = f"oci-hostile-{image}"
    reason = failed(oci_emberd, tmp_path, name, f"FROM {registries['anon'].host}/test/{image}:{image}\n")
    assert words in reason, reason
    assert_nothing_left(oci_emberd, name)


def test_a_registry_that_needs_auth_gets_it_from_the_docker_config(oci_emberd, registries,
                                                                   tmp_path):
    built(oci_emberd, tmp_path, "oci-auth", f"FROM {registries['auth'].host}/test/app:app\n")


def test_without_credentials_the_auth_registry_says_unauthorized(separate_emberd, registries,
                                                                 images, tmp_path):
    daemon = separate_emberd("--insecure-registry", registries["auth"].host)
    reason = failed(daemon, tmp_path, "oci-noauth", f"FROM {registries['auth'].host}/test/app:app\n")
    assert "refused access" in reason and "needs credentials" in reason, reason
    assert_nothing_left(daemon, "oci-noauth")


def test_a_shared_layer_is_fetched_once(oci_emberd, registries, images, app_image, tmp_path):
    built(oci_emberd, tmp_path, "oci-other", f"FROM {registries['anon'].host}/test/other:other\n")
    anon = registries["anon"]
    shared, own = images["other"]["layers"]
    assert shared == images["app"]["layers"][0]
    assert anon.blob_gets(shared) == 1, f"the shared layer was fetched {anon.blob_gets(shared)} times"
    assert anon.blob_gets(own) == 1


def test_a_loopback_registry_no_flag_names_is_refused(oci_emberd, registries, images, tmp_path):
    unnamed = registries["unnamed"]
    before = unnamed.v2_requests()
    reason = failed(oci_emberd, tmp_path, "oci-ssrf", f"FROM {unnamed.host}/test/app:app\n")
    assert "--insecure-registry" in reason or "--private-registry" in reason, reason
    assert unnamed.v2_requests() == before, "emberd talked to a registry it must refuse"


def test_a_registry_stage_feeds_a_managed_base_stage(oci_emberd, registries, images, tmp_path):
    """Multi-stage across bases: a stage FROM the registry image (its Env
    and User in force) is copied from by a stage FROM the managed busybox."""
    dockerfile = (f"FROM {registries['anon'].host}/test/app:app AS build\n"
                  'RUN echo "made by $(id -u) with $GREETING" > /srv/www/made.txt\n'
                  "FROM busybox\n"
                  "COPY --from=build /srv/www/made.txt /www/index.html\n"
                  'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')
    built(oci_emberd, tmp_path, "oci-multi", dockerfile)
    assert served(oci_emberd, "oci-multi", "/") == [(200, "made by 1000 with from-oci\n")]


def test_an_image_without_etc_builds_and_serves(oci_emberd, registries, images, tmp_path):
    built(oci_emberd, tmp_path, "oci-bare", f"FROM {registries['anon'].host}/test/bare:bare\n")
    assert served(oci_emberd, "oci-bare", "/") == [(200, "bare\n")]
