"""Code artifacts for the tests: zips of the examples, of inline files, and
hostile zips (path escapes, symlink escapes, zip bombs) written byte by byte
so no zip library "fixes" them on the way out."""

import stat
import struct
import zipfile
import zlib
from pathlib import Path


def zip_dir(src, dest):
    """Zips a folder (e.g. examples/hello-http) keeping unix modes."""
    src, dest = Path(src), Path(dest)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo.from_file(path, path.relative_to(src).as_posix())
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
    return dest


def zip_files(dest, files):
    """Zips {name: text} with regular 0644 files."""
    dest = Path(dest)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, text)
    return dest


def zip_slip(dest, sentinel, dockerfile):
    """An entry whose name climbs out of any extraction dir to `sentinel`
    (an absolute path; the name is relative with enough ../ to reach /)."""
    escape = "../" * 32 + str(sentinel).lstrip("/")
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("Dockerfile", dockerfile)
        zf.writestr(escape, "zip-slip\n")
        # Absolute names are the other classic form of the same attack.
        info = zipfile.ZipInfo("placeholder")
        info.filename = str(sentinel) + ".abs"
        zf.writestr(info, "zip-slip absolute\n")
    return Path(dest)


def zip_symlink_escape(dest, target_dir, dockerfile):
    """A symlink entry pointing at `target_dir`, then a file written through
    it: an unpacker that follows links writes `target_dir/pwned`."""
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("Dockerfile", dockerfile)
        link = zipfile.ZipInfo("escape")
        link.create_system = 3  # unix, so external_attr holds st_mode
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, str(target_dir))
        zf.writestr("escape/pwned", "written through a symlink\n")
    return Path(dest)


def _deflated_zeros(mib):
    """A raw deflate stream of `mib` MiB of zeros, built from one flushed
    block repeated (a full flush resets the compressor, so every 1 MiB block
    encodes to the same bytes), plus its CRC-32."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib_of_zeros = bytes(1 << 20)
    block = compressor.compress(mib_of_zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = block * mib + compressor.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(mib_of_zeros, crc)
    assert zlib.decompressobj(-15).decompress(stream[: len(block) * 2], 4 << 20) == bytes(2 << 20)
    return stream, crc


def zip_bomb(dest, dockerfile, mib_per_entry=4, entries=1000):
    """A small zip whose `entries` central-directory records all point at the
    same deflate stream of `mib_per_entry` MiB of zeros (overlapping entries):
    about 60 KB on disk, mib_per_entry * entries MiB once unpacked.
    Declared sizes are honest, so a size cap can be checked up front."""
    data, crc = _deflated_zeros(mib_per_entry)
    size = mib_per_entry << 20
    assert size < 0xFFFFFFFF, "no zip64 here"
    out = bytearray()
    docker = dockerfile.encode()
    central = bytearray()

    def local(name, method, crc_, csize, usize):
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0,
                           crc_, csize, usize, len(name), 0) + name

    def central_entry(name, method, crc_, csize, usize, offset):
        return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0,
                           crc_, csize, usize, len(name), 0, 0, 0, 0,
                           (stat.S_IFREG | 0o644) << 16, offset) + name

    name = b"Dockerfile"
    central += central_entry(name, 0, zlib.crc32(docker), len(docker), len(docker), len(out))
    out += local(name, 0, zlib.crc32(docker), len(docker), len(docker)) + docker
    shared_offset = len(out)
    # The local header carries the first entry's name, so with one entry
    # the zip is fully valid; later entries overlap it.
    out += local(b"zeros00000", 8, crc, len(data), size) + data
    for i in range(entries):
        central += central_entry(f"zeros{i:05}".encode(), 8, crc, len(data), size, shared_offset)
    count = entries + 1
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), len(out), 0)
    Path(dest).write_bytes(bytes(out + central + end))
    return Path(dest)


def zip_deflate_bomb(dest, dockerfile, mib=3000):
    """One honest entry of `mib` MiB of zeros (~3 MB on disk): no overlapping
    tricks, just a ratio of about 1000:1."""
    return zip_bomb(dest, dockerfile, mib_per_entry=mib, entries=1)
