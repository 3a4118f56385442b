"""The gated delta rule (Gated DeltaNet, Yang et al. 2024; Qwen3-Next's linear attention).

Per head, with state S (key dim K, value dim V), decay exp(g_t) in (0, 1] and rate beta_t:

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,     o_t = S_t^T (scale q_t)

The state is corrected toward v_t by one rank-1 step per token (the delta rule), after a scalar
decay (the gate). For fixed q, k, g, beta the output is linear in v: o = M v per head, with

    M = (Q K^T * Gamma) (I + tril_{-1}(diag(beta) K K^T * Gamma))^{-1} diag(beta),
    Gamma[t, s] = exp(sum_{r=s+1..t} g_r) for s <= t, 0 above,

the WY / UT form of DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length"): the pseudo-values U = (I + A)^{-1} diag(beta) V solve a unit lower
triangular system. Three ways to compute it, which must agree:

* :func:`gated_delta_rule`: chunked, as fla's ``chunk_gated_delta_rule`` and transformers'
  ``torch_chunk_gated_delta_rule``: within each chunk the triangular solve and masked matmuls,
  across chunks the state recurrence, one step per chunk. O(L chunk (K + V)) time.
* :func:`gated_delta_rule_sequential`: the recurrence one position at a time (reference).
* :func:`gated_delta_rule_matrix`: the materialized (batch, heads, L, L) operator M.

Layouts: q, k (batch, L, heads, K); v (batch, L, heads, V); g, beta (batch, L, heads), g <= 0;
states (batch, heads, K, V). ``scale`` multiplies q (default K ** -0.5, as fla). q and k are
taken as given: the L2 normalization that keeps I - beta k k^T contracting is the caller's.
"""
from __future__ import annotations

import torch

from ..checks import check_int
from .chunk_recurrence import chunk_recurrence
from .chunks import from_chunks, nan_from_first, nonfinite_heads, to_chunks, zero_where
from .scan import segsum


def _check(q, k, v, g, beta, initial_state):
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"gated_delta_rule: q and k must be (batch, length, heads, key_dim) alike, "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    b, length, h, dk = q.shape
    if v.dim() != 4 or v.shape[:3] != (b, length, h):
        raise ValueError(f"gated_delta_rule: v must be (batch, length, heads, value_dim) with "
                         f"(batch, length, heads) = {(b, length, h)}, got {tuple(v.shape)}")
    for label, t in (("g", g), ("beta", beta)):
        if t.shape != (b, length, h):
            raise ValueError(f"gated_delta_rule: {label} must be (batch, length, heads) = {(b, length, h)}, "
                             f"got {tuple(t.shape)}")
    if initial_state is not None and initial_state.shape != (b, h, dk, v.shape[-1]):
        raise ValueError(f"gated_delta_rule: initial_state must be (batch, heads, key_dim, value_dim) = "
                         f"{(b, h, dk, v.shape[-1])}, got {tuple(initial_state.shape)}")


