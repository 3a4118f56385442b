"""The arithmetic of ``longmix.parallel.packed_layout`` against brute force on small packs."""
import random

import pytest

from longmix.parallel.layout import document_zigzag
from longmix.parallel.packed_layout import rows_per_rank, segment_work, work_cut_segments, work_per_rank


def brute_work(bounds, start, length):
    return sum(t - max(b for b in bounds[:-1] if b <= t) + 1 for t in range(start, start + length))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_layouts_cover_every_row_once_and_count_work_exactly(seed, world):
    rng = random.Random(seed)
    bounds = [0]
    while bounds[-1] < 40:
        bounds.append(min(40, bounds[-1] + rng.choice([1, 2, 5, 13, 30])))
    for start in range(40):
        for length in range(0, 41 - start, 7):
            assert segment_work(bounds, start, length) == brute_work(bounds, start, length)
    for layout in (document_zigzag, work_cut_segments):
        segments = layout(bounds, world)
        assert len(segments) == world
        rows = sorted(t for member in segments for s, n in member for t in range(s, s + n))
        assert rows == list(range(40))
        assert sum(rows_per_rank(segments)) == 40
        assert sum(work_per_rank(bounds, segments)) == brute_work(bounds, 0, 40)
    # per-document zigzag: each rank's share of each document differs by at most 2 rows
    for a, b in zip(bounds, bounds[1:]):
        held = [sum(min(s + n, b) - max(s, a) for s, n in member if s < b and s + n > a)
                for member in document_zigzag(bounds, world)]
        assert max(held) - min(held) <= 2
