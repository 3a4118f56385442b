"""lowrank family: attention whose L x L matrix is factored through k << L length-wise slots.

* ``linformer`` (Wang et al. 2020): learned projections E, F (k x max_len) compress the keys
  and values along the length, so the attention matrix P = softmax(Q (E K)^T / sqrt(d)) is
  L x k and the mixing matrix P F has rank <= k.
* ``nystrom`` (Xiong et al. 2021): a Nystrom approximation of softmax attention through m
  landmarks (segment means of Q and K): M = F A^+ B with F = softmax(Q K~^T), A = softmax(Q~ K~^T),
  B = softmax(Q~ K^T).

Both are multi-head on the shared q/k/v/out shell :class:`~longmix.mixers.qkv.QKVMixer`, whose
literal path is (mixing matrix) @ V per head. Layouts: x (batch, L, dim); per head
(batch, heads, L, head_dim) inside; mixing matrices (batch, heads, L, L), applied to the values.
Neither can be causal: a slot mixes positions from the whole sequence.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from ..ops.pinv import iterative_pinv_solve
from ..checks import check_int
from .base import Taxonomy
from .qkv import QKVMixer
from .registry import register


def _heads_first(*tensors: torch.Tensor):
    """(batch, L, heads, head_dim) -> (batch, heads, L, head_dim), the layout of the matmuls here."""
    return [rearrange(t, "b l h d -> b h l d") for t in tensors]


@register("linformer")
class Linformer(QKVMixer):
    """Linformer: softmax(Q (E K)^T / sqrt(d)) (F V), with E, F (proj_len x max_len) learned.

    One E and one F are shared by all heads (the paper's "headwise sharing"). For L < max_len
    the first L columns of E and F are used. E and F start from N(0, 1/k), the distribution of
    the paper's Johnson-Lindenstrauss argument (Thm. 1); they are trained like any weight.

    Args:
        proj_len: k, the number of length-wise slots (rank of the mixing matrix <= k).
    """

    taxonomy = Taxonomy("lowrank", learned=True, input_dependent=True, causal=False,
                        time="O(L k)", memory="O(L k)")
    requires_max_len = True

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 proj_len: int = 64):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len)
        check_int("proj_len", proj_len, owner="Linformer")
        self.proj_len = proj_len
        self.E = nn.Parameter(torch.randn(proj_len, max_len) / math.sqrt(proj_len))
        self.F = nn.Parameter(torch.randn(proj_len, max_len) / math.sqrt(proj_len))

    def _slot_attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """P = softmax(Q (E K)^T / sqrt(d)), (b, h, L, proj_len), from q, k (b, h, L, d)."""
        k_slots = torch.einsum("kl,bhld->bhkd", self.E[:, :q.shape[-2]], k)
        return torch.softmax(q @ k_slots.mT * self.head_dim ** -0.5, dim=-1)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = _heads_first(q, k, v)
        v_slots = torch.einsum("kl,bhld->bhkd", self.F[:, :v.shape[-2]], v)  # (b, h, k, d)
        return rearrange(self._slot_attention(q, k) @ v_slots, "b h l d -> b l h d")

    def _attention_matrix(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """P F, (batch, heads, L, L): rank <= proj_len, applied to the values."""
        q, k = _heads_first(q, k)
        return self._slot_attention(q, k) @ self.F[:, :q.shape[-2]]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, proj_len={self.proj_len}"


def segment_means(x: torch.Tensor, segments: int) -> torch.Tensor:
    """Means of ``segments`` contiguous pieces of x (..., L, d) along L -> (..., segments, d).

    Pieces differ in size by at most one, the longer ones first (``torch.tensor_split``), so any
    L >= segments works without padding.
    """
    return torch.stack([piece.mean(dim=-2) for piece in torch.tensor_split(x, segments, dim=-2)], dim=-2)


def segment_mean_matrix(length: int, segments: int, dtype=None, device=None) -> torch.Tensor:
    """The (segments, L) averaging matrix S with S @ x == segment_means(x, segments)."""
    size, extra = divmod(length, segments)
    seg = torch.arange(segments, device=device)
    start = seg * size + seg.clamp(max=extra)  # the first `extra` segments hold size + 1
    stop = start + size + (seg < extra).long()
    pos = torch.arange(length, device=device)
    member = (pos[None, :] >= start[:, None]) & (pos[None, :] < stop[:, None])
    return member.to(dtype) / (stop - start).to(dtype)[:, None]


@register("nystrom")
class Nystrom(QKVMixer):
    """Nystromformer: softmax attention approximated as F A^+ (B V) through m landmarks.

    Landmarks Q~, K~ are segment means of Q and K (:func:`segment_means`; lengths need not be
    divisible by m; for L < m every token is its own landmark and the result is exact softmax
    attention). The paper's optional depthwise-conv skip on V is left out: it is not part of
    the Nystrom mixing matrix.

    A^+ is the exact ``torch.linalg.pinv`` in the reference and the paper's iterative
    Moore-Penrose scheme (:mod:`longmix.ops.pinv`) in the fast path, with two departures made
    so that the fast path meets the reference to 1e-8 in float64:

    * 50 steps by default, not the paper's 6. A = softmax(Q~ K~^T / sqrt(d)) is the exponential
      of a rank-head_dim matrix, whose singular values decay fast (cond(A) ~ 1e5-1e9 at
      head_dim 4, m 16), and the iteration needs about log(m cond(A)^2) / log(3.25) steps before
      its cubic phase: after 6 steps A^+ is far from converged; 50 steps suffice up to
      cond ~ 1e11 (and stay stable for singular A in our tests).
    * one step of iterative refinement on A^+ (B V): the iteration alone stalls at a relative
      error of about cond(A) * eps (1e-6 seen at cond 1e9); one refinement step gives the
      accuracy of a backward-stable solve.

    Both cost O(m^3 + m^2 head_dim) per head, independent of L. ``pinv_iters=6, pinv_refine=0``
    reproduce the paper. In float32 an A with cond(A) > 1e7 has no accurate pseudo-inverse by
    any method (``torch.linalg.pinv`` in float32 is off by as much as the iteration there).

    Args:
        landmarks: m, the number of landmarks (rank of the mixing matrix <= m).
        pinv_iters: steps of the iterative pseudo-inverse.
        pinv_refine: steps of iterative refinement of A^+ (B V).
    """

    taxonomy = Taxonomy("lowrank", learned=True, input_dependent=True, causal=False,
                        time="O(L m)", memory="O(L m)")

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 landmarks: int = 16, pinv_iters: int = 50, pinv_refine: int = 1):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len)
        check_int("landmarks", landmarks, owner="Nystrom")
        check_int("pinv_iters", pinv_iters, owner="Nystrom")
        check_int("pinv_refine", pinv_refine, low=0, owner="Nystrom")
        self.landmarks, self.pinv_iters, self.pinv_refine = landmarks, pinv_iters, pinv_refine

    def _kernels(self, q, k, q_land, k_land):
        """F (.., L, m), A (.., m, m), B (.., m, L): the three softmax kernels of the paper."""
        soft = lambda a, b: torch.softmax(a @ b.mT * self.head_dim ** -0.5, dim=-1)  # noqa: E731
        return soft(q, k_land), soft(q_land, k_land), soft(q_land, k)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = _heads_first(q, k, v)
        m = min(self.landmarks, q.shape[-2])
        f, a, b = self._kernels(q, k, segment_means(q, m), segment_means(k, m))
        out = f @ iterative_pinv_solve(a, b @ v, self.pinv_iters, self.pinv_refine)
        return rearrange(out, "b h l d -> b l h d")

    def _attention_matrix(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """F A^+ B with the exact pseudo-inverse, (batch, heads, L, L), applied to the values."""
        q, k = _heads_first(q, k)
        length = q.shape[-2]
        s = segment_mean_matrix(length, min(self.landmarks, length), dtype=q.dtype, device=q.device)
        f, a, b = self._kernels(q, k, s @ q, s @ k)
        return f @ torch.linalg.pinv(a) @ b

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, landmarks={self.landmarks}, pinv_iters={self.pinv_iters}, "
                f"pinv_refine={self.pinv_refine}")
