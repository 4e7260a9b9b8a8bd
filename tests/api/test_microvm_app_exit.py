"""A microVM ends with its app, as on the real service: when the image's
command (the guest's main process) exits, the VM becomes TERMINATED with
"Container Stopped with Exit Code: N" (128 + N for a death by signal N),
and its endpoint goes away. Also after a suspend and resume, and when the
app ended while emberd was down. Runs on an emberd of its own (the last
test SIGKILLs it), with one image build for the module."""

import time

import pytest
from botocore.exceptions import ClientError

from artifacts import zip_files
from harness import (aws, create_and_wait, endpoint_request, endpoint_token, error_code,
                     suspended_tier, terminate_quietly, wait_microvm)

# The main process serves HTTP in the background and ends with the code
# the exit CGI writes into a fifo (blocked in `read` meanwhile: no polling,
# which under TCG would cost the host CPU), or kills itself.
MAIN_SH = """#!/bin/sh
mkfifo /tmp/exit-code
httpd -p 8080 -h /www
read code < /tmp/exit-code
echo "main process ending: $code"
[ "$code" = kill ] && kill -KILL $$
exit "$code"
"""

# /cgi-bin/exit?CODE ends the app a second later (so this answer gets out
# first); /cgi-bin/exit?CODE&after=SECONDS that much later.
EXIT_CGI = """#!/bin/sh
code=${QUERY_STRING%%&*}
delay=1
case "$QUERY_STRING" in *"&after="*) delay=${QUERY_STRING#*&after=} ;; esac
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo "exiting with $code in $delay s"
(sleep $delay; echo "$code" > /tmp/exit-code) </dev/null >/dev/null 2>&1 &
"""

DOCKERFILE = """FROM busybox
COPY main.sh /app/
COPY www /www
RUN chmod 755 /app/main.sh /www/cgi-bin/exit
EXPOSE 8080
CMD ["/bin/sh", "/app/main.sh"]
"""

IMAGE = "app-exit"


@pytest.fixture(scope="module")
def exiting(module_emberd, tmp_path_factory):
    """An emberd of the module's own, with the image built on it."""
    ember = module_emberd("--min-idle-seconds", "2")
    zip_path = zip_files(tmp_path_factory.mktemp("app-exit") / "app-exit.zip", {
        "Dockerfile": DOCKERFILE, "main.sh": MAIN_SH, "www/cgi-bin/exit": EXIT_CGI,
        "www/index.html": "app up\n"})
    image, version = create_and_wait(ember.client(), IMAGE, zip_path)
    assert image["state"] == "CREATED", version.get("stateReason")
    return ember


def running(ember):
    """A new VM of the image, RUNNING and answering: (id, endpoint, token)."""
    client = ember.client()
    vm = client.run_microvm(imageIdentifier=IMAGE)
    wait_microvm(client, vm["microvmId"], "RUNNING", timeout=90)
    token = endpoint_token(client, vm["microvmId"])
    status, body, _ = endpoint_request(vm["endpoint"], token)
    assert (status, body) == (200, "app up\n")
    return vm["microvmId"], vm["endpoint"], token


def end_app(endpoint, token, query):
    status, body, _ = endpoint_request(endpoint, token, path=f"/cgi-bin/exit?{query}")
    assert status == 200 and "exiting" in body, (status, body)


def assert_stopped(ember, microvm_id, endpoint, token, code):
    """TERMINATED because the app stopped (as the AWS CLI reports it), its
    files and endpoint gone."""
    client = ember.client()
    # wait_microvm returns on TERMINATED only when that is what it waits for.
    wait_microvm(client, microvm_id, "TERMINATED", timeout=90)
    got = aws(ember, "get-microvm", "--microvm-identifier", microvm_id)
    assert got["state"] == "TERMINATED", got
    assert f"Container Stopped with Exit Code: {code}" in got.get("stateReason", ""), got
    assert got.get("terminatedAt"), got
    assert not (ember.data_dir / "microvms" / microvm_id).exists(), "the VM's files outlived it"
    try:
        status, _, _ = endpoint_request(endpoint, token, timeout=10)
    except ConnectionError:
        status = None  # the endpoint's listener is gone
    assert status in (None, 404, 410, 503), f"a TERMINATED VM's endpoint answered {status}"


