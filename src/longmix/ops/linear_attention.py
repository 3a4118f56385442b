"""Kernel (linear) attention: out_t = sum_s w_ts v_s / sum_s w_ts with w_ts = phi(q_t) . phi(k_s).

Non-causal, the sums over s factor through the global state S = sum_s phi(k_s) v_s^T (features x
head_dim) and z = sum_s phi(k_s), so the cost is O(L) in time and memory. Causal, S and z become
prefix sums. Materializing S_t for every t costs L x features x head_dim memory; instead the
sequence is cut into chunks of C positions (as in flash-linear-attention's chunk form): each chunk
reads the state summed over all previous chunks and adds its own masked C x C block, so memory is
O(L (C + features * head_dim / C)), linear in L.

Layouts: phi_q, phi_k (batch, length, heads, features); v and the output (batch, length, heads, head_dim).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ..checks import check_int

from .masked import masked_weighted_sum

#: Elements of the temporaries per step of the causal chunk loop (bounds memory at large L).
_ELEMENTS_PER_STEP = 2 ** 23


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # Weights are >= 0, so den is >= 0 and |num / den| <= max |v|; den can only reach 0 when
    # every weight underflowed, and then num is 0 as well: return 0 instead of 0 / 0 = nan.
    return num / den.clamp_min(torch.finfo(den.dtype).tiny).unsqueeze(-1)


def linear_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     chunk_size: int = 128, *, initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
                     return_final_state: bool = False):
    """Normalized kernel attention with non-negative features. See the module docstring.

    Args:
        phi_q, phi_k: (batch, length, heads, features), non-negative.
        v: (batch, length, heads, head_dim).
        causal: position t only reads positions <= t.
        chunk_size: positions per chunk of the causal prefix sums (any value >= 1; need not divide L).
        initial_state: causal only: the prefix sums (S (batch, heads, features, head_dim),
            z (batch, heads, features)) of the keys before position 0, default zeros; the output
            is then the continuation of that earlier sequence.
        return_final_state: causal only: also return (S, z) after the last position.
    Returns:
        (batch, length, heads, head_dim), and the final (S, z) if ``return_final_state``.
    """
    if phi_q.shape != phi_k.shape or phi_q.shape[:3] != v.shape[:3] or phi_q.dim() != 4:
        raise ValueError("phi_q, phi_k must be (batch, length, heads, features) and v (batch, length, heads, "
                         f"head_dim) with equal leading dims; got {tuple(phi_q.shape)}, {tuple(phi_k.shape)}, "
                         f"{tuple(v.shape)}")
    check_int("chunk_size", chunk_size)
    if not causal:
        if initial_state is not None or return_final_state:
            raise ValueError("initial_state and return_final_state need causal=True (a non-causal "
                             "output depends on the whole sequence, not on a prefix state)")
        state, ksum = linear_attention_state(phi_k, v)
        num = torch.einsum("blhf,bhfd->blhd", phi_q, state)
        den = torch.einsum("blhf,bhf->blh", phi_q, ksum)
        return _safe_divide(num, den)
    batch, _, heads, features = phi_q.shape
    if initial_state is None:
        initial_state = (phi_q.new_zeros(batch, heads, features, v.shape[-1]), phi_q.new_zeros(batch, heads, features))
    elif (len(initial_state) != 2 or initial_state[0].shape != (batch, heads, features, v.shape[-1])
          or initial_state[1].shape != (batch, heads, features)):
        raise ValueError(f"initial_state must be (S {(batch, heads, features, v.shape[-1])}, "
                         f"z {(batch, heads, features)}), got shapes {[tuple(t.shape) for t in initial_state]}")
    out, final = _causal_chunked(phi_q, phi_k, v, chunk_size, *initial_state)
    return (out, final) if return_final_state else out


def linear_attention_state(phi_k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums a sequence adds to the state: (S = sum_s phi(k_s) v_s^T (batch, heads, features,
    head_dim), z = sum_s phi(k_s) (batch, heads, features)). States of consecutive pieces add."""
    return torch.einsum("blhf,blhd->bhfd", phi_k, v), phi_k.sum(1)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Prefix sums over dim 2 that exclude the current entry (shift, not subtract: no cancellation)."""
    return torch.cat([torch.zeros_like(x[:, :, :1]), torch.cumsum(x[:, :, :-1], 2)], 2)


def _causal_chunked(phi_q, phi_k, v, chunk_size, state, ksum):
    """Causal output and final (S, z), starting from the prefix sums (state, ksum)."""
    batch, length, heads, features = phi_q.shape
    head_dim = v.shape[-1]
    chunk = min(chunk_size, length)
    pad = -length % chunk
    # Zero features at padded positions: padded keys add nothing; padded queries are cut off.
    if pad:
        phi_q, phi_k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (phi_q, phi_k, v))
    q, k, v = (rearrange(t, "b (n c) h f -> b h n c f", c=chunk) for t in (phi_q, phi_k, v))
    n = q.shape[2]

    # Chunks are processed a group at a time (vectorized within the group), carrying the state
    # summed over all earlier chunks, so temporaries stay bounded however long the sequence.
    per_chunk = batch * heads * (chunk * chunk + features * head_dim)
    group = max(1, _ELEMENTS_PER_STEP // per_chunk)
    state, ksum = state.to(q.dtype), ksum.to(q.dtype)
    causal_mask = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    outs = []
    for s in range(0, n, group):
        qg, kg, vg = q[:, :, s:s + group], k[:, :, s:s + group], v[:, :, s:s + group]
        # State read by each chunk: everything before this group plus earlier chunks of the group.
        chunk_state = torch.einsum("bhncf,bhncd->bhnfd", kg, vg)
        chunk_ksum = kg.sum(3)
        prev_state = state[:, :, None] + _exclusive_cumsum(chunk_state)
        prev_ksum = ksum[:, :, None] + _exclusive_cumsum(chunk_ksum)
        state = prev_state[:, :, -1] + chunk_state[:, :, -1]
        ksum = prev_ksum[:, :, -1] + chunk_ksum[:, :, -1]

        # Within a chunk: the C x C weights, masked to s <= t.
        intra = torch.einsum("bhncf,bhnsf->bhncs", qg, kg).masked_fill(~causal_mask, 0)
        # masked_weighted_sum: a non-finite value reaches only the positions at or after its own
        num = torch.einsum("bhncf,bhnfd->bhncd", qg, prev_state) + masked_weighted_sum(intra, vg, causal_mask)
        den = torch.einsum("bhncf,bhnf->bhnc", qg, prev_ksum) + intra.sum(-1)
        outs.append(_safe_divide(num, den))
    out = rearrange(torch.cat(outs, 2), "b h n c d -> b (n c) h d")
    return out[:, :length], (state, ksum)
