"""The hybrid strategy: head shuffle inside groups of u ranks, ring attention across the groups.

The P ranks form a (P/u) x u grid: group g holds ranks g*u ... g*u+u-1 (consecutive ranks, which
on a multi-GPU node share the fast links the all-to-all needs). Inside each group an all-to-all
gives every member all of its group's rows for heads/u heads; member a of every group then runs a
ring over the P/u groups, ranks ``[a, u+a, 2u+a, ...]``, treating each group's concatenated rows as
one ring block; a reverse all-to-all returns the output rows. With u = P this is the shuffle,
with u = 1 the ring. Communication per rank: the shuffle's volume over u ranks plus the ring's
over P/u blocks with max(kv_heads/u, 1) K/V heads each (when kv_heads < u, each member holds the
one K/V head its query heads share).

Everything runs on ``group`` with point-to-point ops among explicit rank lists, so no subgroup is
created (creating subgroups is itself a collective over the whole world, and costly).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..layout import Segment
from .shuffle import heads_to_seq, seq_to_heads
from ..stats import CommStats


def hybrid_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     segments: list[list[Segment]], causal: bool, group, hybrid_size: int,
                     scale: float | None = None, stats: CommStats | None = None) -> torch.Tensor:
    """Exact attention on a (P/u) x u grid of the ranks of ``group``, u = ``hybrid_size``.

    q: (batch, local_len, heads, d); k, v: (batch, local_len, kv_heads, d): this rank's rows, the
    concatenation of ``segments[rank]``. Needs u | P, u | heads, and u | kv_heads or kv_heads | u.
    Returns this rank's output rows, shaped like q.
    """
    from .ring import ring_attention

    world, rank, u = dist.get_world_size(group), dist.get_rank(group), hybrid_size
    g, a = divmod(rank, u)
    peers = [g * u + b for b in range(u)]
    lengths = [sum(n for _, n in segments[r]) for r in peers]
    qh, kh, vh = seq_to_heads([q, k, v], lengths, peers, group, stats)
    ring_ranks = [h * u + a for h in range(world // u)]
    ring_segments = [[s for r in range(h * u, h * u + u) for s in segments[r]]
                     for h in range(world // u)]
    out = ring_attention(qh, kh, vh, segments=ring_segments, causal=causal, group=group,
                         ranks=ring_ranks, scale=scale, stats=stats)
    return heads_to_seq(out, lengths, peers, group, stats)
