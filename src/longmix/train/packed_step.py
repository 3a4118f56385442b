"""One training step, and one evaluation batch, on a :class:`~.packing.PackedBatch`.

Each packed sequence runs alone, batch 1 with its ``cu_seqlens`` (flash-attn's varlen
convention); on P ranks each is split over the sequence ranks (the model was parallelized with
``packed=True``) and the rows of a data x seq grid take their part of the sequences. The loss is
the mean over every scored target of the batch: each sequence's backward adds its share, so the
gradient is that of the whole batch, as if every document had run alone.
"""
from __future__ import annotations

import torch

from .loss import UNSCORED, correct, loss_sum, scored_targets
from .packing import PackedBatch
from .ranks import Ranks


def _my_rows(batch: PackedBatch, ranks: Ranks) -> list[int]:
    """The sequences this rank's row of the data x seq grid runs (all of them without a grid)."""
    return ranks.batch_part(torch.arange(batch.rows)).tolist()


def _forward(runner, batch: PackedBatch, target: torch.Tensor, row: int, ranks: Ranks, device):
    """(this rank's summed loss of sequence ``row``, its scored targets, logits, target shard)."""
    tokens = ranks.shard(batch.x[row:row + 1]).to(device)
    mine = ranks.shard(target[row:row + 1]).to(device)
    logits = runner(tokens, cu_seqlens=batch.cu_seqlens[row].to(device))
    total, n = loss_sum(logits, mine, "lm")
    return total, n, logits, mine


def packed_step(runner, batch: PackedBatch, pad_id: int, ranks: Ranks, device) -> float:
    """Forward and backward of every sequence of ``batch`` (gradients accumulate into the
    parameters' ``.grad``; reduce them over the ranks afterwards); returns the batch's mean loss
    (nats per scored target), the same on every rank."""
    target = scored_targets(batch.y, "lm", pad_id)
    scored = max(int((target != UNSCORED).sum()), 1)  # every rank holds the whole batch
    local = torch.zeros((), dtype=torch.float64)
    for row in _my_rows(batch, ranks):
        total, _, _, _ = _forward(runner, batch, target, row, ranks, device)
        (total / scored).backward()
        local += total.detach().double().cpu()
    return ranks.sum(local).item() / scored


@torch.no_grad()
def packed_eval_sums(runner, batch: PackedBatch, pad_id: int, ranks: Ranks, device) -> torch.Tensor:
    """(summed loss, scored targets, correct predictions) of this rank's part of ``batch``,
    float64; their sum over the ranks is the batch's."""
    target = scored_targets(batch.y, "lm", pad_id)
    sums = torch.zeros(3, dtype=torch.float64)
    for row in _my_rows(batch, ranks):
        total, n, logits, mine = _forward(runner, batch, target, row, ranks, device)
        sums += torch.tensor([total.item(), n, correct(logits, mine, "lm")], dtype=torch.float64)
    return sums
