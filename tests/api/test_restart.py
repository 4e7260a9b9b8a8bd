"""9. emberd killed with SIGKILL in the middle of a build, then restarted on
the same data dir: the interrupted build fails with a reason, its build
VM's QEMU died with emberd, everything that was finished before is still
there."""

import os
import signal
import time

from artifacts import zip_files
from harness import BUILD_ROLE, BUSYBOX_ARN, build_log, qemu_pids_where, wait_image


def build_qemus(ember):
    """The QEMUs of build VMs (named build-<id>-<n>) under this emberd."""
    return qemu_pids_where(ember, lambda cwd: "/build-" in cwd)


def test_build_interrupted_by_restart(ember, client, hello_http, tmp_path):
    credentials = (ember.data_dir / "credentials").read_bytes()
    path = zip_files(tmp_path / "slow.zip",
                     {"Dockerfile": "FROM busybox\nRUN sleep 600\nCMD [\"sleep\", \"9\"]\n"})
    client.create_microvm_image(name="restart-victim", codeArtifact={"uri": f"file://{path}"},
                                baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    deadline = time.monotonic() + 120
    while True:
        state = client.get_microvm_image_version(imageIdentifier="restart-victim",
                                                 imageVersion="1")["state"]
        if state == "IN_PROGRESS":
            break
        assert state == "PENDING", f"the build ended before the kill: {state}"
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.5)
    time.sleep(3)  # let it get into the guest
    assert build_qemus(ember), "no build VM was running"
    ember.kill9()
    # Build VMs die with their emberd (a restart cannot take them back).
    deadline = time.monotonic() + 10
    while build_qemus(ember) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert build_qemus(ember) == [], "a build VM outlived the emberd that ran it"
    ember.start()

    image = wait_image(client, "restart-victim", timeout=120)
    assert image["state"] == "CREATE_FAILED"
    version = client.get_microvm_image_version(imageIdentifier="restart-victim", imageVersion="1")
    assert version["state"] == "FAILED"
    # The reason must say the build died with emberd, not look like a build error.
    reason = version.get("stateReason", "").lower()
    assert "restart" in reason or "emberd stopped" in reason, reason
    builds = client.list_microvm_image_builds(imageIdentifier="restart-victim", imageVersion="1")
    assert [b["buildState"] for b in builds["items"]] == ["FAILED"]

    survivor = client.get_microvm_image(imageIdentifier="hello-http")
    assert survivor["state"] == "CREATED"
    assert survivor["latestActiveImageVersion"] == "1"
    assert (ember.data_dir / "credentials").read_bytes() == credentials
    assert (ember.data_dir / "credentials").stat().st_mode & 0o777 == 0o600


def test_graceful_restart_keeps_everything(ember, client, hello_http):
    before = {i["name"]: i["state"] for i in client.list_microvm_images()["items"]}
    ember.restart()
    after = {i["name"]: i["state"] for i in client.list_microvm_images()["items"]}
    assert after == before


def test_a_build_vm_killed_mid_step_says_how_it_ended(ember, client, tmp_path):
    path = zip_files(tmp_path / "killed.zip",
                     {"Dockerfile": "FROM busybox\nRUN sleep 600\nCMD [\"sleep\", \"9\"]\n"})
    client.create_microvm_image(name="build-vm-killed", codeArtifact={"uri": f"file://{path}"},
                                baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    # Killed only once the step runs in the guest: a kill while the VM
    # still boots is a boot failure, which says so in other words.
    # (build_log waits for the build to be recorded.)
    deadline = time.monotonic() + 120
    while "RUN sleep 600" not in build_log(ember, client, "build-vm-killed", "1"):
        assert time.monotonic() < deadline, "the RUN step never started"
        time.sleep(0.5)
    assert build_qemus(ember), "no build VM is running the step"
    for pid in build_qemus(ember):
        os.kill(pid, signal.SIGKILL)
    image = wait_image(client, "build-vm-killed", timeout=120)
    assert image["state"] == "CREATE_FAILED"
    reason = client.get_microvm_image_version(imageIdentifier="build-vm-killed",
                                              imageVersion="1").get("stateReason", "")
    # The step's failure names the VM's death, not only a closed connection.
    assert "the build VM's QEMU ended (killed by signal 9" in reason, reason
