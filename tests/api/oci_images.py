"""OCI images for `FROM <registry>/<name>` builds: a real Debian
`docker-registry` on a free port, and image layouts written here (tarfile,
json, hashlib) and pushed to it with `skopeo`. No pytest tests in here.

Layers are described in code so the hostile ones (a `../` entry, a device
node) reach the registry exactly as written: skopeo copies blobs verbatim.
"""

import base64
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness import free_port

USER = "builder"
PASSWORD = "s3cret-pass"
READY_TIMEOUT = 30
# The busybox applets the images' programs use, linked to /bin/busybox.
APPLETS = ("sh", "httpd", "ls", "cat", "id", "echo", "mkdir", "test", "[", "pwd", "sleep",
           "env", "rm", "cp", "touch", "true", "chmod", "printf", "tar", "chown", "sync")


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()



# --- layers -------------------------------------------------------------

def _info(name, kind, mode, uid=0, gid=0):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    # Fixed times, so the same description always makes the same blob (and
    # two images share a layer digest, as the cache test needs).
    info.mtime = 0
    return info


@dataclass
class Layer:
    """One layer being described; `entries` are (TarInfo, bytes or None)
    in tar order."""

    entries: list = field(default_factory=list)

    def dir(self, path, mode=0o755, uid=0, gid=0):
        self.entries.append((_info(path, tarfile.DIRTYPE, mode, uid, gid), None))
        return self

    def file(self, path, data, mode=0o644, uid=0, gid=0):
        data = data.encode() if isinstance(data, str) else data
        info = _info(path, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        self.entries.append((info, data))
        return self

    def symlink(self, path, target):
        info = _info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.entries.append((info, None))
        return self

    def whiteout(self, path):
        """Deletes `path` of a lower layer (`DIR/.wh.NAME`)."""
        parent, _, name = path.rpartition("/")
        return self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"")

    def opaque(self, directory):
        """Hides everything lower layers put in `directory`."""
        return self.file(f"{directory.rstrip('/')}/.wh..wh..opq", b"")

    def char_device(self, path, major=1, minor=3):
        info = _info(path, tarfile.CHRTYPE, 0o666)
        info.devmajor, info.devminor = major, minor
        self.entries.append((info, None))
        return self

    def tar(self):
        out = io.BytesIO()
        # GNU format: names are stored as given, `../` included (the writer
        # does not sanitise, which is the point of the hostile layers).
        with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for info, data in self.entries:
                tf.addfile(info, io.BytesIO(data) if data is not None else None)
        return out.getvalue()


def static_busybox(assets_dir, dest):
    """Debian's static busybox, taken out of the deb the managed base is
    made from: the bytes of a real program for the images."""
    debs = sorted((Path(assets_dir) / "busybox" / "debs").glob("busybox-static_*.deb"))
    if not debs:
        raise RuntimeError(f"no busybox-static deb under {assets_dir}/busybox/debs (make setup)")
    dest = Path(dest)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(dest)], check=True)
    return (dest / "bin" / "busybox").read_bytes()


def busybox_layer(busybox):
    """A root with busybox and its applets, /etc/passwd + /etc/group with
    `app` (uid/gid 1000), /tmp and /srv."""
    layer = Layer().dir("bin").file("bin/busybox", busybox, mode=0o755)
    for applet in APPLETS:
        layer.symlink(f"bin/{applet}", "busybox")
    return (layer.dir("etc")
            .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n")
            .file("etc/group", "root:x:0:\napp:x:1000:\n")
            .dir("tmp", mode=0o1777).dir("root", mode=0o700).dir("srv"))


# What the app image's Cmd serves: each line a thing the build must have
# got right (config Env, WorkingDir, User; the whiteout and opaque dir).
APP_SCRIPT = (
    'echo "greeting=$GREETING" > /srv/www/index.html; '
    'echo "pwd=$(pwd)" >> /srv/www/index.html; '
    'echo "uid=$(id -u)" >> /srv/www/index.html; '
    'echo old=$(ls /data/old) >> /srv/www/index.html; '
    'if test -e /etc/gone.txt; then echo "gone=present"; else echo "gone=absent"; fi'
    ' >> /srv/www/index.html; '
    'exec httpd -f -p 8080 -h /srv/www'
)
APP_CONFIG = {
    "Env": ["PATH=/bin", "GREETING=from-oci"],
    "WorkingDir": "/srv",
    "User": "app",
    "Cmd": ["/bin/sh", "-c", APP_SCRIPT],
    "ExposedPorts": {"8080/tcp": {}},
}


def app_layers(busybox):
    """Layer 1: the root plus files layer 2 deletes; layer 2: a whiteout,
    an opaque /data/old and the one file that stays there."""
    first = (busybox_layer(busybox)
             .file("etc/gone.txt", "deleted by the next layer\n")
             .dir("data").dir("data/old").file("data/old/a", "a\n").file("data/old/b", "b\n")
             .dir("srv/www", uid=1000, gid=1000))
    second = (Layer().dir("etc").whiteout("etc/gone.txt")
              .dir("data").dir("data/old").opaque("data/old").file("data/old/c", "c\n"))
    return [first, second]


