"""Sequence layouts: every row on exactly one rank, near-equal shards, zigzag balances causal work."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import longmix.parallel as ld
from longmix.parallel.launch import run_local
from longmix.parallel.layout import all_segments, even_pieces, sequence_order


@settings(max_examples=200, deadline=None)
@given(seq_len=st.integers(0, 300), world=st.integers(1, 9), layout=st.sampled_from(ld.LAYOUTS))
def test_segments_partition_the_sequence(seq_len, world, layout):
    segs = all_segments(seq_len, world, layout)
    rows = sorted(i for rank in segs for s, n in rank for i in range(s, s + n))
    assert rows == list(range(seq_len))
    assert all(n > 0 for rank in segs for _, n in rank)  # empty segments are dropped
    lengths = [ld.local_length(seq_len, world, r, layout) for r in range(world)]
    assert max(lengths) - min(lengths) <= (1 if layout == "contiguous" else 2)
    if layout == "contiguous":  # the first L % P ranks hold one more row
        assert lengths == [seq_len // world + (r < seq_len % world) for r in range(world)]
    else:  # rank r holds chunks r and 2P-1-r of 2P
        chunks = even_pieces(seq_len, 2 * world)
        for r in range(world):
            assert segs[r] == [c for c in (chunks[r], chunks[2 * world - 1 - r]) if c[1]]


@settings(max_examples=50, deadline=None)
@given(seq_len=st.integers(0, 100), world=st.integers(1, 6), layout=st.sampled_from(ld.LAYOUTS))
def test_sequence_order_restores_positions(seq_len, world, layout):
    segs = all_segments(seq_len, world, layout)
    rank_major = torch.tensor([i for rank in segs for s, n in rank for i in range(s, s + n)],
                              dtype=torch.long)
    order = sequence_order(segs)
    restored = rank_major if order is None else rank_major[order]
    assert restored.tolist() == list(range(seq_len))


def causal_work(seq_len, world, layout):
    """Query-key pairs under a causal mask whose query row each rank holds."""
    return [sum(i + 1 for s, n in ld.segments(seq_len, world, r, layout) for i in range(s, s + n))
            for r in range(world)]


@pytest.mark.parametrize("world", [2, 4, 8])
def test_zigzag_balances_causal_work(world):
    contiguous = causal_work(1024, world, "contiguous")
    zigzag = causal_work(1024, world, "zigzag")
    mean = sum(zigzag) / world
    assert max(zigzag) / mean < 1.01
    # contiguous: the last rank carries (2P-1)/P times the mean
    assert max(contiguous) / mean == pytest.approx((2 * world - 1) / world, rel=0.01)


def test_shard_without_process_group_is_identity():
    x = torch.randn(2, 5, 3)
    assert torch.equal(ld.shard(x, layout="zigzag"), x)
    assert torch.equal(ld.unshard(x), x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="layout must be one of"):
        ld.segments(8, 2, 0, "striped")
    with pytest.raises(ValueError, match="rank must be in"):
        ld.segments(8, 2, 2)
    with pytest.raises(ValueError, match="seq_len"):
        ld.segments(-1, 2, 0)
    with pytest.raises(ValueError, match="sequence dim 1"):
        ld.shard(torch.zeros(3))
    with pytest.raises(ValueError, match="sequence dim 1"):
        ld.unshard(torch.zeros(3))


def roundtrip_worker(group):
    """shard -> unshard for many lengths (uneven, empty shards); then a mismatched shard."""
    rank = torch.distributed.get_rank(group)
    ok = []
    for layout in ld.LAYOUTS:
        for seq_len in (1, 2, 3, 4, 7, 10, 31):
            x = torch.arange(2 * seq_len * 3, dtype=torch.float64).view(2, seq_len, 3)
            part = ld.shard(x, group, layout)
            ok.append(part.shape[1] == ld.local_length(seq_len, 3, rank, layout)
                      and torch.equal(ld.unshard(part, group, layout), x))
    wrong = torch.zeros(1, 2 if rank == 1 else 1, 1)  # lengths [1, 2, 1]: not a layout
    odd_width = torch.zeros(1, 1, 2 if rank == 2 else 1)  # lengths fine, dim 2 disagrees
    errors = []
    for bad in (wrong, odd_width):
        try:
            ld.unshard(bad, group)
            errors.append(None)
        except ValueError as exc:
            errors.append(str(exc))
    return ok, errors


def test_shard_unshard_roundtrip_on_three_ranks():
    results = run_local(roundtrip_worker, 3, timeout=60, collective_timeout=30)
    for ok, (length_error, width_error) in results:
        assert all(ok)
        assert length_error is not None and "do not match the 'contiguous' layout" in length_error
        assert width_error is not None and "agree on every dim but 1" in width_error
        assert "(1, 1, 2)" in width_error
