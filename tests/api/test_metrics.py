"""`--metrics-listen`: Prometheus metrics an operator can scrape, read
with prometheus_client's own parser while a microVM runs, is requested,
suspends and auto-resumes. Without the flag, no listener exists. With TLS
on, the metrics are served over it; `--metrics-token-file` answers only
scrapes that carry its bearer token."""

import http.client
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request

# emberd serves OpenMetrics text (what the prometheus-client crate writes,
# and what Prometheus asks for first); this is prometheus_client's strict
# parser for it, which also rejects a malformed exposition.
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from harness import (BUILD_ROLE, BUSYBOX_ARN, counter, endpoint_request, endpoint_token,
                     wait_image, wait_microvm)

IDLE = {"maxIdleDurationSeconds": 600, "suspendedDurationSeconds": 600, "autoResumeEnabled": True}
METRICS_LINE = re.compile(r"^emberd metrics on (https?://\S+/metrics)( \(bearer token\))?$", re.M)


def metrics_url(daemon, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        found = METRICS_LINE.search(daemon.log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        assert time.monotonic() < deadline, f"no metrics line:\n{daemon.log_tail()}"
        time.sleep(0.1)


def scrape(url, headers=None, context=None):
    """{family name: [(sample name, labels, value)]}, as Prometheus reads it."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30, context=context) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("application/openmetrics-text")
        text = resp.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return families


def value(families, family, sample=None, **labels):
    """The one sample of `family` (named `sample`, default the family)
    whose labels include `labels`; 0 when there is none."""
    sample = sample or family
    found = [v for (n, l, v) in families.get(family, [])
             if n == sample and all(l.get(k) == want for k, want in labels.items())]
    assert len(found) <= 1, (family, labels, found)
    return found[0] if found else 0


def listening_ports(pid):
    """TCP ports process `pid` listens on, from its socket fds and
    /proc/net/tcp{,6}."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_metrics_follow_a_microvm_through_its_life(separate_emberd, hello_zip):
    daemon = separate_emberd("--metrics-listen", "127.0.0.1:0")
    url = metrics_url(daemon)
    metrics_port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert listening_ports(daemon.proc.pid) == {daemon.port, metrics_port}
    client = daemon.client()

    before = scrape(url)
    assert value(before, "ember_microvms", state="RUNNING") == 0
    assert value(before, "ember_capacity_running_slots", kind="total") == 100
    assert value(before, "ember_capacity_memory_bytes", kind="available") > 0

    client.create_microvm_image(name="hello-http", codeArtifact={"uri": f"file://{hello_zip}"},
                                baseImageArn=BUSYBOX_ARN, buildRoleArn=BUILD_ROLE)
    wait_image(client, "hello-http")
    built = scrape(url)
    assert value(built, "ember_images", state="CREATED") == 1
    assert value(built, "ember_builds", state="SUCCESSFUL") == 1
    assert value(built, "ember_build_duration_seconds", "ember_build_duration_seconds_count",
                 result="SUCCESSFUL") == 1

    vm_id = client.run_microvm(imageIdentifier="hello-http", idlePolicy=IDLE)["microvmId"]
    vm = wait_microvm(client, vm_id, "RUNNING", timeout=120)
    token = endpoint_token(client, vm_id)
    assert counter(vm["endpoint"], token) == 1
    assert counter(vm["endpoint"], token) == 2
    running = scrape(url)
    assert value(running, "ember_microvms", state="RUNNING") == 1
    assert value(running, "ember_microvm_run_duration_seconds",
                 "ember_microvm_run_duration_seconds_count") == 1
    assert value(running, "ember_endpoint_requests", "ember_endpoint_requests_total",
                 status="2xx") == 2
    assert value(running, "ember_endpoint_bytes", "ember_endpoint_bytes_total", direction="in") > 0
    assert value(running, "ember_endpoint_bytes", "ember_endpoint_bytes_total", direction="out") > 0
    assert value(running, "ember_microvm_memory_bytes", microvm_id=vm_id) > 0
    assert value(running, "ember_microvm_cpu_seconds", "ember_microvm_cpu_seconds_total",
                 microvm_id=vm_id) > 0
    assert value(running, "ember_capacity_running_slots", kind="used") == 1

    # The proxy's own refusals are counted by their x-aws-proxy-error code.
    status, _, headers = endpoint_request(vm["endpoint"], "not-a-token")
    assert status == 403 and headers["x-aws-proxy-error"] == "UNAUTHORIZED"

    client.suspend_microvm(microvmIdentifier=vm_id)
    wait_microvm(client, vm_id, "SUSPENDED", timeout=120)
    suspended = scrape(url)
    assert value(suspended, "ember_microvms", state="RUNNING") == 0
    assert value(suspended, "ember_microvms", state="SUSPENDED") == 1
    assert value(suspended, "ember_microvm_suspend_duration_seconds",
                 "ember_microvm_suspend_duration_seconds_count") == 1
    assert value(suspended, "ember_endpoint_errors", "ember_endpoint_errors_total",
                 code="UNAUTHORIZED") == 1
    assert value(suspended, "ember_endpoint_requests", "ember_endpoint_requests_total",
                 status="4xx") == 1
    # A suspended VM has no cgroup to read: its series are gone.
    assert value(suspended, "ember_microvm_memory_bytes", microvm_id=vm_id) == 0
    assert value(suspended, "ember_capacity_running_slots", kind="used") == 0
    # Parked in place: the warm tier counts it and the memory it holds.
    assert value(suspended, "ember_warm_suspended_microvms") == 1
    assert value(suspended, "ember_warm_suspended_memory_bytes", kind="held") > 0
    assert value(suspended, "ember_warm_suspended_memory_bytes", kind="held") < \
        value(suspended, "ember_warm_suspended_memory_bytes", kind="budget")

    # A request wakes it (autoResumeEnabled): a resume, and the time that
    # request waited for its first byte.
    assert counter(vm["endpoint"], token) == 3
    resumed = scrape(url)
    assert value(resumed, "ember_microvms", state="RUNNING") == 1
    assert value(resumed, "ember_warm_suspended_microvms") == 0
    assert value(resumed, "ember_microvm_resume_duration_seconds",
                 "ember_microvm_resume_duration_seconds_count") == 1
    assert value(resumed, "ember_microvm_auto_resume_first_byte_seconds",
                 "ember_microvm_auto_resume_first_byte_seconds_count") == 1
    client.terminate_microvm(microvmIdentifier=vm_id)


def test_without_the_flag_nothing_serves_metrics(separate_emberd):
    daemon = separate_emberd()
    assert listening_ports(daemon.proc.pid) == {daemon.port}
    assert not METRICS_LINE.search(daemon.log_path.read_text(errors="replace"))


def test_metrics_over_tls_need_the_bearer_token(separate_emberd, tmp_path):
    token = "s3cret-scrape-token-0123"
    token_file = tmp_path / "metrics.token"
    token_file.write_text(token + "\n")
    daemon = separate_emberd("--tls-self-signed", "--metrics-listen", "127.0.0.1:0",
                             "--metrics-token-file", str(token_file))
    url = metrics_url(daemon)
    assert url.startswith("https://"), url
    ca = ssl.create_default_context(cafile=str(daemon.data_dir / "tls" / "cert.pem"))
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"},
                    {"Authorization": token}):
        try:
            scrape(url, headers, ca)
        except urllib.error.HTTPError as err:
            assert err.code == 401, (headers, err.code)
        else:
            raise AssertionError(f"a scrape with {headers} was answered")
    families = scrape(url, {"Authorization": f"Bearer {token}"}, ca)
    assert "ember_capacity_microvms" in families, sorted(families)
    # Plain HTTP to the TLS listener gets no metrics.
    plain = url.replace("https://", "http://")
    try:
        urllib.request.urlopen(plain, timeout=10).read()
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        pass
    else:
        raise AssertionError("the metrics answered over plain HTTP")


def test_a_weak_metrics_token_stops_emberd(ember, tmp_path):
    token_file = tmp_path / "short.token"
    token_file.write_text("short")
    proc = subprocess.run(
        [str(ember.binary), "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
         "--metrics-listen", "127.0.0.1:0", "--metrics-token-file", str(token_file)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "--metrics-token-file" in proc.stderr and "16 characters" in proc.stderr, proc.stderr
