"""What may run code: artifacts carry data, never code.

A model spec ``path/to/model.py:factory(...)`` imports and runs that file. When such a spec
is *recorded* in a checkpoint, opening the checkpoint must not run it: the file named there
may not be the one the user trusts (a downloaded artifact can name any path). So a recorded
file spec is used only when the caller names model code too (``--model file.py:factory`` or
``model=`` in Python), and only when that file is the one the artifact was made with: qffs
records the file's SHA-256 when it writes an artifact and refuses, naming both, when the file
given differs. Nor does an artifact choose *which* function of a trusted file runs: the caller's
spec names it, and the recorded arguments are reused only for that same function of a file whose
hash was recorded.

qffs' own models and torchvision models are code qffs ships or depends on; their specs are
data and are used as recorded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from qffs.errors import QffsError
from qffs.models import ModelSpec, parse_spec

#: The metadata key under which an artifact records the SHA-256 of its model file.
SHA_KEY = "model_file_sha256"


def file_sha256(spec: str) -> str | None:
    """SHA-256 of a file spec's source file (None for qffs/torchvision specs)."""
    parsed = parse_spec(spec)
    if parsed.source != "file":
        return None
    path = Path(parsed.path or "")
    if not path.is_file():
        raise QffsError(f"model file not found: {path}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_provenance(spec: str) -> dict[str, Any]:
    """What an artifact records about its model code besides the spec (the file's SHA-256)."""
    digest = file_sha256(spec)
    return {SHA_KEY: digest} if digest else {}


def authorized_spec(meta: dict[str, Any], given: str | None, source: str) -> str:
    """The spec to rebuild an artifact's model with, never running code only the artifact names.

    ``meta`` is the artifact's metadata (``model`` and, for file specs, its SHA-256); ``given``
    the model spec the caller named, if any; ``source`` the artifact's path, for messages.
    A recorded file spec needs a given file spec whose file has the recorded SHA-256. The function
    called is always the given one: the recorded arguments are reused only when the given spec
    names the recorded function and the artifact recorded the file's hash (older artifacts, and
    another function, run the given spec as written).
    """
    recorded = meta.get("model")
    if not recorded:
        if given:
            return given
        raise QffsError(f"{source} does not record its model: pass the model spec, e.g. --model resnet20 "
                        "or --model path/to/model.py:factory")
    rec = parse_spec(str(recorded))
    if rec.source != "file":
        return str(recorded)
    if not given:
        raise QffsError(f"{source} names model code in {rec.path} ({rec}); opening an artifact never runs code it "
                        f"names — if you trust that file, pass it: --model '{rec}'")
    giv = parse_spec(given)
    if giv.source != "file":
        raise QffsError(f"{source} was made with model code from a file ({rec}), not {given!r}: pass that file "
                        f"with --model '{rec}'")
    recorded_sha, given_sha = meta.get(SHA_KEY), file_sha256(given)
    if recorded_sha and given_sha != recorded_sha:
        raise QffsError(f"{giv.path} (sha256 {given_sha[:12]}…) is not the model file {source} was made with: "
                        f"{rec.path} (sha256 {str(recorded_sha)[:12]}…)")
    if giv.name == rec.name and recorded_sha:   # the same function of the same file: its recorded arguments
        return str(ModelSpec("file", rec.name, rec.kwargs, giv.path))
    return given   # the user's spec wins: an artifact never chooses which function of a file runs


def records_model_file(meta: dict[str, Any]) -> bool:
    """Does the artifact name model code in a file (so only :func:`authorized_spec` may build it)?"""
    return bool(meta.get("model")) and parse_spec(str(meta["model"])).source == "file"


__all__ = ["SHA_KEY", "authorized_spec", "file_sha256", "model_provenance", "records_model_file"]
