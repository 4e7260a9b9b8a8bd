"""Real emberd nodes of one cluster for the tests: one Postgres store,
one cluster key, each node serving every endpoint on its own
wildcard-domain listener."""

import json
import os

from harness import COUNTER_LINE, free_port, via_shared_listener


class Node:
    def __init__(self, emberd, endpoint_port):
        self.emberd = emberd
        self.endpoint_port = endpoint_port

    def client(self):
        return self.emberd.client()

    def get(self, host, token):
        """GET / through this node's shared endpoint listener."""
        return via_shared_listener(self.endpoint_port, host, token)

    def counter(self, host, token):
        status, body = self.get(host, token)
        assert status == 200, (status, body)
        return int(COUNTER_LINE.search(body).group(1))


def start_nodes(module_emberd, store_url, key_dir, domain, names, *extra):
    """One emberd per name (4 s leases), sharing a new cluster key."""
    key = key_dir / "cluster.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    nodes = []
    for name in names:
        port = free_port()
        emberd = module_emberd(
            "--store", store_url, "--node-id", name, "--node-lease-seconds", "4",
            "--cluster-key-file", str(key), "--internal-listen", "127.0.0.1:0",
            "--endpoint-domain", domain, "--endpoint-listen", f"127.0.0.1:{port}", *extra)
        nodes.append(Node(emberd, port))
    return nodes


def listed_nodes(node):
    """`GET /ember/v1/nodes` through `node`, by node id."""
    with node.emberd.signed_get("/ember/v1/nodes") as resp:
        return {n["nodeId"]: n for n in json.loads(resp.read())["nodes"]}


def set_drain(node, target, drain):
    verb = "drain" if drain else "undrain"
    with node.emberd.signed_request("POST", f"/ember/v1/nodes/{target}/{verb}", b"") as resp:
        assert resp.status == 200, resp.status
