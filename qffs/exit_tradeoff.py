"""The accuracy–latency trade-off of confidence exits, from one simulation without exit.

For a grid of softmax temperatures τ, confidence thresholds P and deadlines D (every step
1…T), each batch adds what a ``confidence:P@τ,deadline=D`` exit would have answered
(:func:`qffs.snn.exits.exit_latency`, :func:`~qffs.snn.exits.exit_predictions`) as float64
sums — correct answers and a histogram of latencies — beside each τ's negative log-likelihood
over every step's readout. The sums add exactly over the ranks of a torchrun job. The
temperature is the one of least NLL (fitted on the samples measured: the validation split, for
a choice), and :func:`choose_threshold` picks the (P, D) of smallest mean latency whose
accuracy stays within a tolerance of a reference (the QANN's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qffs.measures import Measure
from qffs.metrics import predict
from qffs.report import percentiles
from qffs.snn.exits import answer_steps, confidence_steps, exit_latency, exit_predictions, with_deadline
from qffs.snn.records import SimulationResult

#: Softmax temperatures tried (log-spaced over four decades: readouts come in their own units).
#: Both grids hold 6 significant digits, as ``--exit`` labels print them: a choice can be given again.
TEMPERATURES = tuple(float(f"{t:.6g}") for t in torch.logspace(-2, 2, 41, dtype=torch.float64))
#: Confidence thresholds P, denser towards 1 (1 − 10^−k for k from 0.1 to 4).
THRESHOLDS = tuple(float(f"{1 - 10 ** -k:.6g}") for k in torch.linspace(0.1, 4.0, 40, dtype=torch.float64))


def latency_spread(histogram: torch.Tensor) -> dict[str, float | None]:
    """Mean, p50 and p99 latency from a histogram of samples per step 1…T (None: no samples)."""
    steps = torch.repeat_interleave(torch.arange(1, histogram.numel() + 1), histogram.round().long()).tolist()
    spread = percentiles(steps, (50, 99))
    return {"mean_latency": spread.get("mean"), "p50_latency": spread.get("p50"), "p99_latency": spread.get("p99")}


class ExitTradeoff(Measure):
    """Per (τ, D, P): correct answers and latencies (histogram over 1…T) of a confidence exit
    with deadline D, and per τ the summed NLL of every step's readout at that temperature."""

    nll: torch.Tensor
    correct: torch.Tensor
    latencies: torch.Tensor
    samples: torch.Tensor

    def __init__(self, timesteps: int, readout: str, temperatures: tuple[float, ...] = TEMPERATURES,
                 thresholds: tuple[float, ...] = THRESHOLDS):
        super().__init__()
        self.timesteps, self.readout = timesteps, readout
        self.temperatures, self.thresholds = temperatures, thresholds
        self.add_state("nll", len(temperatures))
        self.add_state("correct", (len(temperatures), timesteps, len(thresholds)))
        self.add_state("latencies", (len(temperatures), timesteps, len(thresholds), timesteps))
        self.add_state("samples")

    def update(self, result: SimulationResult, y: torch.Tensor) -> None:
        readouts = result.readouts[self.readout].double()                    # [T, B, C]
        p = torch.tensor(self.thresholds, dtype=torch.float64, device=readouts.device)
        labels = y.to(readouts.device)
        for i, tau in enumerate(self.temperatures):
            logp = torch.log_softmax(readouts / tau, dim=-1)
            self.nll[i] -= float(logp.gather(-1, labels.view(1, -1, 1).expand(logp.shape[0], -1, 1)).sum())
            settled = (result.convergence_step, result.converged, self.timesteps, result.input_window)
            confident = confidence_steps(readouts, p, tau)                                     # [P, B]
            confident = torch.stack([with_deadline(confident, d) for d in range(1, self.timesteps + 1)])
            latency = exit_latency(confident, *settled)                                        # [D, P, B]
            answers = exit_predictions(readouts, answer_steps(confident, *settled))
            self.correct[i] += (answers == labels).sum(-1).double().cpu()
            hist = torch.zeros(*latency.shape[:2], self.timesteps, dtype=torch.float64, device=readouts.device)
            self.latencies[i] += hist.scatter_add_(2, latency - 1, torch.ones_like(latency, dtype=torch.float64)).cpu()
        self.samples += y.numel()

    def temperature_index(self) -> int:
        """The temperature of least NLL (per sample and step)."""
        return int(self.nll.argmin())

    def compute(self) -> dict[str, Any]:
        """The fitted temperature and, per deadline and threshold, accuracy and mean / p50 / p99
        latency (deadline T: none)."""
        i, n = self.temperature_index(), max(float(self.samples), 1.0)
        rows = []
        for d in range(1, self.timesteps + 1):
            for j, p in enumerate(self.thresholds):
                rows.append({"threshold": p, "deadline": d, "accuracy": float(self.correct[i, d - 1, j]) / n,
                             **latency_spread(self.latencies[i, d - 1, j])})
        return {"readout": self.readout, "temperature": self.temperatures[i],
                "nll_per_step": float(self.nll[i]) / (n * self.timesteps), "samples": int(n), "rows": rows}


