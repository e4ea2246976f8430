"""Giving freed memory back to the operating system: a bounded allocator, trimming between a recording's chunks, and
reuse of freed blocks where a model frees and allocates the same sizes over and over."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterator


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
# glibc's mallopt parameter for how much free memory at the heap's top is given back at once (M_TRIM_THRESHOLD), and
# glibc's default, which a fixed mmap threshold leaves in place; reusing_freed_blocks raises it with the mmap
# threshold (to twice it, glibc's own rule when it moves the threshold), else a batch's freed top would go back to
# the system before the next batch asks for it again.
M_TRIM_THRESHOLD = -1
TRIM_THRESHOLD_BYTES = 128 * 1024


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


# The mmap threshold inside reusing_freed_blocks: the voice and face experts' activations, a few MB each, are freed
# and allocated again batch after batch; served from the heap they reuse its pages, where as mappings of their own
# every page is faulted in and zeroed afresh. On the 10-minute interview the experts' stage took 9.6 s with it
# against 14.0 s with the bound everywhere (0.93 against 3.2 million page faults), its peak 58 MB higher
# (benchmarks/results/experts_allocator); blocks above it (rare: long batches) are still mapped.
REUSE_THRESHOLD_BYTES = 8 * 1024 * 1024


@contextlib.contextmanager
def reusing_freed_blocks() -> Iterator[None]:
    """Inside: blocks under REUSE_THRESHOLD_BYTES come from the heap and freed ones are reused; on leaving, the
    bound (bound_allocator) is set again and the heap's free pages are given back (release_free_memory)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, REUSE_THRESHOLD_BYTES)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * REUSE_THRESHOLD_BYTES)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        release_free_memory()
