"""The production endpoint mode: one shared listener, the microVM named by
the first label of the Host (`--endpoint-domain`, behind wildcard DNS).
The test sends the Host header itself, as a resolver would make curl do."""

import time
import urllib.parse

from harness import (BUILD_ROLE, BUSYBOX_ARN, COUNTER_LINE, endpoint_token, free_port,
                     via_shared_listener, wait_microvm)



def test_wildcard_domain_routes_by_host(separate_emberd, hello_zip):
    port = free_port()
    daemon = separate_emberd("--endpoint-domain", "vms.example.test",
                             "--endpoint-listen", f"127.0.0.1:{port}")
    client = daemon.client()
    client.create_microvm_image(name="hello-http", codeArtifact={"uri": f"file://{hello_zip}"},
                                baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    deadline = time.time() + 300
    while client.get_microvm_image_version(imageIdentifier="hello-http",
                                           imageVersion="1")["state"] != "SUCCESSFUL":
        assert time.time() < deadline, "image did not build"
        time.sleep(1)
    a = client.run_microvm(imageIdentifier="hello-http")
    b = client.run_microvm(imageIdentifier="hello-http")
    for vm in (a, b):
        wait_microvm(client, vm["microvmId"], "RUNNING", timeout=90)
        assert vm["endpoint"] == f"http://{vm['microvmId']}.vms.example.test:{port}", vm
    token_a = endpoint_token(client, a["microvmId"])
    token_b = endpoint_token(client, b["microvmId"])
    host_a = urllib.parse.urlsplit(a["endpoint"]).netloc
    host_b = urllib.parse.urlsplit(b["endpoint"]).netloc
    status, body = via_shared_listener(port, host_a, token_a)
    assert status == 200 and COUNTER_LINE.search(body).group(1) == "1", body
    status, body = via_shared_listener(port, host_a, token_a)
    assert COUNTER_LINE.search(body).group(1) == "2", body
    # The other VM behind the same listener has its own counter.
    status, body = via_shared_listener(port, host_b, token_b)
    assert COUNTER_LINE.search(body).group(1) == "1", body
    # A's token on B's host name is refused; unknown hosts are 404.
    assert via_shared_listener(port, host_b, token_a)[0] == 403
    assert via_shared_listener(port, "nope.vms.example.test", token_a)[0] in (403, 404)
    assert via_shared_listener(port, "other.domain.test", token_a)[0] == 404
