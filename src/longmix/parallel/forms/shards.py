"""How a sequence is split over ranks, agreed by every rank before any layer exchanges data."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..documents import RECORD_FIELDS, agree_documents, documents_record, local_documents
from ..exchange import DTYPES, agree, dtype_code
from ..layout import (Segment, all_segments, follows_documents, missing_documents_error,
                      resolve_group)


@dataclass(frozen=True)
class Shards:
    """How the sequence is split, agreed by every rank at the start of a forward."""

    world: int
    rank: int
    layout: str
    seq_len: int
    batch: int
    segments: list[list[Segment]]
    lengths: list[int]
    #: packed documents: the bounds of ``cu_seqlens`` (global, agreed by every rank), or None
    documents: tuple[int, ...] | None = None

    @property
    def positions(self) -> torch.Tensor:
        """Global index of each local row, (local_len,)."""
        mine = self.segments[self.rank]
        if not mine:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([torch.arange(s, s + n) for s, n in mine])

    @property
    def last_row(self) -> int | None:
        """Local row of the sequence's last position, None if another rank holds it."""
        offset = 0
        for s, n in self.segments[self.rank]:
            if s + n == self.seq_len:
                return offset + n - 1
            offset += n
        return None


def agree_on_shards(x, group, layout: str, *, what: str, dims: int, width: int | None = None,
                    max_len: int | None = None, cu_seqlens=None) -> Shards:
    """Check this rank's shard ``x`` against every other rank's in one small all-gather, so bad
    or disagreeing shards raise the same ValueError on every rank instead of hanging.

    ``dims``: the expected rank of x (batch, local_len[, width]); ``width``: its last dim.
    ``cu_seqlens``: packed documents, global; checked and agreed in the same all-gather."""
    group, world, rank = resolve_group(group)
    bounds, documents_error = local_documents(cu_seqlens, "parallelize")
    error = ""
    if not isinstance(x, torch.Tensor):
        error = f"{what} must be a torch.Tensor, got {type(x).__name__}"
    elif x.dim() != dims or (width is not None and x.shape[-1] != width):
        shape = "(batch, local_len" + (f", {width})" if width is not None else ")")
        error = f"{what} must have shape {shape}, got {tuple(x.shape)}"
    elif x.dtype not in DTYPES:
        error = f"{what} has unsupported dtype {x.dtype}"
    numbers = [-1, -1, -1] if error else [x.shape[0], x.shape[1], dtype_code(x.dtype)]
    errors = [e for e in (error, documents_error) if e]
    records = agree(numbers + documents_record(cu_seqlens, bounds), errors, group,
                    f"parallelize: {what}")
    documents = [rec[-RECORD_FIELDS:] for rec in records]
    records = [rec[:-RECORD_FIELDS] for rec in records]
    for i, name in ((0, "batch size (dim 0)"), (2, "dtype")):
        values = [rec[i] for rec in records]
        if len(set(values)) > 1:
            shown = [str(DTYPES[v]) if i == 2 else v for v in values]
            raise ValueError(f"parallelize: {what} {name} must agree across ranks, got "
                             f"{', '.join(f'rank {r}: {v}' for r, v in enumerate(shown))}")
    lengths = [rec[1] for rec in records]
    seq_len = sum(lengths)
    if seq_len < 1:
        raise ValueError(f"parallelize: the sequence is empty (every rank's {what} has length 0)")
    bounds = agree_documents(documents, bounds, seq_len=seq_len, batch=records[0][0],
                             owner="parallelize")
    if bounds is None and follows_documents(layout):  # its rows follow the documents
        raise missing_documents_error(layout, "parallelize")
    segments = all_segments(seq_len, world, layout, cu_seqlens=bounds)
    expected = [sum(n for _, n in s) for s in segments]
    if lengths != expected:
        raise ValueError(f"parallelize: shard lengths (dim 1) {lengths} of {what} do not match the "
                         f"{layout!r} layout of a length-{seq_len} sequence over {world} ranks "
                         f"(expected {expected}); use longmix.parallel.shard(x, layout={layout!r}"
                         f"{', cu_seqlens=...' if follows_documents(layout) else ''})")
    if max_len is not None and seq_len > max_len:
        raise ValueError(f"parallelize: the sequence length {seq_len} exceeds max_len={max_len}")
    return Shards(world=world, rank=rank, layout=layout, seq_len=seq_len,
                  batch=records[0][0], segments=segments, lengths=lengths, documents=bounds)
