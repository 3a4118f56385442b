"""Ring attention: K/V blocks travel around a ring of ranks; partial results merge on the lse.

Each ring member holds some rows of the sequence (its *segments*). In step s, member i attends
its queries to the K/V block that started on member i - s, while already sending that block on to
member i + 1 and receiving the next one (communication overlaps compute). The partial (out, lse)
pairs merge with the online softmax, in place (:func:`longmix.ops.attention.merge_into`), so the
result is exact.
After P steps every query has seen every key.

Causal masking comes from the global positions of the segments: a key segment entirely before a
query segment is a full block, the same segment is a causal diagonal block, a later one is
skipped. With the zigzag layout (member r holds chunks r and 2P-1-r) every member does about the
same work.

Backward (as zhuzilin/ring-flash-attention): K/V circulate again; each member recomputes its
blocks with the flash backward using the *global* out and lse, adds dQ locally, and adds the
block's dK/dV to an accumulator that travels with the block and reaches the block's owner after
the last step. Only kv_heads heads travel (GQA is expanded locally, and gradients are summed back
to kv_heads before they are sent).

Wire volume per member, with L_j the rows of member j, n members, E the element size:
    forward   sum over the n-1 blocks received of L_j * B * kv_heads * 2d * E  (~ 2 L kv_heads d)
    backward  the same for K/V again, plus the n dK/dV accumulators (held in float32, or float64
              for float64 inputs), ~ 2x the forward volume.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from longmix.checks import is_int
from longmix.ops import attention_backward, attention_forward
from longmix.ops.attention import check_attention_inputs, merge_into
from longmix.ops.blockwise_attention import accumulator_dtype

from ..layout import Segment
from ..stats import CommStats

# A block: (query segment ids, key segment ids, causal diagonal?)
Block = tuple[tuple[int, ...], tuple[int, ...], bool]

_TAG_KV, _TAG_DKV = 101, 102  # gloo matches on tags; NCCL matches in order, which is the same


@dataclass
class _Ring:
    """Everything about the ring that is fixed for one call (shared by forward and backward)."""

    group: object
    pos: int                     # this member's index in the ring
    next_peer: int               # global ranks of the neighbours
    prev_peer: int
    segs: list[list[Segment]]    # per ring member, empty segments dropped
    lengths: list[int]           # rows per member
    offsets: list[list[int]]     # local row offset of each segment, per member
    plans: list[list[Block]]     # blocks of my queries against member j's keys
    causal: bool
    scale: float
    stats: CommStats | None

    @property
    def n(self) -> int:
        return len(self.segs)

    def holder(self, step: int) -> int:
        """Ring member whose K/V block this member works on in ``step``."""
        return (self.pos - step) % self.n


def _block_plan(q_segs: list[Segment], k_segs: list[Segment], causal: bool,
                documents: tuple[int, ...] | None = None) -> list[Block]:
    """Blocks of attention between my query segments and one member's key segments.

    Query segments that see the same set of full key segments share one kernel call. With
    packed ``documents`` (segments already cut at document starts) a query segment sees only
    key segments of its own document: blocks a boundary fully masks are never formed.
    """
    if not q_segs or not k_segs:
        return []
    same = (lambda a, b: True) if documents is None else \
        (lambda a, b: bisect.bisect_right(documents, a) == bisect.bisect_right(documents, b))
    if not causal and documents is None:
        return [(tuple(range(len(q_segs))), tuple(range(len(k_segs))), False)]
    full: dict[tuple[int, ...], list[int]] = {}
    diagonal: list[Block] = []
    for qi, (q_start, q_len) in enumerate(q_segs):
        seen = tuple(ki for ki, (k_start, k_len) in enumerate(k_segs)
                     if same(k_start, q_start) and (not causal or k_start + k_len <= q_start))
        if seen:
            full.setdefault(seen, []).append(qi)
        if causal:
            diagonal += [((qi,), (ki,), True) for ki, seg in enumerate(k_segs) if seg == (q_start, q_len)]
    return [(tuple(qids), kids, False) for kids, qids in full.items()] + diagonal


def _check_segments(segments, n: int, my_len: int, pos: int) -> list[list[Segment]]:
    if not isinstance(segments, (list, tuple)) or len(segments) != n:
        raise ValueError(f"segments must list the segments of each of the {n} ring members, got "
                         f"{segments!r}")
    clean = []
    for j, member in enumerate(segments):
        kept = []
        for seg in member:
            if (not isinstance(seg, (list, tuple)) or len(seg) != 2
                    or not all(is_int(x, 0) for x in seg)):
                raise ValueError(f"segments[{j}] must hold (global_start, length) pairs of "
                                 f"non-negative ints, got {seg!r}")
            if seg[1] > 0:
                kept.append((seg[0], seg[1]))
        clean.append(kept)
    ordered = sorted(s for member in clean for s in member)
    for (a, la), (b, _) in zip(ordered, ordered[1:]):
        if a + la > b:
            raise ValueError(f"segments overlap: ({a}, {la}) and ({b}, ...); each row of the "
                             "sequence must belong to exactly one ring member")
    mine = sum(length for _, length in clean[pos])
    if mine != my_len:
        raise ValueError(f"q, k, v hold {my_len} rows (dim 1) but segments[{pos}] (this rank's) "
                         f"totals {mine} rows: {segments[pos]!r}")
    return clean


def _cut_at_documents(member: list[Segment], documents) -> list[Segment]:
    """``member``'s segments cut at every document start inside them (same rows, same order)."""
    from longmix.ops.documents import cuts_within

    out = []
    for start, length in member:
        edges = [start] + cuts_within(documents, start, start + length) + [start + length]
        out += [(a, b - a) for a, b in zip(edges, edges[1:])]
    return out


