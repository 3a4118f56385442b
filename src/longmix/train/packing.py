"""Packed training data (``longmix train --pack``): whole documents laid end to end in sequences
of ``--context`` tokens, each with its ``cu_seqlens`` (flash-attn's varlen convention, batch 1
per sequence), so that no compute goes to padding between documents.

A packed batch of ``rows`` sequences is filled, one sequence after the other, from the task's
document stream (:meth:`longmix.tasks.Task.documents`), first fit with a short look-ahead: a
document that does not fit in the room left is held back, and the oldest held-back document that
fits goes first, before a new one is drawn; once :data:`LOOK_AHEAD` documents are held back, the
room left becomes one segment of ``pad_id`` tokens that nothing reads from and nothing scores
(its own document in ``cu_seqlens``), and the next sequence starts with the held-back documents.
Those still held back when the batch is full are not used. Deterministic: the stream is. Each
document keeps its own next-token targets, so no target lies across a document boundary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

#: Documents held back (drawn, not yet fitted) before the rest of a sequence is padded: more
#: fills the room better and draws further ahead (benchmarks/packed_vs_padded.py reports the
#: padding left).
LOOK_AHEAD = 8


@dataclass(frozen=True)
class PackedBatch:
    """``x``, ``y`` (rows, context) tokens and targets (``pad_id``: not scored); ``cu_seqlens``:
    one int64 tensor per row, over that row; ``drawn``: the index in the document stream of
    each document placed, in the order placed; ``tokens``: their tokens (the rest of the
    ``rows * context``, is padding)."""

    x: torch.Tensor
    y: torch.Tensor
    cu_seqlens: tuple[torch.Tensor, ...]
    drawn: tuple[int, ...]
    tokens: int

    @property
    def documents(self) -> int:
        return len(self.drawn)

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
    """``rows`` sequences of ``context`` tokens filled from ``documents`` (1-D (x, y) pairs of
    equal length >= 1); see the module docstring."""
    stream = enumerate(documents)
    x = torch.full((rows, context), pad_id, dtype=torch.long)
    y = torch.full((rows, context), pad_id, dtype=torch.long)
    cu, drawn, tokens, held = [], [], 0, []  # held: (stream index, x, y), oldest first
    for row in range(rows):
        bounds = [0]
        while bounds[-1] < context:
            at = bounds[-1]
            fits = next((i for i, (_, dx, _) in enumerate(held) if at + len(dx) <= context), None)
            if fits is not None:
                index, doc_x, doc_y = held.pop(fits)
            elif len(held) >= LOOK_AHEAD:
                bounds.append(context)  # the room left: one unscored pad segment
                break
            else:
                index, (doc_x, doc_y) = _next(stream)
                if len(doc_x) > context:
                    raise too_long(task_name, len(doc_x), context)
                if at + len(doc_x) > context:
                    held.append((index, doc_x, doc_y))
                    continue
            x[row, at:at + len(doc_x)], y[row, at:at + len(doc_x)] = doc_x, doc_y
            bounds.append(at + len(doc_x))
            drawn.append(index)
            tokens += len(doc_x)
        cu.append(torch.tensor(bounds, dtype=torch.int64))
    return PackedBatch(x, y, tuple(cu), tuple(drawn), tokens)


def packed_batch(task, split: str, index: int, rows: int, context: int) -> PackedBatch:
    """Packed batch ``index`` of ``split``: deterministic in the task's seed, ``split`` and
    ``index`` (a resumed run sees the batches an uninterrupted one would)."""
    return pack(task.documents(split, index), rows, context, task.pad_id, task.name)


def _next(stream: Iterator):
    try:
        index, (doc_x, doc_y) = next(stream)
    except StopIteration:
        raise ValueError("--pack: the task's document stream ended before the packed batch was "
                         "full") from None
    if len(doc_x) < 1 or doc_x.shape != doc_y.shape:
        raise ValueError(f"--pack: a document must be a pair (x, y) of equal 1-D lengths >= 1, got "
                         f"shapes {tuple(doc_x.shape)} and {tuple(doc_y.shape)}")
    return index, (doc_x, doc_y)
