"""SNN fine-tuning at a fixed T: back-propagation through time from the converted network.

Conversion makes the SNN its QANN exactly, but only once every layer has settled (5–8 steps in a
deep network). Training the spiking network itself at a small T (ATIF, Castagnetti et al. 2023;
MPR, Guo et al. 2022; ``../shared/METHODS.md`` §1, §3) moves its early steps towards the answer.
The network keeps every rule of SPEC §3 — pre-charge θ/2, Z_max, negative spikes, input and
bias shutoff — and runs in the engine's functional form with a :class:`~qffs.snn.surrogate.Surrogate`
for the two spike decisions. What trains:

- ``fixed``: the weights (BatchNorm folded in) alone;
- ``step``: the weights and one threshold θ_t per hidden IF layer and step t = 1…T (ATIF-nu,
  the paper's p-parameterisation being a linear reparameterisation of these), all initialised
  to the converted θ; from step T on a layer keeps θ_T, and after the input window θ_t never
  falls (so a quiet sample stays quiet). The pre-charge stays θ/2 of the converted θ, and a
  negative spike gives back the threshold of its own step;
- ``layer``: the weights and one threshold θ per hidden IF layer (ATIF-u), initialised from the
  converted θ = T_in·s and kept strictly positive by training log θ (above 1/1000 of the
  converted value). The output layer's θ stays:
  the loss reads the integrated current, which does not depend on it.

The loss is the cross-entropy of the integrated-current readout (SPEC §5: once quiet, the QANN
output quantizer's input), at step T (``final``) or averaged over t = 1…T (``all-steps``, so
the whole early curve improves). A fine-tuned SNN is no longer bound to its QANN: invariant E
is left on purpose, and its artifact and reports say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from qffs.errors import QffsError
from qffs.snn.network import SpikingNetwork
from qffs.snn.neuron import SpikingNeuron
from qffs.snn.surrogate import Surrogate

THRESHOLD_MODES = ("fixed", "layer", "step")
LOSSES = ("final", "all-steps")
#: A trained threshold stays at least this fraction of its converted value.
THRESHOLD_FLOOR = 1e-3
#: The readout the loss is taken of, and the one the kept epoch is chosen on.
LOSS_READOUT = "current"


@dataclass(frozen=True)
class FinetuneConfig:
    """What a fine-tuning trains and how: ``timesteps`` T, ``thresholds`` (:data:`THRESHOLD_MODES`),
    ``loss`` (:data:`LOSSES`) and the ``surrogate`` (with its MPR shape)."""

    timesteps: int = 4
    thresholds: str = "layer"
    loss: str = "all-steps"
    surrogate: Surrogate = field(default_factory=Surrogate)

    def __post_init__(self) -> None:
        if isinstance(self.timesteps, bool) or not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise QffsError(f"--timesteps must be a whole number of steps ≥ 1, got {self.timesteps!r}")
        if self.thresholds not in THRESHOLD_MODES:
            raise QffsError(f"--thresholds must be one of {', '.join(THRESHOLD_MODES)}, got {self.thresholds!r}")
        if self.loss not in LOSSES:
            raise QffsError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")

    @property
    def method(self) -> str:
        """The method's name in reports: weights only, ATIF-u, with "+ MPR"."""
        name = {"fixed": "weights only", "layer": "ATIF-u", "step": "ATIF-nu"}[self.thresholds]
        return name + ("" if self.surrogate.mpr is None else f" + MPR (k = {self.surrogate.mpr:g})")

    def record(self) -> dict[str, Any]:
        """What a fine-tuned artifact records of how it was made."""
        return {"method": self.method, "timesteps": self.timesteps, "thresholds": self.thresholds,
                "loss": self.loss, "loss_readout": LOSS_READOUT, "surrogate": self.surrogate.describe()}


class _PositiveThreshold(nn.Module):
    """θ = floor + exp(ρ), the floor :data:`THRESHOLD_FLOOR` of the converted θ: a threshold trained
    as its logarithm stays strictly positive whatever the step, and keeps its gradient. Per-step
    thresholds (``monotone_from`` = T_in − 1) never fall after the input window's last step: a
    sample quiet after the window must stay quiet (the runtime drops it then, SPEC §3)."""

    floor: torch.Tensor

    def __init__(self, converted: torch.Tensor, monotone_from: int | None = None):
        super().__init__()
        self.register_buffer("floor", converted.detach().clone() * THRESHOLD_FLOOR)
        self.monotone_from = monotone_from

    @staticmethod
    def value(rho: torch.Tensor, floor: torch.Tensor, monotone_from: int | None) -> torch.Tensor:
        """θ from ρ (one definition for training and for the saved network)."""
        theta = floor + rho.exp()
        if monotone_from is None or theta.dim() == 0 or monotone_from >= theta.shape[0]:
            return theta
        return torch.cat([theta[:monotone_from], theta[monotone_from:].cummax(0).values])

    def forward(self, rho: torch.Tensor) -> torch.Tensor:
        return self.value(rho, self.floor, self.monotone_from)

    def right_inverse(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - self.floor).log()


def hidden_neurons(snn: SpikingNetwork) -> list[SpikingNeuron]:
    """The IF layers whose threshold ``layer`` mode trains (every one but the output layer)."""
    return [m for m in snn.modules() if isinstance(m, SpikingNeuron) and not m.is_output]


