"""An LM head and its cross entropy, chunk by chunk of positions: never all (N, vocab) logits.

``linear_cross_entropy(h, weight, bias, target)`` is

    F.cross_entropy(F.linear(h, weight, bias).reshape(-1, V), target.reshape(-1),
                    ignore_index=ignore_index, reduction="sum")

with the logits computed ``chunk_rows`` positions at a time. The plain form keeps the (N, V)
logits, their log-softmax and, in backward, their gradient: at a vocabulary of V that is 3 V
floats per position, more than a small model's activations. Here forward keeps only each
position's log-sum-exp (one float), and backward recomputes each chunk's logits, turns them into
the gradient of the logits (softmax minus the one-hot target), and folds that into the gradients
of ``h``, ``weight`` and ``bias`` before the next chunk. The cost is one more (N, D) x (D, V)
product per step. The log-sum-exp and the loss are in float32 or wider; gradients of the weights
are summed over chunks in that precision.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["linear_cross_entropy", "default_chunk_rows"]

CHUNK_ELEMENTS = 1 << 20  # logits held at once: 4 MiB in float32, whatever the length


def default_chunk_rows(vocab: int) -> int:
    """Positions per chunk: about :data:`CHUNK_ELEMENTS` logits, at least 64 rows (a large
    vocabulary still gets matrix products of useful size)."""
    return max(64, CHUNK_ELEMENTS // max(vocab, 1))


def _chunk_logits(h, weight, bias, dtype):
    return F.linear(h, weight, bias).to(dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, target, ignore_index, chunk_rows):
        dtype = torch.promote_types(h.dtype, torch.float32)
        n = h.shape[0]
        lse = torch.empty(n, dtype=dtype, device=h.device)
        total = torch.zeros((), dtype=dtype, device=h.device)
        scored = target != ignore_index
        for start in range(0, n, chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = _chunk_logits(h[rows], weight, bias, dtype)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            keep = scored[rows]
            picked = logits.gather(1, torch.where(keep, target[rows], 0).unsqueeze(1)).squeeze(1)
            total += ((lse[rows] - picked) * keep).sum()
        ctx.save_for_backward(h, weight, bias, target, lse)
        ctx.ignore_index, ctx.chunk_rows, ctx.has_bias = ignore_index, chunk_rows, bias is not None
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        h, weight, bias, target, lse = ctx.saved_tensors
        dtype = lse.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        grad_b = (torch.zeros(weight.shape[0], dtype=dtype, device=weight.device)
                  if need_b and ctx.has_bias else None)
        scored = target != ctx.ignore_index
        for start in range(0, h.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            # d loss / d logits = softmax - one-hot(target) on scored rows, 0 on the others
            grad = torch.exp(_chunk_logits(h[rows], weight, bias, dtype) - lse[rows].unsqueeze(1))
            keep = scored[rows]
            grad.scatter_add_(1, torch.where(keep, target[rows], 0).unsqueeze(1),
                              -torch.ones_like(lse[rows]).unsqueeze(1))
            grad *= (keep.to(dtype) * grad_total).unsqueeze(1)
            if need_h:
                grad_h[rows] = (grad.to(weight.dtype) @ weight).to(h.dtype)
            if need_w:
                grad_w += grad.t() @ h[rows].to(dtype)
            if grad_b is not None:
                grad_b += grad.sum(0)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         target: torch.Tensor, ignore_index: int = -100,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """Summed cross entropy of the logits ``F.linear(h, weight, bias)`` against ``target``,
    without holding all the logits (see the module doc). Differentiable in ``h``, ``weight``
    and ``bias``.

    Args:
        h: features (..., D).
        weight: the head's weight (V, D); bias: (V,) or None.
        target: class indices (...) matching ``h``'s leading shape, each in [0, V) or
            ``ignore_index`` (not scored).
        chunk_rows: positions per chunk (None: :func:`default_chunk_rows` of V).

    Returns the sum over scored positions, a scalar in float32 or wider.
    """
    if weight.dim() != 2 or h.shape[-1:] != weight.shape[1:]:
        raise ValueError(f"linear_cross_entropy: weight must be (vocab, {h.shape[-1]}) for h of "
                         f"shape {tuple(h.shape)}, got {tuple(weight.shape)}")
    vocab = weight.shape[0]
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"linear_cross_entropy: bias must be ({vocab},), got {tuple(bias.shape)}")
    if target.shape != h.shape[:-1]:
        raise ValueError(f"linear_cross_entropy: target must have shape {tuple(h.shape[:-1])} "
                         f"(h's without its last dim), got {tuple(target.shape)}")
    if target.dtype != torch.long:
        raise ValueError(f"linear_cross_entropy: target must be a LongTensor, got {target.dtype}")
    target = target.reshape(-1)
    bad = (target != ignore_index) & ((target < 0) | (target >= vocab))
    if bool(bad.any()):
        raise ValueError(f"linear_cross_entropy: target values must be in [0, {vocab}) or "
                         f"ignore_index={ignore_index}, got {int(target[bad][0])}")
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(vocab)
    elif not (isinstance(chunk_rows, int) and chunk_rows >= 1):
        raise ValueError(f"linear_cross_entropy: chunk_rows must be an int >= 1, got {chunk_rows!r}")
    return _LinearCrossEntropy.apply(h.reshape(-1, h.shape[-1]), weight, bias, target,
                                     ignore_index, chunk_rows)
