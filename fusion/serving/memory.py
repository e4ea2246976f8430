"""Giving freed memory back to the operating system between the chunks of a long recording."""

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
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None
