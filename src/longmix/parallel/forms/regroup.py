"""Sequence shards <-> group shards: the all-to-all of the generalized shuffle.

Before: each rank holds its rows of ``streams`` (batch, l_r, G, *F), G independent groups (heads
or channels) of F numbers per row (any trailing shape), and of ``shared`` (batch, l_r, S),
per-row inputs that every group needs (Mamba's B and C). After :func:`to_group_shards`: each
rank holds *all* rows of its share of the groups, and all rows of ``shared``. :func:`to_sequence_shards` is the way back for
the mixed result. Groups are split as evenly as the rows (``layout.even_pieces``), so G need not
be divisible by P; rows arrive rank-major, and :func:`longmix.parallel.layout.sequence_order` sorts
them when the layout is not contiguous.

Elements each rank r sends, forward (batch b, l_j rows and g_j groups on rank j, L = sum l_j):
    to groups    b * l_r * ((G - g_r) * F + (P - 1) * S)
    to sequence  b * (L - l_r) * g_r * F_out
The backward of each is the same exchange reversed (:class:`longmix.parallel.attn.shuffle.Exchange`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..layout import Segment, even_pieces
from ..exchange import Exchange
from ..stats import CommStats


def group_split(groups: int, world_size: int) -> list[Segment]:
    """(first group, count) of each rank: near-equal pieces, the first ``groups % P`` one larger."""
    return even_pieces(groups, world_size)


def _pack(regions: list[list[torch.Tensor]], like: torch.Tensor) -> torch.Tensor:
    """One flat send buffer: per destination, its pieces (rows, batch, ...) side by side in each
    row, written straight into the buffer (one copy; pieces copied first would double the peak
    memory). ``regions[j]`` lists the pieces for destination j."""
    def row_size(piece):  # numbers per (row, batch element)
        return piece.shape[2:].numel()

    sizes = [sum(p.shape[0] * p.shape[1] * row_size(p) for p in pieces) for pieces in regions]
    if not sum(sizes):  # a rank without rows: still tie the (empty) buffer to the pieces, so
        # that its backward joins the reverse exchange the other ranks run
        return torch.cat([p.reshape(-1) for pieces in regions for p in pieces])
    send = like.new_empty(sum(sizes))
    offset = 0
    for pieces, size in zip(regions, sizes):
        offset += size
        if not size:
            continue
        rows, batch = pieces[0].shape[:2]
        # narrow, not split: autograd refuses in-place writes into split's multiple views
        region, at = send.narrow(0, offset - size, size).view(rows, batch, -1), 0
        for piece in pieces:
            features = row_size(piece)
            region[..., at:at + features].unflatten(-1, piece.shape[2:]).copy_(piece)
            at += features
    return send


def pack_for_groups(streams: torch.Tensor, shared: torch.Tensor | None,
                    split: list[Segment]) -> torch.Tensor:
    """The send buffer of :func:`to_group_shards` from streams (batch, l, G, *F) and shared
    (batch, l, S). On the wire each row carries [the destination's groups, shared] for every
    batch element, so that what arrives is one (L, batch, g * F + S) buffer whose parts are
    views, not copies. The caller can drop streams before the exchange allocates its buffer."""
    by_row = streams.transpose(0, 1)  # (l, batch, G, *F)
    extra = [] if shared is None else [shared.transpose(0, 1)]
    return _pack([[by_row[:, :, start:start + count]] + extra for start, count in split], streams)


def to_group_shards(send: torch.Tensor, *, batch: int, features: tuple[int, ...], shared: int,
                    lengths: list[int], split: list[Segment], group,
                    stats: CommStats | None = None):
    """Exchange a :func:`pack_for_groups` buffer. Returns streams (batch, L, g_me, *features)
    and shared (batch, L, S) or None, rows rank-major (rank 0's rows, then rank 1's, ...)."""
    world, me = dist.get_world_size(group), dist.get_rank(group)
    feats = torch.Size(features).numel()
    mine = split[me][1]
    send_sizes = [lengths[me] * batch * (count * feats + shared) for _, count in split]
    recv_sizes = [n * batch * (mine * feats + shared) for n in lengths]
    received = Exchange.apply(send, send_sizes, recv_sizes, list(range(world)), group, stats)
    rows = received.view(sum(lengths), batch, mine * feats + shared).transpose(0, 1)
    streams = rows[..., :mine * feats].unflatten(-1, (mine, *features))
    return streams, rows[..., mine * feats:] if shared else None


def pack_for_sequence(mixed: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """The send buffer of :func:`to_sequence_shards` from mixed (batch, L, g_me, *F), rows
    rank-major: each rank's rows go back to it."""
    by_row = mixed.transpose(0, 1)  # (L, batch, g_me, *F)
    return _pack([[piece] for piece in torch.split(by_row, lengths)], mixed)


def to_sequence_shards(send: torch.Tensor, *, batch: int, features: tuple[int, ...],
                       lengths: list[int], split: list[Segment], group,
                       stats: CommStats | None = None) -> torch.Tensor:
    """Exchange a :func:`pack_for_sequence` buffer: this rank's rows of every group,
    (batch, l_me, G, *features)."""
    world, me = dist.get_world_size(group), dist.get_rank(group)
    feats = torch.Size(features).numel()
    mine = split[me][1]
    send_sizes = [n * batch * mine * feats for n in lengths]
    recv_sizes = [lengths[me] * batch * count * feats for _, count in split]
    received = Exchange.apply(send, send_sizes, recv_sizes, list(range(world)), group, stats)
    pieces = [flat.view(lengths[me], batch, count, *features)
              for (_, count), flat in zip(split, torch.split(received, recv_sizes))]
    return torch.cat(pieces, dim=2).transpose(0, 1)


def regroup_elements(lengths: list[int], split: list[Segment], rank: int, batch: int,
                     feats: int, shared: int, feats_out: int) -> tuple[int, int]:
    """(forward, backward) elements ``rank`` sends in one shuffle (both exchanges), from the
    formulas in the module docstring."""
    total, mine, groups = sum(lengths), split[rank][1], sum(c for _, c in split)
    world = len(lengths)
    there = batch * lengths[rank] * ((groups - mine) * feats + (world - 1) * shared)
    back = batch * (total - lengths[rank]) * mine * feats_out
    # backward: each exchange reversed, so rank sends what it received forward
    there_grad = batch * (total - lengths[rank]) * (mine * feats + shared)
    back_grad = batch * lengths[rank] * (groups - mine) * feats_out
    return there + back, there_grad + back_grad
