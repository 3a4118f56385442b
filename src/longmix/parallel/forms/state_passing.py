"""State passing: a causal mixer with a fixed-size state over a sequence split across ranks.

The form of LASP-2 (Sun et al. 2025, arXiv 2502.07563) and fla's context parallelism, for every
mixer that implements the state hooks of :class:`~longmix.mixers.TokenMixer` (linear and
performer prefix sums, the S4D and Mamba recurrent states, local attention's halo):

1. each rank summarizes each of its chunks from the chunk alone (``state_summary``: e.g. the
   chunk's final state from zero and its transition), a size independent of L;
2. one all-gather of the summaries; every rank folds them in global chunk order
   (``chain_state``, in float32 or wider) to get the state entering each of its chunks;
3. each chunk's output is the exact continuation from that state (``forward_with_state``).

A mixer may resolve its state in stages, one all-gather each (Mamba: first the conv inputs
preceding a chunk, which its SSM summary needs). Before anything else one small all-gather
of every rank's shape checks that the shards fit the layout, so bad input raises the same
ValueError on every rank instead of hanging. Gradients flow back across ranks through
:func:`~longmix.parallel.forms.collectives.all_gather_tensors`; parameter gradients are this rank's share
(their sum over ranks is the single-process gradient).
"""
from __future__ import annotations

import torch

from longmix.models.recompute import recomputed

from .collectives import all_gather_tensors, depend_on
from ..layout import check_layout, even_pieces, local_length, resolve_group
from ..stats import CommStats

__all__ = ["state_passing_mix", "state_passing_bytes", "state_passing_backward_bytes"]

#: Per-rank shape record exchanged before the summaries: valid, batch, local length, dim, dtype.
_META_FIELDS = 5
_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _chunks_per_rank(layout: str) -> int:
    return 1 if layout == "contiguous" else 2


def chunk_indices(world_size: int, rank: int, layout: str) -> list[int]:
    """Global indices of the chunks rank ``rank`` holds, in local order (see ``dist.layout``):
    P chunks in rank order (contiguous), or 2P chunks with rank r holding r and 2P-1-r (zigzag)."""
    return [rank] if layout == "contiguous" else [rank, 2 * world_size - 1 - rank]


