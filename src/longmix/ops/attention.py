"""Exact local attention that also returns the log-sum-exp, and the merge of partial results.

Layouts (all public functions here):
    q          (batch, Lq, heads, head_dim)
    k, v       (batch, Lk, kv_heads, head_dim)   kv_heads divides heads (GQA: query head h reads
                                                 kv head h // (heads // kv_heads), as in
                                                 ``torch.nn.functional.scaled_dot_product_attention``)
    out        (batch, Lq, heads, head_dim), dtype of q
    lse        (batch, heads, Lq), natural log of the softmax denominator
               sum_j exp(scale * q_i . k_j); float64 for float64 inputs, float32 otherwise.
               A query that sees no key has lse = -inf and out = 0.

Causal masking with Lq != Lk is aligned top-left, like the CPU flash kernel and
``scaled_dot_product_attention(is_causal=True)``: query i sees keys j <= i. ``window=w`` further
restricts query i to keys with i - j < w (and j - i < w when not causal).

Dispatch (see :func:`attention_forward`):
    CPU            aten._scaled_dot_product_flash_attention_for_cpu (+ its backward), O(L) memory;
                   causal self-attention on more than one thread is split into full blocks and
                   small causal leaves merged on the lse (see _cpu_flash_causal: the fused
                   kernel's threads idle on the triangle)
    CUDA           aten._flash_attention_forward (fp16/bf16) or _efficient_attention_forward,
                   backward by _efficient_attention_backward; checked against float64 by
                   tests/cuda (skipped where no GPU is visible; run on an H200, torch 2.11).
    anything else, ``window``, float64 on CUDA, empty inputs
                   :mod:`longmix.ops.blockwise_attention`, tiled pure PyTorch.

The autograd-free pair :func:`attention_forward` / :func:`attention_backward` is what distributed
strategies build on: the backward accepts the statistics (``out``, ``lse``) of a larger attention
that this call is only one key block of, and then returns that block's exact gradient share.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from ..checks import check_optional_int
from .blockwise_attention import accumulator_dtype, blockwise_backward, blockwise_forward

__all__ = ["attention_with_lse", "merge_partials", "merge_into", "attention_forward",
           "attention_backward", "attention_flops"]

_aten = torch.ops.aten
_CPU_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_MASK_TOP_LEFT = 1  # sdp::CustomMaskType::CausalFromTopLeft of the memory-efficient kernel

# Causal rows per diagonal leaf of the CPU triangle split (see _cpu_flash_causal). Measured on a
# 2-core Xeon (L = 16,384, 1 head x d 64, 2 threads): leaves of 512..4,096 rows raised the useful
# rate by 3-25%, the largest leaves most; larger leaves would bring the thread imbalance back.
_CAUSAL_LEAF = 4096


def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, causal: bool) -> float:
    """Useful flops of one attention forward: 2 per multiply-add of QK^T and PV, 4·B·H·L²·d;
    a causal mask halves it (the masked half is not useful work, whatever a kernel spends on it)."""
    full = 4.0 * batch * heads * seq_len**2 * head_dim
    return full / 2 if causal else full


# ----------------------------------------------------------------------------- checks and helpers
def check_attention_inputs(q, k, v, window=None) -> None:
    """Raise ValueError unless q, k, v have the layouts, dtype and device described above."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (batch, length, heads, head_dim), got "
                             f"{getattr(x, 'shape', type(x))}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and "
                         f"v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch (dim 0) "
                         "and head_dim (dim 3)")
    if k.shape[2] == 0 or q.shape[2] % k.shape[2] != 0:
        raise ValueError(f"kv_heads (k.shape[2] = {k.shape[2]}) must divide heads "
                         f"(q.shape[2] = {q.shape[2]})")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share a device, got {q.device}, {k.device}, {v.device}")
    check_optional_int("window", window)


