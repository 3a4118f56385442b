"""Packed training data (``longmix train --pack``): whole documents laid end to end in sequences
of ``--context`` tokens, each with its ``cu_seqlens`` (flash-attn's varlen convention, batch 1
per sequence), so that no compute goes to padding between documents.

A packed batch of ``rows`` sequences is filled from the task's document stream
(:meth:`longmix.tasks.Task.documents`) in order: a document that does not fit in the room left
in the current sequence starts the next one, and the room left at the end of a sequence becomes
one segment of ``pad_id`` tokens that nothing reads from and nothing scores (its own document in
``cu_seqlens``). The document that does not fit in the last sequence is not used. Each document
keeps its own next-token targets, so no target lies across a document boundary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch


@dataclass(frozen=True)
class PackedBatch:
    """``x``, ``y`` (rows, context) tokens and targets (``pad_id``: not scored); ``cu_seqlens``:
    one int64 tensor per row, over that row; ``documents`` and ``tokens``: the task's documents
    and their tokens in the batch (the rest, ``rows * context - tokens``, is padding)."""

    x: torch.Tensor
    y: torch.Tensor
    cu_seqlens: tuple[torch.Tensor, ...]
    documents: int
    tokens: int

    @property
    def rows(self) -> int:
        return self.x.shape[0]

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / self.x.numel()

    def flat(self) -> torch.Tensor:
        """Everything the batch holds, as one int64 vector (to compare batches across ranks)."""
        return torch.cat([self.x.flatten(), self.y.flatten(), *self.cu_seqlens])


def too_long(name: str, length: int, context: int) -> ValueError:
    return ValueError(f"--pack: task {name!r} has documents of up to {length} tokens, more than "
                      f"--context {context}; every document must fit in one packed sequence: use "
                      f"--context >= {length}, or shorter documents (--task-param length=...)")


def check_packable(task, context: int) -> None:
    """ValueError naming ``--pack`` unless ``task``'s documents can be packed into ``context``:
    a language-modelling task whose longest document (``task.length``) fits."""
    if task.kind != "lm":
        raise ValueError(f"--pack needs a language-modelling task (a target per token); task "
                         f"{task.name!r} is a {task.kind} task, one label per sequence")
    if task.length > context:
        raise too_long(task.name, task.length, context)


def check_mixers_pack(model: torch.nn.Module, mixer_name: str) -> None:
    """ValueError naming ``--pack`` when a mixer of ``model`` cannot mix packed documents."""
    from ..mixers import TokenMixer

    for module in model.modules():
        if isinstance(module, TokenMixer) and module.packed_refusal() is not None:
            raise ValueError(f"--pack: mixer {mixer_name!r} cannot run packed documents: "
                             f"{module.packed_refusal()}; train it without --pack")


def pack(documents: Iterable[tuple[torch.Tensor, torch.Tensor]], rows: int, context: int,
         pad_id: int, task_name: str = "task") -> PackedBatch:
    """``rows`` sequences of ``context`` tokens filled in order from ``documents`` (1-D (x, y)
    pairs of equal length >= 1); see the module docstring."""
    documents = iter(documents)
    x = torch.full((rows, context), pad_id, dtype=torch.long)
    y = torch.full((rows, context), pad_id, dtype=torch.long)
    cu, count, tokens, pending = [], 0, 0, None
    for row in range(rows):
        bounds = [0]
        while bounds[-1] < context:
            doc_x, doc_y = pending if pending is not None else _next(documents)
            pending, n, at = None, len(doc_x), bounds[-1]
            if n > context:
                raise too_long(task_name, n, context)
            if at + n > context:
                pending = doc_x, doc_y  # starts the next sequence
                bounds.append(context)  # the room left: one unscored pad segment
                break
            x[row, at:at + n], y[row, at:at + n] = doc_x, doc_y
            bounds.append(at + n)
            count, tokens = count + 1, tokens + n
        cu.append(torch.tensor(bounds, dtype=torch.int64))
    return PackedBatch(x, y, tuple(cu), count, tokens)


def packed_batch(task, split: str, index: int, rows: int, context: int) -> PackedBatch:
    """Packed batch ``index`` of ``split``: deterministic in the task's seed, ``split`` and
    ``index`` (a resumed run sees the batches an uninterrupted one would)."""
    return pack(task.documents(split, index), rows, context, task.pad_id, task.name)


def _next(documents: Iterator):
    try:
        doc_x, doc_y = next(documents)
    except StopIteration:
        raise ValueError("--pack: the task's document stream ended before the packed batch was "
                         "full") from None
    if len(doc_x) < 1 or doc_x.shape != doc_y.shape:
        raise ValueError(f"--pack: a document must be a pair (x, y) of equal 1-D lengths >= 1, got "
                         f"shapes {tuple(doc_x.shape)} and {tuple(doc_y.shape)}")
    return doc_x, doc_y
