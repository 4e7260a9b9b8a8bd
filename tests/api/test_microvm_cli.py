"""The microVM launch post through the AWS CLI, as a user types it (plus
--endpoint-url): run hello-http with an idle policy, talk to it through its
endpoint, suspend and resume it by hand, let it suspend itself when idle,
wake it with a request, terminate it. The app's request counter lives in
guest memory, so each step that keeps the count proves the VM's memory was
kept."""

import time

import pytest

from harness import (MICROVM_PORT, aws, counter, endpoint_request, image_arn, microvm_dir,
                     suspended_tier, terminate_quietly)

MAX_IDLE = 3


@pytest.fixture
def cli_env(tmp_path):
    """A CLI config that skips the CLI's own checks (it enforces the
    model's 60 s idle minimum; this emberd runs with --min-idle-seconds 2)."""
    config = tmp_path / "aws-config-novalidate"
    config.write_text("[default]\nregion = us-east-1\noutput = json\nparameter_validation = false\n")
    return {"AWS_CONFIG_FILE": str(config)}


def cli_wait(ember, env, microvm_id, want, timeout=120):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        vm = aws(ember, "get-microvm", "--microvm-identifier", microvm_id, env=env)
        if not seen or seen[-1] != vm["state"]:
            seen.append(vm["state"])
        if vm["state"] == want:
            return vm
        assert vm["state"] != "TERMINATED", f"TERMINATED waiting for {want}: {vm.get('stateReason')}"
        assert time.monotonic() < deadline, f"still {vm['state']} after {timeout}s, wanted {want} ({seen})"
        time.sleep(0.3)


def test_launch_post_flow(ember, client, hello_http, cli_env):
    run = aws(ember, "run-microvm", "--image-identifier", "hello-http",
              "--idle-policy",
              f"maxIdleDurationSeconds={MAX_IDLE},suspendedDurationSeconds=600,autoResumeEnabled=true",
              env=cli_env)
    microvm_id = run["microvmId"]
    try:
        assert run["state"] == "PENDING", run
        assert run["endpoint"].startswith("http://127.0.0.1:"), run
        assert run["imageArn"] == image_arn("hello-http")
        assert run["imageVersion"] == "1"
        assert run["idlePolicy"] == {"maxIdleDurationSeconds": MAX_IDLE,
                                     "suspendedDurationSeconds": 600, "autoResumeEnabled": True}
        endpoint = run["endpoint"]

        running = cli_wait(ember, cli_env, microvm_id, "RUNNING", timeout=90)
        assert running["endpoint"] == endpoint
        assert "terminatedAt" not in running

        token = aws(ember, "create-microvm-auth-token", "--microvm-identifier", microvm_id,
                    "--expiration-in-minutes", "10", "--allowed-ports", f"port={MICROVM_PORT}",
                    env=cli_env)["authToken"]["X-aws-proxy-auth"]
        assert token
        # Like curl -H "X-aws-proxy-auth: ..." -H "X-aws-proxy-port: 8080".
        assert [counter(endpoint, token) for _ in range(3)] == [1, 2, 3]
        # The port header may be left out: the token names one port.
        status, body, _ = endpoint_request(endpoint, token)
        assert status == 200 and "request 4" in body, (status, body)

        aws(ember, "suspend-microvm", "--microvm-identifier", microvm_id, env=cli_env)
        suspended = cli_wait(ember, cli_env, microvm_id, "SUSPENDED", timeout=90)
        assert "SuspendMicrovm" in suspended.get("stateReason", ""), suspended
        assert suspended_tier(ember, microvm_id) == "warm", "SUSPENDED but not parked"

        aws(ember, "resume-microvm", "--microvm-identifier", microvm_id, env=cli_env)
        cli_wait(ember, cli_env, microvm_id, "RUNNING", timeout=90)
        assert counter(endpoint, token) == 5, "the counter did not survive suspend/resume"
        assert not (microvm_dir(ember, microvm_id) / "suspended").exists(), \
            "the suspended state outlived the resume"

        # No requests now: after MAX_IDLE seconds it suspends itself.
        idle = cli_wait(ember, cli_env, microvm_id, "SUSPENDED", timeout=60)
        assert "maxIdleDurationSeconds" in idle.get("stateReason", ""), idle
        assert suspended_tier(ember, microvm_id) == "warm"

        # autoResumeEnabled: a request wakes it and is answered.
        assert counter(endpoint, token) == 6, "the counter did not survive idle suspend + auto-resume"
        after = aws(ember, "get-microvm", "--microvm-identifier", microvm_id, env=cli_env)
        assert after["state"] == "RUNNING", after
        assert "autoResumeEnabled" in after.get("stateReason", ""), after

        aws(ember, "terminate-microvm", "--microvm-identifier", microvm_id, env=cli_env)
        gone = cli_wait(ember, cli_env, microvm_id, "TERMINATED", timeout=60)
        assert gone.get("terminatedAt"), gone
        assert not microvm_dir(ember, microvm_id).exists(), "the VM's files outlived it"
        # Idempotent: terminating again is fine.
        aws(ember, "terminate-microvm", "--microvm-identifier", microvm_id, env=cli_env)
        try:
            status, _, _ = endpoint_request(endpoint, token, MICROVM_PORT, timeout=10)
        except ConnectionError:
            status = None  # the endpoint's listener is gone: as good as an error
        assert status in (None, 404, 410, 503), f"a TERMINATED VM's endpoint answered {status}"
    finally:
        terminate_quietly(client, microvm_id)

