"""Matched models: within a task, every mixer gets (about) the same number of parameters.

Comparing a 25k-parameter Transformer with a 31k-parameter Hyena mixes the effect of the mixer
with the effect of size. The Long Range Arena keeps parameter counts within +-10% across
models; so does the study. The knob is the model width ``dim``: for each mixer, the even width
whose parameter count is closest to the reference mixer's at the grid's width.

Counts exclude the learned position table (``context x dim``, absent for sinusoidal, rotary
and no positions): it holds no mixing capacity, and counting it would make the match depend on
the context and on which positional scheme the validation sweep picks.
"""
from __future__ import annotations

from dataclasses import replace

from .. import tasks
from ..models import SequenceModel
from ..train import TrainConfig
from ..train.loop import model_config

TOLERANCE = 0.10  # LRA's rule: counts within +-10%
_COUNTS: dict = {}


def parameter_count(cfg: TrainConfig) -> int:
    """Trainable parameters of ``cfg``'s model, without the learned position table (see above)."""
    key = (cfg.task, repr(sorted(cfg.task_params.items())), cfg.mixer, cfg.dim, cfg.depth, cfg.heads,
           cfg.context, repr(sorted(cfg.mixer_options.items())))
    if key not in _COUNTS:
        task = tasks.build(cfg.task, seed=0, **cfg.task_params)
        model = SequenceModel(model_config(replace(cfg, positional="none"), task))
        _COUNTS[key] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return _COUNTS[key]


def matched_dim(cfg: TrainConfig, target: int, low: int = 4, high: int = 1024) -> tuple[int, int]:
    """(dim, count): the width, a multiple of ``2 * cfg.heads``, whose count is closest to
    ``target`` (counts grow with the width, so a bisection finds it). Raises ValueError if the
    closest is still more than :data:`TOLERANCE` away."""
    step = 2 * cfg.heads
    lo, hi = max(low // step, 1), high // step  # in units of `step`

    def count(units: int) -> int:
        return parameter_count(replace(cfg, dim=units * step))

    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid
        else:
            hi = mid
    units = min((lo, hi), key=lambda u: abs(count(u) - target))
    got = count(units)
    if abs(got - target) > TOLERANCE * target:
        raise ValueError(f"mixer {cfg.mixer!r}: no width in [{low}, {high}] gets within "
                         f"{TOLERANCE:.0%} of {target} parameters (closest: dim {units * step}, {got})")
    return units * step, got
