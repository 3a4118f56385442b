"""kernel family: attention weights w_ts = phi(q_t) . phi(k_s) for a positive feature map phi.

Then out_t = sum_s w_ts v_s / sum_s w_ts factors through sums of phi(k_s) v_s^T, so the fast path
(:func:`longmix.ops.linear_attention.linear_attention`) costs O(L) time and memory, causal via
chunked prefix sums. The literal path materializes the L x L matrix phi(Q) phi(K)^T, masks it,
and normalizes its rows.

* ``linear``: phi(x) = elu(x) + 1 (Katharopoulos et al. 2020, "Transformers are RNNs").
* ``performer``: FAVOR+ positive orthogonal random features (Choromanski et al. 2021), an unbiased
  estimate of softmax attention's exp(q . k / sqrt(d)).
"""
from __future__ import annotations

import math

import torch

from ..ops.feature_maps import elu_feature_map, orthogonal_gaussian_projection, positive_random_features
from ..ops.linear_attention import linear_attention, linear_attention_state
from ..checks import check_int
from .base import Taxonomy
from .forms import StateHooks
from .qkv import QKVMixer
from .registry import register


class KernelAttention(StateHooks, QKVMixer):
    """Shared by kernel mixers: subclasses define ``_features(q, k) -> (phi_q, phi_k)``.

    Args:
        chunk_size: positions per chunk of the causal prefix sums (memory vs. speed only).
        bias: bias in the q/k/v/out projections.

    Causal, a NaN or inf at position s reaches no output before s: the masked part of each chunk
    never multiplies a future value by zero (:mod:`longmix.ops.masked`).
    """

    nonfinite_causal = True

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 chunk_size: int = 128, bias: bool = True):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len, bias=bias)
        self.chunk_size = check_int("chunk_size", chunk_size, owner=type(self).__name__)

    def _features(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _attend(self, q, k, v):
        return linear_attention(*self._features(q, k), v, causal=self.causal, chunk_size=self.chunk_size)

    # -- step mode and state passing: the running sums S = sum_s phi(k_s) v_s^T, z = sum_s phi(k_s)
    # A chunk adds its own sums whatever came before, so its summary is its sums from zero and
    # chaining is addition (LASP-2's memory state).
    feature_dim: int  # the number of features phi maps a head to

    def _init_state(self, batch_size, device, dtype):
        shape = (batch_size, self.heads, self.feature_dim)
        return {"kv": torch.zeros(*shape, self.head_dim, device=device, dtype=dtype),
                "ksum": torch.zeros(*shape, device=device, dtype=dtype)}

    def _forward_with_state(self, x, state):
        q, k, v = self._qkv(x)
        out, (kv, ksum) = linear_attention(*self._features(q, k), v, causal=True, chunk_size=self.chunk_size,
                                           initial_state=(state["kv"], state["ksum"]), return_final_state=True)
        return self._merge(out), {"kv": kv.to(state["kv"].dtype), "ksum": ksum.to(state["ksum"].dtype)}

    def _state_summary(self, x, state, stage):
        q, k, v = self._qkv(x)
        kv, ksum = linear_attention_state(self._features(q, k)[1], v)
        dtype = self.state_dtype(x.dtype)
        return {"kv": kv.to(dtype), "ksum": ksum.to(dtype)}

    def _chain_state(self, state, summary, stage):
        return {key: state[key] + summary[key].to(state[key].dtype) for key in ("kv", "ksum")}

    def _attention_matrix(self, q, k):
        phi_q, phi_k = self._features(q, k)
        weights = torch.einsum("bthf,bshf->bhts", phi_q, phi_k)
        if self.causal:
            weights = weights.tril()
        # Same guard as the fast path: an all-underflowed row gives zeros, not 0 / 0.
        return weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)


@register("linear")
class LinearAttention(KernelAttention):
    """Linear attention with phi(x) = elu(x) + 1 (Katharopoulos et al. 2020)."""

    taxonomy = Taxonomy(family="kernel", learned=True, input_dependent=True, causal=True,
                        time="O(L)", memory="O(L)")

    @property
    def feature_dim(self) -> int:
        return self.head_dim

    def _features(self, q, k):
        return elu_feature_map(q), elu_feature_map(k)


@register("performer")
class Performer(KernelAttention):
    """Performer: FAVOR+ positive orthogonal random features (Choromanski et al. 2021).

    The projection W (features, head_dim) is drawn once at construction from torch's global RNG
    (seed it with ``torch.manual_seed``) and kept as a buffer, so forward is deterministic and
    saved with the state dict. All heads share W.

    Args:
        features: number m of random features; default max(16, ceil(d ln d)) with d = head_dim,
            the order the paper's approximation bound asks for.
    """

    taxonomy = Taxonomy(family="kernel", learned=True, input_dependent=True, causal=True,
                        time="O(L)", memory="O(L)")

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 features: int | None = None, chunk_size: int = 128, bias: bool = True):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len, chunk_size=chunk_size, bias=bias)
        d = self.head_dim
        if features is None:
            features = max(16, math.ceil(d * math.log(d)))
        self.features = check_int("features", features, owner="Performer")
        self.register_buffer("projection", orthogonal_gaussian_projection(features, d))

    @property
    def feature_dim(self) -> int:
        return self.features

    def _features(self, q, k):
        # exp(q . k / sqrt(d)) = exp(q' . k') with q' = q d^-1/4, k' = k d^-1/4.
        scale = self.head_dim ** -0.25
        phi_q = positive_random_features(q * scale, self.projection, stabilize_rows=True)
        phi_k = positive_random_features(k * scale, self.projection)
        return phi_q, phi_k

    def extra_repr(self) -> str:
        return super().extra_repr() + f", features={self.features}"