def _meta(mixer, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        return torch.zeros(_META_FIELDS, dtype=torch.int64)
    ok = x.dim() == 3 and x.shape[0] >= 1 and x.shape[-1] == mixer.dim and x.dtype in _DTYPES
    values = [1, x.shape[0], x.shape[1], x.shape[2], _DTYPES.index(x.dtype)] if ok else [0] * _META_FIELDS
    return torch.tensor(values, dtype=torch.int64, device=x.device)


def _check_shards(name: str, metas: list[list[int]], world: int, layout: str) -> int:
    """Raise the same ValueError on every rank unless all shards fit together; returns L."""
    bad = [r for r, m in enumerate(metas) if not m[0]]
    if bad:
        raise ValueError(f"state_passing_mix({name}): x_local on ranks {bad} must be a float tensor of "
                         f"shape (batch >= 1, local_len, dim) with dim the mixer's and a dtype in "
                         f"{[str(d) for d in _DTYPES]}")
    if len({(m[1], m[3], m[4]) for m in metas}) > 1:
        raise ValueError(f"state_passing_mix({name}): shards disagree on batch, dim or dtype: (batch, "
                         f"local_len, dim) by rank = {[tuple(m[1:4]) for m in metas]}, dtypes "
                         f"{[str(_DTYPES[m[4]]) for m in metas]}")
    lengths = [m[2] for m in metas]
    seq_len = sum(lengths)
    expected = [local_length(seq_len, world, r, layout) for r in range(world)]
    if lengths != expected:
        raise ValueError(f"state_passing_mix({name}): local lengths {lengths} do not match the {layout!r} "
                         f"layout of a length-{seq_len} sequence over {world} ranks (expected {expected})")
    return seq_len


def state_passing_mix(mixer, x_local: torch.Tensor, *, group=None, layout: str = "contiguous",
                      stats: CommStats | None = None, seq_len: int | None = None) -> torch.Tensor:
    """Run a causal ``mixer`` with a fixed-size state over a sequence sharded across ``group``.

    Args:
        mixer: a :class:`~longmix.mixers.TokenMixer` whose ``parallel_forms`` include "state".
        x_local: (batch, local_len, dim), this rank's shard, as ``longmix.parallel.shard(x, layout=...)``
            cuts it (uneven and empty shards are fine).
        group: the process group; None: the default group (or one process if not initialized).
        layout: "contiguous" or "zigzag".
        stats: a :class:`CommStats` that accumulates this rank's bytes, forward and backward.
        seq_len: the global length, for a caller that has already agreed on the shards on every
            rank (``parallelize`` does, once per model): skips the shape check's all-gather.

    Returns:
        (batch, local_len, dim): this rank's rows of ``mixer(x)``. Differentiable in x_local and
        the mixer's parameters.
    """
    check_layout(layout)
    name = type(mixer).__name__
    if not hasattr(mixer, "check_state_form"):
        raise ValueError(f"state_passing_mix: mixer must be a longmix TokenMixer, got {name}")
    mixer.check_state_form("state_passing_mix")  # the same on every rank: no collective has run yet
    _, world, rank = resolve_group(group)
    if seq_len is None:
        metas = [m.tolist() for m, in all_gather_tensors([_meta(mixer, x_local)], group, stats)]
        seq_len = _check_shards(name, metas, world, layout)
    elif x_local.shape[1] != local_length(seq_len, world, rank, layout):
        raise ValueError(f"state_passing_mix({name}): rank {rank} holds {x_local.shape[1]} rows, the "
                         f"{layout!r} layout of seq_len={seq_len} over {world} ranks gives it "
                         f"{local_length(seq_len, world, rank, layout)}")

    n_chunks = world * _chunks_per_rank(layout)
    lengths = [n for _, n in even_pieces(seq_len, n_chunks)]
    mine = chunk_indices(world, rank, layout)
    pieces = list(torch.split(x_local, [lengths[g] for g in mine], dim=1))
    batch = x_local.shape[0]

    def fresh():
        return mixer.init_state(batch, device=x_local.device, dtype=x_local.dtype)

    incoming = [fresh() for _ in mine]
    # Every rank must run the backward of every all-gather (it is a collective), also a rank
    # whose summaries carry no gradient (an empty shard): tie each all-gather's input to the
    # previous one's output and to something with a gradient, and the result to the last output.
    received: list[torch.Tensor] = []
    if torch.is_grad_enabled():
        received = [x_local] if x_local.requires_grad else [p for p in mixer.parameters() if p.requires_grad][:1]
    for stage, keys in mixer.state_stages.items():
        # A summary reruns the mixer over its chunk, as the output does below: keeping both
        # passes' activations would cost about twice one process's memory per token. Recompute
        # the summary's in backward instead (exact; the summary itself is small).
        summaries = [recomputed(mixer.state_summary, piece, state, stage)
                     for piece, state in zip(pieces, incoming)]
        fields = sorted(summaries[0])
        flat = [s[f] for s in summaries for f in fields]
        first = next(i for i, t in enumerate(flat) if t.is_floating_point())
        flat[first] = depend_on(flat[first], received)
        gathered = all_gather_tensors(flat, group, stats)
        received = [t for rank_tensors in gathered for t in rank_tensors if t.is_floating_point()]
        by_chunk = {}
        for r, tensors in enumerate(gathered):
            for i, g in enumerate(chunk_indices(world, r, layout)):
                by_chunk[g] = dict(zip(fields, tensors[i * len(fields):(i + 1) * len(fields)]))
        state = fresh()
        for g in range(max(mine) + 1):  # fold in sequence order up to this rank's last chunk
            if g in mine:
                i = mine.index(g)
                incoming[i] = {**incoming[i], **{k: state[k] for k in keys}}
            if g < max(mine):
                state = mixer.chain_state(state, by_chunk[g], stage)
    outs = [mixer.forward_with_state(piece, state)[0] for piece, state in zip(pieces, incoming)]
    return depend_on(torch.cat(outs, dim=1), received)


def _summary_bytes(mixer, batch: int, dtype: torch.dtype | None, floating_only: bool) -> int:
    """Bytes of one chunk's summaries over every stage (of their floating tensors only, the
    ones gradients flow back through, if ``floating_only``)."""
    reference = next(iter(mixer.parameters()))
    dtype = reference.dtype if dtype is None else dtype
    empty = torch.zeros(batch, 0, mixer.dim, dtype=dtype, device=reference.device)
    state = mixer.init_state(batch, device=reference.device, dtype=dtype)
    total = 0
    with torch.no_grad():
        for stage in mixer.state_stages:
            total += sum(t.numel() * t.element_size() for t in mixer.state_summary(empty, state, stage).values()
                         if t.is_floating_point() or not floating_only)
    return total


def state_passing_bytes(mixer, batch: int, world_size: int, layout: str = "contiguous", *,
                        dtype: torch.dtype | None = None, seq_len_known: bool = False) -> int:
    """Bytes one rank sends in the forward of :func:`state_passing_mix` (it receives as many):
    (P - 1) x (the shape record + its chunks' summaries, every stage). Independent of L.

    ``dtype``: the input's dtype, default the mixer's parameters' (summaries are kept in
    float32 or wider). ``seq_len_known``: the call passes ``seq_len`` (no shape record)."""
    check_layout(layout)
    if world_size == 1:
        return 0
    record = 0 if seq_len_known else _META_FIELDS * torch.tensor(0, dtype=torch.int64).element_size()
    return (world_size - 1) * (record + _chunks_per_rank(layout) * _summary_bytes(mixer, batch, dtype, False))


def state_passing_backward_bytes(mixer, batch: int, world_size: int, layout: str = "contiguous", *,
                                 dtype: torch.dtype | None = None) -> int:
    """Bytes one rank sends in the backward of :func:`state_passing_mix` (it receives as many):
    (P - 1) x the gradients of its chunks' floating summaries. Independent of L."""
    check_layout(layout)
    if world_size == 1:
        return 0
    return (world_size - 1) * _chunks_per_rank(layout) * _summary_bytes(mixer, batch, dtype, True)
