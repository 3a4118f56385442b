"""What a training step scores: the targets kept, the summed cross entropy over them, and the
correct predictions among them. Shared by the padded loop and the packed one (``packed_step``)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..models.model import IGNORE_INDEX

UNSCORED = IGNORE_INDEX  # the target of a position that is not scored (cross entropy's ignore_index)


def scored_targets(y: torch.Tensor, kind: str, pad_id: int, last: int | None = None) -> torch.Tensor:
    """``y`` with every position that is not scored set to :data:`UNSCORED`.

    lm: y (B, L); pad targets (and negative ones) are not scored, and ``last`` keeps only the last
    ``last`` positions. Marking them on the whole sequence *before* it is split over ranks keeps
    "the last positions" global. classify: y (B,) is returned as is.
    """
    if kind != "lm":
        return y
    keep = (y != pad_id) & (y >= 0)
    if last is not None:
        keep[:, : max(0, y.shape[1] - last)] = False
    return torch.where(keep, y, torch.full_like(y, UNSCORED))


def loss_sum(logits: torch.Tensor, target: torch.Tensor, kind: str) -> tuple[torch.Tensor, int]:
    """Summed cross entropy (nats) over the scored targets, and their number.

    classify: logits (B, C), target (B,). lm: logits (B, L, V), target (B, L) from
    :func:`scored_targets` (any L: this rank's shard of the sequence, or all of it).
    """
    if kind != "lm":
        return F.cross_entropy(logits, target, reduction="sum"), target.numel()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=UNSCORED, reduction="sum")
    return loss, int((target != UNSCORED).sum())


def training_loss_sum(model: torch.nn.Module, tokens: torch.Tensor, target: torch.Tensor,
                      kind: str, **kwargs) -> tuple[torch.Tensor, int]:
    """:func:`loss_sum` of ``model(tokens, **kwargs)`` for a training step, and the number of
    scored targets.

    lm with a longmix model (``lm_loss_sum``: a ``SequenceModel`` or its sequence-parallel form,
    on this rank's shard): the same loss computed a chunk of positions at a time, so that the step
    never holds the (B, L, vocab) logits nor their gradient. A transformers model builds its
    logits inside its own forward, and a classifier has one row per sequence: the plain head
    and loss."""
    chunked = getattr(model, "lm_loss_sum", None)
    if kind != "lm" or chunked is None:
        return loss_sum(model(tokens, **kwargs), target, kind)
    return chunked(tokens, target, **kwargs), int((target != UNSCORED).sum())


def correct(logits: torch.Tensor, target: torch.Tensor, kind: str) -> int:
    """How many scored targets the argmax of ``logits`` gets right (layouts of :func:`loss_sum`)."""
    if kind != "lm":
        return int((logits.argmax(-1) == target).sum())
    # lm with labels at some positions (e.g. MQAR's queries): the scored ones
    return int(((logits.argmax(-1) == target) & (target != UNSCORED)).sum())
