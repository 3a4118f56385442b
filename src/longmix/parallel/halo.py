"""The halo: rows just before (and after) each of this rank's pieces, fetched from whichever ranks
hold them, in one all-to-all.

An operator that reads only a bounded neighbourhood of each position (a short causal convolution,
sliding-window attention) needs, per piece ``(start, n)`` of the local shard, the ``left`` rows
before ``start`` and the ``right`` rows after ``start + n``. Their volume depends on the
neighbourhood, not on L. A neighbourhood may span several ranks (shards shorter than it, or the
zigzag layout), so every rank computes the same plan from the global segments: who needs which
rows from whom. The exchange is :class:`longmix.parallel.attn.shuffle.Exchange` (exact backward: the
reverse exchange), with empty messages where nothing is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .layout import Segment
from .exchange import Exchange
from .stats import CommStats

Range = tuple[int, int]  # global rows [lo, hi)


def _needed(segs: list[Segment], seq_len: int, left: int, right: int) -> list[tuple[Range, Range]]:
    """Per piece, the (left, right) global row ranges around it, clipped to the sequence."""
    return [((max(0, s - left), s), (s + n, min(seq_len, s + n + right))) for s, n in segs]


def _owned(segs: list[Segment], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """(local offset, global start, count) of this member's rows inside [lo, hi), in order."""
    out, offset = [], 0
    for s, n in segs:
        a, b = max(lo, s), min(hi, s + n)
        if a < b:
            out.append((offset + a - s, a, b - a))
        offset += n
    return out


@dataclass
class HaloPlan:
    """Who sends which rows to whom, identical on every rank (built from the global segments)."""

    rank: int
    send_rows: list[torch.Tensor]     # per destination: local row indices, in its request order
    recv_rows: list[list[int]]        # per source: the global rows arriving, in order
    wanted: list[tuple[Range, Range]]  # my pieces' (left, right) ranges

    def rows_sent(self) -> int:
        """Rows this rank sends to other ranks (its own copy excluded), per batch element."""
        return sum(len(idx) for r, idx in enumerate(self.send_rows) if r != self.rank)

    def rows_received(self) -> int:
        """Rows arriving from other ranks: what this rank sends back in the backward pass."""
        return sum(len(rows) for r, rows in enumerate(self.recv_rows) if r != self.rank)


def halo_rows_sent(segments: list[list[Segment]], rank: int, left: int, right: int = 0) -> int:
    """Rows rank ``rank`` sends to the other ranks in :func:`halo_plan`'s exchange (per batch
    element), counted from the ranges alone: a planner needs the volume for every rank without
    building every rank's index lists (O(halo) each)."""
    seq_len = sum(n for segs in segments for _, n in segs)
    return sum(n for dst, segs in enumerate(segments) if dst != rank
               for sides in _needed(segs, seq_len, left, right) for lo, hi in sides
               for _, _, n in _owned(segments[rank], lo, hi))


def halo_plan(segments: list[list[Segment]], rank: int, left: int, right: int = 0) -> HaloPlan:
    """The plan for ``left`` rows before and ``right`` rows after every piece of every rank."""
    seq_len = sum(n for segs in segments for _, n in segs)
    wanted_by = [_needed(segs, seq_len, left, right) for segs in segments]

    def requests(dst: int, src: int) -> list[tuple[int, int, int]]:
        return [piece for sides in wanted_by[dst] for lo, hi in sides
                for piece in _owned(segments[src], lo, hi)]

    send_rows = []
    for dst in range(len(segments)):
        runs = requests(dst, rank)
        send_rows.append(torch.cat([torch.arange(off, off + n) for off, _, n in runs])
                         if runs else torch.zeros(0, dtype=torch.long))
    recv_rows = [[g for _, start, n in requests(rank, src) for g in range(start, start + n)]
                 for src in range(len(segments))]
    return HaloPlan(rank=rank, send_rows=send_rows, recv_rows=recv_rows, wanted=wanted_by[rank])


