"""One training step, and one evaluation batch, on a :class:`~.packing.PackedBatch`.

Each packed sequence runs alone, batch 1 with its ``cu_seqlens`` (flash-attn's varlen
convention); on P ranks each is split over the sequence ranks (the model was parallelized with
``packed=True``) and the rows of a data x seq grid take their part of the sequences. The loss is
the mean over every scored target of the batch: each sequence's backward adds its share, so the
gradient is that of the whole batch, as if every document had run alone. A step computes the
loss a chunk of positions at a time (``training_loss_sum``); evaluation keeps the logits.
"""
from __future__ import annotations

import torch

from .loss import UNSCORED, correct, loss_sum, scored_targets, training_loss_sum
from .packing import PackedBatch
from .ranks import Ranks


def _my_rows(batch: PackedBatch, ranks: Ranks) -> list[int]:
    """The sequences this rank's row of the data x seq grid runs (all of them without a grid)."""
    return ranks.batch_part(torch.arange(batch.rows)).tolist()


def _shards(batch: PackedBatch, target: torch.Tensor, row: int, ranks: Ranks, device):
    """This rank's shards of sequence ``row``'s tokens and targets, and its cu_seqlens."""
    tokens = ranks.shard(batch.x[row:row + 1]).to(device)
    mine = ranks.shard(target[row:row + 1]).to(device)
    return tokens, mine, batch.cu_seqlens[row].to(device)


def packed_step(runner, batch: PackedBatch, pad_id: int, ranks: Ranks, device) -> float:
    """Forward and backward of every sequence of ``batch`` (gradients accumulate into the
    parameters' ``.grad``; reduce them over the ranks afterwards); returns the batch's mean loss
    (nats per scored target), the same on every rank."""
    target = scored_targets(batch.y, "lm", pad_id)
    scored = max(int((target != UNSCORED).sum()), 1)  # every rank holds the whole batch
    local = torch.zeros((), dtype=torch.float64)
    for row in _my_rows(batch, ranks):
        tokens, mine, cu_seqlens = _shards(batch, target, row, ranks, device)
        total, _ = training_loss_sum(runner, tokens, mine, "lm", cu_seqlens=cu_seqlens)
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
        tokens, mine, cu_seqlens = _shards(batch, target, row, ranks, device)
        logits = runner(tokens, cu_seqlens=cu_seqlens)
        total, n = loss_sum(logits, mine, "lm")
        sums += torch.tensor([total.item(), n, correct(logits, mine, "lm")], dtype=torch.float64)
    return sums
