"""One registry, one way to build a model: ``build_model(spec)``.

A *spec string* names a model and its keyword arguments, and is stored in every checkpoint
qffs writes so the model can be rebuilt:

- ``vgg_small``, ``vgg16(num_classes=100)``, ``resnet18``, ``resnet20`` — qffs' own models;
- ``tv:mobilenet_v2(num_classes=10)`` — any torchvision classification model, by name
  (built without pretrained weights: load yours with ``qffs.io``);
- ``path/to/file.py:factory(width=2)`` — a user model: ``factory(**kwargs)`` from that file.
  This imports and runs the file: only use files you trust.

Arguments are Python literals (numbers, strings, booleans, tuples).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from qffs.errors import QffsError
from qffs.models.resnet import resnet18, resnet20
from qffs.models.vgg import vgg16, vgg_small

#: qffs' own architectures, by name.
REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "vgg_small": vgg_small,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet20": resnet20,
}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec string: ``source`` is "qffs", "torchvision" or "file"."""

    source: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        call = f"{self.name}({args})" if args else self.name
        if self.source == "torchvision":
            return f"tv:{call}"
        if self.source == "file":
            return f"{self.path}:{call}"
        return call


def _split_call(text: str, spec: str) -> tuple[str, dict[str, Any]]:
    """``name(k=v, ...)`` → (name, {k: v}); arguments must be literals."""
    text = text.strip()
    if "(" not in text:
        return text, {}
    try:
        call = ast.parse(text, mode="eval").body
        if not isinstance(call, ast.Call) or call.args or not isinstance(call.func, ast.Name):
            raise ValueError
        return call.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError):
        raise QffsError(
            f"cannot parse model spec {spec!r}: expected name or name(key=literal, ...), "
            "e.g. 'resnet20(num_classes=100)'"
        ) from None


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec string (see the module docstring)."""
    if ".py:" in spec:
        path, _, call = spec.rpartition(".py:")
        name, kwargs = _split_call(call, spec)
        return ModelSpec("file", name, kwargs, path=path + ".py")
    if spec.startswith("tv:"):
        name, kwargs = _split_call(spec[3:], spec)
        return ModelSpec("torchvision", name, kwargs)
    name, kwargs = _split_call(spec, spec)
    return ModelSpec("qffs", name, kwargs)


#: Model files imported in this process (resolved paths): an exception raised inside one is the
#: user's code failing, reported with its file and line (:func:`user_code_error`), not a qffs bug.
USER_FILES: set[str] = set()


def user_code_location(exc: BaseException) -> str | None:
    """``file:line (in function)`` of the innermost frame of a user model file in ``exc``'s
    traceback, or None when the error did not pass through user model code."""
    frame = None
    tb = exc.__traceback__
    while tb is not None:
        if str(Path(tb.tb_frame.f_code.co_filename).resolve()) in USER_FILES:
            frame = tb
        tb = tb.tb_next
    if frame is None:
        return None
    return f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno} (in {frame.tb_frame.f_code.co_name})"


def user_code_error(exc: BaseException, doing: str = "") -> QffsError | None:
    """A one-line QffsError saying where in a user model file ``exc`` was raised (None: not
    there). ``SystemExit`` there is an error too: model code must not end qffs."""
    where = user_code_location(exc)
    if where is None:
        return None
    what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"raised {type(exc).__name__}"
    message = str(exc).strip().splitlines()[0] if isinstance(exc, Exception) and str(exc).strip() else ""
    return QffsError(f"the model code at {where} {what}{' while ' + doing if doing else ''}"
                     f"{': ' + message if message else ''}")


def _make_siblings_importable(file: Path) -> None:
    """Let a model file import the code it was downloaded with, as ``python`` run from its
    repository would: its own folder (``from cbam import CBAM``), the folder above it (``from
    models.cbam import CBAM``) and the working directory go on ``sys.path`` — at its end, so they
    never shadow an installed module."""
    for folder in (file.resolve().parent, file.resolve().parent.parent, Path.cwd()):
        if str(folder) not in sys.path:
            sys.path.append(str(folder))


def _load_factory(path: str, name: str) -> Callable[..., nn.Module]:
    file = Path(path)
    if not file.is_file():
        raise QffsError(f"model file not found: {path}")
    USER_FILES.add(str(file.resolve()))
    module_name = f"qffs_user_model_{abs(hash(str(file.resolve())))}"
    if module_name in sys.modules:  # imported once per process: user code runs once
        factory = getattr(sys.modules[module_name], name, None)
        if callable(factory):
            return factory
    _make_siblings_importable(file)
    loader_spec = importlib.util.spec_from_file_location(module_name, file)
    if loader_spec is None or loader_spec.loader is None:
        raise QffsError(f"cannot import model file {path}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # user code: report where, don't crash with a traceback
        del sys.modules[module_name]
        raise (user_code_error(exc, f"importing {path}")
               or QffsError(f"importing {path} failed: {type(exc).__name__}: {exc}")) from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise QffsError(f"{path} has no callable {name!r}")
    return factory


def model_names() -> list[str]:
    """qffs' own model names (torchvision and file specs are open-ended)."""
    return sorted(REGISTRY)


