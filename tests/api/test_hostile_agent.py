"""Hostile guests against a real emberd: images whose agent (the test-only
`make hostile-agent` build, given with --agent) attacks its host once the VM
runs and someone connects. Each hostile VM ends TERMINATED with a reason
naming its attack; emberd's memory stays bounded and its API answers within
a second meanwhile; a normal VM of the same emberd keeps serving."""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from artifacts import zip_dir
from harness import (REPO, counter, endpoint_request, endpoint_token, terminate_quietly,
                     wait_image, wait_microvm, BUSYBOX_ARN, BUILD_ROLE)

HOSTILE_AGENT = Path(os.environ.get(
    "EMBER_HOSTILE_AGENT_BIN",
    REPO / "target" / "hostile" / "x86_64-unknown-linux-gnu" / "guest" / "ember-agent"))

# The attack an image's /ember-hostile names, and what its end must say.
ATTACKS = {
    "flood": "beyond its window",
    "garbage": "bad frame",
    "oversized": "oversized control message",
    "channels": "never opened",
}
# Generous: "not unbounded", not a budget. Measured with the normal VM
# already running, so only what the attacks cost counts.
RSS_GROWTH_BOUND_KIB = 64 * 1024
API_ANSWER_BOUND_S = 1.0


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def hostile_zip(tmp_path, attack):
    """hello-http, plus a build step that makes it hostile at run time."""
    src = tmp_path / f"src-{attack}"
    shutil.copytree(REPO / "examples" / "hello-http", src)
    with open(src / "Dockerfile", "a") as dockerfile:
        dockerfile.write(f"RUN echo {attack} > /ember-hostile\n")
    return zip_dir(src, tmp_path / f"hostile-{attack}.zip")


def timed(call, **args):
    started = time.monotonic()
    answer = call(**args)
    return time.monotonic() - started, answer


def poke(endpoint, token):
    """The connect that fires the attack; whatever comes back is garbage."""
    try:
        endpoint_request(endpoint, token, timeout=20)
    except Exception:  # noqa: BLE001 - a hostile upstream may answer anything
        pass


def test_hostile_vms_are_terminated_and_spare_emberd(separate_emberd, hello_zip, tmp_path):
    if not HOSTILE_AGENT.is_file():
        pytest.fail(f"hostile agent not built at {HOSTILE_AGENT} (make hostile-agent)")
    ember = separate_emberd("--agent", str(HOSTILE_AGENT))
    client = ember.client()
    images = {"normal": hello_zip}
    images.update({attack: hostile_zip(tmp_path, attack) for attack in ATTACKS})
    for name, zip_path in images.items():
        client.create_microvm_image(
            name=f"img-{name}", codeArtifact={"uri": f"file://{zip_path}"},
            baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    for name in images:
        image = wait_image(client, f"img-{name}", timeout=600)
        # The agent is hostile only once armed by a restore: builds work.
        assert image["state"] == "CREATED", f"{name}: {image}\n{ember.log_tail()}"

    ids = []
    try:
        normal = client.run_microvm(imageIdentifier="img-normal")
        ids.append(normal["microvmId"])
        wait_microvm(client, normal["microvmId"], "RUNNING", timeout=120)
        normal_token = endpoint_token(client, normal["microvmId"])
        assert counter(normal["endpoint"], normal_token) == 1

        hostile = {}
        for attack in ATTACKS:
            vm = client.run_microvm(imageIdentifier=f"img-{attack}")
            ids.append(vm["microvmId"])
            hostile[attack] = vm
        for vm in hostile.values():
            wait_microvm(client, vm["microvmId"], "RUNNING", timeout=120)

        pid = ember.proc.pid
        baseline = rss_kib(pid)
        peak = baseline
        pokes = [threading.Thread(target=poke, args=(vm["endpoint"], endpoint_token(
            client, vm["microvmId"])), daemon=True) for vm in hostile.values()]
        for t in pokes:
            t.start()

        slowest = 0.0
        deadline = time.monotonic() + 180
        ended = {}
        while len(ended) < len(hostile):
            assert time.monotonic() < deadline, (
                f"still running after 3 min: {sorted(set(hostile) - set(ended))}\n"
                f"{ember.log_tail()}")
            took, _ = timed(client.list_microvms)
            slowest = max(slowest, took)
            for attack, vm in hostile.items():
                took, got = timed(client.get_microvm, microvmIdentifier=vm["microvmId"])
                slowest = max(slowest, took)
                if got["state"] == "TERMINATED":
                    ended[attack] = got
            peak = max(peak, rss_kib(pid))
            time.sleep(0.2)

        print(f"slowest API call {slowest:.3f} s; emberd RSS {baseline} -> peak {peak} KiB")
        for attack, vm in ended.items():
            reason = vm.get("stateReason", "")
            print(f"{attack}: {reason}")
            assert "the guest broke the agent protocol" in reason, f"{attack}: {reason}"
            assert ATTACKS[attack] in reason, f"{attack}: {reason}"
        assert slowest < API_ANSWER_BOUND_S, f"an API call took {slowest:.2f} s during the attacks"
        assert peak - baseline < RSS_GROWTH_BOUND_KIB, (
            f"emberd grew from {baseline} to {peak} KiB during the attacks")
        # The neighbour kept its memory and its endpoint.
        assert counter(normal["endpoint"], normal_token) == 2
        assert client.get_microvm(microvmIdentifier=normal["microvmId"])["state"] == "RUNNING"
    finally:
        terminate_quietly(client, *ids)
