"""An emberd whose data dir is a small tmpfs of its own (root mounts it):
a size-limited tmpfs answers ENOSPC exactly at its size, with no ext4
reserve that root may still write into. Only the data dir is small:
emberd's log stays on the host's disk, as an operator's would, so a full
data disk can be read about."""

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from conftest import SeparateEmberds


@contextlib.contextmanager
def emberd_on_tmpfs(ember, size_mib, label, *flags):
    """(emberd started with `flags`, its data dir); everything ended and
    unmounted after."""
    made = SeparateEmberds(ember)
    data_fs = made.root / "0" / "data"
    data_fs.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755",
                    label, str(data_fs)], check=True)
    try:
        yield made(*flags), data_fs
    finally:
        made.end_all()
        unmount(data_fs)
        shutil.rmtree(made.root, ignore_errors=True)


def unmount(root):
    """Unmounts the test's filesystem; names what still holds it if that
    fails (a leftover process is a finding, not teardown noise)."""
    deadline = time.monotonic() + 20
    while subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            holders = processes_holding(root)
            subprocess.run(["umount", "--lazy", str(root)], check=False)
            os.rmdir(root)
            raise AssertionError(f"{root} stayed busy after its emberd ended: {holders}")
        time.sleep(0.2)
    os.rmdir(root)


def processes_holding(root):
    """The command lines of processes with a file, a mapping or their
    working directory under `root`."""
    held = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            paths = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            paths.append(os.readlink(proc / "cwd"))
            paths.extend(line.split()[-1] for line in (proc / "maps").read_text().splitlines())
            if any(path.startswith(str(root)) for path in paths):
                held.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            continue
    return held
