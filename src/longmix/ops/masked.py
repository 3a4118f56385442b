"""Masked sums that keep non-finite values where the mask puts them.

Attention-like kernels compute ``weights @ values`` with weights set to 0 where the mask forbids a
pair (a future key, a key outside the block pattern). In IEEE arithmetic 0 * NaN = 0 * inf = NaN,
so one non-finite value at a forbidden position would still turn every row of the product NaN: a
NaN at position s would reach outputs before s in a causal kernel. The same holds for an FFT
convolution, which spreads every input over every output. The helpers here compute with the
finite part of the values, then mark NaN exactly the outputs whose sum reads a non-finite value.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def masked_weighted_sum(weights: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``weights @ values`` (..., rows, keys) @ (..., keys, d) -> (..., rows, d), where ``weights``
    is 0 wherever the bool ``allowed`` (broadcastable to weights) is False.

    Rows that read a non-finite value (allowed[row, key] and values[key, j] not finite) get NaN in
    column j; no other row sees it. With finite values this is one matmul; otherwise the finite
    part is multiplied and the rows reading non-finite entries are found by a second product of
    0/1 indicators (exact: a sum of non-negative terms is > 0 iff one of them is).
    """
    nonfinite = ~torch.isfinite(values)
    if not nonfinite.any():
        return weights @ values
    out = weights @ values.masked_fill(nonfinite, 0)
    reads = (allowed.to(values.dtype) @ nonfinite.to(values.dtype)) > 0
    return out.masked_fill(reads, float("nan"))


def reads_any(flags: torch.Tensor, before: int, after: int, dim: int = -2) -> torch.Tensor:
    """For a bool ``flags`` along the sequence dimension ``dim``: is any flag set in row t's window
    [t - before, t + after]? Same shape as flags; counted exactly by differences of an integer
    prefix sum, O(L) whatever the window."""
    flags = flags.movedim(dim, -1)
    length = flags.shape[-1]
    counts = F.pad(flags.to(torch.int64).cumsum(-1), (1, 0))  # counts[..., i]: flags in rows < i
    t = torch.arange(length, device=flags.device)
    high = (t + after + 1).clamp(max=length)
    low = (t - before).clamp(min=0)
    return (counts.index_select(-1, high) > counts.index_select(-1, low)).movedim(-1, dim)


def attend_with_nonfinite_kept_local(attend: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     causal: bool, window: int | None = None) -> torch.Tensor:
    """``attend(q, k, v)`` for self-attention over one sequence (q, k, v (batch, L, heads, d), query
    t reading keys s <= t if ``causal`` and |t - s| < ``window`` if set), such that a non-finite
    key or value reaches only the queries that read it: a fused kernel that scores whole tiles and
    masks afterwards would pass it to earlier queries of the tile as 0 * NaN.

    A non-finite key makes the whole output row of a reading query NaN (its scores are NaN), a
    non-finite value only its own column, as the unmasked formula does.
    """
    bad_k, bad_v = ~torch.isfinite(k).all(-1, keepdim=True), ~torch.isfinite(v)
    bad = bad_k | bad_v  # (batch, L, heads, d): the columns of a reading query that turn NaN
    if not bad.any():
        return attend(q, k, v)
    out = attend(q, k.masked_fill(bad_k, 0), v.masked_fill(bad_v, 0))
    reach = k.shape[1] if window is None else window
    return out.masked_fill(reads_any(bad, before=reach - 1, after=0 if causal else reach - 1, dim=1),
                           float("nan"))