def _make_ring(q, k, v, segments, causal, group, ranks, scale, stats, documents=None) -> _Ring:
    check_attention_inputs(q, k, v)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"ring attention is self-attention: q and k must hold the same rows, got "
                         f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    group = dist.group.WORLD if group is None else group
    world = dist.get_world_size(group)
    me = dist.get_rank(group)
    ranks = list(range(world)) if ranks is None else list(ranks)
    if (len(set(ranks)) != len(ranks) or
            not all(is_int(r, 0, world - 1) for r in ranks)):
        raise ValueError(f"ranks must be distinct group ranks in [0, {world}), got {ranks!r}")
    if me not in ranks:
        raise ValueError(f"this rank (group rank {me}) is not in ranks={ranks!r}")
    pos, n = ranks.index(me), len(ranks)
    segs = _check_segments(segments, n, q.shape[1], pos)
    if documents is not None:  # finer segments for the plan; the wire still moves whole blocks
        segs = [_cut_at_documents(member, documents) for member in segs]
    lengths = [sum(length for _, length in member) for member in segs]
    offsets = [[sum(length for _, length in member[:i]) for i in range(len(member))]
               for member in segs]
    return _Ring(group=group, pos=pos,
                 next_peer=dist.get_global_rank(group, ranks[(pos + 1) % n]),
                 prev_peer=dist.get_global_rank(group, ranks[(pos - 1) % n]),
                 segs=segs, lengths=lengths, offsets=offsets,
                 plans=[_block_plan(segs[pos], segs[j], causal, documents) for j in range(n)],
                 causal=causal, scale=1.0 / math.sqrt(q.shape[-1]) if scale is None else scale,
                 stats=stats)


# ----------------------------------------------------------------------------- helpers
def _take(x: torch.Tensor, dim: int, ring: _Ring, member: int, ids) -> torch.Tensor:
    """Rows of ``member``'s segments ``ids`` from x (a view when they are adjacent)."""
    offs, segs = ring.offsets[member], ring.segs[member]
    if all(b == a + 1 for a, b in zip(ids, ids[1:])):
        return x.narrow(dim, offs[ids[0]], sum(segs[i][1] for i in ids))
    return torch.cat([x.narrow(dim, offs[i], segs[i][1]) for i in ids], dim)


def _pieces(ring: _Ring, member: int, ids):
    """(local offset in member's rows, offset inside the block, length) per segment of a block."""
    at = 0
    for i in ids:
        length = ring.segs[member][i][1]
        yield ring.offsets[member][i], at, length
        at += length


def _exchange(ring: _Ring, send: torch.Tensor | None, recv: torch.Tensor | None, tag: int):
    """Post send-to-next / recv-from-prev (either may be None: empty block); return the requests."""
    ops = []
    if send is not None:
        ops.append(dist.P2POp(dist.isend, send, ring.next_peer, group=ring.group, tag=tag))
    if recv is not None:
        ops.append(dist.P2POp(dist.irecv, recv, ring.prev_peer, group=ring.group, tag=tag))
    if ring.stats is not None:
        ring.stats.add(sent=0 if send is None else send.numel() * send.element_size(),
                       received=0 if recv is None else recv.numel() * recv.element_size())
    return dist.batch_isend_irecv(ops) if ops else []


