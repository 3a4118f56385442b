"""Sequence layouts: which rows of a length-L sequence each of P ranks holds.

A layout maps (seq_len L, world_size P, rank r) to a list of *segments* ``(global_start, length)``;
rank r's local shard is the concatenation of its segments, in list order, along dim 1.

* ``"contiguous"``: the sequence is cut into P near-equal pieces (the first ``L % P`` pieces get
  one extra row) and rank r holds piece r.
* ``"zigzag"``: the sequence is cut into 2P near-equal chunks and rank r holds chunks r and
  2P-1-r. Under a causal mask early rows attend to little and late rows to a lot, so pairing an
  early chunk with a late one gives every rank about the same work (Brandon et al.'s striped /
  zigzag ring attention).

* ``"doc_zigzag"`` (packed documents, needs ``cu_seqlens``): every document is cut into 2P
  near-equal pieces and rank r holds pieces r and 2P-1-r of each (PyTorch's per-document
  head-tail balancer). Causal attention over packed documents costs a sum of per-document
  triangles, which the zigzag of the whole sequence does not balance; this balances each one
  (``benchmarks/packed_balance.py``). Pieces adjacent in the sequence are merged into one segment.

Any L works, including L < P: a rank may hold an empty shard. Empty segments are dropped from
the list, so ``segments`` may return ``[]``. The segments of a rank are in sequence order, so its
local rows are too.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from longmix.checks import check_int
from longmix.ops.documents import check_cu_seqlens
from longmix.vocabulary import DOCUMENT_LAYOUTS, LAYOUTS

from .documents import documents_record, local_documents


Segment = tuple[int, int]  # (global_start, length)

#: Every layout the layout functions take: the sequence layouts and those that follow documents.
KNOWN_LAYOUTS = LAYOUTS + DOCUMENT_LAYOUTS


def check_layout(layout: str) -> None:
    if layout not in KNOWN_LAYOUTS:
        needs = ", ".join(map(repr, DOCUMENT_LAYOUTS))
        raise ValueError(f"layout must be one of {KNOWN_LAYOUTS} ({needs} with cu_seqlens only), "
                         f"got {layout!r}")


def check_sequence_layout(layout: str, owner: str) -> None:
    """``check_layout`` for a caller that takes no ``cu_seqlens`` (so no layout that needs them)."""
    check_layout(layout)
    if follows_documents(layout):
        raise ValueError(f"{owner}: layout {layout!r} places rows by packed documents "
                         f"(cu_seqlens), which {owner} does not take; use one of {LAYOUTS}")


def follows_documents(layout: str) -> bool:
    """Does ``layout`` place rows by packed documents (and so need ``cu_seqlens``)?"""
    return layout in DOCUMENT_LAYOUTS


def missing_documents_error(layout: str, owner: str) -> ValueError:
    return ValueError(f"{owner}: layout {layout!r} places rows by packed documents and needs "
                      "cu_seqlens (the global document bounds [0, l1, l1 + l2, ..., L], the same on "
                      "every rank); pass cu_seqlens=..., or a layout of the whole sequence "
                      f"{LAYOUTS}")


def layout_documents(layout: str, seq_len: int, cu_seqlens, owner: str = "layout"):
    """The document bounds ``layout`` places rows by (None for a sequence layout, which ignores
    ``cu_seqlens``). ``cu_seqlens``: a 1-D int tensor, or the tuple of its bounds (what the ranks
    agreed on); checked either way against ``seq_len``."""
    if not follows_documents(layout):
        return None
    if cu_seqlens is None:
        raise missing_documents_error(layout, owner)
    if not isinstance(cu_seqlens, torch.Tensor):
        cu_seqlens = torch.tensor(list(cu_seqlens), dtype=torch.int64)
    return check_cu_seqlens(cu_seqlens, seq_len, owner=owner)


def document_zigzag(bounds, world_size: int) -> list[list[Segment]]:
    """``doc_zigzag`` for every rank: each document cut into 2P pieces, rank r holding pieces r
    and 2P-1-r of each, in sequence order; adjacent pieces merged, empty ones dropped."""
    out: list[list[Segment]] = [[] for _ in range(world_size)]
    for start, stop in zip(bounds, bounds[1:]):
        pieces = even_pieces(stop - start, 2 * world_size)
        for r, member in enumerate(out):
            for s, n in (pieces[r], pieces[2 * world_size - 1 - r]):  # r < 2P-1-r: in order
                if not n:
                    continue
                if member and sum(member[-1]) == start + s:
                    member[-1] = (member[-1][0], member[-1][1] + n)
                else:
                    member.append((start + s, n))
    return out


def even_pieces(n: int, parts: int) -> list[Segment]:
    """Cut range(n) into ``parts`` near-equal pieces; the first ``n % parts`` get one more row."""
    base, extra = divmod(n, parts)
    pieces, start = [], 0
    for i in range(parts):
        length = base + (1 if i < extra else 0)
        pieces.append((start, length))
        start += length
    return pieces


def segments(seq_len: int, world_size: int, rank: int, layout: str = "contiguous", *,
             cu_seqlens=None) -> list[Segment]:
    """The (global_start, length) segments rank ``rank`` holds, in local order; empty ones dropped.
    ``cu_seqlens``: packed documents, for a layout that follows them (``doc_zigzag``)."""
    check_layout(layout)
    check_int("seq_len", seq_len, 0)
    check_int("world_size", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
    if follows_documents(layout):
        return document_zigzag(layout_documents(layout, seq_len, cu_seqlens, "segments"),
                               world_size)[rank]
    if layout == "contiguous":
        chosen = [even_pieces(seq_len, world_size)[rank]]
    else:
        chunks = even_pieces(seq_len, 2 * world_size)
        chosen = [chunks[rank], chunks[2 * world_size - 1 - rank]]
    return [s for s in chosen if s[1] > 0]


def all_segments(seq_len: int, world_size: int, layout: str = "contiguous", *,
                 cu_seqlens=None) -> list[list[Segment]]:
    """``segments`` for every rank: element r is rank r's list."""
    if follows_documents(layout):
        check_int("seq_len", seq_len, 0)
        check_int("world_size", world_size)
        return document_zigzag(layout_documents(layout, seq_len, cu_seqlens, "all_segments"),
                               world_size)
    return [segments(seq_len, world_size, r, layout) for r in range(world_size)]


