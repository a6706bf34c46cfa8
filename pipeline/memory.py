"""Give freed heap memory back to the operating system during long runs.

glibc's malloc keeps pages that were freed inside its heaps and reuses them
later; a live run whose queues fill and drain under a burst of load (more
frames in flight for a while) is left holding the high-water mark of that burst
as resident memory, which an operator reads as growth. ``malloc_trim(0)``
returns the free pages. Elsewhere (musl, macOS) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
    return libc


def heap_in_use_mib() -> float | None:
    """Bytes malloc has handed out and not got back (all arenas plus mmapped blocks), in MiB; None
    where the C library cannot say (not glibc >= 2.33). Resident memory minus this is mostly code,
    shared libraries and pages the allocator keeps."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def release_free_heap() -> bool:
    """Return freed heap pages to the OS; True where the C library can (glibc)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
