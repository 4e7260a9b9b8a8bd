"""A client of a microVM's shell as the real service frames it: the
handshake (the shell token as a subprotocol or in X-aws-proxy-auth),
`session_init`, binary terminal bytes, and the close after Ember's exit
status."""

import json
import re
import struct
import time
import urllib.parse
import uuid

import websocket


def shell_token(client, microvm_id):
    answer = client.create_microvm_shell_auth_token(microvmIdentifier=microvm_id,
                                                    expirationInMinutes=5)
    return answer["authToken"]["X-aws-proxy-auth"]


def shell_url(endpoint, path="/shell"):
    url = urllib.parse.urlsplit(endpoint)
    return f"ws://{url.hostname}:{url.port}{path}"


def open_shell(endpoint, token, by_header=False, path="/shell", host=None):
    """The service's handshake: the token as a subprotocol (what browsers
    send), or in X-aws-proxy-auth (other clients). `host` names the
    microVM to a shared wildcard-domain listener at `endpoint`."""
    named = {"host": host} if host else {}
    if by_header:
        return websocket.create_connection(shell_url(endpoint, path), timeout=90,
                                           header={"X-aws-proxy-auth": token}, **named)
    return websocket.create_connection(
        shell_url(endpoint, path), timeout=90, **named,
        subprotocols=["lambda-microvms", f"lambda-microvms.authentication.{token}",
                      "lambda-microvms.port.8022"])


def next_frame(ws):
    opcode, frame = ws.recv_data_frame(control_frame=True)
    return opcode, frame.data


def session_init(ws):
    opcode, data = next_frame(ws)
    assert opcode == websocket.ABNF.OPCODE_TEXT, (opcode, data)
    init = json.loads(data)
    assert init["type"] == "session_init", init
    return uuid.UUID(init["session_id"])


def type_and_read(ws, text, pattern):
    """Types `text`, then collects terminal output until `pattern` matches."""
    ws.send_binary(text.encode())
    out = ""
    deadline = time.monotonic() + 60
    while not re.search(pattern, out):
        assert time.monotonic() < deadline, f"no {pattern!r} in {out!r}"
        opcode, data = next_frame(ws)
        assert opcode == websocket.ABNF.OPCODE_BINARY, (opcode, data, out)
        out += data.decode(errors="replace")
    return out


def read_to_close(ws):
    """(text frames, close code, close reason) once the server closes."""
    texts = []
    while True:
        opcode, data = next_frame(ws)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            texts.append(json.loads(data))
        elif opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            return texts, code, data[2:].decode()


def resize_then_exit(ws, code=7):
    """Resizes the terminal to 101x33 and checks the guest sees it, then
    exits the shell with `code` and checks the status and the close."""
    ws.send(json.dumps({"type": "resize", "cols": 101, "rows": 33}))
    type_and_read(ws, "stty size\n", r"33 101\r?\n")
    ws.send_binary(f"exit {code}\n".encode())
    texts, close_code, reason = read_to_close(ws)
    assert (close_code, reason) == (1000, "shell exited"), (close_code, reason, texts)
    assert texts == [{"type": "exit", "code": code}], texts
