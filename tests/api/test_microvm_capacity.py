"""Capacity limits on emberds of their own: --max-microvms (live VMs,
ServiceQuotaExceededException) and --max-running-microvms (VMs with a
process, InsufficientCapacityException) for runs, resumes and auto-resumes,
also when they come in parallel bursts; --disk-reserve-mib for runs,
resumes and builds; --build-log-max-mib for a build that prints forever."""

import threading

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_files
from harness import (BUILD_ROLE, BUSYBOX_ARN, MICROVM_PORT, build_log, counter, create_and_wait,
                     endpoint_request, endpoint_token, error_code, only_build, terminate_quietly,
                     wait_image, wait_microvm, wait_version)

IDLE = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600, "autoResumeEnabled": True}


def refused(code, call, **args):
    with pytest.raises(ClientError) as info:
        call(**args)
    assert error_code(info.value) == code, info.value.response["Error"]


def test_quota_and_running_limit(separate_emberd, hello_zip):
    ember = separate_emberd("--max-running-microvms", "1", "--max-microvms", "2")
    client = ember.client()
    image, version = create_and_wait(client, "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    ids = []

    def run():
        vm = client.run_microvm(imageIdentifier="hello-http", idlePolicy=IDLE)
        ids.append(vm["microvmId"])
        return vm

    try:
        a = run()
        # A PENDING VM is about to run: it must take the one running slot.
        # Checked at the end, so the rest of the limits are tested either way.
        pending_overrun = None
        try:
            extra = client.run_microvm(imageIdentifier="hello-http")
        except ClientError as exc:
            assert error_code(exc) == "InsufficientCapacityException", exc.response["Error"]
        else:
            pending_overrun = extra["microvmId"]
            ids.append(pending_overrun)
            client.terminate_microvm(microvmIdentifier=pending_overrun)
            wait_microvm(client, pending_overrun, "TERMINATED", timeout=90)
        wait_microvm(client, a["microvmId"], "RUNNING", timeout=90)
        refused("InsufficientCapacityException", client.run_microvm, imageIdentifier="hello-http")
        token_a = endpoint_token(client, a["microvmId"])
        assert counter(a["endpoint"], token_a) == 1

        client.suspend_microvm(microvmIdentifier=a["microvmId"])
        wait_microvm(client, a["microvmId"], "SUSPENDED", timeout=90)
        b = run()
        wait_microvm(client, b["microvmId"], "RUNNING", timeout=90)
        # Two live VMs: the quota.
        refused("ServiceQuotaExceededException", client.run_microvm, imageIdentifier="hello-http")
        # A fork counts like a run, and is refused before B pauses.
        status, answer = ember.fork(b["microvmId"])
        assert (status, answer.get("__type")) == (402, "ServiceQuotaExceededException"), answer
        assert len(client.list_microvms()["items"]) == len(ids)
        # B holds the running slot: A can be resumed neither by hand nor by a request.
        refused("InsufficientCapacityException", client.resume_microvm,
                microvmIdentifier=a["microvmId"])
        status, body, _ = endpoint_request(a["endpoint"], token_a, MICROVM_PORT, timeout=60)
        assert status == 503, f"auto-resume past the running limit answered {status}: {body}"
        assert client.get_microvm(microvmIdentifier=a["microvmId"])["state"] == "SUSPENDED"

        client.terminate_microvm(microvmIdentifier=b["microvmId"])
        wait_microvm(client, b["microvmId"], "TERMINATED", timeout=60)
        assert counter(a["endpoint"], token_a) == 2, "A did not wake once the slot was free"
        assert pending_overrun is None, (
            "emberd bug: with --max-running-microvms 1, a RunMicrovm while another microVM was "
            f"still PENDING was admitted ({pending_overrun}): PENDING VMs do not count as running")
    finally:
        terminate_quietly(client, *ids)


# --- bursts, the disk reserve and the build log cap: one emberd ------------

MAX_RUNNING = 3
LOG_CAP_MIB = 1
HUGE_RESERVE_MIB = "100000000"


@pytest.fixture(scope="module")
def limited(module_emberd, hello_zip):
    """An emberd running at most 3 microVMs with 1 MiB build logs, and
    hello-http built on it."""
    ember = module_emberd("--max-running-microvms", str(MAX_RUNNING),
                          "--build-log-max-mib", str(LOG_CAP_MIB))
    image, version = create_and_wait(ember.client(), "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    return ember


def burst(calls):
    """Runs every call at once (each on its own thread, released together):
    [(result, None) or (None, error code)] in the calls' order."""
    start = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def one(i, call):
        start.wait()
        try:
            results[i] = (call(), None)
        except ClientError as exc:
            results[i] = (None, error_code(exc))
        except Exception as exc:  # reported by the test, not lost in the thread
            results[i] = (None, repr(exc))

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results


def run_and_suspend(client, count, ids):
    """`count` hello-http microVMs, RUNNING and then SUSPENDED (at most
    MAX_RUNNING at a time)."""
    made = []
    while len(made) < count:
        batch = [client.run_microvm(imageIdentifier="hello-http", idlePolicy=IDLE)["microvmId"]
                 for _ in range(min(MAX_RUNNING, count - len(made)))]
        ids.extend(batch)
        for vm_id in batch:
            wait_microvm(client, vm_id, "RUNNING", timeout=120)
        for vm_id in batch:
            client.suspend_microvm(microvmIdentifier=vm_id)
        for vm_id in batch:
            wait_microvm(client, vm_id, "SUSPENDED", timeout=120)
        made.extend(batch)
    return made


def test_bursts_of_runs_and_resumes_never_pass_the_running_limit(limited):
    client = limited.client()
    ids = []
    try:
        results = burst([lambda: client.run_microvm(imageIdentifier="hello-http", idlePolicy=IDLE)
                         for _ in range(20)])
        accepted = [vm["microvmId"] for vm, _ in results if vm]
        ids.extend(accepted)
        refusals = [code for _, code in results if code]
        assert len(accepted) == MAX_RUNNING, f"{len(accepted)} of 20 parallel runs accepted: {results}"
        assert refusals == ["InsufficientCapacityException"] * 17, refusals
        for vm_id in accepted:
            wait_microvm(client, vm_id, "RUNNING", timeout=120)
        listed = client.list_microvms()["items"]
        live = [vm for vm in listed if vm["state"] != "TERMINATED"]
        assert len(live) == MAX_RUNNING, f"refused runs left microVMs behind: {listed}"
        for vm_id in accepted:
            client.suspend_microvm(microvmIdentifier=vm_id)
        for vm_id in accepted:
            wait_microvm(client, vm_id, "SUSPENDED", timeout=120)

        # Six suspended microVMs, woken at once: three by ResumeMicrovm, three
        # by a request to their endpoint (autoResumeEnabled). Three fit.
        asleep = accepted + run_and_suspend(client, 3, ids)
        vms = {vm["microvmId"]: vm for vm in listed}
        for vm_id in asleep[3:]:
            vms[vm_id] = client.get_microvm(microvmIdentifier=vm_id)
        tokens = {vm_id: endpoint_token(client, vm_id) for vm_id in asleep}

        def resume(vm_id):
            return lambda: client.resume_microvm(microvmIdentifier=vm_id)

        def request(vm_id):
            return lambda: endpoint_request(vms[vm_id]["endpoint"], tokens[vm_id], MICROVM_PORT,
                                            timeout=150)[0]

        results = burst([resume(v) for v in asleep[:3]] + [request(v) for v in asleep[3:]])
        woken = [v for v, (r, _) in zip(asleep[:3], results[:3]) if r is not None]
        woken += [v for v, (status, _) in zip(asleep[3:], results[3:]) if status == 200]
        assert len(woken) == MAX_RUNNING, f"{len(woken)} of 6 parallel resumes ran: {results}"
        for (r, code) in results[:3]:
            assert r is not None or code == "InsufficientCapacityException", results
        for (status, error) in results[3:]:
            assert status in (200, 503), results
        for vm_id in asleep:
            want = "RUNNING" if vm_id in woken else "SUSPENDED"
            got = wait_microvm(client, vm_id, want, timeout=120)
            assert got["state"] == want, got
        refused("InsufficientCapacityException", client.run_microvm, imageIdentifier="hello-http")
    finally:
        terminate_quietly(client, *ids)
        for vm_id in ids:
            wait_microvm(client, vm_id, "TERMINATED", timeout=120)


def test_a_build_that_prints_forever_fails_at_the_log_cap(limited, tmp_path):
    client = limited.client()
    name = "prints-forever"
    artifact = zip_files(tmp_path / "yes.zip", {
        "Dockerfile": 'FROM busybox\nRUN yes\nCMD ["sleep", "3600"]\n'})
    client.create_microvm_image(name=name, codeArtifact={"uri": f"file://{artifact}"},
                                baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    # Without the cap this build would run for its whole hour.
    image = wait_image(client, name, timeout=300)
    version = client.get_microvm_image_version(imageIdentifier=name, imageVersion="1")
    assert image["state"] == "CREATE_FAILED", version
    reason = version.get("stateReason", "")
    assert "RUN yes" in reason and f"build log's cap of {LOG_CAP_MIB} MiB" in reason, reason
    assert "--build-log-max-mib" in reason, reason

    build = only_build(client, name, "1")
    host_log = limited.data_dir / "logs" / "builds" / f"{build['buildId']}.log"
    assert host_log.stat().st_size <= LOG_CAP_MIB * 1024 * 1024, host_log.stat().st_size
    text = build_log(limited, client, name, "1")
    notes = [l for l in text.splitlines() if "build log truncated at" in l]
    assert len(notes) == 1 and notes[0].endswith(
        f"build log truncated at {LOG_CAP_MIB} MiB; further output discarded"), notes
    lines = text.splitlines()
    assert sum(1 for l in lines if l.endswith(" y")) > 10_000, "the step's output never reached the log"
    assert "build FAILED" in lines[-1], lines[-3:]


def test_the_disk_reserve_refuses_runs_resumes_and_builds(limited, hello_zip):
    client = limited.client()
    vm = client.run_microvm(imageIdentifier="hello-http", idlePolicy=IDLE)
    vm_id = vm["microvmId"]
    try:
        wait_microvm(client, vm_id, "RUNNING", timeout=120)
        token = endpoint_token(client, vm_id)
        assert counter(vm["endpoint"], token) == 1
        client.suspend_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "SUSPENDED", timeout=120)

        # No disk has 100 TB free: every start is refused, nothing is lost.
        limited.extra_args += ["--disk-reserve-mib", HUGE_RESERVE_MIB]
        limited.restart()
        with pytest.raises(ClientError) as info:
            client.run_microvm(imageIdentifier="hello-http")
        assert error_code(info.value) == "InsufficientCapacityException", info.value.response
        message = info.value.response["Error"]["Message"]
        assert "MiB free" in message and f"{HUGE_RESERVE_MIB} MiB kept" in message, message
        refused("InsufficientCapacityException", client.resume_microvm, microvmIdentifier=vm_id)
        status, body, _ = endpoint_request(vm["endpoint"], token, MICROVM_PORT, timeout=60)
        assert status == 503, f"auto-resume under the disk reserve answered {status}: {body}"
        assert client.get_microvm(microvmIdentifier=vm_id)["state"] == "SUSPENDED"

        # The model has no capacity error for builds: the build fails.
        update = client.update_microvm_image(
            imageIdentifier="hello-http", codeArtifact={"uri": f"file://{hello_zip}"},
            baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
        v2 = wait_version(client, "hello-http", update["imageVersion"], timeout=60)
        assert v2["state"] == "FAILED", v2
        reason = v2.get("stateReason", "")
        assert "did not start" in reason and f"{HUGE_RESERVE_MIB} MiB kept" in reason, reason
        assert client.get_microvm_image(imageIdentifier="hello-http")["state"] == "UPDATE_FAILED"

        # With the reserve back, the same VM wakes with its memory.
        limited.extra_args = limited.extra_args[:-2]
        limited.restart()
        assert counter(vm["endpoint"], token) == 2
    finally:
        terminate_quietly(client, vm_id)
