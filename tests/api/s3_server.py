"""A real S3-compatible HTTP server for the tests: moto's server from the
pinned venv, on a free loopback port, with its log beside the test's."""

import contextlib
import socket
import subprocess
import sys
import time

import boto3

from harness import REGION, free_port


@contextlib.contextmanager
def moto_server(log_dir):
    """Yields the server's URL; stops it afterwards."""
    port = free_port()
    log = open(log_dir / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "the S3 server exited"
                assert time.monotonic() < deadline, "the S3 server did not listen in 30s"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def s3_client(url):
    return boto3.client("s3", endpoint_url=url, region_name=REGION,
                        aws_access_key_id="test", aws_secret_access_key="test")