def _expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, kv_heads, D) -> (B, L, heads, D) for GQA; a no-op when kv_heads == heads."""
    groups = heads // x.shape[2]
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


def _reduce_kv(g: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Sum the gradient of expanded K/V back onto the kv heads (inverse of _expand_kv)."""
    b, l, h, d = g.shape
    return g if h == kv_heads else g.view(b, l, kv_heads, h // kv_heads, d).sum(3)


def _effective_window(window, lq: int, lk: int):
    # A window that hides nothing is no window: lets the fused kernels run.
    return None if window is None or window >= max(lq, lk) else window


def _backend(q, k, causal: bool, window) -> str:
    lq, lk, d = q.shape[1], k.shape[1], q.shape[3]
    if window is not None or lq == 0 or lk == 0:
        return "blockwise"
    if q.device.type == "cpu" and q.dtype in _CPU_DTYPES:
        return "cpu_flash"
    if q.device.type == "cuda" and d % 8 == 0 and d <= 256:
        # The CUDA flash kernel aligns causal masks bottom-right when Lq != Lk (flash-attn 2);
        # the memory-efficient one can align them top-left like the rest of this module.
        if q.dtype in (torch.float16, torch.bfloat16) and (not causal or lq == lk):
            return "cuda_flash"
        if q.dtype in (torch.float16, torch.bfloat16, torch.float32):
            return "cuda_efficient"
    return "blockwise"


def _bhld(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)  # a view: the aten ops take strided (B, H, L, D)


# ----------------------------------------------------------------------------- autograd-free core
def attention_forward(q, k, v, *, causal: bool = False, scale: float | None = None,
                      window: int | None = None):
    """(out, lse) of exact softmax attention, without autograd. Layouts: see the module docstring."""
    check_attention_inputs(q, k, v, window)
    heads, d = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    window = _effective_window(window, q.shape[1], k.shape[1])
    backend = _backend(q, k, causal, window)
    with torch.no_grad():
        if backend == "cpu_flash":  # GQA by K/V head, without repeating K/V (see _cpu_flash)
            if causal and q.shape[1] == k.shape[1] > 2 * _CAUSAL_LEAF and torch.get_num_threads() > 1:
                return _cpu_flash_causal(q, k, v, scale)
            return _cpu_flash(q, k, v, causal, scale)
        return _fused_or_blockwise(backend, q, _expand_kv(k, heads), _expand_kv(v, heads), causal,
                                   scale, window)


def _fused_or_blockwise(backend, q, ke, ve, causal, scale, window):
    """(out, lse) from the CUDA kernels or the blockwise fallback (K/V already expanded)."""
    if backend == "cuda_flash":  # (B, L, H, D) layout, like this module
        out, lse = _aten._flash_attention_forward(
            q, ke, ve, None, None, q.shape[1], ke.shape[1], 0.0, causal, False, scale=scale)[:2]
        return out.contiguous(), lse.float().contiguous()
    if backend == "cuda_efficient":
        out, lse = _aten._efficient_attention_forward(
            q, ke, ve, None, None, None, None, None, 0.0, _MASK_TOP_LEFT if causal else 0,
            True, scale=scale)[:2]
        # the kernel pads lse's length to a multiple of 32
        return out.contiguous(), lse[:, :, :q.shape[1]].float().contiguous()
    return blockwise_forward(q, ke, ve, causal=causal, scale=scale, window=window)


def _kv_groups(q: torch.Tensor, k: torch.Tensor):
    """Per K/V head i under GQA: (the slice of its query heads, a function giving that K/V head as
    a stride-0 view over those heads). The CPU flash kernels read strided inputs, so K/V are
    never repeated in memory (repeating them cost 2 * heads/kv_heads times K/V's size per call)."""
    group = q.shape[2] // k.shape[2]

    def shared(x: torch.Tensor, i: int) -> torch.Tensor:
        return x[:, :, i:i + 1].expand(x.shape[0], x.shape[1], group, x.shape[3])

    return [(slice(i * group, (i + 1) * group), lambda x, i=i: shared(x, i))
            for i in range(k.shape[2])]


def _cpu_flash(q, k, v, causal: bool, scale: float):
    """The fused CPU flash kernel; (B, L, H, D) in and out, lse (B, H, L). K/V may have fewer
    heads than q (GQA): one call per K/V head, written into one output (see _kv_groups)."""
    acc = accumulator_dtype(q.dtype)
    if k.shape[2] == q.shape[2]:
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(
            _bhld(q), _bhld(k), _bhld(v), 0.0, causal, scale=scale)
        return out.transpose(1, 2).contiguous(), lse.to(acc).contiguous()
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=acc, device=q.device)
    for heads, shared in _kv_groups(q, k):
        o, l = _aten._scaled_dot_product_flash_attention_for_cpu(
            _bhld(q[:, :, heads]), _bhld(shared(k)), _bhld(shared(v)), 0.0, causal, scale=scale)
        out[:, :, heads] = o.transpose(1, 2)
        lse[:, heads] = l
    return out, lse


