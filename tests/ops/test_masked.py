"""masked_weighted_sum: a masked-out non-finite value reaches no row; an allowed one reaches its
rows exactly, as a sum over the allowed pairs only would."""
import pytest
import torch

from longmix.ops.attention import attention_with_lse
from longmix.ops.block_sparse import bigbird_block_pattern, block_mask, block_sparse_attention
from longmix.ops.linear_attention import linear_attention
from longmix.ops.masked import attend_with_nonfinite_kept_local, masked_weighted_sum, reads_any

F64 = torch.float64


def sum_over_allowed(weights, values, allowed):
    """The literal definition: out[r, j] = sum over keys k with allowed[r, k] of w[r, k] v[k, j]."""
    rows, keys = weights.shape[-2:]
    out = torch.zeros(*weights.shape[:-1], values.shape[-1], dtype=values.dtype)
    for r in range(rows):
        for k in range(keys):
            if allowed[r, k]:
                out[..., r, :] += weights[..., r, k, None] * values[..., k, :]
    return out


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf")])
def test_matches_the_sum_over_allowed_pairs(bad):
    g = torch.Generator().manual_seed(0)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    weights = torch.rand(2, 6, 6, generator=g, dtype=F64).masked_fill(~allowed, 0)
    values = torch.randn(2, 6, 3, generator=g, dtype=F64)
    if bad is not None:
        values[0, 4, 1] = bad
    got, want = masked_weighted_sum(weights, values, allowed), sum_over_allowed(weights, values, allowed)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    finite = torch.isfinite(want)
    assert torch.allclose(got[finite], want[finite], rtol=0, atol=1e-14)
    if bad is not None:  # rows 4, 5 read key 4 in column 1; nothing else is touched
        assert (~torch.isfinite(got)).nonzero().tolist() == [[0, 4, 1], [0, 5, 1]]


def qkv(length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, length, 2, 4, generator=g, dtype=F64) for _ in range(3)]


def test_causal_linear_attention_keeps_the_past_finite():
    q, k, v = qkv(20)
    phi_q, phi_k = q.exp(), k.exp()
    clean = linear_attention(phi_q, phi_k, v, causal=True, chunk_size=8)
    v[0, 13, 1, 2] = float("nan")
    out = linear_attention(phi_q, phi_k, v, causal=True, chunk_size=8)
    assert torch.equal(out[:, :13], clean[:, :13])
    assert torch.isnan(out[0, 13:, 1, 2]).all()


def test_block_sparse_nonfinite_value_reaches_only_blocks_that_read_it():
    """BigBird, not causal: a NaN in key block 5 reaches exactly the query blocks whose pattern
    reads block 5 (window and random entries), and only the value column it sits in."""
    block, n = 4, 8
    q, k, v = qkv(block * n)
    blocks, valid = bigbird_block_pattern(n, window=3, global_blocks=0, random_blocks=1, seed=1)
    v[0, 5 * block + 2, 0, 1] = float("nan")
    out = block_sparse_attention(q, k, v, blocks, valid, block)
    reads_block_5 = block_mask(blocks, valid, n)[:, 5]
    nan_rows = torch.isnan(out[0, :, 0, 1]).view(n, block)
    assert torch.equal(nan_rows, reads_block_5[:, None].expand(n, block))
    assert torch.isfinite(out[..., 1, :]).all() and torch.isfinite(out[..., 0, [0, 2, 3]]).all()


def test_reads_any_counts_each_window():
    flags = torch.zeros(2, 10, dtype=torch.bool)
    flags[0, 4] = True
    got = reads_any(flags, before=2, after=1, dim=1)
    want = torch.tensor([[t - 2 <= 4 <= t + 1 for t in range(10)], [False] * 10])
    assert torch.equal(got, want)


@pytest.mark.parametrize("causal,window", [(True, None), (True, 5), (False, None), (False, 4)])
@pytest.mark.parametrize("where", ["k", "v"])
def test_softmax_attention_keeps_nonfinite_to_its_readers(causal, window, where):
    """Against the literal formula: scores masked to -inf, softmax, and a weighted sum over the
    allowed keys only; the fused kernel alone would also spread the NaN to earlier queries."""
    q, k, v = qkv(24, seed=2)
    (k if where == "k" else v)[0, 13, 1, 2] = float("nan")

    def attend(q, k, v):
        return attention_with_lse(q, k, v, causal=causal, window=window)[0]

    got = attend_with_nonfinite_kept_local(attend, q, k, v, causal, window)
    pos = torch.arange(24)
    allowed = (pos[None, :] <= pos[:, None]) if causal else torch.ones(24, 24, dtype=torch.bool)
    if window is not None:
        allowed &= (pos[:, None] - pos[None, :]).abs() < window
    scores = torch.einsum("blhd,bshd->bhls", q, k) * 4 ** -0.5
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    want = masked_weighted_sum(weights, v.transpose(1, 2), allowed).transpose(1, 2)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    assert not torch.isfinite(want).all() and torch.isfinite(want[0, :13]).all() == causal
    finite = torch.isfinite(want)
    assert torch.allclose(got[finite], want[finite], rtol=0, atol=1e-12)