# --- OCI image layouts --------------------------------------------------

class Layout:
    """An OCI image layout in a folder: blobs, index.json, oci-layout."""

    def __init__(self, root):
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs = []

    def blob(self, data, media_type):
        digest = digest_of(data)
        (self.root / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(self, tag, layers, config):
        """Writes an amd64 image (its config, layers and manifest), names it
        `tag`; returns the digests of the manifest, the config and each
        layer blob."""
        tars = [layer.tar() for layer in layers]
        blobs = [gzip.compress(t, mtime=0) for t in tars]
        image_config = {
            "architecture": "amd64", "os": "linux", "config": config,
            # diff_ids name the uncompressed tars, the manifest the blobs.
            "rootfs": {"type": "layers", "diff_ids": [digest_of(t) for t in tars]},
        }
        config_d = self.blob(json.dumps(image_config).encode(),
                             "application/vnd.oci.image.config.v1+json")
        layer_ds = [self.blob(b, "application/vnd.oci.image.layer.v1.tar+gzip") for b in blobs]
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_d, "layers": layer_ds}
        manifest_d = self.blob(json.dumps(manifest).encode(), manifest["mediaType"])
        self.refs.append({**manifest_d, "annotations": {"org.opencontainers.image.ref.name": tag}})
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.refs}))
        return {"manifest": manifest_d["digest"], "config": config_d["digest"],
                "layers": [d["digest"] for d in layer_ds]}


# --- the registry -------------------------------------------------------

class Registry:
    """Debian's `docker-registry` on 127.0.0.1:<free port>, storage in its
    own temp dir; `auth=True` adds htpasswd basic auth (USER/PASSWORD)."""

    def __init__(self, root, auth=False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.port = free_port()
        self.log_path = self.root / "registry.log"
        self.proc = None

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        config = (f"version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
                  f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'storage'}\n"
                  f"http:\n  addr: {self.host}\n")
        if self.auth:
            htpasswd = self.root / "htpasswd"
            made = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD],
                                  capture_output=True, check=True)
            htpasswd.write_bytes(made.stdout)
            config += f"auth:\n  htpasswd:\n    realm: ember-test\n    path: {htpasswd}\n"
        (self.root / "config.yml").write_text(config)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(self.root / "config.yml")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self):
        """Until /v2/ answers (200 anonymous, 401 with auth)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2):
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and self.auth:
                    return
                raise
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"docker-registry exited:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry not ready in {READY_TIMEOUT}s:\n{self.log()}")
                time.sleep(0.1)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def blob_gets(self, digest):
        """GETs of a blob through any repository, from the access log (a
        layer shared by two images is one blob in the registry's storage;
        skopeo's pushes HEAD and PUT, so a GET is a pull)."""
        return sum(1 for line in self.log().splitlines()
                   if '"GET /v2/' in line and f"/blobs/{digest} HTTP/" in line)

    def v2_requests(self):
        """Every API request the registry was sent, pushes included."""
        return self.log().count('"GET /v2/') + self.log().count('"HEAD /v2/')

    def _creds(self, flag):
        return [f"{flag}={USER}:{PASSWORD}"] if self.auth else []

    def push(self, layout, tag, repository):
        """Copies `layout:tag` to `repository:tag` as it is (digests kept);
        returns the manifest digest the registry serves."""
        digest_file = Path(tempfile.mkstemp(prefix="digest-", dir=self.root)[1])
        subprocess.run(
            ["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests",
             "--dest-tls-verify=false", *self._creds("--dest-creds"),
             "--digestfile", str(digest_file),
             f"oci:{layout.root}:{tag}", f"docker://{self.host}/{repository}:{tag}"],
            capture_output=True, text=True, check=True)
        digest = digest_file.read_text().strip()
        digest_file.unlink()
        return digest

    def inspect(self, reference):
        """`skopeo inspect` of `repository:tag` or `repository@digest`."""
        result = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", *self._creds("--creds"),
             f"docker://{self.host}/{reference}"],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"skopeo inspect {reference}: {result.stderr}")
        return json.loads(result.stdout)


def docker_config(path, registry):
    """A docker `config.json` holding `registry`'s credentials."""
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    Path(path).write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
    os.chmod(path, 0o600)
    return Path(path)


# --- what a failed build must not leave ---------------------------------

def qemus_under(data_dir, marker=""):
    """Pids of the QEMUs working under data_dir (in a folder whose path
    holds `marker`, e.g. a build's id)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (cwd.startswith(str(data_dir)) and marker in cwd
                and cmdline.startswith(b"qemu-system")):
            found.append(int(entry.name))
    return found


def hostile_leftovers(root, names=("escape",)):
    """Device nodes, setuid files and files named like a hostile layer's
    entries anywhere under `root`."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue  # removed while we walked
            setid = stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID)
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or setid or name in names:
                found.append(path)
    return found
