"""Lifecycle hooks as AWS Lambda MicroVMs calls them: POST
/aws/lambda-microvms/runtime/v1/{ready,validate,run,resume,suspend,terminate}
on the image's hooks port; /run carries {"microvmId", "runHookPayload"} as
JSON; endpoint traffic waits for /run's 200; a failed /run ends the VM, a
failed /resume leaves it SUSPENDED, a failed /suspend is recorded and the
suspend completes. The same image shows the environment the service
gives every app (AWS_LAMBDA_MICROVM_IMAGE_*, AWS_REGION)."""

import json
import time

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_files
from harness import (BUILD_ROLE, endpoint_request, endpoint_token, error_code, image_arn,
                     terminate_quietly, wait_microvm)

# A hook listener in shell: busybox nc runs hook.sh per connection. It
# answers only at the service's paths (anything else is a 404, so a wrong
# path fails the build or the run), logs "hook <name> <content-type> <body>"
# to /tmp/hooks (read back through the app's CGI) and to the app log
# (which emberd copies out, even at terminate). The run payload steers it:
# "fail-run" answers /run 400, "slow-run" answers /run after 3 s (logging
# "run-answered" first), "fail-suspend"/"fail-resume" answer those 500.
HOOK_SH = r"""#!/bin/sh
read -r method path _
len=0
ctype=-
while read -r line; do
    line=$(printf '%s' "$line" | tr -d '\r')
    [ -z "$line" ] && break
    case "$line" in
        [Cc]ontent-[Ll]ength:*) len=${line#*:}; len=$(echo $len) ;;
        [Cc]ontent-[Tt]ype:*) ctype=${line#*:}; ctype=$(echo $ctype) ;;
    esac
done
body=""
[ "$len" -gt 0 ] && body=$(dd bs=1 count="$len" 2>/dev/null)
answer() { printf 'HTTP/1.0 %s\r\nContent-Length: 0\r\n\r\n' "$1"; exit 0; }
case "$path" in
    /aws/lambda-microvms/runtime/v1/*) name=${path##*/} ;;
    *) answer "404 Not Found" ;;
esac
[ "$method" = POST ] || answer "405 Method Not Allowed"
echo "hook $name $ctype $body" >> /tmp/hooks
echo "hook $name $ctype $body" >> /var/log/ember-app.log
[ "$name" = run ] && echo "$body" > /tmp/run-payload
wants() { grep -q "$1" /tmp/run-payload 2>/dev/null; }
case "$name" in
    run)
        wants fail-run && answer "400 Bad Request"
        if wants slow-run; then sleep 3; echo "run-answered" >> /tmp/hooks; fi ;;
    suspend) wants fail-suspend && answer "500 Internal Server Error" ;;
    resume) wants fail-resume && answer "500 Internal Server Error" ;;
esac
answer "200 OK"
"""

START_SH = """#!/bin/sh
nc -ll -p 9000 -e /app/hook.sh &
exec httpd -f -p 8080 -h /www
"""

ENV_CGI = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
env
"""

HOOKS_CGI = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
cat /tmp/hooks 2>/dev/null
"""

DOCKERFILE = """FROM busybox
COPY start.sh hook.sh /app/
COPY www /www
RUN chmod 755 /app/start.sh /app/hook.sh /www/cgi-bin/hooks /www/cgi-bin/env
EXPOSE 8080
CMD ["/bin/sh", "/app/start.sh"]
"""

ALL_ENABLED = {
    "port": 9000,
    "microvmImageHooks": {"ready": "ENABLED", "readyTimeoutInSeconds": 120,
                          "validate": "ENABLED", "validateTimeoutInSeconds": 60},
    "microvmHooks": {
        "run": "ENABLED", "runTimeoutInSeconds": 20,
        "resume": "ENABLED", "resumeTimeoutInSeconds": 20,
        "suspend": "ENABLED", "suspendTimeoutInSeconds": 20,
        "terminate": "ENABLED", "terminateTimeoutInSeconds": 20,
    },
}


@pytest.fixture(scope="module")
def hooks_zip(tmp_path_factory):
    zip_path = tmp_path_factory.mktemp("hooks") / "hooks.zip"
    zip_files(zip_path, {"Dockerfile": DOCKERFILE, "start.sh": START_SH, "hook.sh": HOOK_SH,
                         "www/cgi-bin/hooks": HOOKS_CGI, "www/cgi-bin/env": ENV_CGI})
    return zip_path


@pytest.fixture(scope="module")
def hooks_image(ember, hooks_zip):
    client = ember.client()
    client.create_microvm_image(name="hooks-app", codeArtifact={"uri": f"file://{hooks_zip}"},
                                baseImageArn="busybox", buildRoleArn=BUILD_ROLE,
                                hooks=ALL_ENABLED)
    deadline = time.time() + 300
    while time.time() < deadline:
        v = client.get_microvm_image_version(imageIdentifier="hooks-app", imageVersion="1")
        if v["state"] in ("SUCCESSFUL", "FAILED"):
            break
        time.sleep(1)
    assert v["state"] == "SUCCESSFUL", v
    return "hooks-app"