def _solve_unit_lower(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(I + strict lower part of ``system``)^-1 rhs. Half precisions solve in float32 (CPU has no
    bf16/fp16 triangular solve, and the chunk's system is small), then round back."""
    if system.dtype in (torch.float16, torch.bfloat16):
        return _solve_unit_lower(system.float(), rhs.float()).to(rhs.dtype)
    return torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)


def default_chunk_size(key_dim: int) -> int:
    """The chunk size that ran fastest on CPU for heads of ``key_dim`` (benchmarks/delta_rule_chunks.py):
    the O(chunk^2) work within a chunk against one (K, K) step per chunk, so small heads want small
    chunks; 32 up to K = 32, else 64 (fla's and transformers' choice, for K = 128)."""
    return 32 if key_dim <= 32 else 64


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
                     scale: float | None = None, chunk_size: int = 64, initial_state: torch.Tensor | None = None,
                     return_final_state: bool = False):
    """The gated delta rule by chunks (see the module docstring for the recurrence and layouts).

    Returns o (batch, L, heads, V), and the final state (batch, heads, K, V) if
    ``return_final_state``. ``chunk_size`` need not divide L (the last chunk is zero-padded:
    beta = 0 and g = 0 leave the state unchanged).
    """
    _check(q, k, v, g, beta, initial_state)
    check_int("chunk_size", chunk_size)
    length = q.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bad = nonfinite_heads(q, k, v, g, beta)
    if bad is not None:
        q, k, v, g, beta = (zero_where(t, bad) for t in (q, k, v, g, beta))
    # (batch, heads, chunks, chunk, .)
    qc, kc, vc = (to_chunks(t, chunk_size).permute(0, 3, 1, 2, 4) for t in (q * scale, k, v))
    gc, bc = (to_chunks(t, chunk_size).permute(0, 3, 1, 2) for t in (g, beta))
    cum = gc.cumsum(-1)
    gamma = segsum(gc).exp()  # (b, h, c, l, s): exp(sum_{r=s+1..t} g_r), 0 above the diagonal
    k_beta = kc * bc.unsqueeze(-1)
    # the UT system (I + A) of each chunk; solve_triangular reads only A's strict lower part.
    # One solve for both right-hand sides: the pseudo-values, and the keys through which the
    # entering state predicts each position
    system = (k_beta @ kc.mT) * gamma
    solved = _solve_unit_lower(system, torch.cat([vc * bc.unsqueeze(-1), k_beta * cum.exp().unsqueeze(-1)], -1))
    pseudo_values, decayed_keys = solved.split([v.shape[-1], k.shape[-1]], -1)
    k_to_end = (kc * (cum[..., -1:] - cum).exp().unsqueeze(-1)).mT  # (b, h, c, K, l)
    # across chunks: h_{c+1} = exp(g_chunk) h_c + k_to_end (pseudo_values - decayed_keys h_c),
    # i.e. T_c h_c + U_c with T_c, U_c formed for all chunks at once; only the (K, K) @ (K, V)
    # step per chunk stays sequential (chunk_recurrence, with its own backward)
    eye = torch.eye(k.shape[-1], dtype=q.dtype, device=q.device)
    transition = cum[..., -1].exp()[..., None, None] * eye - k_to_end @ decayed_keys
    state = (q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3]) if initial_state is None
             else initial_state.to(q.dtype))
    states = chunk_recurrence(transition.flatten(0, 1), (k_to_end @ pseudo_values).flatten(0, 1),
                              state.flatten(0, 1)).unflatten(0, state.shape[:2])  # (b, h, c + 1, K, V)
    entering, state = states[:, :, :-1], states[:, :, -1]
    attn = (qc @ kc.mT) * gamma  # lower triangular, diagonal included
    outs = (qc * cum.exp().unsqueeze(-1)) @ entering + attn @ (pseudo_values - decayed_keys @ entering)
    o = from_chunks(outs.permute(0, 2, 3, 1, 4), length)  # (b, h, c, l, V) -> (b, L, h, V)
    if bad is not None:
        o = nan_from_first(o, bad)
        state = state.masked_fill(bad.any(1)[..., None, None], float("nan"))
    return (o, state) if return_final_state else o


def gated_delta_rule_sequential(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                                beta: torch.Tensor, *, scale: float | None = None,
                                initial_state: torch.Tensor | None = None, return_final_state: bool = False):
    """The recurrence one position at a time: the plain reference for :func:`gated_delta_rule`."""
    _check(q, k, v, g, beta, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    state = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3]) if initial_state is None else initial_state
    outs = []
    for t in range(q.shape[1]):
        k_t = k[:, t]
        state = g[:, t].exp()[..., None, None] * state
        correction = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", state, k_t))
        state = state + torch.einsum("bhk,bhv->bhkv", k_t, correction)
        outs.append(torch.einsum("bhkv,bhk->bhv", state, scale * q[:, t]))
    o = torch.stack(outs, 1)
    return (o, state) if return_final_state else o


def gated_delta_rule_matrix(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
                            scale: float | None = None) -> torch.Tensor:
    """The operator M (batch, heads, L, L), lower-triangular, with
    ``gated_delta_rule(q, k, v, g, beta)[b, :, h] == M[b, h] @ v[b, :, h]`` (module docstring):
    the L x L decay mask Gamma and UT system materialized, the system solved once over the
    whole sequence."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh, kh = (t.transpose(1, 2) for t in (q, k))  # (b, h, L, K)
    gamma = segsum(g.transpose(1, 2)).exp()
    b_h = beta.transpose(1, 2)
    eye = torch.eye(q.shape[1], dtype=q.dtype, device=q.device)
    system = eye + torch.tril(b_h.unsqueeze(-1) * (kh @ kh.mT) * gamma, diagonal=-1)
    inverse_times_beta = torch.linalg.solve_triangular(system, torch.diag_embed(b_h), upper=False)
    return ((scale * qh) @ kh.mT * gamma) @ inverse_times_beta
