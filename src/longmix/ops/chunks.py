"""Helpers shared by the chunked recurrences (:mod:`longmix.ops.ssd`, :mod:`longmix.ops.delta_rule`):
cutting a sequence into equal chunks, and keeping a non-finite input out of the past.

A chunked recurrence multiplies whole chunk x chunk blocks whose future entries are 0; in IEEE
arithmetic 0 * NaN = NaN, so a NaN at position s would reach the outputs before s in its chunk.
The recurrence itself carries a non-finite input only forward (every later state reads it), so
the guard computes on the finite part and marks NaN the outputs at and after the first
non-finite position of each (sequence, head), which is where the recurrence puts it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .masked import reads_any


def to_chunks(t: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(batch, L, ...) -> (batch, ceil(L / chunk_size), chunk_size, ...), zero-padded at the end
    (a zero step: no decay, no input, so the final state is unchanged by the padding)."""
    pad = -t.shape[1] % chunk_size
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t.reshape(t.shape[0], -1, chunk_size, *t.shape[2:])


def from_chunks(t: torch.Tensor, length: int) -> torch.Tensor:
    """(batch, chunks, chunk_size, ...) -> (batch, length, ...): the padding dropped."""
    return t.reshape(t.shape[0], -1, *t.shape[3:])[:, :length]


def nonfinite_heads(*tensors: torch.Tensor) -> torch.Tensor | None:
    """Per (batch, L, heads): does any of ``tensors`` (batch, L, heads, ...) or (batch, L, heads)
    hold a non-finite value there? None when all are finite (the usual case, one check)."""
    bad = None
    for t in tensors:
        flags = ~torch.isfinite(t)
        flags = flags.flatten(3).any(-1) if flags.dim() > 3 else flags
        bad = flags if bad is None else bad | flags
    return bad if bad.any() else None


def zero_where(t: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """t (batch, L, heads, ...) with the flagged (batch, L, heads) entries set to 0."""
    return t.masked_fill(bad.reshape(*bad.shape, *(1,) * (t.dim() - 3)), 0)


def nan_from_first(y: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """y (batch, L, heads, d) with NaN at and after each (batch, head)'s first flagged position."""
    reached = reads_any(bad, before=bad.shape[1], after=0, dim=1)
    return y.masked_fill(reached.unsqueeze(-1), float("nan"))
