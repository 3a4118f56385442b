"""The chunked selective scan against the sequential recurrence and the materialized matrix."""
import pytest
import torch

from longmix.ops.scan import segsum, selective_scan, selective_scan_matrix, selective_scan_sequential

F64 = torch.float64


def inputs(batch=2, length=33, channels=5, d_state=3, seed=0, dtype=F64, decay=3.0, dt=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u = r(batch, length, channels)
    delta = dt * torch.rand(batch, length, channels, generator=g, dtype=dtype)
    A = -decay * torch.rand(channels, d_state, generator=g, dtype=dtype)
    return u, delta, A, r(batch, length, d_state), r(batch, length, d_state), r(channels)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("length,chunk_size,block_chunks", [
    (1, 1, 1), (1, 8, 64),        # a single position
    (33, 1, 1), (33, 4, 2),       # chunks that do not divide L, several blocks
    (33, 11, 1), (64, 8, 2),      # chunks that divide L
    (64, 100, 4), (50, 7, 3),     # a chunk longer than L; ragged last block
])
def test_chunked_scan_matches_sequential(length, chunk_size, block_chunks):
    u, delta, A, B, C, D = inputs(length=length)
    y_ref, h_ref = selective_scan_sequential(u, delta, A, B, C, D, return_state=True)
    y, h = selective_scan(u, delta, A, B, C, D, chunk_size=chunk_size, block_chunks=block_chunks,
                          return_state=True)
    assert y.shape == u.shape
    assert rel_err(y, y_ref) < 1e-12
    assert rel_err(h, h_ref) < 1e-12


def test_initial_state_continues_a_split_sequence():
    u, delta, A, B, C, D = inputs(length=40)
    whole = selective_scan(u, delta, A, B, C, D, chunk_size=6)
    first, h = selective_scan(u[:, :17], delta[:, :17], A, B[:, :17], C[:, :17], D,
                              chunk_size=6, return_state=True)
    second = selective_scan(u[:, 17:], delta[:, 17:], A, B[:, 17:], C[:, 17:], D,
                            chunk_size=6, initial_state=h)
    assert rel_err(torch.cat([first, second], 1), whole) < 1e-12


@pytest.mark.parametrize("length", [1, 7, 33])
def test_matrix_form_matches_sequential(length):
    u, delta, A, B, C, D = inputs(length=length)
    M = selective_scan_matrix(delta, A, B, C)
    assert M.shape == (2, 5, length, length)
    assert (M.triu(1) == 0).all()
    y = torch.einsum("bdts,bsd->btd", M, u) + u * D
    assert rel_err(y, selective_scan_sequential(u, delta, A, B, C, D)) < 1e-12


def test_segsum_is_the_sum_over_each_segment():
    x = torch.randn(3, 9, dtype=F64)
    S = segsum(x)
    for t in range(9):
        for s in range(9):
            want = x[:, s + 1:t + 1].sum(-1) if s <= t else torch.full((3,), float("-inf"), dtype=F64)
            assert torch.equal(S[:, t, s], want) or torch.allclose(S[:, t, s], want, rtol=0, atol=1e-14)


def test_gradients_match_sequential():
    tensors = [t.requires_grad_() for t in inputs(length=19)]
    grads = []
    for fn in (lambda *a: selective_scan(*a, chunk_size=4, block_chunks=2), selective_scan_sequential):
        out = fn(*tensors)
        grads.append(torch.autograd.grad(out.square().sum(), tensors))
    for g_chunked, g_seq in zip(*grads):
        assert rel_err(g_chunked, g_seq) < 1e-10


def test_long_strongly_decaying_sequence_is_stable():
    """2^14 steps with |delta A| up to 50 per step: the cumulative log-decay reaches ~ -4e5, so
    a global prefix-product formulation (exp(-cumsum) ratios) overflows even in float64; the
    chunked scan only exponentiates non-positive chunk-relative sums."""
    length = 2 ** 14
    u, delta, A, B, C, D = inputs(batch=1, length=length, channels=3, d_state=2, decay=50.0)
    assert torch.isinf(torch.exp(-(delta[..., None] * A).cumsum(1))).any()  # the naive way fails
    y_ref = selective_scan_sequential(u, delta, A, B, C, D)
    y32 = selective_scan(*(t.float() for t in (u, delta, A, B, C, D)))
    assert torch.isfinite(y32).all()
    assert rel_err(y32.double(), y_ref) < 1e-5
    assert rel_err(selective_scan(u, delta, A, B, C, D, chunk_size=64), y_ref) < 1e-12


def test_bad_shapes_name_the_argument():
    u, delta, A, B, C, D = inputs(length=8)
    with pytest.raises(ValueError, match="u must be"):
        selective_scan(u[0], delta, A, B, C)
    with pytest.raises(ValueError, match="delta"):
        selective_scan(u, delta[:, :4], A, B, C)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:2], B, C)
    with pytest.raises(ValueError, match="C must be"):
        selective_scan(u, delta, A, B, C[..., :1])
    with pytest.raises(ValueError, match="D must be"):
        selective_scan(u, delta, A, B, C, D[:1])
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(u, delta, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(u, delta, A, B, C, initial_state=torch.zeros(1, 1, 1, dtype=F64))
