"""sparse family: block patterns written out by hand, and the gathered fast path vs dense attention."""
import pytest
import torch

from longmix import mixers
from longmix.ops import block_sparse as bs

F64 = torch.float64


def dense_attention(q, k, v, mask):
    """Independent reference: masked softmax over the full (L, L) scores. Layout (b, L, h, d)."""
    scores = torch.einsum("bthd,bshd->bhts", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhts,bshd->bthd", scores.masked_fill(~mask, float("-inf")).softmax(-1), v)


def qkv(length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, length, 3, 4, dtype=F64, generator=g) for _ in range(3)]


def local_rule(length, block, causal):
    """Query t reads key s iff block(s) is block(t)-1, block(t) or (not causal) block(t)+1."""
    t = torch.arange(length)
    offset = (t[None, :] // block) - (t[:, None] // block)
    keep = (offset >= -1) & (offset <= (0 if causal else 1))
    return keep & (t[None, :] <= t[:, None]) if causal else keep


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length,block", [(1, 4), (7, 4), (12, 4), (33, 5), (20, 32)])
def test_local_op_equals_dense_masked_attention(causal, length, block):
    q, k, v = qkv(length)
    n = -(-length // block)
    out = bs.block_sparse_attention(q, k, v, *bs.local_block_pattern(n, causal), block, causal=causal)
    torch.testing.assert_close(out, dense_attention(q, k, v, local_rule(length, block, causal)),
                               rtol=1e-12, atol=1e-12)


def test_query_groups_give_the_same_result(monkeypatch):
    q, k, v = qkv(45)
    pattern = bs.bigbird_block_pattern(9, window=3, global_blocks=1, random_blocks=2, seed=5)
    whole = bs.block_sparse_attention(q, k, v, *pattern, 5)
    monkeypatch.setattr(bs, "_ELEMENTS_PER_STEP", 1)  # one query block per step
    torch.testing.assert_close(bs.block_sparse_attention(q, k, v, *pattern, 5), whole, rtol=0, atol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_local_mixer_support_is_the_block_rule(causal):
    torch.manual_seed(0)
    mixer = mixers.build("local", 8, heads=2, causal=causal, block_size=5).double()
    x = torch.randn(2, 23, 8, dtype=F64)
    with torch.no_grad():
        matrix = mixer.mixing_matrix(x)
    assert torch.equal(matrix > 0, local_rule(23, 5, causal).expand_as(matrix))


def explicit_bigbird(n, window, global_blocks, random_blocks, seed):
    """Check the stated properties row by row; return the block mask they imply."""
    blocks, valid = bs.bigbird_block_pattern(n, window, global_blocks, random_blocks, seed)
    radius = window // 2
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[:global_blocks], mask[:, :global_blocks] = True, True
    for i in range(global_blocks, n):
        used = blocks[i][valid[i]].tolist()
        assert len(used) == len(set(used)), f"row {i}: a key block is listed twice: {used}"
        win = set(range(max(i - radius, 0), min(i + radius + 1, n)))
        glob = set(range(min(global_blocks, n)))
        assert win | glob <= set(used), f"row {i} misses window or global blocks"
        randoms = set(used) - win - glob
        candidates = set(range(n)) - win - glob
        assert len(randoms) == min(random_blocks, len(candidates)), f"row {i}: random blocks {randoms}"
        mask[i, used] = True
    return mask


@pytest.mark.parametrize("n,window,global_blocks,random_blocks", [(12, 3, 1, 2), (20, 5, 2, 3), (4, 3, 1, 2),
                                                                  (1, 3, 1, 2), (7, 1, 0, 9)])
def test_bigbird_pattern_has_window_global_and_random_blocks(n, window, global_blocks, random_blocks):
    expected = explicit_bigbird(n, window, global_blocks, random_blocks, seed=3)
    assert torch.equal(bs.bigbird_block_mask(n, window, global_blocks, random_blocks, seed=3), expected)


def test_bigbird_random_blocks_are_seeded():
    def pattern(seed):
        return bs.bigbird_block_mask(32, 3, 1, 2, seed=seed)

    assert torch.equal(pattern(7), pattern(7))
    assert not torch.equal(pattern(7), pattern(8))


def test_bigbird_mixer_support_and_fast_path():
    torch.manual_seed(0)
    mixer = mixers.build("bigbird", 8, heads=2, block_size=4, window=3, global_blocks=1, random_blocks=2).double()
    x = torch.randn(2, 50, 8, dtype=F64)  # 13 blocks, the last one partial
    block_level = bs.bigbird_block_mask(13, 3, 1, 2, seed=int(mixer.seed))
    token_level = block_level.repeat_interleave(4, 0).repeat_interleave(4, 1)[:50, :50]
    with torch.no_grad():
        matrix = mixer.mixing_matrix(x)
        assert torch.equal(matrix > 0, token_level.expand_as(matrix))
        # Sparse: each non-global query block reads 6 of 13 key blocks.
        assert token_level[4:].float().mean() < 0.5
        q, k, v = mixer._qkv(x)
        expected = mixer._merge(dense_attention(q, k, v, token_level))
        torch.testing.assert_close(mixer(x), expected, rtol=1e-10, atol=1e-12)


def test_bigbird_seed_is_saved_and_restored():
    torch.manual_seed(0)
    a = mixers.build("bigbird", 8, heads=2)
    torch.manual_seed(1)
    b = mixers.build("bigbird", 8, heads=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 64, 8)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("option,value", [("block_size", 0), ("window", 2), ("global_blocks", -1),
                                          ("random_blocks", 1.5), ("seed", -2)])
def test_bad_bigbird_options_are_rejected(option, value):
    with pytest.raises(ValueError, match=option):
        mixers.build("bigbird", 8, heads=2, **{option: value})
