"""Holds opens of files on one filesystem until the test has acted
(fanotify permission events), so a fault can land at an exact step of
what emberd does, e.g. a QEMU killed while its snapshot is half written,
without sleeping and hoping."""

import ctypes
import os
import select
import struct
import threading

FAN_CLOEXEC = 0x01
FAN_CLASS_CONTENT = 0x04
FAN_MARK_ADD = 0x01
FAN_MARK_FILESYSTEM = 0x100
FAN_OPEN_PERM = 0x00010000
FAN_ALLOW = 0x01
AT_FDCWD = -100
# struct fanotify_event_metadata: event_len, vers, reserved, metadata_len,
# mask, fd, pid.
EVENT = struct.Struct("=IBBHQii")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]


class OpenGate:
    """While open, every open(2) of a file on `mount`'s filesystem waits
    for `on_open(path)` to return; the path is what /proc shows for it."""

    def __init__(self, mount, on_open):
        self.on_open = on_open
        self.error = None
        self.fd = _libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, os.O_RDONLY | os.O_LARGEFILE)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "fanotify_init")
        if _libc.fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN_PERM,
                               AT_FDCWD, os.fsencode(mount)) < 0:
            errno = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(errno, f"fanotify_mark {mount}")
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            ready, _, _ = select.select([self.fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            data = os.read(self.fd, 4096)
            offset = 0
            while offset + EVENT.size <= len(data):
                length, _, _, _, _, fd, _ = EVENT.unpack_from(data, offset)
                offset += length
                if fd < 0:
                    continue
                try:
                    if self.error is None:
                        self.on_open(os.readlink(f"/proc/self/fd/{fd}"))
                except Exception as exc:  # reported by close(), never left hanging
                    self.error = exc
                finally:
                    os.write(self.fd, struct.pack("=iI", fd, FAN_ALLOW))
                    os.close(fd)

    def close(self):
        """Stops holding opens; raises what `on_open` raised, if anything."""
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=30)
        # Closing the group lets any open still waiting go on.
        for fd in (self.fd, self._stop_r, self._stop_w):
            os.close(fd)
        if self.error is not None:
            raise self.error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
