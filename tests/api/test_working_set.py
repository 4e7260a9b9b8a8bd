"""The working set of a VM suspended to disk: the pages its guest touched
are recorded next to its snapshot (one bit per page of its RAM file) and
read in first when it resumes. With the page cache dropped, the resumed VM
has its 64 MiB of guest memory and its disk intact, with the prefetch and
without it (`--no-working-set-prefetch`, which records nothing)."""

import os

from harness import create_and_wait, endpoint_token, terminate_quietly, wait_microvm
from memory_app import get, zip_memory_app

PAGE = 4096
MEMORY_MIB = 256  # the memory app's VMs (the default)


def evict(folder):
    """Writes back and drops the page cache of every file in `folder`."""
    for name in os.listdir(folder):
        path = folder / name
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def set_bits(data):
    return sum(bin(b).count("1") for b in data)


def suspend_evict_resume(client, emberd, vm_id, token, sums, prefetch):
    """Suspends the VM to disk, checks its recorded working set, drops the
    page cache of its suspended files, resumes it and checks its state."""
    client.suspend_microvm(microvmIdentifier=vm_id)
    wait_microvm(client, vm_id, "SUSPENDED")
    suspended = emberd.data_dir / "microvms" / vm_id / "suspended"
    bits = suspended / "working-set.bits"
    if prefetch:
        data = bits.read_bytes()
        assert len(data) == MEMORY_MIB * 1024 * 1024 // PAGE // 8
        assert set_bits(data) >= 64 * 1024 * 1024 // PAGE, f"{set_bits(data)} pages recorded"
    else:
        assert not bits.exists()
    evict(suspended)
    client.resume_microvm(microvmIdentifier=vm_id)
    vm = wait_microvm(client, vm_id, "RUNNING")
    assert get(vm, token, "/cgi-bin/sum.cgi") == sums


def test_deep_resume_from_a_cold_cache_keeps_memory_and_disk(separate_emberd, tmp_path):
    emberd = separate_emberd("--warm-suspended-mib", "0")
    client = emberd.client()
    image, version = create_and_wait(client, "ws", zip_memory_app(tmp_path / "ws.zip"),
                                     timeout=600)
    assert image["state"] == "CREATED", version.get("stateReason")
    vm_id = client.run_microvm(imageIdentifier="ws")["microvmId"]
    try:
        vm = wait_microvm(client, vm_id, "RUNNING")
        token = endpoint_token(client, vm_id)
        assert get(vm, token, "/cgi-bin/append.cgi?one") == ["1"]
        # md5sum reads all 64 MiB in tmpfs: those pages are touched.
        sums = get(vm, token, "/cgi-bin/sum.cgi")
        for _ in range(2):
            suspend_evict_resume(client, emberd, vm_id, token, sums, prefetch=True)
        # The same VM (re-attached) under an emberd without the prefetch.
        emberd.extra_args.append("--no-working-set-prefetch")
        emberd.restart()
        suspend_evict_resume(client, emberd, vm_id, token, sums, prefetch=False)
    finally:
        terminate_quietly(client, vm_id)
