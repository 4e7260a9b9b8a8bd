"""Endpoint callers are bounded: a client holding an idle keep-alive
connection open does not keep its microVM awake (the session emberd's
--min-idle-seconds 2 makes its endpoint idle timeout 1 s)."""

import http.client
import urllib.parse

from harness import (COUNTER_LINE, MICROVM_PORT, endpoint_token, terminate_quietly,
                     wait_microvm)


def test_an_idle_keep_alive_connection_does_not_keep_a_vm_awake(client, raw_client, hello_http):
    vm = raw_client.run_microvm(imageIdentifier="hello-http", idlePolicy={
        "maxIdleDurationSeconds": 3, "suspendedDurationSeconds": 600,
        "autoResumeEnabled": True})
    vm_id = vm["microvmId"]
    try:
        wait_microvm(client, vm_id, "RUNNING", timeout=90)
        token = endpoint_token(client, vm_id)
        url = urllib.parse.urlsplit(vm["endpoint"])
        held = http.client.HTTPConnection(url.hostname, url.port, timeout=90)
        held.request("GET", "/", headers={"X-aws-proxy-auth": token,
                                          "X-aws-proxy-port": str(MICROVM_PORT)})
        answer = held.getresponse()
        body = answer.read().decode(errors="replace")
        assert answer.status == 200 and COUNTER_LINE.search(body), body
        assert answer.getheader("connection", "").lower() != "close"
        # The connection stays open on our side, idle, while the VM's
        # idle policy runs out.
        wait_microvm(client, vm_id, "SUSPENDED", timeout=60)
        held.close()
    finally:
        terminate_quietly(client, vm_id)
