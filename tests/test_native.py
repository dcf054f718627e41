"""The fused CPU kernels (qffs/snn/native.c) against the PyTorch definitions, bit for bit, and their fallbacks.

The property tests of invariant E compare the per-step runtime (these kernels) with the
layer-by-layer one (the PyTorch definitions) on random graphs; here each kernel is checked
alone, on edge values and at sizes split across threads.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qffs.snn import convert, native
from qffs.snn.allocator import keep_freed_memory
from qffs.snn.dynamics import if_step
from qffs.snn.pooling import BoundPool, EventMaxPool, max_pool2d_window
from qffs.snn.spiking import Clock
from tests.conftest import calibrated_shipped_qann

CLOCK = Clock(input_window=1)

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler: the PyTorch path is tested elsewhere")


def _edge_currents(shape, dtype, threshold: float, generator: torch.Generator) -> torch.Tensor:
    """Random currents, a quarter of them exactly 0 and some landing the membrane exactly on θ or on 0."""
    current = torch.randn(shape, dtype=dtype, generator=generator) * threshold
    current[torch.rand(shape, generator=generator) < 0.25] = 0.0
    current.view(-1)[::97] = threshold / 2         # θ/2 + θ/2 = θ exactly from the pre-charge
    current.view(-1)[1::89] = -threshold / 2       # θ/2 − θ/2 = 0 exactly
    current.view(-1)[2::83] = -0.0
    return current


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("negative_spikes", [True, False])
@pytest.mark.parametrize("rows", [3, 300])           # 300 x 500 elements: split across threads
def test_if_step_equals_the_pytorch_definition_bit_for_bit(dtype, negative_spikes, rows):
    g = torch.Generator().manual_seed(rows)
    shape, theta, z_max = (rows, 20, 25), 0.7, 3
    threshold = torch.tensor(theta, dtype=dtype)
    u_ref = torch.full(shape, theta / 2, dtype=dtype)
    z_ref = torch.zeros(shape, dtype=torch.int8)
    u, z = u_ref.clone(), z_ref.clone()
    for _ in range(12):
        current = _edge_currents(shape, dtype, theta, g)
        ref = if_step(u_ref, z_ref, current, threshold, z_max, negative_spikes)
        out, pos, neg = native.if_step(u, z, current, theta, z_max, negative_spikes)
        assert torch.equal(out, ref.output) and torch.equal(u, u_ref) and torch.equal(z, z_ref)
        assert torch.equal(pos, ref.fire.flatten(1).sum(1, dtype=torch.int32))
        expected_neg = ref.unfire.flatten(1).sum(1, dtype=torch.int32) if negative_spikes else torch.zeros_like(neg)
        assert torch.equal(neg, expected_neg)
    assert int(z_ref.max()) == z_max                      # the bound was reached, and held


WINDOWS = [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=1, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
           nn.MaxPool2d(2, dilation=2), nn.MaxPool2d((2, 3), stride=(1, 2)),
           BoundPool(F.max_pool2d, (2,), {}), BoundPool(F.max_pool2d, (3, 2, 1), {})]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pool", WINDOWS, ids=lambda p: repr(p) if isinstance(p, nn.Module) else f"F{p.args}")
@pytest.mark.parametrize("size", [(4, 3, 7, 9), (64, 16, 12, 12)])
def test_event_max_pooling_equals_the_pytorch_path(dtype, pool, size):
    g = torch.Generator().manual_seed(0)
    fused, plain = EventMaxPool(pool), EventMaxPool(pool)
    assert fused.window is not None
    plain.window = None                                    # the PyTorch path
    fused_state = plain_state = None
    for step in range(6):
        events = torch.randint(-1, 2, size, generator=g).to(dtype) * 0.5
        if step == 3:
            events[0, 0, 1, 1] = float("nan")              # NaN wins, as in max_pool2d
        a, fused_state, _ = fused.step(events, fused_state, CLOCK)
        b, plain_state, _ = plain.step(events, plain_state, CLOCK)
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    for x, y in zip(fused_state, plain_state, strict=True):      # cumulative input and pooled maximum
        assert torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0))


def test_only_plain_2d_max_pools_take_the_fused_kernel():
    assert max_pool2d_window(nn.MaxPool2d(2)) == native.PoolWindow((2, 2), (2, 2), (0, 0), (1, 1))
    assert max_pool2d_window(BoundPool(F.max_pool2d, (3,), {"stride": 1, "padding": 1})).stride == (1, 1)
    assert max_pool2d_window(nn.MaxPool2d((2,), stride=(1,))) == native.PoolWindow((2, 2), (1, 1), (0, 0), (1, 1))
    for other in (nn.MaxPool2d(2, ceil_mode=True), nn.AdaptiveMaxPool2d(2), nn.MaxPool1d(2),
                  nn.MaxPool2d(2, padding=2),         # max_pool2d refuses it, and must say so itself
                  BoundPool(F.adaptive_max_pool2d, (2,), {}), BoundPool(F.max_pool2d, (2,), {"ceil_mode": True})):
        assert max_pool2d_window(other) is None, other


def test_a_pool_given_another_dtype_or_a_too_small_input_takes_the_pytorch_path():
    fused, plain = EventMaxPool(nn.MaxPool2d(2)), EventMaxPool(nn.MaxPool2d(2))
    plain.window = None
    for dtype in (torch.float32, torch.float64, torch.float16):
        events = torch.randn(2, 3, 6, 6).to(dtype)
        fused_state = plain_state = None
        for _ in range(2):
            out, fused_state, _ = fused.step(events, fused_state, CLOCK)
            expected, plain_state, _ = plain.step(events, plain_state, CLOCK)
            assert torch.equal(out, expected) and out.dtype == dtype
    with pytest.raises(RuntimeError):                  # PyTorch's own error for a 1x1 input
        fused.step(torch.ones(2, 3, 1, 1), None, CLOCK)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_any_per_row_finds_the_last_element_and_nan_and_ignores_negative_zero(dtype):
    x = torch.zeros(6, 200, dtype=dtype)
    x[1, -1] = 1e-30
    x[2, 0] = -3.0
    x[3, 100] = float("nan")
    x[4] = -0.0
    assert native.any_per_row(x).tolist() == [False, True, True, True, False, False]


def test_the_shipped_network_runs_identically_with_and_without_the_kernels(shipped, monkeypatch):
    """float32, 64 test images: every readout, count and statistic equal between the two paths."""
    qann, x = shipped
    snn = convert(qann)
    fused = snn.simulate(x, 10, record_counts=True)
    monkeypatch.setenv("QFFS_NATIVE", "0")
    native.library.cache_clear()
    try:
        assert not native.usable(x)
        plain = snn.simulate(x, 10, record_counts=True)
    finally:
        monkeypatch.delenv("QFFS_NATIVE")
        native.library.cache_clear()
    for name in fused.readouts:
        assert torch.equal(fused.readouts[name], plain.readouts[name]), name
    assert torch.equal(fused.convergence_step, plain.convergence_step)
    for a, b in zip(fused.neurons, plain.neurons, strict=True):
        assert torch.equal(a.counts, b.counts) and torch.equal(a.pos_spikes, b.pos_spikes), a.name
        assert torch.equal(a.neg_spikes, b.neg_spikes), a.name
    for a, b in zip(fused.synapses, plain.synapses, strict=True):
        assert torch.equal(a.synops, b.synops) and torch.equal(a.active_slices, b.active_slices), a.name


@pytest.fixture(scope="module")
def shipped():
    from qffs.data import load_dataset

    images = torch.stack([load_dataset("fashion-mnist", "test", limit=64)[i][0] for i in range(64)])
    return calibrated_shipped_qann(256), images


def test_a_failing_compiler_warns_once_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("QFFS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="fused CPU kernels are unavailable"):
            assert native.library() is None
        assert not native.usable(torch.zeros(2, 3))
        assert list(tmp_path.iterdir()) == []              # nothing half-written left behind
    finally:
        monkeypatch.undo()
        native.library.cache_clear()


def test_the_library_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QFFS_CACHE_DIR", str(tmp_path))
    native.library.cache_clear()
    try:
        assert native.library() is not None
        built, recorded = sorted(tmp_path.iterdir())          # the library and its SHA-256, nothing else
        assert recorded.name == f"{built.name}.sha256"
        stamp = built.stat().st_mtime_ns
        native.library.cache_clear()
        assert native.library() is not None and built.stat().st_mtime_ns == stamp
    finally:
        monkeypatch.undo()
        native.library.cache_clear()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keeping_freed_memory_removes_the_page_faults_of_reallocation():
    """A step's worth of 12 MB tensors, allocated and freed 10 times: by default malloc returns the
    freed heap top to the system and faults it in again every time; kept, it is reused."""
    script = textwrap.dedent("""
        import resource, torch
        from qffs.snn.allocator import keep_freed_memory

        def faults():
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                step = [torch.empty(3 << 20).fill_(1.0) for _ in range(8)]
                del step
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

        before = faults()
        assert keep_freed_memory()
        faults()
        print(before, faults())
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after = map(int, run.stdout.split())
    # 3,072 pages per tensor: by default at least some rounds fault anew (52,000-245,000 seen)
    assert before > 20_000 and after < before / 20, (before, after)


