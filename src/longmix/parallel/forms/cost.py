"""What a parallel form costs one layer: feasible or why not, the bytes each rank sends, and (with
a calibrated :class:`~longmix.parallel.forms.timing.StepTiming`) the predicted step time."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FormCost:
    """One form for one layer: feasible or why not, and bytes sent per rank (forward, backward)."""

    form: str
    feasible: bool
    reason: str = ""
    forward_bytes: tuple[int, ...] | None = None   # per rank; None: not predicted
    backward_bytes: tuple[int, ...] | None = None
    step_seconds: float | None = None  # one training step, busiest rank; None: not predicted


def element_size(dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def accumulator_size(dtype) -> int:
    return 8 if dtype == torch.float64 else 4
