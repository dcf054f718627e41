"""Named QAT recipes: every setting of a ``qffs quantize`` run in one record, options on top.

    recipe = resolve_recipe("paper", epochs=10)    # the paper's, 10 epochs instead of 40
    recipe.train_config()                          # the optimiser and schedule (qffs.train.TrainConfig)

``qffs`` is the default: a long cosine schedule with distillation from the FP network, what the
literature on 2-bit LSQ fine-tuning supports (LSQ + KD); the 3-epoch runs measured here were still
gaining 1–3 pp per epoch. Measured with the epoch chosen on validation (docs/results.md §1.1,
§4.2.1): ResNet-20 2/3 83.94 % (FP 87.64 %), Fashion-MNIST VGG 2/3 92.13 % at 10 epochs (FP 93.41 %);
the rows without distillation and with a bit schedule are being measured against it. ``paper``
is QFFS's literal Table 2 (SGD lr 0.01, batch 32, exponential decay, 40 epochs; the decay factor is
not given there, 0.9 per epoch is our choice).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from qffs.errors import QffsError

if TYPE_CHECKING:
    from qffs.artifacts import QuantConfig
    from qffs.train import TrainConfig


@dataclass(frozen=True)
class QatRecipe:
    """The settings of one QAT run (step sizes never take weight decay)."""

    epochs: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    gamma: float = 0.9
    batch_size: int = 128
    distill: float = 0.0
    temperature: float = 1.0
    label_smoothing: float = 0.0
    freeze_bn: bool = False
    bit_schedule: str | None = None
    bn_reestimate: bool = True

    def train_config(self) -> TrainConfig:
        """The optimiser and schedule of this recipe."""
        from qffs.train import TrainConfig  # start-up time: the command line reads the recipes for its help

        return TrainConfig(epochs=self.epochs, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                           schedule=self.schedule, gamma=self.gamma, distill=self.distill,
                           temperature=self.temperature, label_smoothing=self.label_smoothing,
                           freeze_bn=self.freeze_bn, no_decay_names=("step",))

    def quant_config(self, *, bits: int = 2, output_bits: int | None = 3, calibration: str = "mse",
                     recipe: str | None = None, **weights: Any) -> QuantConfig:
        """The quantization this recipe trains: the widths given, its bit schedule and BatchNorm
        re-estimation; ``weights``: the :class:`QuantConfig` weight fields (``weight_bits`` …)."""
        from qffs.artifacts import QuantConfig  # start-up time, as above
        from qffs.quant.schedule import parse_bit_schedule

        return QuantConfig(bits=bits, output_bits=output_bits, calibration=calibration,
                           bit_schedule=parse_bit_schedule(self.bit_schedule, bits),
                           bn_reestimate=self.bn_reestimate, recipe=recipe, **weights)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The recipes by name; ``DEFAULT_RECIPE`` is what ``qffs quantize`` runs unless told otherwise.
RECIPES: dict[str, QatRecipe] = {
    # distillation from the FP network over a long cosine schedule (LSQ + KD): docs/results.md §4.2.1
    "qffs": QatRecipe(epochs=20, distill=0.5, temperature=1.0),
    "paper": QatRecipe(epochs=40, lr=0.01, schedule="exp", gamma=0.9, batch_size=32, bn_reestimate=False),
}
DEFAULT_RECIPE = "qffs"


def resolve_recipe(name: str = DEFAULT_RECIPE, **overrides: Any) -> QatRecipe:
    """Recipe ``name`` with every override that is not None in its place."""
    if name not in RECIPES:
        raise QffsError(f"unknown --recipe {name!r}: choose one of {', '.join(RECIPES)}")
    known = {f.name for f in fields(QatRecipe)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"not recipe settings: {sorted(unknown)}")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


def by_recipe(setting: str) -> str:
    """``"Recipes: qffs 20, paper 40."``: a setting's value in each recipe, for option help."""
    def shown(value: Any) -> str:
        return {True: "yes", False: "no", None: "none"}.get(value, str(value)) if isinstance(value, (bool,
                                                                                                     type(None))) \
            else str(value)
    return "Recipes: " + ", ".join(f"{name} {shown(getattr(r, setting))}" for name, r in RECIPES.items()) + "."


def qat_config(epochs: int, lr: float = 0.01, **overrides: Any) -> TrainConfig:
    """A plain QAT optimiser for tests and scripts: SGD lr 0.01, momentum 0.9, weight decay 5e-4
    except on step sizes, cosine decay; ``overrides`` on top (the recipes above are what the CLI runs)."""
    from qffs.train import TrainConfig  # start-up time, as above

    return TrainConfig(**{"epochs": epochs, "lr": lr, "schedule": "cosine", "no_decay_names": ("step",),
                          **overrides})
