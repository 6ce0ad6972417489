"""The few C library calls Python's `os` module lacks, bound once with ctypes.

Each name is None where the C library has no such function (not Linux/glibc); every caller keeps a portable
fallback. A call returns the C result; `check` turns -1 into OSError from errno.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

__all__ = [
    "UTIME_OMIT",
    "Timespec",
    "check",
    "linkat",
    "malloc_trim",
    "mallopt",
    "sync_file_range",
    "syncfs",
    "utimensat",
]

AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
SYNC_FILE_RANGE_WRITE = 2
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
UTIME_OMIT = (1 << 30) - 2

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _bind(name: str, argtypes: list[Any]) -> Any:
    func = getattr(_LIBC, name, None) if _LIBC is not None else None
    if func is not None:
        func.argtypes = argtypes
        func.restype = ctypes.c_int
    return func


def check(result: int, what: str, *paths: str) -> None:
    """Raise OSError (with errno) if a libc call failed."""
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", *paths)


#: start (not wait for) writeback of a byte range: a large upload's final fsync then finds little left
sync_file_range = _bind(
    "sync_file_range", [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
)
#: make one filesystem durable (the journal retires segments with it)
syncfs = _bind("syncfs", [ctypes.c_int])
#: name an O_TMPFILE file through /proc/self/fd (os.link calls plain link(), which does not follow it)
linkat = _bind("linkat", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int])
#: hand freed heap memory back to the OS
malloc_trim = _bind("malloc_trim", [ctypes.c_size_t])
#: tune glibc malloc (returns 1 on success)
mallopt = _bind("mallopt", [ctypes.c_int, ctypes.c_int])
#: set one timestamp of a file and leave the other (UTIME_OMIT), by path: os.utime must set both. Linux
#: only: UTIME_OMIT and AT_FDCWD above are Linux's values (BSDs and macOS differ).
utimensat = (
    _bind("utimensat", [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec), ctypes.c_int])
    if sys.platform.startswith("linux")
    else None
)
