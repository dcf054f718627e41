"""Keep freed memory for reuse: a simulation on the CPU allocates and frees the same large tensors every step.

glibc's malloc serves each block above its mmap threshold (128 KiB at first, sliding up to
32 MiB) with a fresh ``mmap`` and returns it on free, so every step's membranes, currents and
spikes are new pages that the kernel must fault in and zero: on the shipped network at T = 8
that was 728,000 page faults per 1,024 images and about a third of the simulation's time,
more than the IF updates themselves. Serving large blocks from the heap too and keeping up to
:data:`RETAIN` bytes of freed memory at its top removes the faults (docs/benchmarks/README.md).
The peak stays about the same, as the same blocks are reused. The price is that the process
keeps its heap: freed blocks below the top are reused by later allocations rather than
returned to the system. jemalloc and tcmalloc, which PyTorch's performance guide recommends
preloading, also keep freed memory for reuse. (Serving only blocks up to glibc's largest mmap
threshold, 32 MiB, from the heap left 70,000 faults per 512 images on the ResNet-20.)

:func:`keep_freed_memory` applies it once per process, when the first simulation runs on the
CPU, and it stays for the process; ``QFFS_MALLOC=0`` leaves malloc as it is. Elsewhere than
glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from qffs import settings

#: Freed memory at the top of the heap that malloc keeps instead of returning it to the system.
RETAIN = 1 << 30

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4     # glibc <malloc.h>


@functools.cache
def keep_freed_memory() -> bool:
    """Serve every block from the heap and keep up to :data:`RETAIN` freed bytes at its top
    (glibc only, once per process); False where nothing was changed."""
    if not settings.malloc_tuning():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = libc.gnu_get_libc_version             # glibc's: mallopt's options below are glibc's
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, RETAIN))


__all__ = ["RETAIN", "keep_freed_memory"]
