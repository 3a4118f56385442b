"""The cache each rank holds is O(L/P) for softmax and fixed for state mixers (the formula
``expected_cache_bytes``; test_generate_exact holds every rank's measured bytes to it)."""
from __future__ import annotations

import math

import pytest

from generate_cases import Case, make_model
from longmix.generate import decode_owners, expected_cache_bytes


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("prompt_len, new_tokens", [(600, 9), (601, 1), (2, 7)])
def test_softmax_cache_is_split_evenly(layout, prompt_len, new_tokens):
    model = make_model(Case("softmax", prompt_len))
    one = expected_cache_bytes(model, prompt_len, new_tokens, 1, 0, layout)
    row = 2 * (2 * 8 * 8 + 8)  # per layer (depth 2): batch 1 x (k, v) x dim 8 x float64 + int64 position
    assert one == (prompt_len + new_tokens - 1) * row
    for world in (2, 3, 4):
        per_rank = [expected_cache_bytes(model, prompt_len, new_tokens, world, r, layout)
                    for r in range(world)]
        assert sum(per_rank) == one  # sharded, never duplicated
        # balanced: within one row of the even share (decode keys go to the emptiest rank)
        assert max(per_rank) <= math.ceil((prompt_len + new_tokens - 1) / world) * row + row


def test_window_keeps_only_the_window():
    model = make_model(Case("softmax", 10, options={"window": 5}))
    for prompt_len in (100, 10_000):
        total = sum(expected_cache_bytes(model, prompt_len, 50, 2, r) for r in range(2))
        assert total <= 2 * (4 + 5) * 2 * (2 * 8 * 8 + 8)  # (window - 1) kept + <= window new per rank


@pytest.mark.parametrize("mixer", ["mamba", "s4d", "linear", "performer", "local"])
def test_state_mixers_hold_the_same_bytes_at_any_length(mixer):
    model = make_model(Case(mixer, 10))
    sizes = {expected_cache_bytes(model, n, 5, world, r)
             for n in (3, 1000, 100_000) for world in (1, 3) for r in range(world)}
    assert len(sizes) == 1 and sizes.pop() > 0


def test_decode_owners_balance_the_ranks():
    assert decode_owners([3, 2, 2], 5) == [1, 2, 0, 1, 2]
    assert decode_owners([0, 5], 3) == [0, 0, 0]


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_longconv_history_is_split_too(layout):
    """The history rows and the filter at their lags: about 1/P of one process's."""
    model = make_model(Case("longconv", 10))
    one = expected_cache_bytes(model, 4000, 9, 1, 0, layout)
    per_rank = [expected_cache_bytes(model, 4000, 9, 4, r, layout) for r in range(4)]
    assert max(per_rank) < 0.26 * one and sum(per_rank) < 1.01 * one


def test_the_cache_projects_the_same_keys_and_values_as_the_layer():
    """The prefill projects only K and V for the cache (no queries, ``_kv``): the same as the
    layer's own q, k, v projection."""
    import torch

    mixer = make_model(Case("softmax", 10)).blocks[0].mixer
    x = torch.randn(2, 7, mixer.dim, dtype=torch.float64)
    _, k, v = mixer._qkv(x)
    k2, v2 = mixer._kv(x)
    torch.testing.assert_close(k2, k, rtol=0, atol=1e-12)
    torch.testing.assert_close(v2, v, rtol=0, atol=1e-12)
