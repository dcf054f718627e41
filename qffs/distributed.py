"""Several processes under ``torchrun``: one process group, exact reductions, rank 0 writes.

Everything qffs does across processes goes through here: joining the group (gloo on CPU,
nccl on GPU), sharding a test set exactly (no sample dropped or repeated, unlike
``DistributedSampler``'s padding), summing counts across ranks (sums of counts in float64,
never averages of averages), broadcasting calibrated step sizes from rank 0, and checking
that every rank holds the same weights after training. Without torchrun (WORLD_SIZE unset or
1) every function is the single-process identity.
"""

from __future__ import annotations

import atexit
import hashlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from qffs import settings


def init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); idempotent."""
    if settings.torchrun_world_size() <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # leave the group before the interpreter tears down: gloo's threads still running at
        # static destruction abort the process ("terminate called without an active exception",
        # seen once in CI after a successful evaluate)
        atexit.register(_leave)
    if torch.cuda.is_available():
        torch.cuda.set_device(settings.torchrun_local_rank() or 0)
    return True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """A job that ended well on every rank: all ranks meet, then leave the group together. A rank
    that leaves while the others still run (rank 0 writes the outputs last) can abort at exit
    ("terminate called without an active exception"); a failing rank leaves at once (atexit)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    """Is this process one of several in an initialised group?"""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: the group's once joined, torchrun's RANK before (0 alone)."""
    return dist.get_rank() if active() else settings.torchrun_rank()


def world_size() -> int:
    """Processes that share the job (1 without torchrun): what every JSON report records."""
    if active():
        return dist.get_world_size()
    return max(settings.torchrun_world_size(), 1)


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that prints tables and writes files."""
    return rank() == 0


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Element-wise sum over ranks, in float64 (exact for counts up to 2^53); the input unchanged alone."""
    t = torch.as_tensor(values, dtype=torch.float64).clone()
    if active():
        t = t.to(_device())
        dist.all_reduce(t)
    return t.cpu()


def broadcast_module(module: nn.Module, *, buffers_only: bool = False) -> None:
    """Overwrite every parameter and buffer with rank 0's (after calibration: one set of step
    sizes). ``buffers_only``: after a training epoch, BatchNorm's running statistics, which each
    rank updated on its own shard (DDP keeps the parameters equal, not these)."""
    if not active():
        return
    for tensor in [*([] if buffers_only else module.parameters()), *module.buffers()]:
        data = tensor.data.to(_device())
        dist.broadcast(data, 0)
        tensor.data.copy_(data)


def replicas_identical(module: nn.Module) -> bool:
    """Do all ranks hold bit-identical parameters and buffers? (True alone.) Collective: call on every rank."""
    if not active():
        return True
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    mine = torch.tensor(list(digest.digest()), dtype=torch.float64)
    low, high = mine.clone(), mine.clone()
    low, high = low.to(_device()), high.to(_device())
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def barrier() -> None:
    """Wait for every rank (rank 0 has written what the others read next)."""
    if active():
        dist.barrier()


def main_only(log: Callable[..., None]) -> Callable[..., None]:
    """``log`` on rank 0, silence elsewhere: one copy of each progress line per job (decided per call)."""
    def logged(*args, **kwargs) -> None:
        if is_main_process():
            log(*args, **kwargs)
    return logged


class ShardSampler(Sampler[int]):
    """Rank r of W takes samples r, r + W, r + 2W, …: every sample exactly once over all ranks,
    in the dataset's order within a rank (evaluation: exact counts, no padding)."""

    def __init__(self, length: int, rank: int, world: int):
        self.indices = range(rank, length, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


__all__ = ["ShardSampler", "active", "all_reduce_sum", "barrier", "broadcast_module", "finish", "init_distributed",
           "is_main_process", "main_only", "rank", "replicas_identical", "world_size"]
