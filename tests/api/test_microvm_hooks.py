"""Lifecycle hooks of running microVMs: Ember calls POST /run (with
runHookPayload), /suspend, /resume and /terminate on the image's hooks
port inside the guest, and records a failing hook in stateReason without
letting it block a suspend."""

import time

import pytest

from artifacts import zip_files
from harness import (endpoint_request, endpoint_token, terminate_quietly, wait_microvm)

# A hook listener in shell: busybox nc runs hook.sh per connection; it
# logs "hook <path> <body>" to /tmp/hooks (read back through the app's
# CGI) and to the app log (which emberd copies out, even at terminate),
# and answers 500 to /suspend when the run payload asked for it.
HOOK_SH = r"""#!/bin/sh
read -r method path _
len=0
while read -r line; do
    line=$(printf '%s' "$line" | tr -d '\r')
    [ -z "$line" ] && break
    case "$line" in [Cc]ontent-[Ll]ength:*) len=${line#*:}; len=$(echo $len) ;; esac
done
body=""
[ "$len" -gt 0 ] && body=$(dd bs=1 count="$len" 2>/dev/null)
echo "hook $path $body" >> /tmp/hooks
echo "hook $path $body" >> /var/log/ember-app.log
[ "$path" = /run ] && echo "$body" > /tmp/run-payload
status="200 OK"
if [ "$path" = /suspend ] && grep -q fail-suspend /tmp/run-payload 2>/dev/null; then
    status="500 Internal Server Error"
fi
printf 'HTTP/1.0 %s\r\nContent-Length: 0\r\n\r\n' "$status"
"""

START_SH = """#!/bin/sh
nc -ll -p 9000 -e /app/hook.sh &
exec httpd -f -p 8080 -h /www
"""

HOOKS_CGI = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
cat /tmp/hooks 2>/dev/null
"""

DOCKERFILE = """FROM busybox
COPY start.sh hook.sh /app/
COPY www /www
RUN chmod 755 /app/start.sh /app/hook.sh /www/cgi-bin/hooks
EXPOSE 8080
CMD ["/bin/sh", "/app/start.sh"]
"""

ALL_ENABLED = {
    "port": 9000,
    "microvmHooks": {
        "run": "ENABLED", "runTimeoutInSeconds": 20,
        "resume": "ENABLED", "resumeTimeoutInSeconds": 20,
        "suspend": "ENABLED", "suspendTimeoutInSeconds": 20,
        "terminate": "ENABLED", "terminateTimeoutInSeconds": 20,
    },
}


@pytest.fixture(scope="module")
def hooks_image(ember, tmp_path_factory):
    client = ember.client()
    zip_path = tmp_path_factory.mktemp("hooks") / "hooks.zip"
    zip_files(zip_path, {"Dockerfile": DOCKERFILE, "start.sh": START_SH, "hook.sh": HOOK_SH,
                         "www/cgi-bin/hooks": HOOKS_CGI})
    client.create_microvm_image(name="hooks-app", codeArtifact={"uri": f"file://{zip_path}"},
                                baseImageArn="busybox",
                                buildRoleArn="arn:aws:iam::123456789012:role/build",
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
    return [line for line in body.splitlines() if line.startswith("hook ")]


def test_run_suspend_resume_terminate_hooks_are_called_in_order(ember, hooks_image):
    client = ember.client()
    vm = client.run_microvm(imageIdentifier=hooks_image, runHookPayload='{"tenant":"t-42"}')
    vm_id = vm["microvmId"]
    try:
        running = wait_microvm(client, vm_id, "RUNNING", timeout=90)
        assert "stateReason" not in running or "hook" not in running["stateReason"], running
        token = endpoint_token(client, vm_id)
        assert hook_log(vm, token) == ['hook /run {"tenant":"t-42"}']
        client.suspend_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "SUSPENDED", timeout=90)
        client.resume_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        # The suspend hook ran before the memory was saved, so the resumed
        # VM remembers it; then the resume hook.
        assert hook_log(vm, token) == ['hook /run {"tenant":"t-42"}', "hook /suspend ",
                                       "hook /resume "]
        client.terminate_microvm(microvmIdentifier=vm_id)
        wait_microvm(client, vm_id, "TERMINATED", timeout=90)
        # The terminate hook's line reached the app log emberd kept.
        log = (ember.data_dir / "logs" / "microvms" / f"{vm_id}.log").read_text()
        assert "hook /terminate" in log, log
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
        assert "/suspend hook answered HTTP 500" in reason, suspended
    finally:
        terminate_quietly(client, vm_id)
