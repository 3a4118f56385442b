"""attention family: softmax(Q K^T / sqrt(d)) V per head (Vaswani et al. 2017).

The mixing matrix A = softmax(Q K^T / sqrt(d) + mask) is dense and input dependent. The fast path
never forms it: :func:`longmix.ops.attention.attention_with_lse` streams over keys (the CPU flash
kernel, or a tiled fallback when a window is set), so time is O(L^2) but memory O(L).
"""
from __future__ import annotations

import torch

from ..ops.attention import attention_with_lse
from .base import Taxonomy, check_int
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
class SoftmaxAttention(QKVMixer):
    """Multi-head softmax self-attention, optionally restricted to a sliding window.

    Args:
        window: if set, query t reads keys s with |t - s| < window (causal: t - window < s <= t),
            i.e. ``window`` keys including itself when causal. None: every key.
        bias: bias in the q/k/v/out projections.
    """

    taxonomy = Taxonomy(family="attention", learned=True, input_dependent=True, causal=True,
                        time="O(L^2)", memory="O(L)")

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 window: int | None = None, bias: bool = True):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len, bias=bias)
        self.window = None if window is None else check_int("SoftmaxAttention", "window", window)
        self.scale = self.head_dim ** -0.5

    def _attend(self, q, k, v):
        out, _ = attention_with_lse(q, k, v, causal=self.causal, scale=self.scale, window=self.window)
        return out

    def _attention_matrix(self, q, k):
        return masked_softmax_matrix(q, k, window_mask(q.shape[1], self.window, self.causal, q.device),
                                     self.scale)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window={self.window}"