def local_length(seq_len: int, world_size: int, rank: int, layout: str = "contiguous", *,
                 cu_seqlens=None) -> int:
    """Number of rows rank ``rank`` holds."""
    return sum(n for _, n in segments(seq_len, world_size, rank, layout, cu_seqlens=cu_seqlens))


def sequence_order(segs: list[list[Segment]]) -> torch.Tensor | None:
    """Permutation that sorts the rank-major concatenation of ``segs`` into sequence order.

    ``x_ranks`` = cat(shard of rank 0, shard of rank 1, ...) along the sequence; then
    ``x_ranks[:, perm]`` is the sequence in order. Returns None when the concatenation is already
    in order (contiguous layout), so callers can skip the gather.
    """
    starts = [start for rank_segs in segs for start, _ in rank_segs]
    if starts == sorted(starts):
        return None
    positions = torch.cat([torch.arange(s, s + n) for rank_segs in segs for s, n in rank_segs])
    return torch.argsort(positions)


def resolve_group(group=None) -> tuple[object, int, int]:
    """(group, world size, rank): ``None`` means the default group; without an initialized
    torch.distributed this is one process, (None, 1, 0), and passing a group is an error."""
    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError("group was given but torch.distributed is not initialized")
        return None, 1, 0
    group = dist.group.WORLD if group is None else group
    return group, dist.get_world_size(group), dist.get_rank(group)


