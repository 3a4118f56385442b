"""Differentiable collectives on lists of tensors, with byte accounting.

Why not ``torch.distributed.nn.functional.all_gather``: on gloo its backward gave wrong input
gradients for some mixers while its forward was exact. The backward here is written out and
tested against one process: the gradient of every gathered slice, summed over the ranks that
used it, goes back to the rank that owns the slice.

Tensors of any dtypes and shapes travel as one byte buffer, so a list (a flattened pytree: a
mixer's state summary, say) costs one collective whatever its composition. Every rank of the
group must pass tensors of the same dtypes and shapes, in the same order (callers check shapes
first so that a mismatch is an error on every rank, not a hang).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..layout import resolve_group
from ..stats import CommStats

__all__ = ["all_gather_tensors", "depend_on"]


def _pack(tensors: list[torch.Tensor], device) -> torch.Tensor:
    """Concatenate the bytes of ``tensors`` (any dtypes) into one flat uint8 tensor."""
    if not tensors:
        return torch.empty(0, dtype=torch.uint8, device=device)
    return torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors])


def _unpack(buffer: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of :func:`_pack`: tensors with the dtypes and shapes of ``like``."""
    out, offset = [], 0
    for t in like:
        size = t.numel() * t.element_size()
        out.append(buffer[offset:offset + size].view(t.dtype).reshape(t.shape).clone())
        offset += size
    return out


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class _AllGather(torch.autograd.Function):
    """Forward: every rank's tensors. Backward: all-to-all of the gradients, summed per owner
    (gloo has no reduce_scatter; an all-to-all moves each gradient once)."""

    @staticmethod
    def forward(ctx, group, stats, *tensors):
        _, world, rank = resolve_group(group)
        device = tensors[0].device
        mine = _pack(list(tensors), device)
        buffers = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(buffers, mine, group=group)
        if stats is not None:
            stats.add(sent=mine.numel() * (world - 1), received=mine.numel() * (world - 1))
        ctx.group, ctx.stats, ctx.world, ctx.rank = group, stats, world, rank
        ctx.like = [t.detach() for t in tensors]
        ctx.differentiable = [t.is_floating_point() or t.is_complex() for t in tensors]
        gathered = []
        for r, buffer in enumerate(buffers):
            gathered += tensors if r == rank else _unpack(buffer, ctx.like)
        ctx.mark_non_differentiable(*[g for g, d in zip(gathered, ctx.differentiable * world) if not d])
        # This rank's own slice is returned by value; clone so autograd sees a new output.
        return tuple(g.clone() if r_i // len(tensors) == rank else g
                     for r_i, g in enumerate(gathered))

    @staticmethod
    def backward(ctx, *grads):
        n, world, rank = len(ctx.like), ctx.world, ctx.rank
        like = [t for t, d in zip(ctx.like, ctx.differentiable) if d]
        # The gradients this rank computed for rank r's slice, packed, one buffer per owner r.
        send = []
        for r in range(world):
            slice_grads = [g if g is not None else torch.zeros_like(t)
                           for g, t, d in zip(grads[r * n:(r + 1) * n], ctx.like, ctx.differentiable) if d]
            send.append(_pack([g.to(t.dtype) for g, t in zip(slice_grads, like)], ctx.like[0].device))
        size = send[0].numel()
        received = torch.empty(world * size, dtype=torch.uint8, device=send[0].device)
        if size:
            dist.all_to_all_single(received, torch.cat(send), [size] * world, [size] * world, group=ctx.group)
        if ctx.stats is not None:
            ctx.stats.add(sent=size * (world - 1), received=size * (world - 1))
        total = [torch.zeros_like(t) for t in like]
        for r in range(world):
            for acc, g in zip(total, _unpack(received[r * size:(r + 1) * size], like)):
                acc += g
        it = iter(total)
        return (None, None, *[next(it) if d else None for d in ctx.differentiable])


def all_gather_tensors(tensors: list[torch.Tensor], group=None, stats: CommStats | None = None
                       ) -> list[list[torch.Tensor]]:
    """Every rank's ``tensors``: element r of the result is rank r's list. Differentiable.

    One collective of ``sum(t.nbytes)`` bytes per rank (any mix of dtypes). In the backward,
    the gradients every rank computed for rank r's tensors are summed and arrive at rank r.
    ``stats`` counts this rank's bytes sent and received, (P - 1) x its own bytes each way per
    pass. On one process (or torch.distributed not initialized) it returns ``[tensors]``.
    """
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"all_gather_tensors: tensors[{i}] must be a torch.Tensor, got {type(t).__name__}")
    _, world, _ = resolve_group(group)
    if world == 1 or not tensors:
        return [tensors]
    flat = _AllGather.apply(group, stats, *tensors)
    n = len(tensors)
    return [list(flat[r * n:(r + 1) * n]) for r in range(world)]


class _DependOn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, *tensors):
        ctx.like = [(t.shape, t.dtype, t.device, t.is_floating_point() or t.is_complex()) for t in tensors]
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        return (grad, *[torch.zeros(shape, dtype=dtype, device=device) if differentiable else None
                        for shape, dtype, device, differentiable in ctx.like])


def depend_on(y: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    """``y``, whose backward also reaches ``tensors`` (with a zero gradient).

    A collective's backward is a collective too: every rank must run it, including a rank whose
    result does not use what was gathered (the first rank of a state-passing chain reads no
    other rank's summary). Tying the gathered tensors to the result makes every rank's backward
    reach them, and tying each collective's outputs to the next one's inputs fixes the order in
    which the backward collectives run, the same on every rank.
    """
    if not tensors:
        return y
    return _DependOn.apply(y, *tensors)
