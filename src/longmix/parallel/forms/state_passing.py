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

from dataclasses import dataclass

import torch

from longmix.recompute import recomputed

from ..exchange import DTYPES, agree, dtype_code
from ..layout import (check_layout, even_pieces, follows_documents, layout_documents, local_length,
                      missing_documents_error, resolve_group)
from ..stats import CommStats
from .collectives import all_gather_tensors, depend_on
from .packed import after_last_start, continue_by_documents, starts_fresh

__all__ = ["state_passing_mix", "state_passing_bytes", "state_passing_backward_bytes"]

@dataclass(frozen=True)
class Chunks:
    """The chunks whose summaries travel, in sequence order, and which rank holds which."""

    starts: list[int]
    lengths: list[int]
    held: list[list[int]]  # per rank: the indices of its chunks, in local order


def state_chunks(seq_len: int, world: int, layout: str, documents=None) -> Chunks:
    """Chunks of the layout (``longmix.parallel.layout``), empty ones kept so that every rank
    sends as many summaries (the all-gather needs equal shapes): P chunks in rank order
    (contiguous); 2P with rank r holding r and 2P-1-r (zigzag); ``doc_zigzag``: 2P per document,
    rank r holding r and 2P-1-r of each. A chunk of ``doc_zigzag`` never crosses a document
    start, so a rank's scattered pieces each keep a summary of fixed size; their number grows
    with the documents (2 per document per rank), not with L."""
    if follows_documents(layout):
        bounds = layout_documents(layout, seq_len, documents, "state_passing_mix")
        starts, lengths, held = [], [], [[] for _ in range(world)]
        for d, (a, b) in enumerate(zip(bounds, bounds[1:])):
            for s, n in even_pieces(b - a, 2 * world):
                starts.append(a + s)
                lengths.append(n)
            for r in range(world):
                held[r] += [2 * world * d + r, 2 * world * (d + 1) - 1 - r]
        return Chunks(starts, lengths, held)
    pieces = even_pieces(seq_len, world * (1 if layout == "contiguous" else 2))
    held = [[r] if layout == "contiguous" else [r, 2 * world - 1 - r] for r in range(world)]
    return Chunks([s for s, _ in pieces], [n for _, n in pieces], held)


def _chunks_per_rank(layout: str, documents, owner: str) -> int:
    if not follows_documents(layout):
        return 1 if layout == "contiguous" else 2
    if documents is None:
        raise missing_documents_error(layout, owner)
    return 2 * (len(documents) - 1)