def test_qffs_malloc_0_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("QFFS_MALLOC", "0")
    assert keep_freed_memory.__wrapped__() is False


@pytest.mark.parametrize("home", ["unwritable", "missing"])
def test_without_a_writable_cache_the_kernels_build_in_a_fresh_private_folder(tmp_path, monkeypatch, home):
    if home == "unwritable":
        blocked = tmp_path / "file"
        blocked.write_text("not a folder")
        monkeypatch.setenv("QFFS_CACHE_DIR", str(blocked / "cache"))
    else:                                              # no $HOME and no passwd entry: Path.home() raises
        import qffs.cache

        monkeypatch.setattr(qffs.cache, "cache_dir", lambda: (_ for _ in ()).throw(RuntimeError("no home")))
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    native.library.cache_clear()
    try:
        assert native.library() is not None
        (private,) = (tmp_path / "tmp").glob("qffs-native-*")
        assert private.stat().st_mode & 0o077 == 0 and list(private.glob("qffs_native_*"))
    finally:
        monkeypatch.undo()
        native.library.cache_clear()


PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(getenv("QFFS_PLANTED_MARK"), "w");
    if (f) { fputs("ran", f); fclose(f); }
}
"""

_LOAD = "from qffs.snn import native; lib = native.library(); print(lib._name if lib is not None else 'none')"


def _load_in_a_fresh_process(tmp_path, cache, umask=None):
    env = {**os.environ, "QFFS_CACHE_DIR": str(cache), "QFFS_PLANTED_MARK": str(tmp_path / "mark"),
           "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    code = (f"import os; os.umask({umask:#o}); " if umask is not None else "") + _LOAD
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    return Path(run.stdout.strip())


@pytest.mark.parametrize("shared_by", ["our folder, open to everyone (777)", "another user's folder"])
def test_a_library_planted_in_a_shared_cache_is_neither_loaded_nor_run(tmp_path, shared_by):
    compiler = native._compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    if os.getuid() != 0:
        pytest.skip("planting files as another user needs root")
    cache = tmp_path / "cache"
    cache.mkdir()
    name = native.library_name(compiler)       # the name is predictable: an attacker knows it
    (tmp_path / "planted.c").write_text(PLANTED)
    subprocess.run([compiler, "-shared", "-fPIC", str(tmp_path / "planted.c"), "-o", str(cache / name)], check=True)
    (cache / f"{name}.sha256").write_text(hashlib.sha256((cache / name).read_bytes()).hexdigest())  # a forged stamp too
    for path in (cache / name, cache / f"{name}.sha256"):
        os.chown(path, 65534, 65534)            # planted by another user (uid 65534)
    if shared_by.startswith("another"):
        os.chown(cache, 65534, 65534)
        cache.chmod(0o755)
    else:
        cache.chmod(0o777)
    loaded = _load_in_a_fresh_process(tmp_path, cache)
    assert not (tmp_path / "mark").exists(), "the planted library's constructor ran"
    if shared_by.startswith("another"):        # not ours: built privately instead
        assert loaded.parent != cache and loaded.parent.parent == tmp_path / "tmp"
    else:                                      # ours: made private again, the planted file replaced by a build
        assert loaded.parent == cache and cache.stat().st_mode & 0o777 == 0o700
        assert loaded.stat().st_uid == os.getuid()


def test_the_cache_is_private_whatever_the_umask_and_a_tampered_library_is_rebuilt(tmp_path):
    if native._compiler() is None:
        pytest.skip("no C compiler")
    cache = tmp_path / "new" / "cache"
    loaded = _load_in_a_fresh_process(tmp_path, cache, umask=0)
    assert loaded.parent == cache
    assert all(p.stat().st_mode & 0o777 == 0o700 for p in (cache, cache.parent))
    assert loaded.read_bytes() and (cache / f"{loaded.name}.sha256").is_file()
    (tmp_path / "planted.c").write_text(PLANTED)        # the same user's file, replaced behind qffs' back
    subprocess.run([native._compiler(), "-shared", "-fPIC", str(tmp_path / "planted.c"), "-o", str(loaded)], check=True)
    again = _load_in_a_fresh_process(tmp_path, cache)
    assert again == loaded and not (tmp_path / "mark").exists()   # the hash did not match: rebuilt, not loaded


def test_under_umask_002_the_cached_library_is_reused(tmp_path):
    if native._compiler() is None:
        pytest.skip("no C compiler")
    cache = tmp_path / "cache"
    first = _load_in_a_fresh_process(tmp_path, cache, umask=0o002)
    built = first.stat().st_mtime_ns
    assert first.parent == cache and first.stat().st_mode & 0o077 == 0
    again = _load_in_a_fresh_process(tmp_path, cache, umask=0o002)
    assert again == first and again.stat().st_mtime_ns == built     # verified, not rebuilt