class ExitOutcome(Measure):
    """What a run with an exit policy answered: correct answers, each sample's latency (histogram
    over 1…T) and the samples simulated at each step (what the exits saved)."""

    correct: torch.Tensor
    latencies: torch.Tensor
    rows: torch.Tensor
    samples: torch.Tensor

    def __init__(self, timesteps: int, readout: str):
        super().__init__()
        self.timesteps, self.readout = timesteps, readout
        self.add_state("correct")
        self.add_state("latencies", timesteps)
        self.add_state("rows", timesteps)
        self.add_state("samples")

    def update(self, result: SimulationResult, y: torch.Tensor) -> None:
        latency = result.latency().clamp(1, self.timesteps).cpu()
        answer = result.readouts[self.readout][-1]              # frozen at each sample's exit
        self.correct += float((predict(answer)[0] == y).sum())
        self.latencies += torch.bincount(latency - 1, minlength=self.timesteps).double()
        simulated = torch.tensor(result.rows_simulated, dtype=torch.float64)
        self.rows[: simulated.numel()] += simulated
        self.samples += y.numel()

    def compute(self) -> dict[str, Any]:
        """Accuracy, mean / p50 / p99 latency, the latency histogram, and the sample-steps simulated
        against those of the fixed T."""
        n = max(float(self.samples), 1.0)
        return {"readout": self.readout, "accuracy": float(self.correct) / n, "samples": int(n),
                **latency_spread(self.latencies), "latency_histogram": self.latencies.round().long().tolist(),
                "rows_simulated": self.rows.round().long().tolist(),
                "sample_steps": int(self.rows.sum()), "sample_steps_fixed": int(n) * self.timesteps}


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold and deadline :func:`choose_threshold` picked (None: no row is within tolerance)."""

    threshold: float | None
    deadline: int | None
    row: dict[str, Any] | None
    reference: float
    tolerance: float


def choose_threshold(tradeoff: dict[str, Any], reference: float, tolerance: float) -> ThresholdChoice:
    """The row of least mean latency whose accuracy is at least ``reference − tolerance``
    (ties: the higher accuracy, then the later deadline); None when no row qualifies."""
    good = [r for r in tradeoff["rows"] if r["accuracy"] >= reference - tolerance - 1e-12]
    if not good:
        return ThresholdChoice(None, None, None, reference, tolerance)
    best = min(good, key=lambda r: (r["mean_latency"], -r["accuracy"], -r["deadline"]))
    return ThresholdChoice(best["threshold"], best["deadline"], best, reference, tolerance)


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row beats in both mean latency and accuracy, by increasing latency."""
    front: list[dict[str, Any]] = []
    for r in sorted(rows, key=lambda r: (r["mean_latency"], -r["accuracy"])):
        if not front or r["accuracy"] > front[-1]["accuracy"]:
            front.append(r)
    return front


__all__ = ["THRESHOLDS", "TEMPERATURES", "ExitOutcome", "ExitTradeoff", "ThresholdChoice", "choose_threshold", "pareto"]