def test_the_vm_ends_when_its_app_exits(exiting):
    microvm_id, endpoint, token = running(exiting)
    try:
        end_app(endpoint, token, "3")
        assert_stopped(exiting, microvm_id, endpoint, token, 3)
        # Ended like TerminateMicrovm ends a VM: its app log was kept.
        log = exiting.data_dir / "logs" / "microvms" / f"{microvm_id}.log"
        assert "main process ending: 3" in log.read_text(), log.read_text()
    finally:
        terminate_quietly(exiting.client(), microvm_id)


def test_a_death_by_signal_is_128_plus_the_signal(exiting):
    microvm_id, endpoint, token = running(exiting)
    try:
        end_app(endpoint, token, "kill")
        assert_stopped(exiting, microvm_id, endpoint, token, 137)
    finally:
        terminate_quietly(exiting.client(), microvm_id)


def test_the_vm_still_ends_with_its_app_after_a_suspend_and_resume(exiting):
    client = exiting.client()
    microvm_id, endpoint, token = running(exiting)
    try:
        client.suspend_microvm(microvmIdentifier=microvm_id)
        wait_microvm(client, microvm_id, "SUSPENDED", timeout=90)
        client.resume_microvm(microvmIdentifier=microvm_id)
        wait_microvm(client, microvm_id, "RUNNING", timeout=90)
        end_app(endpoint, token, "4")
        assert_stopped(exiting, microvm_id, endpoint, token, 4)
    finally:
        terminate_quietly(client, microvm_id)


# An exit at once lands during the save (seen there, or kept in the saved
# guest); one a little later, after the resume (the saved guest's clock
# stood still meanwhile).
@pytest.mark.parametrize("delay", ["0", "0.1"])
def test_an_exit_racing_a_suspend_still_ends_the_vm(exiting, delay):
    """The app ends about when the suspend saves it: either the exit is
    seen (during or after the save) and the VM ends, or it is kept in the
    saved guest and the VM ends at its resume. Never SUSPENDED for good
    with its files gone, nor RUNNING with nothing inside."""
    client = exiting.client()
    microvm_id, endpoint, token = running(exiting)
    try:
        end_app(endpoint, token, f"6&after={delay}")
        client.suspend_microvm(microvmIdentifier=microvm_id)
        got = wait_microvm(client, microvm_id, {"SUSPENDED", "TERMINATED"}, timeout=90)
        if got["state"] == "SUSPENDED":
            time.sleep(2)  # an exit seen late ends it now
            got = client.get_microvm(microvmIdentifier=microvm_id)
        if got["state"] == "SUSPENDED":
            assert suspended_tier(exiting, microvm_id) in ("warm", "disk"), \
                "SUSPENDED without its saved state"
            try:
                client.resume_microvm(microvmIdentifier=microvm_id)
            except ClientError as exc:
                assert error_code(exc) == "ConflictException", exc
        assert_stopped(exiting, microvm_id, endpoint, token, 6)
    finally:
        terminate_quietly(client, microvm_id)


def test_an_app_that_ended_while_emberd_was_down_ends_its_vm_at_restart(exiting):
    microvm_id, endpoint, token = running(exiting)
    try:
        end_app(endpoint, token, "5&after=4")
        exiting.kill9()
        time.sleep(6)  # the app ends meanwhile; the VM runs on, unwatched
        exiting.start()
        assert_stopped(exiting, microvm_id, endpoint, token, 5)
        log = exiting.log_path.read_text(errors="replace")
        assert any("re-attached" in line and microvm_id in line for line in log.splitlines()), \
            "the VM was not running when emberd came back, so this proves nothing"
    finally:
        terminate_quietly(exiting.client(), microvm_id)
