"""The API is bounded against hostile callers, on raw sockets: a client
sending its head a byte at a time or never finishing its body is cut off
while the AWS CLI is answered meanwhile, an idle keep-alive connection is
closed, and a connection past --max-api-connections is closed unanswered.
No guests: each emberd here starts in about a second."""

import select
import socket
import threading
import urllib.parse

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from harness import REGION, aws

# Bounds every wait on a socket, so a server that never closes fails the
# test instead of stalling the suite.
AT_MOST = 60


def connect(emberd):
    parts = urllib.parse.urlsplit(emberd.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=AT_MOST)
    return sock


def head(method="GET", path="/2025-09-09/microvms", extra=""):
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def read_until_closed(sock):
    """Everything the server sends until it closes (a reset is a close)."""
    read = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return read
        if not chunk:
            return read
        read += chunk


def read_answer(sock):
    """One small answer with a Content-Length, leaving the connection open."""
    read = b""
    while b"\r\n\r\n" not in read:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {read!r}"
        read += chunk
    head_bytes, body = read.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":", 1)[1]) for line in head_bytes.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed in an answer's body: {read!r}"
        body += chunk
    return head_bytes.decode()


def trickle_until_closed(sock, data, every=0.2):
    """Sends `data` a byte at a time; returns what the server answered and
    whether it closed the connection before all of it was sent."""
    for i in range(len(data)):
        try:
            sock.sendall(data[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return b"", True
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            return read_until_closed(sock), True
    return b"", False


def test_slow_heads_and_bodies_are_cut_off_while_the_cli_is_answered(separate_emberd):
    emberd = separate_emberd("--api-header-timeout", "2", "--api-body-timeout", "2")

    slow = connect(emberd)
    # Far longer to trickle (about a minute) than the header timeout.
    trickled = head(extra="x-padding: " + "a" * 300 + "\r\n")
    outcome = {}
    trickler = threading.Thread(
        target=lambda: outcome.update(result=trickle_until_closed(slow, trickled)))
    trickler.start()
    # The API answers a real client while the slow one holds its connection.
    assert aws(emberd, "list-microvms")["items"] == []
    trickler.join(AT_MOST * 2)
    answered, closed = outcome["result"]
    assert closed, "a client sending its head a byte at a time was never cut off"
    assert not answered.startswith(b"HTTP/1.1 2"), answered
    slow.close()

    # A signed request whose body stops halfway: the body read fails (413,
    # "could not be read") instead of waiting for the rest forever.
    body = b'{"imageIdentifier": "' + b"x" * 200 + b'"}'
    creds = boto3.session.Session().get_credentials().get_frozen_credentials()
    request = AWSRequest(method="POST", url=emberd.url + "/2025-09-09/microvms", data=body,
                         headers={"Content-Type": "application/json"})
    SigV4Auth(creds, "lambda", REGION).add_auth(request)
    prepared = request.prepare()
    headers = "".join(f"{k}: {v}\r\n" for k, v in prepared.headers.items()
                      if k.lower() != "content-length")
    stalled = connect(emberd)
    stalled.sendall(head("POST", "/2025-09-09/microvms",
                         headers + f"Content-Length: {len(body)}\r\n") + body[:len(body) // 2])
    answer = read_until_closed(stalled).decode(errors="replace")
    stalled.close()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "could not be read" in answer, answer

    # An idle keep-alive connection is closed once it sent nothing for the
    # header timeout.
    idle = connect(emberd)
    idle.sendall(head())
    assert read_answer(idle).startswith("HTTP/1.1 ")
    assert read_until_closed(idle) == b""
    idle.close()
    assert aws(emberd, "list-microvms")["items"] == []


def test_a_connection_past_the_cap_is_closed_unanswered(separate_emberd):
    emberd = separate_emberd("--max-api-connections", "3")
    held = []
    for _ in range(3):
        sock = connect(emberd)
        sock.sendall(head())
        # Answered: emberd has accepted it and counts it.
        assert read_answer(sock).startswith("HTTP/1.1 ")
        held.append(sock)

    extra = connect(emberd)
    try:
        extra.sendall(head())
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert read_until_closed(extra) == b"", "a connection past the cap was served"
    extra.close()

    # A closed connection frees its place (once emberd saw it close): the
    # AWS CLI gets through, retrying a reset connection as it does.
    held.pop().close()
    assert aws(emberd, "list-microvms")["items"] == []
    for sock in held:
        sock.close()
