"""SNN fine-tuning at a fixed T: back-propagation through time from the converted network.

Conversion makes the SNN its QANN exactly, but only once every layer has settled (5–8 steps in a
deep network). Training the spiking network itself at a small T (ATIF, Castagnetti et al. 2023;
MPR, Guo et al. 2022; ``../shared/METHODS.md`` §1, §3) moves its early steps towards the answer.
The network keeps every rule of SPEC §3 — pre-charge θ/2, Z_max, negative spikes, input and
bias shutoff — and runs in the engine's functional form with a :class:`~qffs.snn.surrogate.Surrogate`
for the two spike decisions. What trains:

- ``fixed``: the weights (BatchNorm folded in) alone;
- ``layer``: the weights and one threshold θ per hidden IF layer (ATIF-u), initialised from the
  converted θ = T_in·s and kept strictly positive by training log θ (never below 1/1000 of the
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

THRESHOLD_MODES = ("fixed", "layer")
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
        name = {"fixed": "weights only", "layer": "ATIF-u"}[self.thresholds]
        return name + ("" if self.surrogate.mpr is None else f" + MPR (k = {self.surrogate.mpr:g})")

    def record(self) -> dict[str, Any]:
        """What a fine-tuned artifact records of how it was made."""
        return {"method": self.method, "timesteps": self.timesteps, "thresholds": self.thresholds,
                "loss": self.loss, "loss_readout": LOSS_READOUT, "surrogate": self.surrogate.describe()}


class _Exp(nn.Module):
    """θ = exp(ρ), and never below :data:`THRESHOLD_FLOOR` of the converted θ: a threshold trained
    as its logarithm stays strictly positive whatever the step (exp alone underflows to 0)."""

    floor: torch.Tensor

    def __init__(self, converted: torch.Tensor):
        super().__init__()
        self.register_buffer("floor", converted.detach().clone() * THRESHOLD_FLOOR)

    def forward(self, rho: torch.Tensor) -> torch.Tensor:
        return torch.maximum(rho.exp(), self.floor)

    def right_inverse(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.log()


def hidden_neurons(snn: SpikingNetwork) -> list[SpikingNeuron]:
    """The IF layers whose threshold ``layer`` mode trains (every one but the output layer)."""
    return [m for m in snn.modules() if isinstance(m, SpikingNeuron) and not m.is_output]


def make_thresholds_trainable(snn: SpikingNetwork) -> None:
    """Turn each hidden layer's threshold buffer into a parameter trained as log θ."""
    for neuron in hidden_neurons(snn):
        theta = neuron.threshold.detach().clone()
        del neuron._buffers["threshold"]
        neuron.threshold = nn.Parameter(theta)
        parametrize.register_parametrization(neuron, "threshold", _Exp(theta))


def freeze_thresholds(snn: SpikingNetwork) -> None:
    """Thresholds back to plain buffers at their trained values (the step size follows, s = θ/T_in),
    so the fine-tuned network is saved, run and exported like a converted one."""
    for neuron in hidden_neurons(snn):
        if parametrize.is_parametrized(neuron, "threshold"):
            theta = neuron.threshold.detach().clone()
            parametrize.remove_parametrizations(neuron, "threshold", leave_parametrized=False)
            del neuron._parameters["threshold"]
            neuron.register_buffer("threshold", theta)
            neuron.step_size = theta / snn.input_window


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
        if config.thresholds == "layer":
            make_thresholds_trainable(snn)

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
    log-threshold back to θ (with its floor), and the step size that follows it (s = θ/T_in)."""
    marker, floor = ".parametrizations.threshold.original", ".parametrizations.threshold.0.floor"
    state = {(k[len("snn."):] if k.startswith("snn.") else k): v.detach() for k, v in trainee_state.items()}
    trained = {k[: -len(marker)] for k in state if k.endswith(marker)}
    plain = {k: v for k, v in state.items() if ".parametrizations." not in k
             and not (k.endswith(".step_size") and k[: -len(".step_size")] in trained)}
    for layer in trained:
        theta = torch.maximum(state[layer + marker].exp(), state[layer + floor])
        plain[f"{layer}.threshold"], plain[f"{layer}.step_size"] = theta, theta / input_window
    return plain


def threshold_table(snn: SpikingNetwork) -> dict[str, float]:
    """Each IF layer's θ by name (what a fine-tuned artifact records and its report compares)."""
    return {name: float(m.threshold.detach()) for name, m in snn.named_modules() if isinstance(m, SpikingNeuron)}


__all__ = ["LOSSES", "LOSS_READOUT", "THRESHOLD_MODES", "FinetuneConfig", "SpikingTrainee", "freeze_thresholds",
           "hidden_neurons", "make_thresholds_trainable", "plain_state", "spiking_loss", "threshold_table"]
