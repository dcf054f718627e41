"""How many samples one simulation takes at once: a memory budget over a per-sample footprint.

A simulation keeps every neuron's membrane and count and every pool's cumulative input per
sample, and (layer by layer) each layer's activations for all T steps at once. A batch whose
estimated footprint exceeds the budget is simulated in chunks of samples; results are the same.
The budget is ``--memory`` (e.g. ``4GB``, ``512MiB``) or, by default, half the memory free on
the simulating device when the simulation starts.
"""

from __future__ import annotations

import os
import re

import torch

from qffs.errors import QffsError

#: The default budget: this fraction of the memory free on the device.
DEFAULT_FRACTION = 0.5

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_memory(value: str | int, option: str = "--memory") -> int:
    """``value`` ("8GB", "512MiB", "1.5g", "100000000") as bytes, or a one-line QffsError."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) * _UNITS[unit] < 1:
        raise QffsError(f"{option} must be an amount of memory such as 4GB, 512MiB or 2000000000 (bytes), "
                        f"got {value!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: CUDA's free memory, else the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):   # not knowable here: no limit but the batch
        return 2**62


def default_budget(device: torch.device) -> int:
    """The budget when none is given: :data:`DEFAULT_FRACTION` of the memory free on ``device``."""
    return int(free_memory(device) * DEFAULT_FRACTION)


def samples_at_once(batch: int, bytes_per_sample: int, budget: int) -> int:
    """How many of ``batch`` samples fit the ``budget`` (at least one: a sample cannot be split)."""
    return max(1, min(batch, budget // max(bytes_per_sample, 1)))


__all__ = ["DEFAULT_FRACTION", "default_budget", "free_memory", "parse_memory", "samples_at_once"]
