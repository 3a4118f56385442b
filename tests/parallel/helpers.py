"""Shared utilities for the distributed tests: a float64 materialized reference and a config runner.

Each launch of ranks costs seconds of process start-up, so tests batch many configurations into
one launch: :func:`run_configs` (the rank function given to ``run_local``) loops over a list of
:class:`Case` s, runs the distributed forward and backward on every rank, gathers the results and,
on rank 0, compares them with :func:`reference_attention`. It returns plain numbers.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

import longmix.parallel as ld


def reference_attention(q, k, v, *, causal=False, scale=None, window=None):
    """Softmax attention with the full (L x L) score matrix materialized, computed in float64.

    q (batch, L, heads, d); k, v (batch, L, kv_heads, d); query head h reads K/V head
    h // (heads // kv_heads). ``window``: keep keys with |i - j| < window. Differentiable.
    """
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    i = torch.arange(q.shape[1])[:, None]
    j = torch.arange(k.shape[1])[None, :]
    keep = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool)
    if causal:
        keep &= j <= i
    if window is not None:
        keep &= (i - j).abs() < window
    scores = scores.masked_fill(~keep, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", torch.softmax(scores, dim=-1), v)


@dataclass(frozen=True)
class Case:
    """One distributed attention configuration, with the reference to compare against."""

    strategy: str
    seq_len: int
    heads: int
    kv_heads: int
    layout: str = "contiguous"
    causal: bool = False
    dtype: str = "float64"
    head_dim: int = 8
    batch: int = 2
    window: int | None = None
    hybrid_size: int | None = None
    logit_scale: float = 1.0  # multiplies q and k: logits grow by its square
    seed: int = 0

    @property
    def name(self) -> str:
        opts = [self.strategy + (f"(u={self.hybrid_size})" if self.hybrid_size else ""),
                self.layout, "causal" if self.causal else "full", self.dtype,
                f"L={self.seq_len}", f"H={self.heads}/{self.kv_heads}"]
        if self.window:
            opts.append(f"w={self.window}")
        if self.logit_scale != 1:
            opts.append(f"logits x{self.logit_scale ** 2:g}")
        return " ".join(opts)


def make_inputs(case: Case):
    """Full-sequence q, k, v and an output gradient, identical on every rank (seeded)."""
    g = torch.Generator().manual_seed(case.seed)
    dtype = getattr(torch, case.dtype)
    b, n, d = case.batch, case.seq_len, case.head_dim

    def randn(h):
        return torch.randn(b, n, h, d, generator=g, dtype=torch.float64)

    q, k, v, dout = randn(case.heads), randn(case.kv_heads), randn(case.kv_heads), randn(case.heads)
    q, k = q * case.logit_scale, k * case.logit_scale
    return [t.to(dtype) for t in (q, k, v, dout)]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max(max |ref|, 1): relative, except that exact zeros (e.g. dq at L = 1, where
    softmax over a single key has no gradient) are compared on the inputs' unit scale."""
    if ref.numel() == 0:
        return 0.0
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()


_REFERENCES: dict = {}


def _reference(q, k, v, dout, case: Case):
    """Float64 reference output and (dq, dk, dv), cached per input: strategies and layouts share it."""
    key = (case.seq_len, case.heads, case.kv_heads, case.causal, case.dtype, case.head_dim,
           case.batch, case.window, case.logit_scale, case.seed)
    if key not in _REFERENCES:
        if len(_REFERENCES) > 64:
            _REFERENCES.clear()
        ref_in = [t.double().requires_grad_() for t in (q, k, v)]
        ref = reference_attention(*ref_in, causal=case.causal, window=case.window)
        ref.backward(dout.double())
        _REFERENCES[key] = ref.detach(), [t.grad for t in ref_in]
    return _REFERENCES[key]


def run_case(group, case: Case) -> dict | None:
    """Distributed forward + backward of ``case`` on every rank; errors vs float64 on rank 0."""
    start = time.perf_counter()
    rank = torch.distributed.get_rank(group)
    q, k, v, dout = make_inputs(case)
    local = [ld.shard(t, group, case.layout).detach().requires_grad_() for t in (q, k, v)]
    stats = ld.CommStats()
    out = ld.attention(*local, causal=case.causal, group=group, strategy=case.strategy,
                       layout=case.layout, window=case.window, hybrid_size=case.hybrid_size,
                       stats=stats)
    forward_bytes = (stats.bytes_sent, stats.bytes_received)
    out.backward(ld.shard(dout, group, case.layout))
    full = [ld.unshard(t, group, case.layout) for t in (out, *(x.grad for x in local))]
    if rank != 0:
        return None
    ref, ref_grads = _reference(q, k, v, dout, case)
    names = ("out", "dq", "dk", "dv")
    errors = {n: rel_err(x, r) for n, x, r in zip(names, full, (ref, *ref_grads))}
    result = dict(case=case, errors=errors, finite=all(torch.isfinite(x).all().item() for x in full),
                  forward_bytes=forward_bytes, seconds=time.perf_counter() - start)
    if case.dtype != "float64":  # the single-process error of the same dtype: the P = 1 baseline
        one_in = [t.detach().requires_grad_() for t in (q, k, v)]
        from longmix.ops import attention_with_lse

        one = attention_with_lse(*one_in, causal=case.causal, window=case.window)[0]
        one.backward(dout)
        result["local_errors"] = {n: rel_err(x, r) for n, x, r in
                                  zip(names, (one, *(t.grad for t in one_in)),
                                      (ref, *ref_grads))}
    return result


def run_configs(group, cases: list[Case]) -> list[dict] | None:
    """Rank function for ``run_local``: run every case; rank 0 returns one result per case."""
    results = [run_case(group, case) for case in cases]
    return results if torch.distributed.get_rank(group) == 0 else None


def tolerance(dtype: str) -> float:
    """Relative error bound vs the float64 reference: ~1e-10 in float64 (rounding of sums over L) and 1e-4 in float32."""
    return {"float64": 1e-10, "float32": 1e-4}[dtype]


def failures(results: list[dict], *, tol=None) -> list[str]:
    """Human-readable lines for every result whose error exceeds its tolerance or is non-finite."""
    bad = []
    for r in results:
        case = r["case"]
        bound = tol or tolerance(case.dtype)
        worst = max(r["errors"].values())
        if not r["finite"] or not worst <= bound:
            bad.append(f"{case.name}: errors {r['errors']} (bound {bound:g}, finite={r['finite']})")
    return bad


def summed_grads(module, group) -> list[torch.Tensor]:
    """Every parameter's gradient summed over the ranks of ``group`` (zeros where a rank has none):
    what one process's gradient must equal."""
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]
    for g in grads:
        torch.distributed.all_reduce(g, group=group)
    return grads


def error_message(fn) -> str:
    """The message of the ValueError ``fn()`` raises, or "no error"."""
    try:
        fn()
    except ValueError as exc:
        return str(exc)
    return "no error"
