"""A counter kept in the memory of one Python process.

Every GET / answers {"count": N, "pid": P}. Because the count lives only in
this process, it survives an Ember snapshot/restore (memory is part of the
snapshot) and resets on a cold boot: a quick way to see which one happened.
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8000"))

_count = 0
# ThreadingHTTPServer serves each request on its own thread.
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        global _count
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
            return
        if self.path != "/":
            self._reply(404, {"error": "not found"})
            return
        with _lock:
            _count += 1
            count = _count
        self._reply(200, {"count": count, "pid": os.getpid()})

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        # One line per request on stderr would fill the console log of a
        # long-lived VM; stay quiet.
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