def _wait(reqs) -> None:
    for req in reqs:
        req.wait()


def _empty_block(like: torch.Tensor, rows: int) -> torch.Tensor:
    """A receive buffer shaped like ``like`` with ``rows`` positions."""
    return torch.empty((like.shape[0], rows, *like.shape[2:]), dtype=like.dtype, device=like.device)


def _no_rows(block: torch.Tensor) -> torch.Tensor:
    """A 0-row tensor with ``block``'s batch, heads, width and dtype: the ``like`` of the receive
    buffers (``block`` itself, kept for that, would hold its rows alive through the whole ring)."""
    return block.new_empty((block.shape[0], 0, *block.shape[2:]))


def _circulate(ring: _Ring, kv: torch.Tensor | None, like: torch.Tensor, step: int):
    """Start passing the block held in ``step`` on; return (requests, buffer of the next block).

    ``kv`` is None for an empty block; ``like`` gives batch, heads and dtype of the buffers.
    """
    if step + 1 >= ring.n:
        return [], None
    nxt = ring.holder(step + 1)
    recv = _empty_block(like, ring.lengths[nxt]) if ring.lengths[nxt] else None
    send = kv if ring.lengths[ring.holder(step)] else None
    return _exchange(ring, send, recv, _TAG_KV), recv


# ----------------------------------------------------------------------------- forward / backward
def _ring_forward(q, k, v, ring: _Ring):
    d = q.shape[-1]
    acc_dt = accumulator_dtype(q.dtype)
    every_row = tuple(range(len(ring.segs[ring.pos])))  # q_ids of a block over all my rows
    out = lse = None  # the accumulators, made on the first block (see below)
    kv = torch.cat([k, v], dim=-1).contiguous()  # one message per step: (B, L, kv_heads, 2d)
    like = _no_rows(kv)
    for step in range(ring.n):
        j = ring.holder(step)
        reqs, next_kv = _circulate(ring, kv, like, step)
        for q_ids, k_ids, diagonal in ring.plans[j]:
            kvb = _take(kv, 1, ring, j, k_ids)
            o, l = attention_forward(_take(q, 1, ring, ring.pos, q_ids), kvb[..., :d],
                                     kvb[..., d:], causal=diagonal, scale=ring.scale)
            if out is None and tuple(q_ids) == every_row:
                # a first block over all rows, in order, is the accumulator itself: exactly what
                # merging it into zeros with lse -inf gives, without a third output-sized buffer
                out, lse = o.to(acc_dt), l.to(acc_dt)
                continue
            if out is None:
                out, lse = _empty_accumulators(q, acc_dt)
            for at, off, length in _pieces(ring, ring.pos, q_ids):
                merge_into(out.narrow(1, at, length), lse.narrow(2, at, length),
                           o.narrow(1, off, length), l.narrow(2, off, length))
            o = l = None  # merged: not alive while the next block's output is made
        _wait(reqs)
        reqs = []  # finished requests still hold the block sent: free it before the next buffer
        kv = next_kv
    if out is None:  # no block at all (this member holds no rows, or sees no key)
        out, lse = _empty_accumulators(q, acc_dt)
    return out.to(q.dtype), lse


def _empty_accumulators(q: torch.Tensor, acc_dt: torch.dtype):
    """out 0 and lse -inf for every row of q: attention over no key yet."""
    return (torch.zeros(q.shape, dtype=acc_dt, device=q.device),
            torch.full((q.shape[0], q.shape[2], q.shape[1]), float("-inf"), dtype=acc_dt,
                       device=q.device))


