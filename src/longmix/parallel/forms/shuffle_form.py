"""The shuffle form of a whole mixer: an all-to-all from sequence shards to group shards (heads or
channels, all L rows), the mixer's own kernel, an all-to-all back (the paper's head shuffle,
generalized to any mixer whose groups mix independently: DeepSpeed-Ulysses, Megatron's
hidden-parallel Mamba).

Stream widths (features per group and row in and out of the all-to-all, shared features, the
halo a ``_shuffle_prepare`` asks for) are read off a dry run of the mixer's hooks on one token,
so a new mixer needs no entry here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..halo import HaloPieces, halo_plan, join_backward
from ..layout import all_segments, sequence_order
from ..stats import CommStats
from .cost import FormCost, element_size
from .packed import shuffle_mix
from .regroup import (group_split, pack_for_groups, pack_for_sequence, regroup_elements,
                      to_group_shards, to_sequence_shards)
from .shards import Shards


class _Recorder:
    """A ``pieces`` stand-in that records the halos ``_shuffle_prepare`` asks for."""

    def __init__(self):
        self.halos: list[tuple[int, int]] = []  # (rows, features per row)

    def left_context(self, t, rows):
        from longmix.mixers.forms import WholeSequence

        self.halos.append((rows, int(t[0, 0].numel())))
        return WholeSequence.left_context(t, rows)


@dataclass(frozen=True)
class StreamWidths:
    groups: int
    feats: int       # per group and row, into the all-to-all
    shared: int      # per row, to every rank
    feats_out: int   # per group and row, back
    halos: tuple[tuple[int, int], ...]  # (rows, features per row) fetched by prepare


def stream_widths(mixer) -> StreamWidths:
    """Widths of the shuffle's streams, by running the hooks on one token (no gradients)."""
    param = next(mixer.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else None
    recorder = _Recorder()
    with torch.no_grad():
        x = torch.zeros(1, 1, mixer.dim, dtype=dtype, device=device)
        streams, shared, _ = mixer._shuffle_prepare(x, recorder)
        mixed = mixer._shuffle_mix(streams[:, :, :1], shared, slice(0, 1))
    return StreamWidths(groups=mixer.shuffle_groups(), feats=streams[0, 0, 0].numel(),
                        shared=0 if shared is None else shared.shape[-1],
                        feats_out=mixed[0, 0, 0].numel(), halos=tuple(recorder.halos))


def mixer_is_qkv(mixer) -> bool:
    from longmix.mixers.qkv import QKVMixer

    return isinstance(mixer, QKVMixer)


def shuffle_cost(mixer, seq_len, world, batch, dtype, layout, documents=None) -> FormCost:
    groups = mixer.shuffle_groups()
    if world > groups:
        return FormCost("shuffle", False,
                        f"the shuffle gives every rank at least one of its {groups} "
                        f"{'heads' if mixer_is_qkv(mixer) else 'channels'}, but there are {world} "
                        "ranks")
    if seq_len is None:
        return FormCost("shuffle", True)
    w = stream_widths(mixer)
    segs = all_segments(seq_len, world, layout, cu_seqlens=documents)
    lengths = [sum(n for _, n in s) for s in segs]
    split = group_split(groups, world)
    size = element_size(dtype)
    fwd, bwd = [], []
    for r in range(world):
        f, b = regroup_elements(lengths, split, r, batch, w.feats, w.shared, w.feats_out)
        halos = [(halo_plan(segs, r, rows), batch * width) for rows, width in w.halos]
        fwd.append((f + sum(h.rows_sent() * n for h, n in halos)) * size)
        bwd.append((b + sum(h.rows_received() * n for h, n in halos)) * size)
    return FormCost("shuffle", True, forward_bytes=tuple(fwd), backward_bytes=tuple(bwd))


def run_shuffle(mixer, x, shards: Shards, group, stats: CommStats | None):
    """The shuffle form's forward: prepare on local rows, all-to-all to group shards, the
    mixer's own kernel over the whole length, all-to-all back, finish."""
    split = group_split(mixer.shuffle_groups(), shards.world)
    start, count = split[shards.rank]
    pieces = HaloPieces(shards.segments, shards.rank, group, stats)
    streams, shared, ctx = mixer._shuffle_prepare(x, pieces)
    wire = dict(batch=x.shape[0], lengths=shards.lengths, split=split, group=group,
                stats=stats)
    features, width = tuple(streams.shape[3:]), 0 if shared is None else shared.shape[-1]
    send = pack_for_groups(streams, shared, split)
    del streams, shared  # freed before the exchange allocates (without autograd holding them)
    streams, shared = to_group_shards(send, features=features, shared=width, **wire)
    del send
    order = sequence_order(shards.segments)  # zigzag rows arrive rank-major
    if order is not None:
        order = order.to(x.device)
        streams = streams.index_select(1, order)
        shared = None if shared is None else shared.index_select(1, order)
    mixed = shuffle_mix(mixer, streams, shared, slice(start, start + count), shards.documents)
    del streams, shared
    if order is not None:
        mixed = mixed.index_select(1, torch.argsort(order))
    features = tuple(mixed.shape[3:])
    send = pack_for_sequence(mixed, shards.lengths)
    del mixed
    out = mixer._shuffle_finish(to_sequence_shards(send, features=features, **wire), ctx)
    return out if shards.lengths[shards.rank] else join_backward(out, *pieces.received)
