"""Giving freed memory back to the operating system: a bounded allocator, and trimming between a recording's chunks."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


def release_free_memory() -> None:
    """Return the C allocator's free pages to the operating system (glibc's malloc_trim); a no-op elsewhere.

    Encoding a chunk allocates and frees many tensors of a few MB. glibc serves them from its heap rather than
    from fresh mappings once a few larger blocks have been freed, and keeps the freed pages, so without this the
    resident memory of a long recording grows chunk after chunk although the data held does not (measured by
    benchmarks/memory.py).
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):  # not glibc (macOS, musl): nothing to trim
        libc.malloc_trim(0)


# glibc's mallopt parameter that fixes the size from which a block gets a mapping of its own (M_MMAP_THRESHOLD), and
# the value set: blocks of 256 KiB and more (a chunk's audio, mel, states, crops, activations) are mapped and given
# back to the operating system when freed, instead of glibc raising the threshold after the first large frees and
# serving later large blocks from a heap that then only grows (its dynamic threshold, up to 32 MiB on 64-bit).
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024


def bound_allocator() -> None:
    """Fix glibc's mmap threshold (see MMAP_THRESHOLD_BYTES) for this process; a no-op where libc is not glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None
