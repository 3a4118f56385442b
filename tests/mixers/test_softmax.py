"""softmax attention: window semantics against an explicit mask and an independent SDPA reference."""
import pytest
import torch
import torch.nn.functional as F

from longmix import mixers

DIM, HEADS = 8, 2


def make(causal, window=None, seed=0):
    torch.manual_seed(seed)
    return mixers.build("softmax", DIM, heads=HEADS, causal=causal, window=window).double()


def explicit_mask(length, window, causal):
    """Written out entry by entry from the docstring's rule."""
    keep = torch.zeros(length, length, dtype=torch.bool)
    for t in range(length):
        for s in range(length):
            inside = window is None or (t - window < s <= t if causal else abs(t - s) < window)
            keep[t, s] = inside and (s <= t or not causal)
    return keep


def sdpa_output(mixer, x, mask):
    """Independent of the mixer's own paths: q/k/v from its weights, torch's SDPA with a bool mask."""
    q, k, v = mixer.to_qkv(x).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (HEADS, DIM // HEADS)).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return mixer.to_out(out.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,length", [(None, 33), (1, 9), (5, 33), (5, 4), (40, 33)])
def test_window_matches_explicit_mask(causal, window, length):
    mixer = make(causal, window)
    x = torch.randn(2, length, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = explicit_mask(length, window, causal)
    with torch.no_grad():
        expected = sdpa_output(mixer, x, mask)
        fast, literal, matrix = mixer(x), mixer.reference(x), mixer.mixing_matrix(x)
    torch.testing.assert_close(fast, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(literal, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(matrix > 0, mask.expand_as(matrix)), "support of A must be exactly the window"
    torch.testing.assert_close(matrix.sum(-1), torch.ones(2, HEADS, length, dtype=torch.float64))


def test_window_one_causal_is_identity_mixing():
    mixer = make(causal=True, window=1)
    x = torch.randn(1, 12, DIM, dtype=torch.float64)
    with torch.no_grad():
        matrix = mixer.mixing_matrix(x)
    torch.testing.assert_close(matrix, torch.eye(12, dtype=torch.float64).expand_as(matrix))


def test_float32_fast_path_close_to_float64_reference():
    torch.manual_seed(0)
    mixer = mixers.build("softmax", 32, heads=4, causal=True, window=16)
    x = torch.randn(2, 100, 32)
    with torch.no_grad():
        fast = mixer(x).double()
        literal = mixer.double().reference(x.double())
    assert ((fast - literal).norm() / literal.norm()).item() < 1e-5


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_bad_window_is_rejected(window):
    with pytest.raises(ValueError, match="window"):
        mixers.build("softmax", DIM, heads=HEADS, window=window)
