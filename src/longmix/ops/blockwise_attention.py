"""Exact attention in pure PyTorch, tiled so that no L x L matrix is ever formed.

The fallback behind :func:`longmix.ops.attention_with_lse` for devices or options (``window``) the
fused kernels do not cover. Forward is the online softmax of FlashAttention (Dao et al., 2022):
query tiles against key tiles with a running max, a running sum and a rescaled accumulator. Backward
recomputes each tile's probabilities from the saved ``lse`` (no stored probabilities) and also takes
a gradient flowing into ``lse``::

    P_ij  = exp(s_ij - lse_i)
    dS_ij = P_ij * (dO_i . v_j - D_i + dlse_i),   D_i = dO_i . O_i

Layouts: q (B, Lq, H, D), k and v (B, Lk, H, D) (heads already expanded), out like q,
lse (B, H, Lq). Memory is O(tile_q * tile_k) per step; compute skips tiles that the mask hides,
so a sliding window costs O(L * window).

Visibility (top-left alignment, positions counted from 0 in both q and k): query i sees key j
  - always, if not causal and no window;
  - if ``j <= i`` when causal;
  - if additionally ``i - j < window`` (and ``j - i < window`` when not causal) for a window.
A query that sees no key gets output 0 and lse -inf.
"""
from __future__ import annotations

import torch

TILE = 256


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype softmax statistics (lse) and partial sums are kept in for inputs of ``dtype``.

    Half precision accumulates in float32, as the fused kernels do; float64 stays float64.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def _key_range(q0: int, q1: int, lk: int, causal: bool, window: int | None) -> tuple[int, int]:
    """Keys [lo, hi) that any query in [q0, q1) may see."""
    lo, hi = 0, lk
    if causal:
        hi = min(hi, q1)
    if window is not None:
        lo = max(lo, q0 - window + 1)
        if not causal:
            hi = min(hi, q1 + window - 1)
    return lo, max(lo, hi)


def visible(q0: int, q1: int, k0: int, k1: int, causal: bool, window: int | None,
            device=None) -> torch.Tensor:
    """(q1-q0, k1-k0) bool mask: which keys [k0, k1) queries [q0, q1) see (the module's rules).

    The one definition of visibility, used by the kernel's tiles and by the tests' materialized
    reference (``visible(0, Lq, 0, Lk, ...)``).
    """
    i = torch.arange(q0, q1, device=device)[:, None]
    j = torch.arange(k0, k1, device=device)[None, :]
    keep = torch.ones(q1 - q0, k1 - k0, dtype=torch.bool, device=device)
    if causal:
        keep &= j <= i
    if window is not None:
        keep &= (i - j) < window
        if not causal:
            keep &= (j - i) < window
    return keep


def _tile_mask(q0: int, q1: int, k0: int, k1: int, causal: bool, window: int | None,
               device) -> torch.Tensor | None:
    """:func:`visible` for one tile, or None when the whole tile is visible."""
    if not causal and window is None:
        return None
    keep = visible(q0, q1, k0, k1, causal, window, device)
    return None if bool(keep.all()) else keep


def _tiles(lq: int, lk: int, causal: bool, window: int | None, tile: int):
    for q0 in range(0, lq, tile):
        q1 = min(q0 + tile, lq)
        lo, hi = _key_range(q0, q1, lk, causal, window)
        for k0 in range(lo, hi, tile):
            yield q0, q1, k0, min(k0 + tile, hi)


def blockwise_forward(q, k, v, *, causal: bool, scale: float, window: int | None,
                      tile: int = TILE):
    """Return (out (B, Lq, H, D) in q.dtype, lse (B, H, Lq) in float32/float64)."""
    cdt = accumulator_dtype(q.dtype)
    b, lq, h, d = q.shape
    lk = k.shape[1]
    qt, kt, vt = (x.transpose(1, 2).to(cdt) for x in (q, k, v))  # (B, H, L, D)
    m = torch.full((b, h, lq), float("-inf"), dtype=cdt, device=q.device)
    s_sum = torch.zeros(b, h, lq, dtype=cdt, device=q.device)
    acc = torch.zeros(b, h, lq, d, dtype=cdt, device=q.device)
    for q0, q1, k0, k1 in _tiles(lq, lk, causal, window, tile):
        s = torch.matmul(qt[:, :, q0:q1], kt[:, :, k0:k1].transpose(-1, -2)) * scale
        keep = _tile_mask(q0, q1, k0, k1, causal, window, q.device)
        if keep is not None:
            s = s.masked_fill(~keep, float("-inf"))
        m_old = m[:, :, q0:q1]
        m_new = torch.maximum(m_old, s.amax(-1))
        m_ref = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # no -inf - -inf
        p = torch.exp(s - m_ref[..., None])
        alpha = torch.exp(m_old - m_ref)
        s_sum[:, :, q0:q1] = s_sum[:, :, q0:q1] * alpha + p.sum(-1)
        acc[:, :, q0:q1] = acc[:, :, q0:q1] * alpha[..., None] + torch.matmul(p, vt[:, :, k0:k1])
        m[:, :, q0:q1] = m_new
    seen = s_sum > 0
    safe_sum = torch.where(seen, s_sum, torch.ones_like(s_sum))
    m_ref = torch.where(seen, m, torch.zeros_like(m))
    lse = torch.where(seen, m_ref + torch.log(safe_sum), torch.full_like(m, float("-inf")))
    out = (acc / safe_sum[..., None]).transpose(1, 2).to(q.dtype)
    return out.contiguous(), lse


def blockwise_backward(dout, q, k, v, out, lse, *, causal: bool, scale: float,
                       window: int | None, dlse=None, tile: int = TILE):
    """Gradients (dq, dk, dv) of the loss given dout = dL/dout and optionally dlse = dL/dlse.

    ``out`` and ``lse`` may be the statistics of a larger attention that this call is one block of
    (ring attention): the gradients are then this block's exact contribution.
    """
    cdt = accumulator_dtype(q.dtype)
    lq, lk = q.shape[1], k.shape[1]
    qt, kt, vt, dot = (x.transpose(1, 2).to(cdt) for x in (q, k, v, dout))
    delta = (dot * out.transpose(1, 2).to(cdt)).sum(-1)  # D_i, (B, H, Lq)
    if dlse is not None:
        delta = delta - dlse.to(cdt)
    lse = lse.to(cdt)
    lse_ref = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # rows that see nothing
    dq, dk, dv = torch.zeros_like(qt), torch.zeros_like(kt), torch.zeros_like(vt)
    for q0, q1, k0, k1 in _tiles(lq, lk, causal, window, tile):
        kb, vb, qb, dob = kt[:, :, k0:k1], vt[:, :, k0:k1], qt[:, :, q0:q1], dot[:, :, q0:q1]
        s = torch.matmul(qb, kb.transpose(-1, -2)) * scale
        keep = _tile_mask(q0, q1, k0, k1, causal, window, q.device)
        if keep is not None:
            s = s.masked_fill(~keep, float("-inf"))
        p = torch.exp(s - lse_ref[:, :, q0:q1, None])
        dv[:, :, k0:k1] += torch.matmul(p.transpose(-1, -2), dob)
        ds = p * (torch.matmul(dob, vb.transpose(-1, -2)) - delta[:, :, q0:q1, None])
        dq[:, :, q0:q1] += torch.matmul(ds, kb) * scale
        dk[:, :, k0:k1] += torch.matmul(ds.transpose(-1, -2), qb) * scale
    return tuple(g.transpose(1, 2).to(x.dtype).contiguous() for g, x in ((dq, q), (dk, k), (dv, v)))