def keyword_options(spec: str) -> set[str] | None:
    """The keyword arguments a spec's factory accepts (None: any), e.g. to suggest ``num_classes=N``.

    torchvision models: ``num_classes`` only (their builders take ``**kwargs``, but not every
    model takes, say, ``in_channels``); a user file is asked only once it has been imported.
    """
    parsed = parse_spec(spec)
    if parsed.source == "torchvision":
        return {"num_classes"}
    factory = REGISTRY.get(parsed.name) if parsed.source == "qffs" else _load_factory(parsed.path or "", parsed.name)
    if factory is None:
        return set()
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                 inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def with_defaults(spec: str, **defaults: Any) -> str:
    """Return ``spec`` with ``defaults`` added where the spec does not set them.

    qffs models get those of their factory's parameters that are given (``num_classes``,
    ``in_channels``, ``image_size``); torchvision models only ``num_classes``; user factories
    get nothing added (their signature is theirs).
    """
    parsed = parse_spec(spec)
    if parsed.source == "file":
        return str(parsed)
    if parsed.source == "torchvision":
        allowed = {"num_classes"}
    elif parsed.name in REGISTRY:
        allowed = set(inspect.signature(REGISTRY[parsed.name]).parameters)
    else:
        allowed = {"num_classes", "in_channels"}
    kwargs = dict(parsed.kwargs)
    for key, value in defaults.items():
        if key in allowed and value is not None:
            kwargs.setdefault(key, value)
    return str(ModelSpec(parsed.source, parsed.name, kwargs, parsed.path))


def build_model(spec: str) -> nn.Module:
    """Build an (untrained) model from a spec string."""
    parsed = parse_spec(spec)
    if parsed.source == "file":
        factory = _load_factory(parsed.path or "", parsed.name)
    elif parsed.source == "torchvision":
        import torchvision  # only for tv: specs (start-up time of the runtime, which never needs it)

        if parsed.name not in torchvision.models.list_models(module=torchvision.models):
            raise QffsError(
                f"unknown torchvision model {parsed.name!r}; see torchvision.models.list_models()"
            )
        try:
            return torchvision.models.get_model(parsed.name, weights=None, **parsed.kwargs)
        except (TypeError, ValueError) as exc:
            raise QffsError(f"model spec {spec!r}: {exc}") from exc
    else:
        if parsed.name not in REGISTRY:
            raise QffsError(
                f"unknown model {parsed.name!r}; known: {', '.join(model_names())}, "
                "tv:<torchvision name>, or path/to/file.py:factory"
            )
        factory = REGISTRY[parsed.name]
    try:
        model = factory(**parsed.kwargs)
    except (Exception, SystemExit) as exc:
        found = user_code_error(exc, f"building {spec!r}")
        if found is not None:
            raise found from exc
        if isinstance(exc, TypeError):
            raise QffsError(f"model spec {spec!r}: {exc}") from exc
        raise
    if not isinstance(model, nn.Module):
        raise QffsError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["REGISTRY", "USER_FILES", "ModelSpec", "build_model", "keyword_options", "model_names", "parse_spec",
           "user_code_error", "user_code_location", "with_defaults"]
