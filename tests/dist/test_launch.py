"""The local launcher: results by rank, failures named, timeouts enforced, both start methods."""
import time

import pytest
import torch
import torch.distributed as dist

from longmix.dist.launch import RankFailure, run_local


def sum_of_ranks(group, offset):
    t = torch.tensor([float(dist.get_rank(group))])
    dist.all_reduce(t, group=group)
    return dist.get_rank(group), dist.get_world_size(group), t.item() + offset


def raise_on(group, bad_rank):
    if dist.get_rank(group) == bad_rank:
        raise ValueError("bad value on this rank")
    return dist.get_rank(group)


def sleep_forever(group):
    time.sleep(600)


def test_results_come_back_by_rank():
    results = run_local(sum_of_ranks, 3, (10.0,), timeout=60)
    assert results == [(r, 3, 3.0 + 10.0) for r in range(3)]


def test_spawn_start_method():
    assert run_local(sum_of_ranks, 1, (0.0,), timeout=120, start_method="spawn") == [(0, 1, 0.0)]


def test_raising_rank_is_named_with_traceback():
    with pytest.raises(RankFailure) as info:
        run_local(raise_on, 2, (1,), timeout=60)
    assert info.value.rank == 1
    assert "ValueError: bad value on this rank" in str(info.value)
    assert "Traceback" in str(info.value)


def test_timeout_kills_the_ranks():
    start = time.monotonic()
    with pytest.raises(RankFailure, match="timed out"):
        run_local(sleep_forever, 2, timeout=3)
    assert time.monotonic() - start < 20


def test_bad_nprocs():
    with pytest.raises(ValueError, match="nprocs"):
        run_local(sum_of_ranks, 0)
