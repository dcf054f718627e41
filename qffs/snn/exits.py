"""Per-sample early exit: when each sample's answer is taken, as pure functions of its readouts.

A fixed T makes every sample pay for the slowest. An exit policy gives each sample its own
latency (1-based step) and freezes its answer there:

- ``none``: every sample runs the whole T (the latency–accuracy curve);
- ``quiet``: the answer at the sample's convergence step — exact, the QANN's answer;
- ``confidence:P`` (optionally ``@TAU``): the first step at which the softmax of the readout at
  temperature TAU reaches P (Dynamic Confidence, Li, Jones & Furber 2023), or the sample's
  convergence step if that comes first (its answer is final then), or the deadline D
  (``,deadline=D``; default T): a sample still unsure at step D answers there;
- ``auto``: ``confidence`` with TAU fitted and P and D chosen on the validation split
  (:mod:`qffs.exit_tradeoff`).

The deadline is what makes a readout that is nearly final early (the integrated current, a
step or two after the input window) pay: the samples that never become confident would
otherwise run to their convergence step, most of a mean latency.

The runtime drops an exited sample from the batch like a quiet one (:class:`ConfidenceRule`),
so it costs nothing afterwards; :func:`exit_latency` and :func:`exit_predictions` give the same
latencies and answers from a run without exit, which is how one simulation yields the whole
trade-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qffs.errors import QffsError
from qffs.metrics import predict
from qffs.snn.readout import DEFAULT_READOUT, check_readout

EXIT_KINDS = ("none", "quiet", "confidence", "auto")


@dataclass(frozen=True)
class ExitPolicy:
    """A parsed ``--exit``: ``kind`` (:data:`EXIT_KINDS`), the confidence ``threshold`` P and the
    softmax ``temperature`` (None: fitted on the validation split)."""

    kind: str = "none"
    threshold: float | None = None
    temperature: float | None = None
    readout: str | None = None        # the readout the confidence is taken of (None: the headline one)
    deadline: int | None = None       # the latest step a sample answers at (None: the run's T)

    def __post_init__(self) -> None:
        if self.kind not in EXIT_KINDS:
            raise QffsError(f"unknown exit policy {self.kind!r}: choose none, quiet, confidence:P[@TAU] or auto")
        if self.kind == "confidence":
            if self.threshold is None or not 0.0 < self.threshold <= 1.0:
                raise QffsError(f"confidence:P needs 0 < P ≤ 1, got {self.threshold!r}")
        elif self.threshold is not None or self.deadline is not None:
            raise QffsError(f"exit policy {self.kind!r} takes no threshold or deadline")
        if self.deadline is not None and (isinstance(self.deadline, bool) or not isinstance(self.deadline, int)
                                          or self.deadline < 1):
            raise QffsError(f"the exit deadline must be a step ≥ 1, got {self.deadline!r}")
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise QffsError(f"the exit temperature must be positive, got {self.temperature!r}")
        if self.readout is not None:
            check_readout(self.readout)

    @property
    def needs_validation(self) -> bool:
        """Whether the policy is completed on the validation split (a temperature or P to fit)."""
        return self.kind == "auto" or (self.kind == "confidence" and self.temperature is None)

    def rule(self, readout: str = DEFAULT_READOUT) -> ConfidenceRule | None:
        """The runtime's rule (None: no confidence exit); the temperature must be known by now."""
        if self.kind == "auto":
            raise QffsError("exit 'auto' is chosen on the validation split first (qffs evaluate --exit auto)")
        if self.kind != "confidence":
            return None
        if self.temperature is None or self.threshold is None:
            raise QffsError(f"exit {self.label()} needs its temperature: fit it on the validation split, "
                            "or give it as confidence:P@TAU")
        return ConfidenceRule(self.threshold, self.temperature, self.readout or readout, self.deadline)

    def check_timesteps(self, timesteps: int) -> None:
        """Refuse a deadline past the run's T (it could never be reached)."""
        if self.deadline is not None and self.deadline > timesteps:
            raise QffsError(f"exit {self.label()}: the deadline {self.deadline} is past --timesteps {timesteps}")

    def label(self) -> str:
        """The policy as ``--exit`` spells it."""
        if self.kind != "confidence":
            return self.kind
        return (f"confidence:{self.threshold:g}" + ("" if self.temperature is None else f"@{self.temperature:.6g}")
                + ("" if self.readout is None else f",{self.readout}")
                + ("" if self.deadline is None else f",deadline={self.deadline}"))


#: No exit: every sample runs the whole T.
NO_EXIT = ExitPolicy()


SYNTAX = "confidence:P[@TAU][,READOUT][,deadline=D]"


def parse_exit(text: str) -> ExitPolicy:
    """``none``, ``quiet``, ``auto`` or ``confidence:P[@TAU][,READOUT][,deadline=D]`` (one place for
    the syntax; :meth:`ExitPolicy.label` writes it back: an ``auto`` choice can be given again as
    it is reported)."""
    kind, _, rest = text.strip().partition(":")
    if not rest:
        return ExitPolicy(kind)
    if kind != "confidence":
        raise QffsError(f"--exit {text!r}: only confidence takes a value ({SYNTAX})")
    value, *options = [part.strip() for part in rest.split(",")]
    p, _, tau = value.partition("@")
    readout, deadline = None, None
    try:
        threshold, temperature = float(p), float(tau) if tau else None
        for option in options:
            key, eq, number = option.partition("=")
            if eq and key.strip() == "deadline" and deadline is None:
                deadline = int(number)
            elif not eq and readout is None and option:
                readout = option
            else:
                raise ValueError(option)
    except ValueError:
        raise QffsError(f"--exit {text!r}: expected {SYNTAX} with P and TAU numbers and D a step, "
                         "e.g. confidence:0.9@1.5,current,deadline=5") from None
    return ExitPolicy("confidence", threshold, temperature, readout, deadline)


