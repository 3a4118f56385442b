"""Shared shell of the attention-like mixers: out = W_o [A_h(X) V_h]_h with Q, K, V = X W_q, X W_k, X W_v.

The attention, kernel and sparse families differ only in how they form the (L x L) row-stochastic
mixing matrix A_h from Q and K, and in how their fast path avoids materializing it. A subclass
implements two hooks on per-head tensors of layout (batch, length, heads, head_dim):

* ``_attend(q, k, v) -> out`` (batch, length, heads, head_dim): the fast path;
* ``_attention_matrix(q, k) -> A`` (batch, heads, L, L): the literal mixing matrix.

The literal path ``_reference`` is then the same for all of them: A @ V per head.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from .base import TokenMixer
from .forms import ShuffleHooks


class QKVMixer(ShuffleHooks, TokenMixer):
    """Base class: q/k/v/out projections around a per-head mixing of the values."""

    uses_heads = True

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 bias: bool = True):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.to_out = nn.Linear(dim, dim, bias=bias)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, length, dim) -> q, k, v each (batch, length, heads, head_dim)."""
        return rearrange(self.to_qkv(x), "b l (three h d) -> three b l h d", three=3, h=self.heads).unbind(0)

    def _kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v of :meth:`_qkv` without projecting q: for rows whose queries are not needed (a
        cache's keys, a halo), where q would be as large as k and v together."""
        dim, weight, bias = self.dim, self.to_qkv.weight, self.to_qkv.bias  # rows: q | k | v
        kv = F.linear(x, weight[dim:], None if bias is None else bias[dim:])
        return rearrange(kv, "b l (two h d) -> two b l h d", two=2, h=self.heads).unbind(0)

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        return self.to_out(rearrange(out, "b l h d -> b l (h d)"))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_by_groups(x)

    # -- shuffle hooks: heads are the groups; a head's q, k, v travel as one (3, head_dim) stream

    def shuffle_groups(self) -> int:
        return self.heads

    def _shuffle_prepare(self, x, pieces):
        return rearrange(self.to_qkv(x), "b l (three h d) -> b l h three d", three=3, h=self.heads), None, None

    def _shuffle_mix(self, streams, shared, groups):
        return self._attend(*streams.unbind(-2))

    def _shuffle_finish(self, mixed, ctx):
        return self._merge(mixed)

    def _mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        q, k, _ = self._qkv(x)
        return self._attention_matrix(q, k)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        return self._merge(torch.einsum("bhts,bshd->bthd", self._attention_matrix(q, k), v))

    # -- to implement ------------------------------------------------------------------------
    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _attention_matrix(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def masked_softmax_matrix(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale * Q K^T, masked) per head, materialized: (batch, heads, Lq, Lk).

    q, k: (batch, length, heads, head_dim); mask: bool, broadcastable to (Lq, Lk), True = keep.
    Every row must keep at least one key.
    """
    scores = torch.einsum("bthd,bshd->bhts", q, k) * scale
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)
