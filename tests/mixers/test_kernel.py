"""kernel family: chunked prefix sums, feature maps, and FAVOR+ approaching softmax attention."""
import math

import pytest
import torch
import torch.nn.functional as F

from longmix import mixers
from longmix.ops import linear_attention as la
from longmix.ops.feature_maps import orthogonal_gaussian_projection, positive_random_features

F64 = torch.float64


def positive(*shape, seed):
    return torch.rand(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed)) + 0.01


def full_prefix_sum_form(phi_q, phi_k, v):
    """S_t = sum_{s<=t} phi(k_s) v_s^T materialized for every t: the (L, features, head_dim) form."""
    states = torch.cumsum(torch.einsum("blhf,blhd->blhfd", phi_k, v), dim=1)
    ksums = torch.cumsum(phi_k, dim=1)
    num = torch.einsum("blhf,blhfd->blhd", phi_q, states)
    return num / torch.einsum("blhf,blhf->blh", phi_q, ksums)[..., None]


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 11, 33, 100])  # 11 and 33 divide L = 33; 4 and 7 do not
def test_causal_chunks_equal_full_prefix_sums(chunk_size):
    phi_q, phi_k = positive(2, 33, 3, 5, seed=1), positive(2, 33, 3, 5, seed=2)
    v = torch.randn(2, 33, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    out = la.linear_attention(phi_q, phi_k, v, causal=True, chunk_size=chunk_size)
    torch.testing.assert_close(out, full_prefix_sum_form(phi_q, phi_k, v), rtol=1e-12, atol=1e-12)


def test_causal_chunk_groups_carry_the_state(monkeypatch):
    # A tiny step budget forces one chunk per step: the state must carry across steps.
    monkeypatch.setattr(la, "_ELEMENTS_PER_STEP", 1)
    phi_q, phi_k = positive(1, 50, 2, 3, seed=4), positive(1, 50, 2, 3, seed=5)
    v = torch.randn(1, 50, 2, 6, dtype=F64)
    out = la.linear_attention(phi_q, phi_k, v, causal=True, chunk_size=8)
    torch.testing.assert_close(out, full_prefix_sum_form(phi_q, phi_k, v), rtol=1e-12, atol=1e-12)


def test_noncausal_equals_global_sums():
    phi_q, phi_k = positive(2, 17, 2, 5, seed=6), positive(2, 17, 2, 5, seed=7)
    v = torch.randn(2, 17, 2, 3, dtype=F64)
    weights = torch.einsum("bthf,bshf->bhts", phi_q, phi_k)
    expected = torch.einsum("bhts,bshd->bthd", weights / weights.sum(-1, keepdim=True), v)
    torch.testing.assert_close(la.linear_attention(phi_q, phi_k, v), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_all_underflowed_weights_give_zeros_not_nan(causal):
    phi_q, phi_k = positive(1, 9, 1, 4, seed=8), torch.zeros(1, 9, 1, 4, dtype=F64)
    out = la.linear_attention(phi_q, phi_k, torch.randn(1, 9, 1, 2, dtype=F64), causal=causal, chunk_size=4)
    assert torch.equal(out, torch.zeros_like(out))


def test_bad_chunk_size_is_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        mixers.build("linear", 8, heads=2, causal=True, chunk_size=0)


def test_linear_mixing_matrix_is_normalized_elu_kernel():
    torch.manual_seed(0)
    mixer = mixers.build("linear", 8, heads=2, causal=True).double()
    x = torch.randn(2, 10, 8, dtype=F64)
    q, k, _ = mixer.to_qkv(x).chunk(3, dim=-1)
    q, k = (F.elu(t.unflatten(-1, (2, 4)).transpose(1, 2)) + 1 for t in (q, k))  # (b, h, L, d)
    weights = (q @ k.transpose(-1, -2)).tril()
    torch.testing.assert_close(mixer.mixing_matrix(x), weights / weights.sum(-1, keepdim=True))


def test_orthogonal_projection_rows_are_orthogonal_within_blocks():
    w = orthogonal_gaussian_projection(10, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert w.shape == (10, 4)
    for block in (w[0:4], w[4:8]):
        gram = block @ block.T
        torch.testing.assert_close(gram - torch.diag(torch.diag(gram)), torch.zeros(4, 4, dtype=F64),
                                   rtol=0, atol=1e-12)


def test_row_stabilizer_cancels_in_the_normalized_weights():
    w = orthogonal_gaussian_projection(32, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    x, y = torch.randn(6, 4, dtype=F64), torch.randn(9, 4, dtype=F64)
    keys = positive_random_features(y, w)

    def normalized(phi_q):
        a = phi_q @ keys.T
        return a / a.sum(-1, keepdim=True)

    torch.testing.assert_close(normalized(positive_random_features(x, w, stabilize_rows=True)),
                               normalized(positive_random_features(x, w)))


def test_performer_approaches_softmax_attention_as_features_grow():
    """FAVOR+ is an unbiased estimator of exp(q.k/sqrt(d)); its error shrinks like 1/sqrt(m)."""
    torch.manual_seed(0)
    exact = mixers.build("softmax", 16, heads=2).double()
    x = 0.5 * torch.randn(2, 24, 16, dtype=F64, generator=torch.Generator().manual_seed(1))
    target = exact.mixing_matrix(x)
    errors = {}
    for features in (8, 128, 2048):
        torch.manual_seed(1)
        performer = mixers.build("performer", 16, heads=2, features=features).double()
        performer.load_state_dict(exact.state_dict(), strict=False)  # same q/k/v/out projections
        approx = performer.mixing_matrix(x)
        errors[features] = ((approx - target).norm() / target.norm()).item()
    # 16x the features: the error should drop by about 4x; ask for 2x to stay robust to the draw.
    assert errors[128] < errors[8] / 2 and errors[2048] < errors[128] / 2, errors
    assert errors[2048] < 0.05, errors


def test_performer_features_are_fixed_at_init():
    torch.manual_seed(0)
    mixer = mixers.build("performer", 8, heads=2, causal=True)
    x = torch.randn(1, 20, 8)
    assert torch.equal(mixer(x), mixer(x))
    assert "projection" in mixer.state_dict()
    assert mixer.projection.shape == (mixer.features, 4)
    assert math.ceil(4 * math.log(4)) <= mixer.features


@pytest.mark.parametrize("cut", [1, 5, 12])
def test_causal_continuation_from_initial_state(cut):
    """Two calls chained through (initial_state, final state) equal one call over the whole."""
    phi_q, phi_k = positive(2, 13, 2, 3, seed=0), positive(2, 13, 2, 3, seed=1)
    v = torch.randn(2, 13, 2, 4, dtype=F64)
    whole, final = la.linear_attention(phi_q, phi_k, v, causal=True, chunk_size=4, return_final_state=True)
    first, state = la.linear_attention(phi_q[:, :cut], phi_k[:, :cut], v[:, :cut], causal=True, chunk_size=4,
                                       return_final_state=True)
    second, end = la.linear_attention(phi_q[:, cut:], phi_k[:, cut:], v[:, cut:], causal=True, chunk_size=4,
                                      initial_state=state, return_final_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(end, final):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="need causal=True"):
        la.linear_attention(phi_q, phi_k, v, initial_state=state)
