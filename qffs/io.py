"""Checkpoints: load anything people have, write one self-describing format, atomically.

Reading accepts what public repositories and older PyTorch releases wrote, without running
code:

- ``.pt/.pth/.th/.tar`` through ``torch.load(weights_only=True)`` always (plus the harmless
  globals training scripts put beside the weights: ``argparse.Namespace``, numpy scalars and
  arrays); a file that needs any other pickled object is refused, naming what it needs;
  ``.safetensors`` through safetensors;
- tensors saved on a GPU load on the CPU (``map_location``);
- a plain state dict, or one nested under ``state_dict``/``model``/``net``/``model_state_dict``/
  ``ema``/``state_dict_ema``/``model_ema`` next to non-tensor entries (epoch, accuracy,
  optimizer state);
- the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes, in any
  combination;
- BatchNorm without ``num_batches_tracked`` (PyTorch < 0.4.1): :func:`load_into` lets
  PyTorch's own ``load_state_dict`` rules decide what is missing, and they back-fill it.

Every file qffs writes holds the state dict plus a ``qffs`` metadata dict that says how to
rebuild the model (its spec string), the dataset and preprocessing, metrics and the qffs
version, and is written to a temporary file first and renamed into place: a crash never
leaves half a file.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qffs._version import __version__
from qffs.errors import QffsError
from qffs.files import atomic_path
from qffs.mismatch import few, mismatch_hint
from qffs.models import build_model
from qffs.trust import authorized_spec, records_model_file
from qffs.unpickle import torch_safe_globals, unsafe_globals_named

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".safetensors")
#: Where training scripts nest the weights, in the order they are looked for.
NESTED_KEYS = ("state_dict", "model", "net", "model_state_dict", "ema", "state_dict_ema", "model_ema")
#: Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors plus the qffs metadata (empty for foreign files).

    ``entry`` says where in the file the weights were found ("" for a plain state dict,
    "state_dict", "model.ema", …); ``stripped`` lists the wrapper prefixes removed.
    """

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    entry: str = ""
    stripped: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """"fp", "qann", "snn", or "foreign" for a file qffs did not write."""
        return str(self.meta.get("kind", "foreign"))


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Remove ``module.``/``_orig_mod.`` while every key carries one; returns (dict, prefixes removed)."""
    out, removed = dict(state_dict), []
    while out:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in out)), None)
        if prefix is None:
            break
        out = {k[len(prefix):]: v for k, v in out.items()}
        removed.append(prefix)
    return out, tuple(removed)


def _find_weights(obj: Any, path: Path, entry: str = "", depth: int = 0) -> tuple[Mapping[str, Any], str]:
    """The mapping that holds the tensors, and the key path that led to it."""
    if not isinstance(obj, Mapping):
        raise QffsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if depth < 3:
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _find_weights(obj[key], path, f"{entry}.{key}".lstrip("."), depth + 1)
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, entry
    keys = ", ".join(map(str, list(obj)[:8])) or "none"
    raise QffsError(f"{path}: no state dict found{f' under {entry!r}' if entry else ''} (keys: {keys}); "
                    f"expected tensors or one of the keys {', '.join(NESTED_KEYS)}")


#: The metadata fields qffs reads back, with the type each must have: a file that says otherwise
#: was altered (or not written by qffs), and is refused by name rather than failing deep inside.
META_TYPES: dict[str, type] = {
    "kind": str, "model": str, "model_file_sha256": str, "dataset": str, "data_root": str, "recipe": str,
    "metrics": dict, "preprocessing": dict, "conversion": dict, "step_sizes": dict, "selection": dict,
    "train_config": dict, "layers": list, "input_shape": list, "bit_schedule": list, "bits": int, "output_bits": int,
    "quant": dict,
}
#: One sample's input may hold at most this many values (a recorded shape is allocated as it is).
MAX_SAMPLE_VALUES = 1 << 26


def _checked_meta(meta: Any, file: Path) -> dict[str, Any]:
    """``meta`` if every field qffs reads has its type and a sane value; else a one-line QffsError."""
    if not isinstance(meta, Mapping):
        raise QffsError(f"{file}: its qffs metadata is a {type(meta).__name__}, not a mapping: the file was altered "
                        "or not written by qffs")
    for key, kind in META_TYPES.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise QffsError(f"{file}: its metadata field {key!r} is a {type(value).__name__}, not a {kind.__name__}: "
                            "the file was altered or not written by qffs")
    shape = meta.get("input_shape")
    if shape is not None:
        if not (1 <= len(shape) <= 4 and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 65536
                                             for d in shape) and math.prod(shape) <= MAX_SAMPLE_VALUES):
            raise QffsError(f"{file}: recorded input_shape {shape} is not a sample's shape (1 to 4 sizes, "
                            f"at most {MAX_SAMPLE_VALUES:,} values): the file was altered")
    return dict(meta)


def _unwrap(obj: Any, path: Path) -> Checkpoint:
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and "qffs" in obj:
        meta = _checked_meta(obj["qffs"], path)
    weights, entry = _find_weights(obj, path)
    # a new dict: PyTorch's per-module version metadata is dropped, so BatchNorm back-fills
    # num_batches_tracked for old checkpoints (see load_into)
    tensors = {str(k): v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    state_dict, stripped = strip_wrapper_prefixes(tensors)
    return Checkpoint(state_dict, meta, path, entry, stripped)


def _not_a_checkpoint(file: Path) -> str | None:
    """What a file that is no checkpoint at all most likely is, or None."""
    with file.open("rb") as fh:
        head = fh.read(64)
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the checkpoint itself: fetch the file (git lfs pull) or download it again"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return "a web page, not a checkpoint: the download saved an HTML page (a login or redirect?)"
    if not zipfile.is_zipfile(file) and not head.startswith(b"\x80"):  # torch.save: a zip, or (< 1.6) a pickle
        return "not a PyTorch checkpoint: neither the zip archive nor the pickle that torch.save writes"
    if zipfile.is_zipfile(file) and _torchscript(file):
        return ("a TorchScript archive (torch.jit.save), which holds code as well as weights: qffs reads weights "
                "only — in a session you trust, re-save its weights: "
                "torch.save(torch.jit.load(path).state_dict(), 'weights.pt'), then pass --model")
    return None


def _torchscript(file: Path) -> bool:
    """Does this zip hold TorchScript code (``code/`` and ``constants.pkl`` entries)?"""
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)


def _load_safetensors(file: Path, map_location: str | torch.device) -> Checkpoint:
    from safetensors import SafetensorError, safe_open  # start-up time: only .safetensors files need it

    try:
        with safe_open(str(file), framework="pt", device=str(map_location)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            raw_meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise QffsError(f"{file}: not a readable safetensors file ({exc})") from exc
    try:
        meta = _checked_meta(json.loads(raw_meta["qffs"]), file) if "qffs" in raw_meta else {}
    except json.JSONDecodeError as exc:
        raise QffsError(f"{file}: its qffs metadata is not JSON ({exc.msg}): the file was altered") from None
    state_dict, stripped = strip_wrapper_prefixes(tensors)
    return Checkpoint(state_dict, meta, file, "", stripped)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint file without running code from it (see the module docstring)."""
    file = Path(path)
    if not file.is_file():
        raise QffsError(f"checkpoint not found: {file}" + (" (a directory)" if file.is_dir() else ""))
    if file.suffix == ".safetensors":
        return _load_safetensors(file, map_location)
    what = _not_a_checkpoint(file)
    if what:
        raise QffsError(f"{file} is {what}")
    try:
        with torch.serialization.safe_globals(torch_safe_globals()):
            obj = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):   # not a pickle at all
            raise QffsError(f"{file}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})") from exc
        raise QffsError(
            f"refusing to load {file}: it contains pickled Python objects beyond tensors{unsafe_globals_named(file)} "
            "(torch.load weights_only=True). Re-save it as a plain state dict "
            "(torch.save(model.state_dict(), path)) in a trusted session."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise QffsError(f"{file}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})") from exc
    return _unwrap(obj, file)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint", *,
              spec: str | None = None) -> nn.Module:
    """Load ``state_dict`` into ``model`` under PyTorch's rules, or say exactly what does not match.

    PyTorch's ``load_state_dict`` decides what is missing (so BatchNorm back-fills the
    ``num_batches_tracked`` that PyTorch < 0.4.1 did not save); anything it reports missing or
    unexpected, and every shape mismatch, is named in one :class:`QffsError`, with a hint when
    only the classifier head (number of classes) or the input channels differ. ``spec`` (the
    model spec string) makes the hint a ready ``--model`` option. On error the model may be
    partly loaded: build a fresh one.
    """
    own = model.state_dict()
    shapes = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)}
    fitting = {k: v for k, v in state_dict.items() if k not in shapes}
    result = model.load_state_dict(fitting, strict=False)
    missing = [k for k in result.missing_keys if k not in shapes]
    problems = []
    if missing:
        problems.append(f"missing keys: {few(missing)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys: {few(list(result.unexpected_keys))}")
    if shapes:
        problems.append("shape mismatch: " + few([f"{k} {a} vs model {b}" for k, (a, b) in shapes.items()]))
    if problems:
        hint = mismatch_hint(model, shapes, spec) if not missing and not result.unexpected_keys else ""
        raise QffsError(f"{source} does not match the model: " + "; ".join(problems) + hint)
    return model


def load_model(path: str | Path, spec: str | None = None) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a full-precision model from a checkpoint (``spec``, else its recorded spec).

    A model *file* the checkpoint names is imported only if ``spec`` names that same file
    (:mod:`qffs.trust`): loading a checkpoint never runs code on its word alone.
    """
    ckpt = load_checkpoint(path)
    if ckpt.kind not in ("fp", "foreign"):
        raise QffsError(f"{path} is a {ckpt.kind} checkpoint, not a full-precision model")
    if not spec or records_model_file(ckpt.meta):
        spec = authorized_spec(ckpt.meta, spec, str(path))
    model = build_model(spec)
    load_into(model, ckpt.state_dict, source=str(path), spec=spec)
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
            from safetensors.torch import save_file  # start-up time: only .safetensors files need it

            save_file(tensors, str(tmp), metadata={"qffs": json.dumps(info)})
        else:
            torch.save({"state_dict": tensors, "qffs": info}, tmp)
    return file


__all__ = ["NESTED_KEYS", "WRAPPER_PREFIXES", "Checkpoint", "load_checkpoint", "load_into", "load_model",
           "save_checkpoint",
           "strip_wrapper_prefixes"]