def confidence(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """The largest softmax probability of ``values`` [..., C] at ``temperature`` (float64)."""
    return torch.softmax(values.double() / temperature, dim=-1).amax(dim=-1)


def confidence_steps(readouts: torch.Tensor, threshold: torch.Tensor | float, temperature: float) -> torch.Tensor:
    """The first step (1-based) at which each sample's confidence reaches ``threshold``; T + 1 if
    it never does. ``readouts`` [T, B, C]; ``threshold`` a number or a tensor [P] (then [P, B])."""
    conf = confidence(readouts, temperature)                       # [T, B]
    p = torch.as_tensor(threshold, dtype=conf.dtype, device=conf.device)
    passed = conf >= p.reshape(*p.shape, 1, 1)                      # [(P,) T, B]
    steps = conf.shape[0]
    first = passed.to(torch.int8).argmax(dim=-2) + 1                # the first True, or 0 → 1 when none
    return torch.where(passed.any(dim=-2), first, torch.full_like(first, steps + 1))


def with_deadline(confident_at: torch.Tensor, deadline: int | None) -> torch.Tensor:
    """Confidence steps with the deadline: a sample unsure until step D answers at D (None: no deadline)."""
    return confident_at if deadline is None else confident_at.clamp(max=deadline)


def quiet_seen_at(convergence_step: torch.Tensor, converged: torch.Tensor, input_window: int,
                  timesteps: int) -> torch.Tensor:
    """The step (1-based) at which each sample's silence is seen — the first step without a spike
    at or after the input window —, after which it is dropped; T + 1 for a sample never quiet."""
    seen = convergence_step.clamp(min=input_window - 1) + 1
    return torch.where(converged, seen, torch.full_like(seen, timesteps + 1))


def exit_latency(confident_at: torch.Tensor, convergence_step: torch.Tensor, converged: torch.Tensor,
                 timesteps: int, input_window: int) -> torch.Tensor:
    """Each sample's latency: its confidence step if that comes before its silence is seen (the
    runtime cannot know sooner that its answer is final), else its convergence step, capped at T."""
    seen = quiet_seen_at(convergence_step, converged, input_window, timesteps)
    quiet_at = torch.where(converged, convergence_step, torch.full_like(convergence_step, timesteps))
    confident_at = confident_at.to(quiet_at.dtype)
    return torch.where(confident_at < seen, confident_at, quiet_at).clamp(max=timesteps)


def answer_steps(confident_at: torch.Tensor, convergence_step: torch.Tensor, converged: torch.Tensor,
                 timesteps: int, input_window: int) -> torch.Tensor:
    """The step whose readout is each sample's answer: its confidence step if that comes before its
    silence is seen, else the step its silence is seen (its final readout), capped at T. (A
    membrane readout may still move between the convergence step and that one; counts do not.)"""
    seen = quiet_seen_at(convergence_step, converged, input_window, timesteps)
    confident_at = confident_at.to(seen.dtype)
    return torch.where(confident_at < seen, confident_at, seen).clamp(max=timesteps)


def exit_predictions(readouts: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Each sample's answer at its step (:func:`answer_steps`): ``readouts`` [T, B, C], ``steps``
    [..., B] → [..., B] (every step's prediction once, then one gather per row of steps)."""
    index = (steps.long() - 1).clamp(min=0)
    flat = index.reshape(-1, index.shape[-1])                        # [K, B]
    return predict(readouts)[0].gather(0, flat).reshape(index.shape)


@dataclass(frozen=True)
class ConfidenceRule:
    """What the runtime asks after each step of a ``confidence`` exit: which of the rows still
    simulated leave (their readout ``readout`` confident enough, or the deadline reached)."""

    threshold: float
    temperature: float
    readout: str = DEFAULT_READOUT
    deadline: int | None = None

    def __post_init__(self) -> None:
        check_readout(self.readout)

    def __call__(self, values: torch.Tensor, step: int) -> torch.Tensor:
        """``values`` [rows, C], the readout after ``step`` (1-based) → [rows] bool: exit now."""
        if self.deadline is not None and step >= self.deadline:
            return torch.ones(values.shape[0], dtype=torch.bool, device=values.device)
        return confidence(values, self.temperature) >= self.threshold

    def steps(self, readouts: torch.Tensor) -> torch.Tensor:
        """Each sample's exit step by this rule from readouts [T, B, C] of a run without exit
        (T + 1: never), the deadline included: what :meth:`__call__` decides step by step."""
        return with_deadline(confidence_steps(readouts, self.threshold, self.temperature), self.deadline)


__all__ = ["EXIT_KINDS", "NO_EXIT", "ConfidenceRule", "ExitPolicy", "answer_steps", "confidence", "confidence_steps",
           "exit_latency", "exit_predictions", "parse_exit", "quiet_seen_at", "with_deadline"]
