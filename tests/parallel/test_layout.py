"""Sequence layouts: every row on exactly one rank, near-equal shards, zigzag balances causal work;
doc_zigzag (packed documents) does the same for every document."""
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


def doc_bounds(lengths) -> tuple[int, ...]:
    return tuple([0] + torch.tensor(lengths).cumsum(0).tolist())


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=8), world=st.integers(1, 6))
def test_doc_zigzag_zigzags_every_document(lengths, world):
    bounds = doc_bounds(lengths)
    seq_len = bounds[-1]
    segs = all_segments(seq_len, world, "doc_zigzag", cu_seqlens=torch.tensor(bounds))
    assert segs == all_segments(seq_len, world, "doc_zigzag", cu_seqlens=bounds)  # tuple or tensor
    rows = [i for rank in segs for s, n in rank for i in range(s, s + n)]
    assert sorted(rows) == list(range(seq_len))
    for rank in segs:  # in sequence order, non-empty, adjacent pieces merged
        assert all(n > 0 for _, n in rank)
        assert all(s + n < t for (s, n), (t, _) in zip(rank, rank[1:]))
    for r in range(world):
        assert ld.local_length(seq_len, world, r, "doc_zigzag", cu_seqlens=bounds) == \
            sum(n for _, n in segs[r])
    for a, b in zip(bounds, bounds[1:]):  # each document: rank r holds its pieces r and 2P-1-r
        pieces = even_pieces(b - a, 2 * world)
        for r, rank in enumerate(segs):
            held = {i for s, n in rank for i in range(max(s, a), min(s + n, b))}
            wanted = {a + i for c in (pieces[r], pieces[2 * world - 1 - r]) for i in range(c[0], c[0] + c[1])}
            assert held == wanted
    if len(lengths) == 1:  # one document: the zigzag of the whole sequence, row for row
        zigzag = all_segments(seq_len, world, "zigzag")
        assert [[i for s, n in rank for i in range(s, s + n)] for rank in segs] == \
            [[i for s, n in rank for i in range(s, s + n)] for rank in zigzag]
    if world == 1:
        assert segs == [[(0, seq_len)]]


def test_doc_zigzag_needs_cu_seqlens():
    from longmix.parallel.forms.model_plan import plan_model
    from longmix import mixers

    x = torch.randn(1, 5, 3)
    cu = torch.tensor([0, 2, 5])
    needs = "layout 'doc_zigzag' places rows by packed documents and needs cu_seqlens"
    for call in (lambda: ld.segments(5, 2, 0, "doc_zigzag"), lambda: ld.shard(x, layout="doc_zigzag"),
                 lambda: ld.unshard(x, layout="doc_zigzag"),
                 lambda: ld.state_passing_bytes(mixers.build("linear", 4), 1, 2, "doc_zigzag")):
        with pytest.raises(ValueError, match=needs):
            call()
    with pytest.raises(ValueError, match="cu_seqlens must end at the packed length 6, got 5"):
        ld.segments(6, 2, 0, "doc_zigzag", cu_seqlens=cu)
    with pytest.raises(ValueError, match="cu_seqlens must be strictly increasing"):
        ld.segments(5, 2, 0, "doc_zigzag", cu_seqlens=torch.tensor([0, 3, 3, 5]))
    with pytest.raises(ValueError, match="float32"):
        ld.shard(x, layout="doc_zigzag", cu_seqlens=cu.float())
    # one process: doc_zigzag is the identity, like every layout
    assert torch.equal(ld.shard(x, layout="doc_zigzag", cu_seqlens=cu), x)
    assert torch.equal(ld.unshard(x, layout="doc_zigzag", cu_seqlens=cu), x)
    mixer = mixers.build("softmax", 4, heads=2, causal=True)
    with pytest.raises(ValueError, match="plan_model: layout 'doc_zigzag' .* needs cu_seqlens"):
        plan_model(mixer, 5, 2, layout="doc_zigzag", packed=True)
    with pytest.raises(ValueError, match="plan with packed=True"):
        plan_model(mixer, None, 2, layout="doc_zigzag")
    with pytest.raises(ValueError, match="pass packed=True"):
        ld.parallelize(mixer, layout="doc_zigzag")
    # the command line and training pack nothing yet: their layouts are the sequence layouts
    assert "doc_zigzag" not in ld.LAYOUTS and "doc_zigzag" in ld.DOCUMENT_LAYOUTS
    from longmix.train.config import TrainConfig

    with pytest.raises(ValueError, match="TrainConfig: layout 'doc_zigzag' .* does not take"):
        TrainConfig(task="toy_copy", mixer="s4d", context=8, layout="doc_zigzag")


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
    for lengths in ([1], [1, 1, 1], [2, 5], [6, 1, 6], [1, 11, 2, 1]):
        docs = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
        x = torch.arange(sum(lengths) * 2, dtype=torch.float64).view(1, -1, 2)
        part = ld.shard(x, group, "doc_zigzag", cu_seqlens=docs)
        ok.append(part.shape[1] == ld.local_length(x.shape[1], 3, rank, "doc_zigzag", cu_seqlens=docs)
                  and torch.equal(ld.unshard(part, group, "doc_zigzag", cu_seqlens=docs), x))
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
