"""Packed documents: many documents in one sequence, described by ``cu_seqlens``.

flash-attn's and fla's convention: ``cu_seqlens`` is a 1-D integer tensor of cumulative document
starts over the packed length L, ``[0, l1, l1 + l2, ..., L]``, and packed input has batch 1. No
token may read, or carry state across, a document boundary: a mixer's output on packed input is,
by definition, each document run alone, concatenated.

Pure functions on plain integers once validated (``bounds``: the tuple of cu_seqlens), so every
layer and every rank can use them without touching a device.
"""
from __future__ import annotations

import bisect

import torch

_INT_DTYPES = (torch.int32, torch.int64)


def check_cu_seqlens(cu_seqlens, length: int | None, *, batch: int | None = None,
                     owner: str | None = None) -> tuple[int, ...]:
    """Validate ``cu_seqlens`` for a packed sequence of ``length`` rows; return it as a tuple.

    Raises a ValueError naming ``cu_seqlens`` (prefixed by ``owner``) and what was expected: a
    1-D int32/int64 tensor, starting at 0, strictly increasing (every document has >= 1 token),
    ending at ``length`` (None: not checked here, e.g. a rank that holds only its shard checks
    it once the ranks agreed on L, with :func:`check_ends_at`); and ``batch`` (when given) must
    be 1."""
    where = f"{owner}: " if owner else ""
    expected = (f"a 1-D int32/int64 tensor [0, l1, l1 + l2, ..., {'L' if length is None else length}] "
                "of cumulative document starts")
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"{where}cu_seqlens must be {expected}, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in _INT_DTYPES:
        raise ValueError(f"{where}cu_seqlens must be {expected}, got dtype {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{where}cu_seqlens must be {expected} (at least 2 entries), got shape "
                         f"{tuple(cu_seqlens.shape)}")
    bounds = tuple(int(b) for b in cu_seqlens.tolist())
    if bounds[0] != 0:
        raise ValueError(f"{where}cu_seqlens must start at 0, got {list(bounds)[:8]}")
    steps = [b - a for a, b in zip(bounds, bounds[1:])]
    if min(steps) < 1:
        at = steps.index(min(steps))
        raise ValueError(f"{where}cu_seqlens must be strictly increasing (every document at least "
                         f"1 token), got {bounds[at]} then {bounds[at + 1]} at entries {at}, {at + 1}")
    if length is not None:
        check_ends_at(bounds, length, batch=batch, owner=owner)
    return bounds


def check_ends_at(bounds: tuple[int, ...], length: int, *, batch: int | None = None,
                  owner: str | None = None) -> None:
    """The checks of :func:`check_cu_seqlens` that need the packed length and batch."""
    where = f"{owner}: " if owner else ""
    if bounds[-1] != length:
        raise ValueError(f"{where}cu_seqlens must end at the packed length {length}, got {bounds[-1]}")
    if batch is not None and batch != 1:
        raise ValueError(f"{where}packed input (cu_seqlens given) must have batch 1, got batch {batch}")


def spans(bounds) -> list[tuple[int, int]]:
    """(start, stop) of each document."""
    return list(zip(bounds, bounds[1:]))


def cuts_within(bounds, start: int, stop: int) -> list[int]:
    """Document starts s with start < s < stop: where the rows [start, stop) must be cut."""
    lo = bisect.bisect_right(bounds, start)
    hi = bisect.bisect_left(bounds, stop)
    return list(bounds[lo:hi])


def document_positions(bounds, positions: torch.Tensor) -> torch.Tensor:
    """Each global row index in ``positions`` minus the start of its document (positions restart
    at every document)."""
    starts = torch.tensor(bounds[:-1], dtype=positions.dtype, device=positions.device)
    which = torch.searchsorted(starts, positions, right=True) - 1
    return positions - starts[which]


def by_documents(fn, bounds, *tensors):
    """``fn`` applied to each document's rows of ``tensors`` (dim 1; None passes through),
    the results concatenated along dim 1: the definition of a packed run."""
    return torch.cat([fn(*(None if t is None else t[:, a:b] for t in tensors))
                      for a, b in spans(bounds)], 1)