def _agree_on_shards(mixer, x, group, world: int, layout: str, documents) -> int:
    """The same ValueError on every rank unless all shards fit together; returns L."""
    name = type(mixer).__name__
    where = f"state_passing_mix({name})"
    ok = (isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[0] >= 1
          and x.shape[-1] == mixer.dim and x.is_floating_point() and dtype_code(x.dtype) >= 0)
    errors = [] if ok else [f"x_local must be a float tensor of shape (batch >= 1, local_len, "
                            f"dim={mixer.dim}), got "
                            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"]
    numbers = [x.shape[0], x.shape[1], dtype_code(x.dtype)] if ok else [-1, -1, -1]
    records = agree(numbers, errors, group, where)
    if len({(m[0], m[2]) for m in records}) > 1:
        raise ValueError(f"{where}: shards disagree on batch or dtype: batch by rank = "
                         f"{[m[0] for m in records]}, dtypes {[str(DTYPES[m[2]]) for m in records]}")
    lengths = [m[1] for m in records]
    seq_len = sum(lengths)
    expected = [local_length(seq_len, world, r, layout, cu_seqlens=documents) for r in range(world)]
    if lengths != expected:
        raise ValueError(f"{where}: local lengths {lengths} do not match the {layout!r} layout of a "
                         f"length-{seq_len} sequence over {world} ranks (expected {expected})")
    return seq_len


def state_passing_mix(mixer, x_local: torch.Tensor, *, group=None, layout: str = "contiguous",
                      stats: CommStats | None = None, seq_len: int | None = None,
                      documents: tuple[int, ...] | None = None, return_final_state: bool = False):
    """Run a causal ``mixer`` with a fixed-size state over a sequence sharded across ``group``.

    Args:
        mixer: a :class:`~longmix.mixers.TokenMixer` whose ``parallel_forms`` include "state".
        x_local: (batch, local_len, dim), this rank's shard, as ``longmix.parallel.shard(x, layout=...)``
            cuts it (uneven and empty shards are fine).
        group: the process group; None: the default group (or one process if not initialized).
        layout: "contiguous", "zigzag" or "doc_zigzag" (with ``documents``)
        stats: a :class:`CommStats` that accumulates this rank's bytes, forward and backward.
        seq_len: the global length, for a caller that has already agreed on the shards on every
            rank (``parallelize`` does, once per model): skips the shape check's all-gather.
        documents: packed documents, the global bounds of ``cu_seqlens`` agreed by every rank
            (``parallelize`` passes them): no state crosses a document start
            (``forms.packed``). ``doc_zigzag`` needs them: they place its rows.
        return_final_state: also return the state after the whole sequence, the same on every
            rank (decoding continues from it, ``longmix.generate``). After each all-gather every
            rank holds every chunk's summary, so it folds them all: no extra communication.

    Returns:
        (batch, local_len, dim): this rank's rows of ``mixer(x)``. Differentiable in x_local and
        the mixer's parameters. With ``return_final_state``: (those rows, the final state).
    """
    check_layout(layout)
    name = type(mixer).__name__
    if not hasattr(mixer, "check_state_form"):
        raise ValueError(f"state_passing_mix: mixer must be a longmix TokenMixer, got {name}")
    mixer.check_state_form("state_passing_mix")  # the same on every rank: no collective has run yet
    _, world, rank = resolve_group(group)
    if follows_documents(layout) and documents is None:  # the same on every rank
        raise missing_documents_error(layout, f"state_passing_mix({name})")
    if seq_len is None:
        seq_len = _agree_on_shards(mixer, x_local, group, world, layout, documents)
    elif x_local.shape[1] != local_length(seq_len, world, rank, layout, cu_seqlens=documents):
        raise ValueError(f"state_passing_mix({name}): rank {rank} holds {x_local.shape[1]} rows, the "
                         f"{layout!r} layout of seq_len={seq_len} over {world} ranks gives it "
                         f"{local_length(seq_len, world, rank, layout, cu_seqlens=documents)}")

    chunks = state_chunks(seq_len, world, layout, documents)
    lengths, starts, mine = chunks.lengths, chunks.starts, chunks.held[rank]
    n_chunks = len(lengths)
    where_mine = {g: i for i, g in enumerate(mine)}
    pieces = list(torch.split(x_local, [lengths[g] for g in mine], dim=1))
    batch = x_local.shape[0]

    def fresh():
        return mixer.init_state(batch, device=x_local.device, dtype=x_local.dtype)

    incoming = [fresh() for _ in mine]
    final = fresh()
    # fold up to this rank's last chunk, or through every chunk for the final state
    last = n_chunks - 1 if return_final_state else max(mine)
    # Every rank must run the backward of every all-gather (it is a collective), also a rank
    # whose summaries carry no gradient (an empty shard): tie each all-gather's input to the
    # previous one's output and to something with a gradient, and the result to the last output.
    received: list[torch.Tensor] = []
    if torch.is_grad_enabled():
        received = [x_local] if x_local.requires_grad else [p for p in mixer.parameters() if p.requires_grad][:1]
    for stage, keys in mixer.state_stages.items():
        # packed: a chunk in which a document starts summarizes its rows from there, from zero.
        # A summary reruns the mixer over its chunk, as the output does below: keeping both
        # passes' activations would cost about twice one process's memory per token. Recompute
        # the summary's in backward instead (exact; the summary itself is small).
        summaries = [recomputed(mixer.state_summary, after_last_start(piece, starts[g], documents),
                                fresh() if starts_fresh(documents, starts[g], starts[g] + lengths[g])
                                else state, stage)
                     for g, piece, state in zip(mine, pieces, incoming)]
        fields = sorted(summaries[0])
        flat = [s[f] for s in summaries for f in fields]
        first = next(i for i, t in enumerate(flat) if t.is_floating_point())
        flat[first] = depend_on(flat[first], received)
        gathered = all_gather_tensors(flat, group, stats)
        received = [t for rank_tensors in gathered for t in rank_tensors if t.is_floating_point()]
        by_chunk = {}
        for r, tensors in enumerate(gathered):
            for i, g in enumerate(chunks.held[r]):
                by_chunk[g] = dict(zip(fields, tensors[i * len(fields):(i + 1) * len(fields)]))
        state = fresh()
        for g in range(last + 1):  # fold in sequence order
            if g in where_mine:
                i = where_mine[g]
                incoming[i] = {**incoming[i], **{k: state[k] for k in keys}}
            if g < last or return_final_state:
                restart = starts_fresh(documents, starts[g], starts[g] + lengths[g])
                state = mixer.chain_state(fresh() if restart else state, by_chunk[g], stage)
        final = {**final, **{k: state[k] for k in keys}}
    outs = [continue_by_documents(mixer, piece, state, starts[g], documents, fresh)
            for g, piece, state in zip(mine, pieces, incoming)]
    out = depend_on(torch.cat(outs, dim=1), received)
    return (out, final) if return_final_state else out


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
                        dtype: torch.dtype | None = None, documents=None) -> int:
    """Bytes one rank sends in the forward of :func:`state_passing_mix` (it receives as many):
    (P - 1) x its chunks' summaries, every stage. Independent of L. (The shape agreement's
    small record is not counted, as for every op: ``longmix.parallel.exchange.agree``.)

    ``dtype``: the input's dtype, default the mixer's parameters' (summaries are kept in
    float32 or wider). ``documents``: the bounds of ``cu_seqlens``, needed by ``doc_zigzag``
    (2 chunks per document per rank)."""
    check_layout(layout)
    if world_size == 1:
        return 0
    chunks = _chunks_per_rank(layout, documents, "state_passing_bytes")
    return (world_size - 1) * chunks * _summary_bytes(mixer, batch, dtype, False)


def state_passing_backward_bytes(mixer, batch: int, world_size: int, layout: str = "contiguous", *,
                                 dtype: torch.dtype | None = None, documents=None) -> int:
    """Bytes one rank sends in the backward of :func:`state_passing_mix` (it receives as many):
    (P - 1) x the gradients of its chunks' floating summaries. Independent of L."""
    check_layout(layout)
    if world_size == 1:
        return 0
    chunks = _chunks_per_rank(layout, documents, "state_passing_backward_bytes")
    return (world_size - 1) * chunks * _summary_bytes(mixer, batch, dtype, True)
