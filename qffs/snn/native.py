"""Fused CPU kernels for the per-step runtime (``native.c``), compiled on first use and loaded with ctypes.

Why: an eager PyTorch IF step is about a dozen passes over memory (add, three comparisons, two
logical ands, casts, a product, two updates, a reduction), and event max pooling four; on a
CPU these passes, not the convolutions, were most of a simulation's time. The C kernels make
one pass each, with the arithmetic of :mod:`qffs.snn.dynamics` operation for operation, so the
results are bit-identical (tests/test_native.py; the property tests compare this path with the
layer-by-layer one, which uses the PyTorch definitions).

The source is compiled with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) into
qffs' cache (:mod:`qffs.cache`: ``$QFFS_CACHE_DIR``, else ``~/.cache/qffs``), once per source
version, in about a second. A cached library is loaded only if the folder and the file are this
user's alone and the file's SHA-256 is the one qffs recorded when it built it; otherwise, and
where the cache cannot be written, the kernels are built into a private temporary folder per process.
Where there is no compiler, on CUDA, for tensors the kernels do not take, or with
``QFFS_NATIVE=0``, the runtime uses the PyTorch definitions: the same results, slower.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from qffs import settings
from qffs.cache import cache_dir, private_cache, publish, verified

SOURCE = Path(__file__).with_name("native.c")
#: No fast-math and no contraction into fused multiply–adds: the kernels must round as PyTorch does.
FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off")
#: The kernels split rows across OpenMP threads. Loaded after PyTorch, the library binds to the
#: OpenMP runtime PyTorch already loaded (the same ``libgomp.so.1``), so kernels and convolutions
#: share one thread team instead of two teams spinning against each other. Without OpenMP
#: (a compiler that lacks it) they run on one thread.
OPENMP = ("-fopenmp",)

_FLOATS = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}


def _compiler() -> str | None:
    for name in (settings.c_compiler(), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def library_name(compiler: str) -> str:
    """The compiled library's file name: it changes with the source, the compiler, the flags and the machine."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((compiler, *FLAGS, platform.machine())).encode()).hexdigest()[:16]
    return f"qffs_native_{key}{'.dll' if os.name == 'nt' else '.so'}"


def _build(compiler: str) -> Path:
    """The kernels' library: the cached one if qffs built it (:func:`qffs.cache.verified`), else compiled now,
    atomically (a half-written library is never loaded), with OpenMP where the compiler has it,
    and its hash recorded. The cache is used only if it is this user's alone; otherwise (someone
    else's or a shared folder, a read-only or missing home) the library goes into a fresh private
    temporary folder, removed at exit."""
    name = library_name(compiler)
    folder = private_cache()
    if folder is not None and verified(folder / name):
        return folder / name
    try:
        if folder is None:
            raise OSError("no private cache")
        fd, partial = tempfile.mkstemp(dir=folder, prefix=Path(name).stem, suffix=".part")
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="qffs-native-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        fd, partial = tempfile.mkstemp(dir=folder, prefix=Path(name).stem, suffix=".part")
    target = folder / name
    os.close(fd)
    try:
        for extra in (OPENMP, ()):
            run = subprocess.run([compiler, *FLAGS, *extra, str(SOURCE), "-o", partial, "-lm"], capture_output=True,
                                 text=True, timeout=300)
            if run.returncode == 0:
                break
        else:
            raise OSError(f"{Path(compiler).name} failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
        publish(Path(partial), target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (disabled with ``QFFS_NATIVE=0``, or no compiler: warned once)."""
    if not settings.native_kernels():
        return None
    compiler = _compiler()
    try:
        if compiler is None:
            raise OSError("no C compiler found (set CC)")
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"qffs: the fused CPU kernels are unavailable ({error}); the spiking runtime uses PyTorch "
                      f"operations instead (same results, 1.5 to 2 times slower)", RuntimeWarning, stacklevel=2)
        return None
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    for suffix, real in _FLOATS.values():
        getattr(lib, f"qffs_if_step_{suffix}").argtypes = [ptr] * 6 + [i64] * 2 + [real, i32, i32]
        getattr(lib, f"qffs_event_pool_{suffix}").argtypes = [ptr] * 4 + [i64] * 13
        getattr(lib, f"qffs_any_rows_{suffix}").argtypes = [ptr] * 2 + [i64] * 2
    return lib


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels take these tensors: on the CPU, contiguous, all of one float type
    (float32 or float64), and the kernels loaded. (They read raw memory: anything else would be
    read wrongly, so it takes the PyTorch path.)"""
    dtype = tensors[0].dtype
    return (dtype in _FLOATS and all(t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() for t in tensors)
            and library() is not None)


def _call(kernel: str, dtype: torch.dtype, *args) -> None:
    getattr(library(), f"qffs_{kernel}_{_FLOATS[dtype][0]}")(*args)


def if_step(membrane: torch.Tensor, count: torch.Tensor, current: torch.Tensor, threshold: float, z_max: int,
            negative_spikes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`qffs.snn.dynamics.if_step` fused (``membrane`` and the int8 ``count`` updated in place):
    (output z·θ, positive spikes per row, negative spikes per row; [B] int32)."""
    rows = membrane.shape[0]
    per_row = membrane[0].numel() if rows else 0
    out = torch.empty_like(membrane)
    pos = torch.empty(rows, dtype=torch.int32)
    neg = torch.empty(rows, dtype=torch.int32)
    if rows:
        _call("if_step", membrane.dtype, membrane.data_ptr(), count.data_ptr(), current.data_ptr(), out.data_ptr(),
              pos.data_ptr(), neg.data_ptr(), rows, per_row, _FLOATS[membrane.dtype][1](threshold),
              z_max, int(negative_spikes))
    return out, pos, neg


def any_per_row(x: torch.Tensor) -> torch.Tensor:
    """Per row (first dim): is any element nonzero (NaN counts)? A row stops at its first nonzero value."""
    rows = x.shape[0]
    per_row = x[0].numel() if rows else 0
    found = torch.empty(rows, dtype=torch.bool)
    if rows:
        _call("any_rows", x.dtype, x.data_ptr(), found.data_ptr(), rows, per_row)
    return found


@dataclass(frozen=True)
class PoolWindow:
    """A 2-D max pool's window (torch's ``max_pool2d`` with ``ceil_mode=False``)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1        # type: ignore[return-value]
                     for n, k, s, p, d in zip((height, width), self.kernel, self.stride, self.padding,
                                              self.dilation))


def event_pool_step(cumulative: torch.Tensor, events: torch.Tensor, pooled: torch.Tensor,
                    window: PoolWindow) -> torch.Tensor:
    """One step of event max pooling over [B, C, H, W] (SPEC §4), ``cumulative`` and ``pooled``
    updated in place: C += events; M = maxpool(C); returns M − pooled, then pooled = M."""
    planes = cumulative.shape[0] * cumulative.shape[1]
    height, width = cumulative.shape[2:]
    out = torch.empty_like(pooled)
    if planes:
        _call("event_pool", cumulative.dtype, cumulative.data_ptr(), events.data_ptr(), pooled.data_ptr(),
              out.data_ptr(), planes, height, width, *pooled.shape[2:], *window.kernel, *window.stride,
              *window.padding, *window.dilation)
    return out


__all__ = ["PoolWindow", "any_per_row", "cache_dir", "event_pool_step", "if_step", "library", "usable"]
