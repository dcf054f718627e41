"""Unpickling that runs no code: the one allow-list of globals that carry only data.

Every unpickling qffs does goes through here: checkpoints (``torch.load(weights_only=True)`` with
:func:`torch_safe_globals` added, :mod:`qffs.io`) and CIFAR-10's python batches
(:class:`PlainDataUnpickler`, :mod:`qffs.data`). A file that asks for any other global could run
code, so it is refused, and :func:`unsafe_globals_named` says what it asked for.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import functools
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch


@functools.cache
def plain_data_globals() -> dict[str, Any]:
    """The pickled globals that carry only data, by dotted name: what training scripts save beside
    the weights (``argparse.Namespace``, numpy scalars, arrays, dtypes). numpy's reconstructors are
    listed under their numpy 1.x names too (``numpy.core``): most downloaded files predate numpy 2.
    The one allow-list for every unpickling qffs does (checkpoints, CIFAR-10 batches)."""
    core = getattr(np, "_core", None) or np.core
    allowed: dict[str, Any] = {"argparse.Namespace": argparse.Namespace, "numpy.ndarray": np.ndarray,
                               "numpy.dtype": np.dtype,
                               "_codecs.encode": codecs.encode}   # how protocol 2 pickles bytes in Python 3
    for fn, module in ((core.multiarray.scalar, "multiarray"), (core.multiarray._reconstruct, "multiarray"),
                       (core.numeric._frombuffer, "numeric")):   # _frombuffer: arrays pickled with protocol 5
        for package in ("numpy.core", "numpy._core"):
            allowed[f"{package}.{module}.{fn.__name__}"] = fn
    for name in dir(np.dtypes):
        if name.endswith("DType") and name != "ObjectDType":
            allowed[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return allowed


def torch_safe_globals() -> list[Any]:
    """:func:`plain_data_globals` in the form ``torch.serialization.safe_globals`` takes."""
    return [(obj, name) for name, obj in plain_data_globals().items()]


def unsafe_globals_named(file: Path) -> str:
    """`` (a.B, c.D, … (+N more))``: the globals beyond plain data a checkpoint asks for, for a
    refusal's message; "" when torch cannot tell."""
    with contextlib.suppress(Exception):
        names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
        names = [n for n in names if n not in plain_data_globals()]
        if names:
            more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
            return f" ({', '.join(names[:4])}{more})"
    return ""


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles plain data only (containers, numbers, bytes, numpy arrays; the allow-list of
    :func:`plain_data_globals`): a file in a dataset's place that asks for anything else could run
    code, so it is refused."""

    def find_class(self, module: str, name: str):
        found = plain_data_globals().get(f"{module}.{name}")
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not plain data")
        return found


__all__ = ["PlainDataUnpickler", "plain_data_globals", "torch_safe_globals", "unsafe_globals_named"]