def _cpu_flash_causal(q, k, v, scale: float):
    """Causal self-attention (Lq == Lk) as a triangle of full blocks plus small causal leaves.

    The fused kernel hands query blocks to threads in equal shares, so under a causal mask the
    threads with the early (short) rows idle while the last ones work: with 2 threads it ran a
    third below its non-causal rate. Halving recursively -- rows [0, m) causal; rows [m, L) full
    against keys [0, m) and causal against [m, L), the two merged on the log-sum-exp -- puts
    almost all the work into full rectangles, which split evenly; only leaves of
    :data:`_CAUSAL_LEAF` rows keep the mask. Exact: the merge is the online softmax.
    """
    n = q.shape[1]
    if n <= _CAUSAL_LEAF:
        return _cpu_flash(q, k, v, True, scale)
    m = n // 2
    out_top, lse_top = _cpu_flash_causal(q[:, :m], k[:, :m], v[:, :m], scale)
    out_past, lse_past = _cpu_flash(q[:, m:], k[:, :m], v[:, :m], False, scale)
    out_diag, lse_diag = _cpu_flash_causal(q[:, m:], k[:, m:], v[:, m:], scale)
    out_bottom, lse_bottom = merge_partials([out_past, out_diag], [lse_past, lse_diag])
    return torch.cat([out_top, out_bottom], dim=1), torch.cat([lse_top, lse_bottom], dim=2)


def attention_backward(dout, q, k, v, out, lse, *, causal: bool = False,
                       scale: float | None = None, window: int | None = None, dlse=None):
    """Gradients (dq, dk, dv) of softmax attention, without autograd.

    ``dout`` is dL/d``out`` (like q), ``dlse`` optionally dL/d``lse`` (like lse). ``out``/``lse``
    may come from a larger attention whose key set contains k (e.g. the merged result of a ring);
    the returned dk/dv are then this key block's share and dq its contribution. dk and dv come back
    with kv_heads heads (GQA gradients are summed over each group).
    """
    check_attention_inputs(q, k, v, window)
    heads, kv_heads, d = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    window = _effective_window(window, q.shape[1], k.shape[1])
    backend = _backend(q, k, causal, window)
    if dlse is not None and backend != "cpu_flash":
        backend = "blockwise"  # fused CUDA kernels have no dlse input; see _cpu_flash_backward
    with torch.no_grad():
        if backend == "cpu_flash":  # GQA by K/V head: dk, dv come back with kv_heads heads
            dq, dk, dv = _cpu_flash_backward(dout, q, k, v, out, lse, causal, scale, dlse)
            return dq.contiguous(), dk.contiguous(), dv.contiguous()
        ke, ve = _expand_kv(k, heads), _expand_kv(v, heads)
        if backend in ("cuda_flash", "cuda_efficient"):
            # Python cannot hand the flash backward the undefined cum_seq tensors it needs for
            # dense inputs, so both CUDA paths use the memory-efficient backward (it needs only
            # out and lse). It reads lse padded to a multiple of 32 rows.
            lq, lk = q.shape[1], k.shape[1]
            lse_p = torch.nn.functional.pad(lse.float(), (0, (-lq) % 32)).contiguous()
            seed = torch.zeros((), dtype=torch.int64, device=q.device)  # no dropout: unused
            dq, dk, dv, _ = _aten._efficient_attention_backward(
                dout.contiguous(), q, ke, ve, None, out, None, None, lq, lk, lse_p, 0.0, seed, seed,
                _MASK_TOP_LEFT if causal else 0, False, scale=scale)
        else:
            dq, dk, dv = blockwise_backward(dout, q, ke, ve, out, lse, causal=causal, scale=scale,
                                            window=window, dlse=dlse)
    return (dq.contiguous(), _reduce_kv(dk.contiguous(), kv_heads),
            _reduce_kv(dv.contiguous(), kv_heads))


