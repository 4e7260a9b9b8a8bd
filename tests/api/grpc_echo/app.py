"""The guest app of test_microvm_grpc.py: a gRPC server on 8080 (a generic
handler on raw bytes, so no protobuf code generation) and a plain
HTTP/1.1 server on 8081, in one process."""

import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc


def metadata_of(context):
    return {key: value for key, value in context.invocation_metadata()
            if isinstance(value, str)}


def call(request, context):
    context.set_trailing_metadata((("x-echo-trailer", "done"),))
    return json.dumps({"request": request.decode(errors="replace"),
                       "metadata": metadata_of(context)}).encode()


def fail(request, context):
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")


def count(request, context):
    for i in range(int(request.decode() or "0")):
        yield str(i).encode()


class Http1(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "protocol": self.request_version,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    http1 = ThreadingHTTPServer(("0.0.0.0", 8081), Http1)
    threading.Thread(target=http1.serve_forever, daemon=True).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("ember.Echo", {
        # No (de)serializers: the methods see and return raw bytes.
        "Call": grpc.unary_unary_rpc_method_handler(call),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }),))
    server.add_insecure_port("0.0.0.0:8080")
    server.start()
    print("grpc on 8080, http/1.1 on 8081", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