def shard(x: torch.Tensor, group=None, layout: str = "contiguous", *,
          cu_seqlens=None) -> torch.Tensor:
    """This rank's part of the full sequence ``x`` (batch, L, ...) along dim 1, per ``layout``.

    Every rank passes the same full ``x``; no communication happens. Differentiable (slicing).
    ``cu_seqlens``: packed documents (global), needed by ``doc_zigzag``, ignored by the others.
    """
    check_layout(layout)
    if x.dim() < 2:
        raise ValueError(f"x must have a sequence dim 1, got shape {tuple(x.shape)}")
    _, world, rank = resolve_group(group)
    if follows_documents(layout) and cu_seqlens is None:
        raise missing_documents_error(layout, "shard")
    segs = segments(x.shape[1], world, rank, layout, cu_seqlens=cu_seqlens)
    if not segs:
        return x[:, :0]
    return torch.cat([x[:, s:s + n] for s, n in segs], dim=1)


def unshard(y: torch.Tensor, group=None, layout: str = "contiguous", *,
            cu_seqlens=None) -> torch.Tensor:
    """Rebuild the full sequence (batch, L, ...) on every rank from each rank's shard ``y``.

    ``L`` is the sum of the local lengths; each rank's length is checked against the layout (and
    the other dims for equality), so a mismatched shard raises instead of being silently misplaced.
    Every rank must pass a ``y`` with the same number of dims. Shards may be uneven or empty
    (gloo's all_gather needs equal sizes, so they are padded to the longest). Not differentiable:
    meant for evaluation, tests and inspection. ``cu_seqlens``: as for :func:`shard`.
    """
    check_layout(layout)
    if y.dim() < 2:
        raise ValueError(f"y must have a sequence dim 1, got shape {tuple(y.shape)}")
    _, world, rank = resolve_group(group)
    if follows_documents(layout) and cu_seqlens is None:  # the same on every rank: no collective yet
        raise missing_documents_error(layout, "unshard")
    if world == 1:
        return y
    group = dist.group.WORLD if group is None else group
    # every rank's full shape in one all-reduce: the lengths place the rows, and the other dims
    # must agree or the padded all_gather below would fail (or mix up data) on some ranks only
    # (and, for a layout that follows documents, whether cu_seqlens is valid here and its digest,
    # so a bad or differing one raises on every rank instead of leaving some in the all_gather)
    bounds, bounds_error = local_documents(cu_seqlens if follows_documents(layout) else None,
                                           "unshard")
    record = [*y.shape, int(not bounds_error), *documents_record(cu_seqlens, bounds)[1:]]
    shapes = torch.zeros(world, y.dim() + 2, dtype=torch.int64, device=y.device)
    shapes[rank] = torch.tensor(record, dtype=torch.int64)
    dist.all_reduce(shapes, group=group)
    valid, digests = shapes[:, -2].tolist(), set(shapes[:, -1].tolist())
    if not all(valid) or len(digests) > 1:
        raise ValueError(f"unshard: cu_seqlens must be valid and the same on every rank"
                         f"{'' if all(valid) else f' (invalid on rank(s) {[r for r, v in enumerate(valid) if not v]})'}"
                         f"{' (ranks passed different ones)' if len(digests) > 1 else ''}")
    shapes = shapes[:, :-2]
    others = {tuple(s[:1] + s[2:]) for s in shapes.tolist()}
    if len(others) > 1:
        raise ValueError(f"unshard: shards must agree on every dim but 1, got shapes "
                         f"{[tuple(s) for s in shapes.tolist()]} by rank")
    lengths = shapes[:, 1].tolist()
    seq_len = sum(lengths)
    layout_segments = all_segments(seq_len, world, layout, cu_seqlens=cu_seqlens)
    expected = [sum(n for _, n in member) for member in layout_segments]
    if lengths != expected:
        raise ValueError(f"unshard: local lengths {lengths} do not match the {layout!r} layout of a "
                         f"length-{seq_len} sequence over {world} ranks (expected {expected})")
    longest = max(lengths)
    padded = y.new_zeros((y.shape[0], longest, *y.shape[2:]))
    padded[:, :y.shape[1]] = y.detach()
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous(), group=group)
    out = y.new_empty((y.shape[0], seq_len, *y.shape[2:]))
    for r in range(world):
        offset = 0
        for s, n in layout_segments[r]:
            out[:, s:s + n] = gathered[r][:, offset:offset + n]
            offset += n
    return out
