"""qffs installs anywhere: a wheel (not an editable checkout) runs ``qffs demo`` from any directory,
with the CLI inside the package (``qffs.cli``) and the shipped checkpoint as package data; the
runtime imports without training code, torchvision or rich."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO


def test_the_runtime_imports_without_training_code_torchvision_or_rich():
    code = ("import sys, qffs.snn; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torchvision', 'rich', 'typer', 'matplotlib', 'onnx', 'onnxruntime') or m in "
            "('qffs.train', 'qffs.jobs.quantize', 'qffs.artifacts', 'qffs.data', 'qffs.evaluate', 'qffs.report')); "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_demo_from_elsewhere(tmp_path):
    source, wheels = tmp_path / "source", tmp_path / "wheels"   # built from a copy: the checkout stays clean, and
    source.mkdir()                                                # no stale build/ of it can leak into the wheel
    for name in ("pyproject.toml", "README.md", "qffs", "cli", "models"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name,
             **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, ...) come from this environment, as plain paths: none of its .pth
    # hooks run, so the editable checkout of qffs is invisible to the new venv
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("qffs-*.whl"))
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index",
                        str(wheel)], capture_output=True, text=True)   # no index: dependencies must be met already
    assert r.returncode == 0, r.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([python, "-c", "import qffs, qffs.cli.main; print(qffs.__file__)"], cwd=work,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where                  # the installed copy, not the checkout
    r = subprocess.run([venv / "bin" / "qffs", "demo", "--limit", "512", "--test-limit", "256", "--epochs", "1",
                        "-T", "4"], cwd=work, capture_output=True, text=True, timeout=900,
                       env={"PATH": "/usr/bin:/bin", "QFFS_PROGRESS": "0", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert (work / "runs" / "demo" / "curve.png").is_file() and (work / "runs" / "demo" / "snn.pt").is_file()
    assert "done in" in r.stdout
    # the kernels' C source ships in the wheel: built into the user's cache, no fallback warning
    # (where this machine has a C compiler; without one the fallback is the expected path)
    from qffs.snn import native

    if native.library() is not None:
        assert list((tmp_path / ".cache" / "qffs").glob("qffs_native_*")) and "kernels are unavailable" not in r.stderr
