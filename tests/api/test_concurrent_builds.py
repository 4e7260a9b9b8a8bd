"""Issue 12: two users building the same Dockerfile at once both get their
image, and the layers they built are shared, not fought over. (Their
snapshots differ: the app's environment names its image.)"""

import threading

from artifacts import zip_files
from harness import BUILD_ROLE, BUSYBOX_ARN, build_log, wait_image

# A RUN step whose layer both builds publish at the same moment.
DOCKERFILE = ("FROM busybox\nRUN echo concurrent-builds-$((6 * 7)) > /marker\n"
              "CMD [\"sleep\", \"3600\"]\n")


def create(client, zip_path, name):
    return client.create_microvm_image(
        name=name, codeArtifact={"uri": f"file://{zip_path}"},
        baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)


def test_identical_builds_at_once_both_succeed_and_share_their_layer(separate_emberd, tmp_path):
    # An emberd of its own, so both builds get a build slot at once.
    emberd = separate_emberd("--max-builds", "2")
    client = emberd.client()
    zip_path = zip_files(tmp_path / "app.zip", {"Dockerfile": DOCKERFILE})
    barrier = threading.Barrier(2)
    errors = []

    def start(name):
        try:
            barrier.wait()
            create(client, zip_path, name)
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in ("same-a", "same-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for name in ("same-a", "same-b"):
        image = wait_image(client, name, timeout=600)
        version = client.get_microvm_image_version(imageIdentifier=name, imageVersion="1")
        assert image["state"] == "CREATED", (version.get("stateReason"), emberd.log_tail())

    # What the two published is found by the next build: no build VM.
    create(client, zip_path, "same-c")
    assert wait_image(client, "same-c", timeout=300)["state"] == "CREATED"
    log = build_log(emberd, client, "same-c", "1")
    assert "step 1/1 CACHED" in log, log