def hook_log(vm, token):
    status, body, _ = endpoint_request(vm["endpoint"], token, path="/cgi-bin/hooks", timeout=60)
    assert status == 200, body
    return [line for line in body.splitlines() if line.startswith(("hook ", "run-"))]


def poll_until(client, vm_id, done, allowed=None, timeout=90):
    """GetMicrovm until `done(vm)`; every state seen must be in `allowed`."""
    deadline = time.time() + timeout
    while True:
        got = client.get_microvm(microvmIdentifier=vm_id)
        if done(got) or time.time() > deadline:
            return got
        assert allowed is None or got["state"] in allowed, got
        time.sleep(0.5)


def run_body(line):
    """The JSON body of a logged `hook run application/json {...}` line."""
    prefix = "hook run application/json "
    assert line.startswith(prefix), line
    return json.loads(line[len(prefix):])


def test_every_hook_is_called_at_the_services_paths_in_order(ember, hooks_image):
    client = ember.client()
    vm = client.run_microvm(imageIdentifier=hooks_image, runHookPayload='{"tenant":"t-42"}')
    vm_id = vm["microvmId"]
    try:
        running = wait_microvm(client, vm_id, "RUNNING", timeout=90)
        assert "hook" not in running.get("stateReason", ""), running
        token = endpoint_token(client, vm_id)
        log = hook_log(vm, token)
        # ready and validate ran in the build, before the snapshot: the
        # restored VM remembers them.
        assert log[:2] == ["hook ready - ", "hook validate - "], log
        assert run_body(log[2]) == {"microvmId": vm_id, "runHookPayload": '{"tenant":"t-42"}'}
        assert len(log) == 3, log
        client.suspend_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "SUSPENDED", timeout=90)
        # Suspending a suspended VM is a success, as on the real service.
        client.suspend_microvm(microvmIdentifier=vm_id)
        client.resume_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        client.resume_microvm(microvmIdentifier=vm_id)
        # The suspend hook ran before the memory was saved, so the resumed
        # VM remembers it; then the resume hook. Both bodies are empty.
        assert hook_log(vm, token)[3:] == ["hook suspend - ", "hook resume - "]
        client.terminate_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "TERMINATED", timeout=90)
        # The terminate hook's line reached the app log emberd kept.
        app_log = (ember.data_dir / "logs" / "microvms" / f"{vm_id}.log").read_text()
        assert "hook terminate - " in app_log, app_log
    finally:
        terminate_quietly(client, vm_id)


def test_the_app_sees_the_services_environment(ember, hooks_image):
    client = ember.client()
    vm = client.run_microvm(imageIdentifier=hooks_image)
    vm_id = vm["microvmId"]
    try:
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        status, body, _ = endpoint_request(vm["endpoint"], endpoint_token(client, vm_id),
                                           path="/cgi-bin/env", timeout=60)
        assert status == 200, body
        env = dict(line.split("=", 1) for line in body.splitlines() if "=" in line)
        assert env["AWS_LAMBDA_MICROVM_IMAGE_NAME"] == hooks_image
        assert env["AWS_LAMBDA_MICROVM_IMAGE_ARN"] == image_arn(hooks_image)
        assert env["AWS_LAMBDA_MICROVM_IMAGE_VERSION"] == "1"
        assert env["AWS_REGION"] == "us-east-1"
    finally:
        terminate_quietly(client, vm_id)


def test_the_run_body_is_sent_without_a_payload_too(ember, hooks_image):
    client = ember.client()
    vm_id = client.run_microvm(imageIdentifier=hooks_image)["microvmId"]
    try:
        vm = wait_microvm(client, vm_id, "RUNNING", timeout=90)
        log = hook_log(vm, endpoint_token(client, vm_id))
        assert run_body(log[2]) == {"microvmId": vm_id, "runHookPayload": ""}
    finally:
        terminate_quietly(client, vm_id)


def test_endpoint_traffic_waits_for_the_run_hook(ember, hooks_image):
    client = ember.client()
    vm = client.run_microvm(imageIdentifier=hooks_image, runHookPayload="slow-run")
    vm_id = vm["microvmId"]
    try:
        token = endpoint_token(client, vm_id)
        # Sent while /run is still sleeping: the proxy must hold it until
        # /run answered, so the app's log already says so.
        log = hook_log(vm, token)
        assert log[2].startswith("hook run "), log
        assert log[3] == "run-answered", log
        assert client.get_microvm(microvmIdentifier=vm_id)["state"] == "RUNNING"
    finally:
        terminate_quietly(client, vm_id)


