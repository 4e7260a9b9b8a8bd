"""A real Postgres server for the API tests: Debian's postgresql-15, a fresh
cluster in a temporary folder, reachable only over its Unix socket. As root
the server runs as the package's `postgres` account (it refuses root)."""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

BINDIR = Path(os.environ.get("EMBER_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
PORT = 5432


class PostgresServer:
    def __init__(self):
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

    def start(self):
        subprocess.run(
            [str(BINDIR / "initdb"), "-D", str(self.data), "-U", "ember", "-A", "trust",
             "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, preexec_fn=self._as_server_user)
        self.proc = subprocess.Popen(
            [str(BINDIR / "postgres"), "-D", str(self.data), "-k", str(self.root),
             "-p", str(PORT), "-c", "listen_addresses=", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "wb"),
            preexec_fn=self._as_server_user, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.psql("postgres", "SELECT 1", check=False).returncode == 0:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("postgres did not start: "
                                   + (self.root / "server.log").read_text(errors="replace"))
            time.sleep(0.1)

    def create_database(self, name):
        self.psql("postgres", f"CREATE DATABASE {name}")
        return self.url(name)

    def url(self, database):
        """The `--store` URL: the socket folder as a percent-encoded host."""
        host = urllib.parse.quote(str(self.root), safe="")
        return f"postgresql://ember@{host}:{PORT}/{database}"

    def psql(self, database, sql, check=True):
        return subprocess.run(
            ["psql", "-h", str(self.root), "-p", str(PORT), "-U", "ember", "-d", database,
             "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=check, capture_output=True, text=True)

    def query(self, database, sql):
        """Rows of `sql`, each a list of column texts."""
        out = self.psql(database, sql).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