def make_thresholds_trainable(snn: SpikingNetwork, per_step: int | None = None) -> None:
    """Turn each hidden layer's threshold (``per_step`` = T: its T per-step thresholds, from the
    converted θ, or from the θ_t it has) into a parameter trained as log θ."""
    for neuron in hidden_neurons(snn):
        name, monotone_from = "threshold", None
        if per_step is not None:
            have = neuron.step_thresholds
            start = neuron.threshold.detach().repeat(per_step) if have is None else \
                torch.cat([have, have[-1:].repeat(max(per_step - have.shape[0], 0))])[:per_step]
            neuron.set_step_thresholds(start, snn.input_window)
            name, monotone_from = "step_thresholds", snn.input_window - 1
        elif neuron.step_thresholds is not None:
            raise QffsError("this SNN has per-step thresholds (fine-tuned with --thresholds step): "
                            "fine-tune it again with --thresholds step")
        theta = getattr(neuron, name).detach().clone()
        del neuron._buffers[name]
        setattr(neuron, name, nn.Parameter(theta))
        parametrize.register_parametrization(neuron, name, _PositiveThreshold(theta, monotone_from))


class SpikingTrainee(nn.Module):
    """An SNN as :func:`qffs.train.fit` trains it. In training mode ``forward(x)`` runs T steps in
    the functional form with surrogate gradients and returns every step's integrated current
    [B, C, T]; in eval mode the exact runtime's integrated current at T [B, C] (what validation
    keeps the epoch on). Dropout stays off: a mask drawn anew each step is noise in time."""

    def __init__(self, snn: SpikingNetwork, config: FinetuneConfig):
        super().__init__()
        self.snn, self.config = snn, config
        for p in snn.parameters():      # the biases (gated to the input window) train with the weights
            p.requires_grad_(True)
        if config.thresholds != "fixed":
            make_thresholds_trainable(snn, config.timesteps if config.thresholds == "step" else None)

    def train(self, mode: bool = True) -> SpikingTrainee:
        super().train(mode)
        self.snn.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.config.timesteps
        if self.training:
            result = self.snn.simulate(x, T, mode="functional", grad=True, record=False,
                                       surrogate=self.config.surrogate)
            return result.readouts[LOSS_READOUT].permute(1, 2, 0)
        with torch.no_grad():
            return self.snn.simulate(x, T, record=False).readouts[LOSS_READOUT][-1]


def spiking_loss(config: FinetuneConfig, label_smoothing: float = 0.0):
    """The criterion for :func:`qffs.train.fit`: cross-entropy of the current at T (``final``) or
    the mean over steps 1…T (``all-steps``); ``out`` [B, C, T]."""
    ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if out.dim() == 2:
            return ce(out, y)
        if config.loss == "final":
            return ce(out[..., -1], y)
        return ce(out, y.unsqueeze(1).expand(-1, out.shape[-1]))
    return loss


def plain_state(trainee_state: dict[str, torch.Tensor], input_window: int) -> dict[str, torch.Tensor]:
    """A :class:`SpikingTrainee`'s state dict as the SNN's own: keys without ``snn.``, each trained
    log-threshold back to θ (:class:`_PositiveThreshold`), and the step size that follows a
    layer's θ (s = θ/T_in)."""
    state = {(k[len("snn."):] if k.startswith("snn.") else k): v.detach() for k, v in trainee_state.items()}
    plain = {k: v for k, v in state.items() if ".parametrizations." not in k}
    for key in [k for k in state if k.endswith(".original")]:
        layer, _, name = key[: -len(".original")].rpartition(".parametrizations.")
        theta = _PositiveThreshold.value(state[key], state[f"{layer}.parametrizations.{name}.0.floor"],
                                         input_window - 1 if name == "step_thresholds" else None)
        plain[f"{layer}.{name}"] = theta
        if name == "threshold":
            plain[f"{layer}.step_size"] = theta / input_window
    return plain


def trained_thresholds(plain: dict[str, torch.Tensor]) -> dict[str, float | list[float]]:
    """The thresholds in an SNN state dict (:func:`plain_state`) by layer: θ, or θ_t per step."""
    table: dict[str, float | list[float]] = {}
    for key, value in plain.items():
        layer, _, name = key.rpartition(".")
        if name == "threshold" and layer not in table:
            table[layer] = float(value)
        elif name == "step_thresholds":
            table[layer] = [float(v) for v in value]
    return table


def threshold_table(snn: SpikingNetwork) -> dict[str, float | list[float]]:
    """Each IF layer's θ by name, or its θ_t per step (what a fine-tuned artifact records)."""
    return {name: float(m.threshold.detach()) if m.step_thresholds is None else
            [float(v) for v in m.step_thresholds.detach()]
            for name, m in snn.named_modules() if isinstance(m, SpikingNeuron)}


__all__ = ["LOSSES", "LOSS_READOUT", "THRESHOLD_MODES", "FinetuneConfig", "SpikingTrainee",
           "hidden_neurons", "make_thresholds_trainable", "plain_state", "spiking_loss", "threshold_table",
           "trained_thresholds"]
