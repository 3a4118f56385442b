"""Which rows each rank holds when the sequence packs documents, and the causal-attention work
that gives each rank (issue 21, section 3). Pure arithmetic on the document bounds.

Causal attention over packed documents costs a sum of per-document triangles: query row t of a
document starting at s reads t - s + 1 keys. The zigzag of the whole sequence balances one
triangle, not a sum of them. Candidates, each returning ``segments[r]``, rank r's (start, length)
pieces in local order (the shape ``layout.all_segments`` returns):

* ``longmix.parallel.layout.document_zigzag``: each document cut into 2P near-equal pieces,
  rank r holding pieces r and 2P-1-r of every document (PyTorch's per-document head-tail
  balancer): the ``"doc_zigzag"`` layout, which ``shard``/``unshard``, the planner and the forms
  take;
* ``work_cut_segments``: P contiguous pieces cut where the cumulative work reaches r/P of the
  total (rows are then uneven: a rank deep in a long document gets fewer of them).

These are measured by ``benchmarks/packed_balance.py``; the cut by work is not a layout (it
unbalances rows, so memory).
"""
from __future__ import annotations

import bisect

from .layout import Segment, all_segments


def row_work(bounds, t: int) -> int:
    """Keys causal query row t reads inside its document."""
    return t - bounds[bisect.bisect_right(bounds, t) - 1] + 1


def segment_work(bounds, start: int, length: int) -> int:
    """Causal attention work (query-key pairs) of rows [start, start + length)."""
    total, t, stop = 0, start, start + length
    while t < stop:
        doc = bisect.bisect_right(bounds, t) - 1
        s, end = bounds[doc], min(bounds[doc + 1], stop)
        a, b = t - s + 1, end - s  # keys of the first and last row, inclusive
        total += (a + b) * (b - a + 1) // 2
        t = end
    return total


def work_per_rank(bounds, segments: list[list[Segment]]) -> list[int]:
    return [sum(segment_work(bounds, s, n) for s, n in member) for member in segments]


def rows_per_rank(segments: list[list[Segment]]) -> list[int]:
    return [sum(n for _, n in member) for member in segments]


def sequence_segments(bounds, world: int, layout: str) -> list[list[Segment]]:
    """The layouts of today, blind to documents: ``contiguous`` or ``zigzag`` of the whole sequence."""
    return all_segments(bounds[-1], world, layout)


def work_cut_segments(bounds, world: int) -> list[list[Segment]]:
    """P contiguous pieces, cut where the cumulative work first reaches r/P of the total."""
    length = bounds[-1]
    total = segment_work(bounds, 0, length)
    cuts, done, t = [0], 0, 0
    for r in range(1, world):
        target = total * r / world
        while t < length and done + row_work(bounds, t) <= target:
            done += row_work(bounds, t)
            t += 1
        cuts.append(t)
    cuts.append(length)
    return [[(a, b - a)] if b > a else [] for a, b in zip(cuts, cuts[1:])]
