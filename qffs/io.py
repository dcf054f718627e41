"""Checkpoints: load anything people have, write one self-describing format, atomically.

Reading accepts ``.pt/.pth/.th`` (``torch.load(weights_only=True)`` always: a file that needs
arbitrary pickled objects is refused) and ``.safetensors``; a plain state dict or a dict with a
``state_dict``/``model``/``net`` entry; ``module.`` prefixes (DataParallel/DDP) are stripped.

Every file qffs writes holds the state dict plus a ``qffs`` metadata dict that says how to
rebuild the model (its spec string), the dataset, metrics and the qffs version, and is written
to a temporary file first and renamed into place: a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import pickle
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qffs.errors import QffsError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".safetensors")
_NESTED_KEYS = ("state_dict", "model", "net", "model_state_dict")


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors plus the qffs metadata (empty for foreign files)."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def kind(self) -> str:
        """"fp", "qann", "snn", or "foreign" for a file qffs did not write."""
        return str(self.meta.get("kind", "foreign"))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file atomically (reports, JSON, CSV)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("qffs"), Mapping):
        meta = dict(obj["qffs"])
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            raise QffsError(
                f"{path}: no state dict found (top-level keys: {', '.join(map(str, list(obj)[:8]))}); "
                f"expected tensors or one of the keys {', '.join(_NESTED_KEYS)}"
            )
    if not isinstance(obj, Mapping):
        raise QffsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return _strip_prefix(tensors), meta


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint file safely (see the module docstring)."""
    file = Path(path)
    if not file.is_file():
        raise QffsError(f"checkpoint not found: {file}")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt", device=str(map_location)) as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
                raw_meta = f.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise QffsError(f"{file}: not a readable safetensors file ({exc})") from exc
        meta = json.loads(raw_meta["qffs"]) if "qffs" in raw_meta else {}
        return Checkpoint(_strip_prefix(tensors), meta, file)
    try:
        obj = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise QffsError(
            f"refusing to load {file}: it contains pickled Python objects beyond tensors "
            "(torch.load weights_only=True). Re-save it as a plain state dict "
            "(torch.save(model.state_dict(), path)) in a trusted session."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise QffsError(f"{file}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})") from exc
    state_dict, meta = _unwrap(obj, file)
    return Checkpoint(state_dict, meta, file)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """``model.load_state_dict(strict=True)`` with an error that names what does not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]

    def _few(keys: list[str]) -> str:
        more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
        return ", ".join(keys[:5]) + more

    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_few(shapes)}")
    if problems:
        raise QffsError(f"{source} does not match the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
    return model


def load_model(path: str | Path, spec: str | None = None) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a full-precision model from a checkpoint (its recorded spec, or ``spec``)."""
    from qffs.models import build_model

    ckpt = load_checkpoint(path)
    spec = spec or ckpt.meta.get("model")
    if not spec:
        raise QffsError(f"{path} does not record its model: pass the model spec (e.g. --model resnet20)")
    if ckpt.kind not in ("fp", "foreign"):
        raise QffsError(f"{path} is a {ckpt.kind} checkpoint, not a full-precision model")
    model = build_model(spec)
    load_into(model, ckpt.state_dict, source=str(path))
    return model, ckpt


def _plain(value: Any) -> Any:
    """Metadata must survive ``weights_only`` loading and JSON: keep plain types only."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if value is None or isinstance(value, bool):
        return value
    for plain in (int, float, str):  # exact types: str/int subclasses would not unpickle safely
        if isinstance(value, plain):
            return plain(value)
    return str(value)


def save_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], *, kind: str,
                    model: str, **meta: Any) -> Path:
    """Write ``state_dict`` with qffs metadata, atomically; format from the suffix.

    ``kind`` is "fp", "qann" or "snn"; ``model`` the spec string that rebuilds the network.
    """
    from qffs import __version__

    file = Path(path)
    if file.suffix not in CHECKPOINT_SUFFIXES:
        raise QffsError(f"unsupported checkpoint suffix {file.suffix!r}; use one of {CHECKPOINT_SUFFIXES}")
    info = _plain({
        "format": "qffs-checkpoint", "kind": kind, "model": model, "qffs_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **meta,
    })
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(file) as tmp:
        if file.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata={"qffs": json.dumps(info)})
        else:
            torch.save({"state_dict": tensors, "qffs": info}, tmp)
    return file


__all__ = ["Checkpoint", "atomic_path", "load_checkpoint", "load_into", "load_model", "save_checkpoint",
           "write_text_atomic"]