def _ring_backward(dout, q, k, v, out, lse, ring: _Ring):
    d = q.shape[-1]
    acc_dt = accumulator_dtype(q.dtype)
    dq = torch.zeros(q.shape, dtype=acc_dt, device=q.device)
    kv = torch.cat([k, v], dim=-1).contiguous()
    like = _no_rows(kv)
    dkv, dkv_reqs, dkv_in = None, [], None
    for step in range(ring.n):
        j = ring.holder(step)
        kv_reqs, next_kv = _circulate(ring, kv, like, step)
        contrib = torch.zeros((like.shape[0], ring.lengths[j], *like.shape[2:]), dtype=acc_dt,
                              device=q.device)
        for q_ids, k_ids, diagonal in ring.plans[j]:
            kvb = _take(kv, 1, ring, j, k_ids)
            dout_b, q_b, out_b = (_take(x, 1, ring, ring.pos, q_ids) for x in (dout, q, out))
            gq, gk, gv = attention_backward(dout_b, q_b, kvb[..., :d], kvb[..., d:], out_b,
                                            _take(lse, 2, ring, ring.pos, q_ids),
                                            causal=diagonal, scale=ring.scale)
            for at, off, length in _pieces(ring, ring.pos, q_ids):
                dq.narrow(1, at, length).add_(gq.narrow(1, off, length))
            # straight into the accumulator's k and v halves: a concatenated copy of the
            # block's gradients would be one more (rows, 2d) buffer at the backward's peak
            for at, off, length in _pieces(ring, j, k_ids):
                rows = contrib.narrow(1, at, length)
                rows[..., :d].add_(gk.narrow(1, off, length))
                rows[..., d:].add_(gv.narrow(1, off, length))
            del gq, gk, gv
        # The accumulator of block j arrives from the previous member (who worked on it last
        # step); add this member's share and pass it on. After the last step it reaches the owner.
        _wait(dkv_reqs)
        dkv_reqs = []  # (as kv_reqs below: release the block they sent)
        dkv = contrib if dkv_in is None else dkv_in.add_(contrib)
        receiving = ring.holder(step + 1) if step + 1 < ring.n else ring.pos
        dkv_in = _empty_block(dkv, ring.lengths[receiving]) if ring.lengths[receiving] else None
        if ring.n > 1:
            dkv_reqs = _exchange(ring, dkv if ring.lengths[j] else None, dkv_in, _TAG_DKV)
        else:
            dkv_in = dkv
        _wait(kv_reqs)
        kv_reqs = []
        kv = next_kv
    _wait(dkv_reqs)
    mine = dkv_in if dkv_in is not None else \
        torch.zeros((like.shape[0], k.shape[1], *like.shape[2:]), dtype=acc_dt, device=q.device)
    return dq.to(q.dtype), mine[..., :d].to(k.dtype), mine[..., d:].to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, ring):
        out, lse = _ring_forward(q, k, v, ring)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring = ring
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _ring_backward(dout, q, k, v, out, lse, ctx.ring)
        return dq, dk, dv, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, segments, causal: bool,
                   group=None, ranks=None, scale: float | None = None,
                   stats: CommStats | None = None,
                   documents: tuple[int, ...] | None = None) -> torch.Tensor:
    """Exact self-attention over a sequence whose rows are spread over the members of a ring.

    Args:
        q: (batch, L_r, heads, head_dim), this rank's rows: its segments concatenated in order.
        k, v: (batch, L_r, kv_heads, head_dim); kv_heads divides heads.
        segments: ``segments[i]`` lists the ``(global_start, length)`` segments of the i-th ring
            member, for every member (so all block sizes and positions are known everywhere).
            Segments must not overlap; members may hold nothing (L_r = 0).
        causal: global position t attends to positions <= t.
        group: the process group (None: the default group).
        ranks: group ranks forming the ring, in ring order (default: all ranks of ``group``).
            Disjoint rings may run side by side in one group (point-to-point only, no subgroup).
        scale: softmax scale, default 1/sqrt(head_dim).
        stats: a :class:`CommStats` to which the bytes sent and received (forward and backward)
            are added.
        documents: packed documents, the global bounds of ``cu_seqlens`` (validated and agreed
            by the caller): a query attends only to keys of its own document.

    Returns:
        (batch, L_r, heads, head_dim): this rank's rows of the output, differentiable in q, k, v.
        Every ring member must run the forward and, if any member does, the backward.

    With NCCL, as for any ``batch_isend_irecv``, set the CUDA device first, and let this not be
    the group's first communication (``longmix.parallel.attention`` validates with a collective).

    Only local arguments are checked here (shapes against segments, heads, ranks); agreement
    between ranks is the caller's job (:func:`longmix.parallel.attention` checks it).
    """
    ring = _make_ring(q, k, v, segments, bool(causal), group, ranks, scale, stats, documents)
    return _RingAttention.apply(q, k, v, ring)