def test_a_failing_run_hook_ends_the_vm(ember, hooks_image):
    client = ember.client()
    vm = client.run_microvm(imageIdentifier=hooks_image, runHookPayload="fail-run")
    vm_id = vm["microvmId"]
    try:
        got = poll_until(client, vm_id, lambda vm: vm["state"] == "TERMINATED",
                         allowed=("PENDING", "TERMINATED"))
        assert got["state"] == "TERMINATED", got
        assert got["stateReason"].startswith("Run lifecycle hook returned HTTP status 400"), got
        # Its endpoint closed with it.
        with pytest.raises(ConnectionRefusedError):
            endpoint_request(vm["endpoint"], "x", timeout=10)
    finally:
        terminate_quietly(client, vm_id)


def test_a_failing_resume_hook_leaves_the_vm_suspended(ember, hooks_image):
    client = ember.client()
    vm_id = client.run_microvm(imageIdentifier=hooks_image,
                               runHookPayload="fail-resume")["microvmId"]
    try:
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        client.suspend_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "SUSPENDED", timeout=90)
        client.resume_microvm(microvmIdentifier=vm_id)
        got = poll_until(client, vm_id, lambda vm: vm["state"] == "SUSPENDED"
                         and "Resume" in vm.get("stateReason", ""))
        assert got["state"] == "SUSPENDED", got
        assert got["stateReason"].startswith("Resume lifecycle hook returned HTTP status 500"), got
    finally:
        terminate_quietly(client, vm_id)


def test_a_failing_suspend_hook_is_recorded_and_the_suspend_completes(ember, hooks_image):
    client = ember.client()
    vm = client.run_microvm(imageIdentifier=hooks_image, runHookPayload="fail-suspend")
    vm_id = vm["microvmId"]
    try:
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        client.suspend_microvm(microvmIdentifier=vm_id)
        suspended = wait_microvm(client, vm_id, "SUSPENDED", timeout=90)
        reason = suspended.get("stateReason", "")
        assert "Suspend lifecycle hook returned HTTP status 500" in reason, suspended
    finally:
        terminate_quietly(client, vm_id)


@pytest.mark.parametrize("hooks", [
    {"port": 9000, "microvmHooks": {"run": "ENABLED"}},
    {"port": 9000, "microvmImageHooks": {"ready": "DISABLED", "validate": "ENABLED"},
     "microvmHooks": {"terminate": "ENABLED"}},
])
def test_vm_hooks_without_the_ready_hook_are_refused(ember, hooks_zip, hooks):
    client = ember.client()
    for call in (
        lambda: client.create_microvm_image(
            name="no-ready", codeArtifact={"uri": f"file://{hooks_zip}"},
            baseImageArn="busybox", buildRoleArn=BUILD_ROLE, hooks=hooks),
        lambda: client.update_microvm_image(
            imageIdentifier="hooks-app", codeArtifact={"uri": f"file://{hooks_zip}"},
            baseImageArn="busybox", buildRoleArn=BUILD_ROLE, hooks=hooks),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert error_code(err.value) == "ValidationException", err.value
        assert "microvmImageHooks.ready" in str(err.value)
    with pytest.raises(ClientError):
        client.get_microvm_image(imageIdentifier="no-ready")


def test_a_ready_hook_that_answers_an_error_fails_the_build_at_once(ember, tmp_path):
    """Only 503 means "ask again": a 404 (here: a hook server at the old,
    wrong path) fails the build with the service's words, long before the
    ready timeout."""
    client = ember.client()
    wrong = HOOK_SH.replace("/aws/lambda-microvms/runtime/v1/*", "/elsewhere/*")
    zip_path = tmp_path / "wrong-path.zip"
    zip_files(zip_path, {"Dockerfile": DOCKERFILE, "start.sh": START_SH, "hook.sh": wrong,
                         "www/cgi-bin/hooks": HOOKS_CGI, "www/cgi-bin/env": ENV_CGI})
    hooks = {"port": 9000, "microvmImageHooks": {"ready": "ENABLED",
                                                 "readyTimeoutInSeconds": 3600}}
    started = time.time()
    client.create_microvm_image(name="ready-404", codeArtifact={"uri": f"file://{zip_path}"},
                                baseImageArn="busybox", buildRoleArn=BUILD_ROLE, hooks=hooks)
    while time.time() - started < 300:
        v = client.get_microvm_image_version(imageIdentifier="ready-404", imageVersion="1")
        if v["state"] in ("SUCCESSFUL", "FAILED"):
            break
        time.sleep(1)
    assert v["state"] == "FAILED", v
    assert ("Ready hook check failed: the application returned a client error (HTTP 4xx) "
            "response (HTTP 404") in v["stateReason"], v
