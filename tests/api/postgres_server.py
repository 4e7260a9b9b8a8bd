"""A real Postgres server for the API tests: Debian's postgresql-15, a fresh
cluster in a temporary folder, reachable only over its Unix socket. As root
the server runs as the package's `postgres` account (it refuses root)."""

import os
import pwd
import signal
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from harness import free_port

BINDIR = Path(os.environ.get("EMBER_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
PORT = 5432


class PostgresServer:
    """`tls=True` also listens on 127.0.0.1 over TCP with TLS on (a CA and a
    `localhost` certificate made here: `ca_file`); `tcp=True` without TLS.
    `client_certs=True` (with TLS) lets TCP clients in only with a
    certificate of that CA whose CN is their user name (pg_hba's `cert`):
    `client_cert` and `client_key` are one for the user `ember`."""

    def __init__(self, tcp=False, tls=False, client_certs=False):
        self.tls = tls or client_certs
        self.tcp = tcp or self.tls
        self.client_certs = client_certs
        # One port serves the socket and TCP; a free one when on TCP.
        self.port = free_port() if self.tcp else PORT
        for tool in ("initdb", "postgres"):
            if not (BINDIR / tool).exists():
                raise RuntimeError(f"{BINDIR / tool} is missing: install postgresql-15 "
                                   "(scripts/install-deps.sh)")
        self.root = Path(tempfile.mkdtemp(prefix="ember-pg-"))
        self.data = self.root / "data"
        self.proc = None
        self.user = None
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            self.user = (account.pw_uid, account.pw_gid)
            os.chown(self.root, *self.user)

    def _as_server_user(self):
        if self.user:
            uid, gid = self.user
            os.setgid(gid)
            os.setuid(uid)

    def _make_certificates(self):
        """A CA and a server certificate for localhost/127.0.0.1 it signed."""
        ca_key, self.ca_file = self.root / "ca.key", self.root / "ca.pem"
        key, csr, cert = self.root / "server.key", self.root / "server.csr", self.root / "server.pem"
        run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ember test CA",
            "-keyout", str(ca_key), "-out", str(self.ca_file))
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", str(key), "-out", str(csr))
        ext = self.root / "san.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", str(csr), "-CA", str(self.ca_file), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
        if self.user:
            os.chown(key, *self.user)
            os.chown(cert, *self.user)
        key.chmod(0o600)
        args = ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]
        if self.client_certs:
            self.client_key, self.client_cert = self.root / "client.key", self.root / "client.pem"
            client_csr = self.root / "client.csr"
            run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=ember",
                "-keyout", str(self.client_key), "-out", str(client_csr))
            # An extension makes it X.509 v3, which rustls requires.
            client_ext = self.root / "client.ext"
            client_ext.write_text("extendedKeyUsage=clientAuth\n")
            run("x509", "-req", "-in", str(client_csr), "-CA", str(self.ca_file), "-CAkey",
                str(ca_key), "-CAcreateserial", "-days", "2", "-extfile", str(client_ext),
                "-out", str(self.client_cert))
            self.client_key.chmod(0o600)
            # The socket stays open to the psql helper; TCP needs the certificate.
            (self.data / "pg_hba.conf").write_text(
                "local all all trust\nhostssl all all 127.0.0.1/32 cert\n")
            args += ["-c", f"ssl_ca_file={self.ca_file}"]
        return args

    def start(self):
        subprocess.run(
            [str(BINDIR / "initdb"), "-D", str(self.data), "-U", "ember", "-A", "trust",
             "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, preexec_fn=self._as_server_user)
        network = ["-c", "listen_addresses="]
        if self.tcp:
            # The server also listens on its Unix socket (the psql helper's
            # way in); TCP goes on a port of its own.
            network = ["-c", "listen_addresses=127.0.0.1"]
        self._args = [str(BINDIR / "postgres"), "-D", str(self.data), "-k", str(self.root),
                      "-p", str(self.port), *network,
                      *(self._make_certificates() if self.tls else []), "-c", "fsync=off"]
        return self.resume()

    def resume(self):
        """Starts the server (again) on its cluster and waits for logins."""
        self.proc = subprocess.Popen(
            self._args, stdout=subprocess.DEVNULL,
            stderr=open(self.root / "server.log", "ab"),
            preexec_fn=self._as_server_user, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.psql("postgres", "SELECT 1", check=False).returncode == 0:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("postgres did not start: "
                                   + (self.root / "server.log").read_text(errors="replace"))
            time.sleep(0.1)

    def pause(self):
        """Stops the server, keeping its cluster: an outage."""
        if self.proc and self.proc.poll() is None:
            # Fast shutdown: clients are disconnected at once.
            self.proc.send_signal(2)
            self.proc.wait(timeout=30)

    def create_database(self, name):
        self.psql("postgres", f"CREATE DATABASE {name}")
        return self.url(name)

    def url(self, database):
        """The `--store` URL: the socket folder as a percent-encoded host."""
        host = urllib.parse.quote(str(self.root), safe="")
        return f"postgresql://ember@{host}:{self.port}/{database}"

    def tcp_url(self, database, query=""):
        """The `--store` URL over TCP to localhost (TLS unless `query` says)."""
        return f"postgresql://ember@localhost:{self.port}/{database}{query}"

    def psql(self, database, sql, check=True):
        return subprocess.run(
            ["psql", "-h", str(self.root), "-p", str(self.port), "-U", "ember", "-d", database,
             "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=check, capture_output=True, text=True)

    def query(self, database, sql):
        """Rows of `sql`, each a list of column texts."""
        out = self.psql(database, sql).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def stop(self):
        # SIGINT is Postgres' fast shutdown: it ends the sessions of the
        # emberds still connected. SIGTERM (smart) would wait for them, up
        # to the timeout below.
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