def _cpu_flash_backward(dout, q, k, v, out, lse, causal, scale, dlse):
    """CPU flash backward, dk and dv with K/V's own heads (GQA: per K/V head, see _kv_groups); a
    gradient into lse rides along in an extra head column.

    With dlse, dS_ij = P_ij (dO_i . v_j - D_i + dlse_i). Appending a zero column to q and k (scores
    unchanged), a column of ones to v, dlse to dO and 0 to out makes the kernel's own
    dO'_i . v'_j = dO_i . v_j + dlse_i while D_i = dO'_i . out'_i stays dO_i . O_i, so the first
    head_dim columns of its gradients are exact. ``scale`` must be explicit (the default would
    change with the head size).
    """
    if dlse is not None:
        def cat(x, col):
            return torch.cat([x, col.expand(*x.shape[:-1], 1).to(x.dtype)], dim=-1)
        zero = torch.zeros((), dtype=q.dtype)
        d = q.shape[-1]
        q, k, out = cat(q, zero), cat(k, zero), cat(out, zero)
        v = cat(v, torch.ones((), dtype=v.dtype))
        dout = cat(dout, dlse.transpose(1, 2)[..., None])  # (B, H, Lq) -> (B, Lq, H, 1)
    if k.shape[2] == q.shape[2]:
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            _bhld(dout), _bhld(q), _bhld(k), _bhld(v), _bhld(out), lse.contiguous(), 0.0, causal,
            scale=scale)
        dq, dk, dv = (g.transpose(1, 2) for g in (dq, dk, dv))
    else:  # GQA: one call per K/V head (see _kv_groups); its query heads' dK/dV summed onto it
        dq, dk, dv = (torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))
        for i, (heads, shared) in enumerate(_kv_groups(q, k)):
            gq, gk, gv = _aten._scaled_dot_product_flash_attention_for_cpu_backward(
                _bhld(dout[:, :, heads]), _bhld(q[:, :, heads]), _bhld(shared(k)),
                _bhld(shared(v)), _bhld(out[:, :, heads]), lse[:, heads].contiguous(), 0.0, causal,
                scale=scale)
            dq[:, :, heads] = gq.transpose(1, 2)
            dk[:, :, i] = gk.sum(1)  # (B, group, Lk, D) -> (B, Lk, D)
            dv[:, :, i] = gv.sum(1)
    if dlse is not None:
        dq, dk, dv = dq[..., :d], dk[..., :d], dv[..., :d]
    return dq, dk, dv


# ----------------------------------------------------------------------------- autograd
class _AttentionWithLse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, window):
        out, lse = attention_forward(q, k, v, causal=causal, scale=scale, window=window)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (causal, scale, window)
        ctx.set_materialize_grads(False)  # lets backward tell "no gradient into lse" apart
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, window = ctx.args
        if dout is None and dlse is None:
            return None, None, None, None, None, None
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = attention_backward(dout, q, k, v, out, lse, causal=causal, scale=scale,
                                        window=window, dlse=dlse)
        return dq, dk, dv, None, None, None


def attention_with_lse(q, k, v, causal: bool = False, scale: float | None = None,
                       window: int | None = None):
    """Exact multi-head softmax attention returning ``(out, lse)``; differentiable in both.

    q (batch, Lq, heads, head_dim); k, v (batch, Lk, kv_heads, head_dim) with kv_heads dividing
    heads. Returns out (batch, Lq, heads, head_dim) in q's dtype and lse (batch, heads, Lq) in
    float32 (float64 for float64 inputs). ``scale`` defaults to 1/sqrt(head_dim). ``causal`` is
    top-left aligned (query i sees keys j <= i); ``window`` (int) keeps keys with |i - j| < window
    (j <= i too when causal). Memory is O(L) on the fused kernels, O(L * tile) in the fallback.
    """
    return _AttentionWithLse.apply(q, k, v, bool(causal), scale, window)


