"""attention family: softmax(Q K^T / sqrt(d)) V per head (Vaswani et al. 2017).

The mixing matrix A = softmax(Q K^T / sqrt(d) + mask) is dense and input dependent. The fast path
never forms it: :func:`longmix.ops.attention.attention_with_lse` streams over keys (the CPU flash
kernel, or a tiled fallback when a window is set), so time is O(L^2) but memory O(L).
"""
from __future__ import annotations

import torch

from ..ops.attention import attention_with_lse, merge_partials
from ..ops.masked import attend_with_nonfinite_kept_local
from ..checks import check_int
from .base import Taxonomy
from .forms import RingHooks
from .qkv import QKVMixer, masked_softmax_matrix
from .registry import register


def window_mask(length: int, window: int | None, causal: bool, device=None) -> torch.Tensor:
    """(L, L) bool, True where query t may read key s: s <= t if causal, |t - s| < window if set."""
    t = torch.arange(length, device=device)
    offset = t[:, None] - t[None, :]  # t - s
    keep = torch.ones(length, length, dtype=torch.bool, device=device)
    if causal:
        keep &= offset >= 0
    if window is not None:
        keep &= offset.abs() < window
    return keep


@register("softmax")
class SoftmaxAttention(RingHooks, QKVMixer):
    """Multi-head softmax self-attention, optionally restricted to a sliding window.

    Args:
        window: if set, query t reads keys s with |t - s| < window (causal: t - window < s <= t),
            i.e. ``window`` keys including itself when causal. None: every key.
        bias: bias in the q/k/v/out projections.

    A NaN or inf key or value reaches only the queries that read it (never an earlier one when
    causal), although the fused kernels score whole tiles and mask afterwards: see
    :func:`longmix.ops.masked.attend_with_nonfinite_kept_local`.
    """

    taxonomy = Taxonomy(family="attention", learned=True, input_dependent=True, causal=True,
                        time="O(L^2)", memory="O(L)")
    nonfinite_causal = True
    #: K/V blocks circulating over the ranks (a halo of window - 1 rows when a window is set).

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 window: int | None = None, bias: bool = True):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len, bias=bias)
        self.window = (None if window is None
                       else check_int("window", window, owner="SoftmaxAttention"))
        self.scale = self.head_dim ** -0.5

    def _attend(self, q, k, v):
        def attend(q, k, v):
            return attention_with_lse(q, k, v, causal=self.causal, scale=self.scale, window=self.window)[0]
        # The fused kernels score whole tiles and mask afterwards (0 * NaN = NaN): keep a NaN or
        # inf key/value to the queries that read it.
        return attend_with_nonfinite_kept_local(attend, q, k, v, self.causal, self.window)

    def _attention_matrix(self, q, k):
        return masked_softmax_matrix(q, k, window_mask(q.shape[1], self.window, self.causal, q.device),
                                     self.scale)

    # -- step mode: a KV cache ------------------------------------------------------------------
    # The cache holds the keys and values of the positions read so far, only the last window - 1
    # of them with a window (a rolling buffer). It grows with L otherwise: no state-passing form.
    def _init_state(self, batch_size, device, dtype):
        empty = torch.zeros(batch_size, 0, self.heads, self.head_dim, device=device, dtype=dtype)
        return {"k": empty, "v": empty.clone()}

    def _forward_with_state(self, x, state):
        q, k, v = self._qkv(x)
        cache_k, cache_v = state["k"].to(k.dtype), state["v"].to(v.dtype)
        keys, values = torch.cat([cache_k, k], 1), torch.cat([cache_v, v], 1)
        cached = cache_k.shape[1]
        if self.window is not None:
            # Prepending `cached` dummy queries aligns query i with key i of the concatenation,
            # so the kernel's top-left causal window is exactly the window of the whole sequence;
            # the cache is at most window - 1 rows, so the dummies cost little.
            padded = torch.cat([q.new_zeros(q.shape[0], cached, *q.shape[2:]), q], 1)
            out = attention_with_lse(padded, keys, values, causal=True, scale=self.scale,
                                     window=self.window)[0][:, cached:]
            first = max(0, keys.shape[1] - (self.window - 1))  # the next query reads none before
            keys, values = keys[:, first:], values[:, first:]
        else:
            out, lse = attention_with_lse(q, k, v, causal=True, scale=self.scale)
            if cached:  # every cached key precedes every query: no mask, then merge the two parts
                past = attention_with_lse(q, cache_k, cache_v, causal=False, scale=self.scale)
                out = merge_partials([out, past[0]], [lse, past[1]])[0]
        dtype = state["k"].dtype
        return self._merge(out), {"k": keys.to(dtype), "v": values.to(dtype)}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window={self.window}"