def fetch_halo(t: torch.Tensor, plan: HaloPlan, group, stats: CommStats | None = None):
    """Per local piece, (rows before it, rows after it) of ``t`` (batch, local_len, ...), as the
    ``plan`` says: (batch, count, ...) each, clipped at the ends of the sequence. Differentiable.

    Also returns everything that arrived: a rank without pieces must still tie it into its output
    (see :func:`join_backward`), or it would skip the exchange's backward that the others run."""
    batch, rest = t.shape[0], t.shape[2:]
    row = batch * int(torch.Size(rest).numel())
    sends = [t.index_select(1, idx.to(t.device)).flatten() for idx in plan.send_rows]
    send_sizes = [s.numel() for s in sends]
    recv_sizes = [len(rows) * row for rows in plan.recv_rows]
    peers = list(range(dist.get_world_size(group)))
    received = Exchange.apply(torch.cat(sends), send_sizes, recv_sizes, peers, group, stats)
    blocks = [flat.view(batch, -1, *rest) for flat in torch.split(received, recv_sizes)]
    arrived = torch.cat(blocks, dim=1)
    where = {g: i for i, g in enumerate(g for rows in plan.recv_rows for g in rows)}

    def rows(lo: int, hi: int) -> torch.Tensor:
        idx = torch.tensor([where[g] for g in range(lo, hi)], dtype=torch.long, device=t.device)
        return arrived.index_select(1, idx)

    return [(rows(*before), rows(*after)) for before, after in plan.wanted], arrived


def join_backward(out: torch.Tensor, *received: torch.Tensor) -> torch.Tensor:
    """``out`` of a rank that holds no rows, made to depend on the (empty) tensors it received,
    so that its backward runs the reverse exchanges every other rank waits for. Adds zeros."""
    for r in received:
        out = out + r.sum()
    return out


class HaloPieces:
    """The ``pieces`` argument of ``TokenMixer._shuffle_prepare`` for a sharded sequence:
    ``left_context`` fetches each piece's preceding rows from the ranks that hold them."""

    def __init__(self, segments: list[list[Segment]], rank: int, group, stats: CommStats | None):
        self.segments, self.rank, self.group, self.stats = segments, rank, group, stats
        self.received: list[torch.Tensor] = []  # for join_backward on a rank without rows

    def left_context(self, t: torch.Tensor, rows: int) -> list[torch.Tensor]:
        plan = halo_plan(self.segments, self.rank, rows)
        halos, arrived = fetch_halo(t, plan, self.group, self.stats)
        self.received.append(arrived)
        out, offset = [], 0
        for (_, n), (before, _) in zip(self.segments[self.rank], halos):
            missing = rows - before.shape[1]  # before position 0: zeros, as a padded conv reads
            before = torch.nn.functional.pad(before, (0, 0) * (t.dim() - 2) + (missing, 0))
            out.append(torch.cat([before, t[:, offset:offset + n]], dim=1))
            offset += n
        return out


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     segments: list[list[Segment]], causal: bool, window: int, group,
                     scale: float | None = None, stats: CommStats | None = None) -> torch.Tensor:
    """Exact sliding-window attention of a sharded sequence: each piece's queries read its own
    keys plus the ``window - 1`` rows of K/V on each side (only the left side when ``causal``).

    q: (batch, local_len, heads, d); k, v: (batch, local_len, kv_heads, d): this rank's rows,
    the concatenation of ``segments[rank]``. Only the halo travels, so the volume per rank is
    about 2 (window - 1) rows of K/V per piece and side, whatever L. Returns rows shaped like q.
    """
    from longmix.ops import attention_with_lse

    rank = dist.get_rank(group)
    reach = window - 1
    plan = halo_plan(segments, rank, reach, 0 if causal else reach)
    kv = torch.cat([k, v], dim=-1)
    halos, arrived = fetch_halo(kv, plan, group, stats)
    d, outs, offset = q.shape[-1], [], 0
    for (_, n), (before, after) in zip(segments[rank], halos):
        keys = torch.cat([before, kv[:, offset:offset + n], after], dim=1)
        # Queries padded with len(before) dummy rows line up query i with key i (both counted
        # from the first key's global position), so the op's top-left window mask is the global one.
        lead = before.shape[1]
        q_piece = torch.nn.functional.pad(q[:, offset:offset + n], (0, 0, 0, 0, lead, 0))
        out, _ = attention_with_lse(q_piece, keys[..., :d], keys[..., d:], causal=causal,
                                    scale=scale, window=window)
        outs.append(out[:, lead:])
        offset += n
    return torch.cat(outs, dim=1) if outs else join_backward(q, arrived)