def merge_partials(outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]):
    """Combine attention results over disjoint key sets into the result over their union.

    ``outs[i]`` (batch, L, heads, head_dim) and ``lses[i]`` (batch, heads, L) are the outputs of
    attention of the same queries against the i-th key subset. Returns ``(out, lse)`` with
    ``lse = log(sum_i exp(lse_i))`` and ``out = sum_i exp(lse_i - lse) out_i``, computed in lse's
    dtype and cast to outs[0]'s dtype. Empty partials (lse = -inf) contribute nothing; a row with
    no key in any partial gets out 0 and lse -inf (never NaN, also in the gradient).
    """
    if len(outs) == 0 or len(outs) != len(lses):
        raise ValueError(f"outs and lses must be non-empty and of equal length, got {len(outs)} "
                         f"and {len(lses)}")
    for i, (o, l) in enumerate(zip(outs, lses)):
        if o.dim() != 4 or l.shape != (o.shape[0], o.shape[2], o.shape[1]):
            raise ValueError(f"partial {i}: expected out (B, L, H, D) and lse (B, H, L), got out "
                             f"{tuple(o.shape)} and lse {tuple(l.shape)}")
        if o.shape != outs[0].shape:
            raise ValueError(f"partial {i}: out shape {tuple(o.shape)} differs from partial 0's "
                             f"{tuple(outs[0].shape)}")
    dt = torch.promote_types(lses[0].dtype, torch.float32)
    e, total, lse = _merge_terms([l.to(dt) for l in lses])
    out = sum((w / total).transpose(1, 2)[..., None] * o.to(dt) for w, o in zip(e, outs))
    return out.to(outs[0].dtype), lse


def merge_into(out: torch.Tensor, lse: torch.Tensor, part: torch.Tensor, part_lse: torch.Tensor) -> None:
    """:func:`merge_partials` of (``out``, ``lse``) and (``part``, ``part_lse``), written into
    ``out`` and ``lse`` in place: the same weights, but no output-sized temporary (merge_partials
    builds one product per partial and their sum; a ring merges every step, and those
    temporaries set its peak memory). Without autograd; ``out`` and ``lse`` are the accumulators,
    in lse's dtype (at least float32)."""
    with torch.no_grad():
        (e_acc, e_part), total, merged = _merge_terms([lse, part_lse])
        lse.copy_(merged)
        # weights (B, H, L) -> (B, L, H, 1), as out's rows; one weight alive at a time
        out.mul_((e_acc / total).transpose(1, 2)[..., None])
        out.addcmul_(part.to(out.dtype), (e_part / total).transpose(1, 2)[..., None])


def _merge_terms(lses: Sequence[torch.Tensor]):
    """(e, total, lse) of partials whose log-sum-exps are ``lses`` (each (B, H, L)): partial i's
    weight is ``e[i] / total``, the merged log-sum-exp ``lse``.

    Weights exp(lse_i - m) / sum_k exp(lse_k - m) relative to the max m: normalizing by the sum,
    not by exp(lse), keeps out accurate when lse is large (rounding lse ~ 1e4 in float32 costs
    ~1e-3). m cancels exactly, so it carries no gradient; rows with no key use m = 0, and get
    weights 0 (total is 1 there) and lse -inf: never NaN, also in the gradient. The partials are
    not stacked: a ring merges every step, and a stack would be one more copy of each lse."""
    m = functools.reduce(torch.maximum, [l.detach() for l in lses])
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = [torch.exp(l - m) for l in lses]
    total = functools.reduce(torch.add, e)
    seen = total > 0
    safe_total = torch.where(seen, total, torch.ones_like(total))
    lse = torch.where(seen, m + torch.log(safe_total), torch.full_like(total, float("-inf")))
    return e, safe_total, lse
