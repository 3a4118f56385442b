"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""
from __future__ import annotations

import functools
import math

import torch


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.1) -> float:
    """The lr multiplier before optimizer step ``step`` (0-based).

    Rises linearly from 1/warmup to 1 over the first ``warmup`` steps, then follows a half
    cosine from 1 at step ``warmup`` to ``min_ratio`` at step ``total``; constant afterwards.
    """
    if total < 1 or not 0 <= warmup <= total:
        raise ValueError(f"need total >= 1 and 0 <= warmup <= total, got total={total}, warmup={warmup}")
    if step < warmup:
        return (step + 1) / warmup
    if total == warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup: int,
                    min_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following :func:`warmup_cosine`; its state_dict round-trips through checkpoints."""
    fn = functools.partial(warmup_cosine, total=total, warmup=warmup, min_ratio=min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
