"""Bad input gives the same clear ValueError on every rank, and a failing rank never hangs the rest."""
import os
import time

import pytest
import torch

import longmix.parallel as ld
from helpers import reference_attention
from longmix.parallel.launch import RankFailure, run_local

P = 3
LOCAL, HEADS, DIM = 4, 3, 8


def _qkv(batch=2, rows=LOCAL, heads=HEADS, kv_heads=HEADS, dim=DIM, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, rows, h, dim, generator=g, dtype=dtype)
            for h in (heads, kv_heads, kv_heads)]


def _on(rank, who, bad, good):
    return bad if rank in who else good


# name -> (rank -> (q, k, v, kwargs)), substrings every rank's message must contain
BAD_INPUTS = {
    "shard lengths disagree with the layout": (
        lambda r: (*_qkv(rows=_on(r, [1], 6, LOCAL)), {}), ["shard lengths", "[4, 6, 4]"]),
    "batch disagrees across ranks": (
        lambda r: (*_qkv(batch=_on(r, [2], 3, 2)), {}), ["batch must agree", "rank 2: 3"]),
    "heads disagree across ranks": (
        lambda r: (*_qkv(heads=_on(r, [1], 6, 3)), {}), ["heads must agree", "rank 1: 6"]),
    "heads incompatible with shuffle": (
        lambda r: (*_qkv(heads=4, kv_heads=4), {"strategy": "shuffle"}),
        ["heads=4 must be divisible by 3", "ring"]),
    "kv_heads incompatible with shuffle": (
        lambda r: (*_qkv(heads=6, kv_heads=2), {"strategy": "shuffle"}),
        ["kv_heads=2 must divide or be divisible by 3"]),
    "hybrid_size not dividing P": (
        lambda r: (*_qkv(), {"strategy": "hybrid", "hybrid_size": 2}),
        ["hybrid_size must divide the world size 3"]),
    "q/k dtype mismatch on one rank": (
        lambda r: (_qkv()[0], _qkv(dtype=_on(r, [0], torch.float32, torch.float64))[1], _qkv()[2], {}),
        ["rank(s) [0]", "share a dtype"]),
    "dtype disagrees across ranks": (
        lambda r: (*_qkv(dtype=_on(r, [1], torch.float32, torch.float64)), {}),
        ["dtype must agree", "rank 1: 'torch.float32'"]),
    "v on another device": (
        lambda r: (*_qkv()[:2], _qkv()[2].to(_on(r, [2], "meta", "cpu")), {}),
        ["rank(s) [2]", "one device"]),
    "head_dim mismatch": (
        lambda r: (_qkv()[0], *_qkv(dim=4)[1:], {}), ["head_dim"]),
    "unknown strategy": (
        lambda r: (*_qkv(), {"strategy": "rign"}), ["rank(s) [0, 1, 2]", "strategy must be one of", "'rign'"]),
    "unknown layout on one rank": (
        lambda r: (*_qkv(), {"layout": _on(r, [1], "zig", "contiguous")}),
        ["rank(s) [1]", "layout must be one of", "'zig'"]),
    "causal disagrees across ranks": (
        lambda r: (*_qkv(), {"causal": r == 0}), ["causal must agree", "rank 0: True"]),
    "window with hybrid": (
        lambda r: (*_qkv(), {"strategy": "hybrid", "hybrid_size": 3, "window": 4}),
        ["window=4 is supported by strategies 'shuffle' and 'ring'"]),
}


def bad_input_worker(group):
    """Every bad case on every rank; then a good call proves the group is still in step."""
    rank = torch.distributed.get_rank(group)
    messages = {}
    for name, (make, _) in BAD_INPUTS.items():
        q, k, v, kwargs = make(rank)
        try:
            ld.attention(q, k, v, group=group, **kwargs)
            messages[name] = None
        except ValueError as exc:
            messages[name] = str(exc)
    q, k, v = _qkv()
    out = ld.attention(q, k, v, group=group, strategy="shuffle")
    return messages, out.shape == q.shape


def test_bad_input_same_error_on_every_rank():
    results = run_local(bad_input_worker, P, timeout=120, collective_timeout=30)
    for name, (_, expected) in BAD_INPUTS.items():
        per_rank = [messages[name] for messages, _ in results]
        assert per_rank[0] is not None, f"{name}: no error raised"
        assert len(set(per_rank)) == 1, f"{name}: ranks raised different errors: {per_rank}"
        for text in expected:
            assert text in per_rank[0], f"{name}: {text!r} not in {per_rank[0]!r}"
    assert all(ok for _, ok in results), "a valid call after the errors failed"


def test_single_process_without_init():
    """Without torch.distributed initialized, the call runs on this process (world size 1)."""
    q, k, v = _qkv(rows=9)
    out = ld.attention(q, k, v, causal=True, strategy="ring")
    torch.testing.assert_close(out, reference_attention(q, k, v, causal=True), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="strategy must be one of"):
        ld.attention(q, k, v, strategy="fast")
    with pytest.raises(ValueError, match="not initialized"):
        ld.attention(q, k, v, group=object())


def raising_rank_worker(group, bad_rank):
    if torch.distributed.get_rank(group) == bad_rank:
        raise RuntimeError("user code failed on this rank")
    q, k, v = _qkv()
    return ld.attention(q, k, v, group=group).shape


def dying_rank_worker(group, bad_rank):
    if torch.distributed.get_rank(group) == bad_rank:
        os._exit(3)
    q, k, v = _qkv()
    return ld.attention(q, k, v, group=group).shape


def stalled_rank_worker(group, bad_rank):
    if torch.distributed.get_rank(group) == bad_rank:
        time.sleep(120)  # never joins the collective
    q, k, v = _qkv()
    return ld.attention(q, k, v, group=group).shape


@pytest.mark.parametrize("worker", [raising_rank_worker, dying_rank_worker],
                         ids=["raises", "dies"])
def test_failing_rank_is_named_quickly(worker):
    start = time.monotonic()
    with pytest.raises(RankFailure) as info:
        run_local(worker, P, (1,), timeout=60, collective_timeout=10)
    assert info.value.rank == 1, str(info.value)
    assert "rank 1" in str(info.value)
    assert time.monotonic() - start < 30


def test_stalled_rank_makes_peers_time_out():
    """A rank that never arrives: the others' all-gather fails after the group's timeout."""
    start = time.monotonic()
    with pytest.raises(RankFailure) as info:
        run_local(stalled_rank_worker, P, (1,), timeout=60, collective_timeout=3)
    assert info.value.rank in (0, 2), str(info.value)
    assert time.monotonic() - start < 30
