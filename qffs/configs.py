"""The two recorded configurations of an artifact: how a QANN is quantized, how it is converted.

Each is checked whole when made (the options' one validation) and read back from an artifact's
``quant`` / ``conversion`` fields, refusing by name what qffs would not have written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from qffs.errors import QffsError
from qffs.quant.calibrate import check_method
from qffs.quant.lsq import check_bits
from qffs.quant.schedule import parse_bit_schedule
from qffs.quant.weight_graph import WeightSpec
from qffs.snn import SpikingNetwork, convert
from qffs.snn.convert import MAX_POOL_MODES
from qffs.snn.network import check_timesteps


def altered(source: str, what: str) -> QffsError:
    """The error for a recorded field that qffs would not have written."""
    return QffsError(f"{source}: its recorded {what}: the file was altered or not written by qffs")


#: The weight-quantization fields of :class:`QuantConfig` (part of a resume key when weights are quantized).
_WEIGHT_FIELDS = ("weight_bits", "weight_quantizer", "weight_per_channel", "edge_weight_bits", "temperature_rate")


@dataclass(frozen=True)
class QuantConfig:
    """How a QANN is quantized: activation widths (``output_bits`` None: analog logits), step-size
    calibration, an optional progressive bit schedule ending at ``bits``, BatchNorm re-estimation
    after QAT, the named recipe the training settings came from (a label), and the weight
    quantization (``weight_bits`` None: float weights; :class:`~qffs.quant.weight_graph.WeightSpec`)
    with the sigmoid-sum quantizer's temperature rate."""

    bits: int = 2
    output_bits: int | None = 3
    calibration: str = "mse"
    calibration_batches: int = 4
    bit_schedule: tuple[int, ...] | None = None
    bn_reestimate: bool = True
    recipe: str | None = None
    weight_bits: int | None = None
    weight_quantizer: str = "lsq"
    weight_per_channel: bool = False
    edge_weight_bits: int | None = 8
    temperature_rate: float = 10.0

    def __post_init__(self) -> None:
        """Every value checked when the config is made (the options' one validation)."""
        self.weight_spec()
        rate = self.temperature_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1e6:
            raise QffsError(f"--temperature-rate must be a positive number, got {rate!r}")
        check_bits("--bits", self.bits)
        if self.output_bits is not None:
            check_bits("--output-bits", self.output_bits)
        check_method(self.calibration)
        if isinstance(self.calibration_batches, bool) or not isinstance(self.calibration_batches, int) \
                or self.calibration_batches < 1:
            raise QffsError(f"calibration batches must be an integer >= 1, got {self.calibration_batches!r}")
        given: Any = self.bit_schedule   # "4,3,2" or (4, 3, 2): kept as the parsed tuple
        text = given if given is None or isinstance(given, str) else ",".join(str(b) for b in given)
        object.__setattr__(self, "bit_schedule", parse_bit_schedule(text, self.bits))

    def record(self) -> dict[str, Any]:
        """The artifact field ``quant``: this config, whole."""
        return {**asdict(self), "bit_schedule": list(self.bit_schedule) if self.bit_schedule else None}

    def training_key(self) -> dict[str, Any]:
        """What a resume must keep: the training itself. BatchNorm re-estimation comes after the last
        epoch and the recipe is a label, so neither is part of it; a bit schedule is, when there is one
        (a run begun before these options existed still resumes)."""
        key: dict[str, Any] = {"bits": self.bits, "output_bits": self.output_bits, "calibration": self.calibration,
                               "calibration_batches": self.calibration_batches}
        if self.bit_schedule:
            key["bit_schedule"] = list(self.bit_schedule)
        if self.weight_bits is not None:
            key.update({k: getattr(self, k) for k in _WEIGHT_FIELDS})
        return key

    def weight_spec(self) -> WeightSpec | None:
        """The weight quantization (None: float weights, as in the paper)."""
        if self.weight_bits is None:
            return None
        return WeightSpec(self.weight_bits, self.weight_quantizer, self.weight_per_channel, self.edge_weight_bits)

    def temperature(self, epoch: int) -> float:
        """The sigmoid-sum temperature while training the 0-based ``epoch``: rate · (epoch + 1)."""
        return float(self.temperature_rate) * (epoch + 1)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], source: str = "artifact") -> QuantConfig:
        """The config an artifact records (``quant``), or its loose fields if written before it."""
        recorded = meta.get("quant")
        if recorded is None:   # qffs <= 0.x: loose fields, the defaults of their time where absent
            recorded = {"bits": meta.get("bits"), "output_bits": meta.get("output_bits"),
                        "calibration": meta.get("calibration") or "mse",
                        "bit_schedule": meta.get("bit_schedule"),
                        "bn_reestimate": bool(meta.get("bn_reestimate", False)), "recipe": meta.get("recipe")}
        if not isinstance(recorded, dict) or set(recorded) - {f.name for f in fields(cls)}:
            raise altered(source, "quantization config is not one qffs writes")
        if recorded.get("bits") is None:
            raise altered(source, "quantization config has no bit width")
        try:
            return cls(**recorded)
        except (QffsError, TypeError) as err:
            raise altered(source, f"quantization config is invalid ({err})") from None


@dataclass(frozen=True)
class ConversionConfig:
    """How a QANN becomes an SNN (SPEC §2): T_in (None: the hidden Q), pre-charge, negative spikes,
    max pooling ("event", exact; "naive" for the ablation)."""

    input_window: int | None = None
    precharge: bool = True
    negative_spikes: bool = True
    max_pool: str = "event"

    def __post_init__(self) -> None:
        if self.input_window is not None:
            check_timesteps(self.input_window, "input_window (--input-window)")
        if self.max_pool not in MAX_POOL_MODES:
            raise QffsError(f"--max-pool must be one of {', '.join(MAX_POOL_MODES)}, got {self.max_pool!r}")
        for name in ("precharge", "negative_spikes"):
            if not isinstance(getattr(self, name), bool):
                raise QffsError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def convert(self, qann: torch.nn.Module) -> SpikingNetwork:
        """``qann`` converted with these options."""
        return convert(qann, **asdict(self))

    @classmethod
    def from_meta(cls, meta: dict[str, Any], source: str = "artifact") -> ConversionConfig:
        """The options an SNN artifact records (``conversion``: the network's config, whose derived
        fields such as folded BatchNorms are not options)."""
        recorded = meta.get("conversion") or {}
        try:
            return cls(**{f.name: recorded[f.name] for f in fields(cls) if f.name in recorded})
        except (QffsError, TypeError) as err:
            raise altered(source, f"conversion options are invalid ({err})") from None
