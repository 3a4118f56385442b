"""linformer and nystrom: limits where they equal softmax attention, ranks, the iterative pinv."""
import math

import pytest
import torch

from longmix import mixers
from longmix.mixers.lowrank import segment_mean_matrix, segment_means
from longmix.ops.pinv import iterative_pinv, iterative_pinv_solve

DIM, HEADS = 8, 2


def make(name, seed=0, **options):
    torch.manual_seed(seed)
    return mixers.build(name, DIM, heads=HEADS, **options).double()


def x_of(length, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, length, DIM, generator=g, dtype=torch.float64)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def softmax_attention(mixer, x):
    """Full softmax attention with the mixer's own q/k/v/out projections, written out per head."""
    b, length, _ = x.shape
    q, k, v = mixer.to_qkv(x).view(b, length, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (DIM // HEADS) ** 0.5, dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(b, length, DIM)
    return mixer.to_out(y)


@pytest.mark.parametrize("length", [1, 5, 16])
def test_nystrom_is_softmax_attention_when_every_token_is_a_landmark(length):
    mixer = make("nystrom", landmarks=16)
    x = x_of(length)
    with torch.no_grad():
        expected = softmax_attention(mixer, x)
        assert rel_err(mixer(x), expected) < 1e-8
        assert rel_err(mixer.reference(x), expected) < 1e-8


@pytest.mark.parametrize("length,segments", [(7, 7), (33, 16), (10, 3), (64, 16)])
def test_segment_means_handle_any_length(length, segments):
    x = x_of(length)
    means = segment_means(x, segments)
    assert means.shape == (2, segments, DIM)
    s = segment_mean_matrix(length, segments, dtype=x.dtype)
    assert torch.allclose(s @ x, means, atol=1e-14, rtol=0)
    assert torch.allclose(s.sum(-1), torch.ones(segments, dtype=x.dtype))
    sizes = (s > 0).sum(-1)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == length


@pytest.mark.parametrize("name,option,rank", [("nystrom", "landmarks", 6), ("linformer", "proj_len", 5)])
def test_mixing_matrix_rank_is_bounded(name, option, rank):
    mixer = make(name, max_len=40, **{option: rank})
    with torch.no_grad():
        m = mixer.mixing_matrix(x_of(40))
    assert m.shape == (2, HEADS, 40, 40)
    assert (torch.linalg.matrix_rank(m) <= rank).all()


def test_linformer_with_identity_projections_is_softmax_attention():
    length = 12
    mixer = make("linformer", max_len=length, proj_len=length)
    with torch.no_grad():
        mixer.E.copy_(torch.eye(length))
        mixer.F.copy_(torch.eye(length))
        x = x_of(length)
        assert rel_err(mixer(x), softmax_attention(mixer, x)) < 1e-12


def test_linformer_uses_first_columns_for_short_inputs():
    """For L < max_len, E and F are cropped: zero-padding x to max_len must not change P F V."""
    mixer = make("linformer", max_len=20, proj_len=4)
    x = x_of(9)
    with torch.no_grad():
        short = mixer.mixing_matrix(x)
        # columns of E/F beyond L never touch the result
        mixer.E[:, 9:] = 123.0
        mixer.F[:, 9:] = -7.0
        assert torch.equal(mixer.mixing_matrix(x), short)


def ill_conditioned(m, cond, seed=0):
    """U diag(s) V^T with random orthogonal U, V and singular values from 1 down to 1/cond."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(cond), m, dtype=torch.float64)
    return u @ torch.diag(s) @ v.T


@pytest.mark.parametrize("cond", [1e1, 1e4, 1e8])
def test_iterative_pinv_converges_to_pinv(cond):
    a = ill_conditioned(12, cond)
    exact = torch.linalg.pinv(a)
    assert rel_err(iterative_pinv(a, 50), exact) < 1e-15 * cond * 100
    b = torch.randn(12, 3, dtype=torch.float64)
    assert rel_err(iterative_pinv_solve(a, b, 50, refine=1), exact @ b) < 1e-15 * cond * 100


def test_iterative_pinv_of_singular_matrix_is_moore_penrose():
    a = ill_conditioned(10, 1e2)
    a[:, 3] = a[:, 7]  # rank 9
    a[4] = 0.5 * a[1] + a[2]  # rank 8
    assert rel_err(iterative_pinv(a, 60), torch.linalg.pinv(a)) < 1e-10


def test_paper_iterations_suffice_for_well_conditioned_matrices():
    a = ill_conditioned(8, 3.0)
    assert rel_err(iterative_pinv(a, 6), torch.linalg.inv(a)) < 1e-10


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="landmarks"):
        mixers.build("nystrom", DIM, landmarks=0)
    with pytest.raises(ValueError, match="proj_len"):
        mixers.build("linformer", DIM, max_len=8, proj_len=0)
    with pytest.raises(ValueError, match="iters"):
        iterative_pinv(torch.eye(3), -1)
    with pytest.raises(ValueError, match="square"):
        iterative_pinv(torch.ones(2, 3))
