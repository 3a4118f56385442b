"""Mamba-2's SSD: the chunked algorithm against the sequential recurrence and the materialized
1-semiseparable matrix, in float64, with initial and final states and gradients."""
import pytest
import torch

from longmix.ops.ssd import ssd, ssd_matrix, ssd_sequential

F64 = torch.float64
HEADS, GROUPS, P, N = 4, 2, 3, 5


def inputs(length, batch=2, seed=0, decay=3.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    x = r(batch, length, HEADS, P)
    dt = torch.rand(batch, length, HEADS, generator=g, dtype=F64)
    A = -decay * torch.rand(HEADS, generator=g, dtype=F64)
    return x, dt, A, r(batch, length, GROUPS, N), r(batch, length, GROUPS, N), r(batch, HEADS, P, N)


def assert_close(a, b, tol=1e-10):
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()
    assert err < tol, f"relative error {err:.3g} >= {tol:g}"


# chunk sizes that divide L and that do not, and one longer than L
CASES = [(1, 1), (1, 8), (7, 7), (7, 3), (64, 16), (64, 24), (257, 64), (257, 257), (257, 300)]


@pytest.mark.parametrize("length,chunk_size", CASES)
def test_chunked_equals_recurrence_with_states(length, chunk_size):
    x, dt, A, B, C, h0 = inputs(length)
    y, h = ssd(x, dt, A, B, C, chunk_size=chunk_size, initial_state=h0, return_final_state=True)
    y_ref, h_ref = ssd_sequential(x, dt, A, B, C, initial_state=h0, return_final_state=True)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@pytest.mark.parametrize("length", [1, 7, 64])
def test_chunked_equals_materialized_matrix(length):
    x, dt, A, B, C, _ = inputs(length)
    M = ssd_matrix(dt, A, B, C)
    upper = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
    assert M[..., upper].abs().max() == 0 if length > 1 else True
    assert_close(ssd(x, dt, A, B, C, chunk_size=5), torch.einsum("bhts,bshp->bthp", M, x))


@pytest.mark.parametrize("length,chunk_size", [(7, 3), (64, 16), (65, 16)])
def test_gradients_match_autograd_through_the_recurrence(length, chunk_size):
    args = [t.requires_grad_() for t in inputs(length)]
    g = torch.Generator().manual_seed(5)
    dy, dh = torch.randn(2, length, HEADS, P, generator=g, dtype=F64), torch.randn(2, HEADS, P, N, generator=g, dtype=F64)

    def grads(fn, **kw):
        y, h = fn(*args[:5], initial_state=args[5], return_final_state=True, **kw)
        return torch.autograd.grad((y * dy).sum() + (h * dh).sum(), args)

    for got, want in zip(grads(ssd, chunk_size=chunk_size), grads(ssd_sequential)):
        assert_close(got, want)


def test_strong_decay_over_a_long_sequence_stays_finite():
    # exp(-50 * 4096) underflows as a global cumulative product; segment sums within chunks do not
    x, dt, A, B, C, _ = inputs(4096, batch=1, decay=50.0)
    y = ssd(x, dt, A, B, C, chunk_size=64)
    assert torch.isfinite(y).all()
    assert_close(y, ssd_sequential(x, dt, A, B, C))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_input_reaches_only_later_positions(bad):
    x, dt, A, B, C, _ = inputs(40)
    clean = ssd(x, dt, A, B, C, chunk_size=16)
    x[0, 21, 1, 0] = bad
    y = ssd(x, dt, A, B, C, chunk_size=16)
    assert torch.equal(y[:, :21], clean[:, :21]) and torch.equal(y[1], clean[1])
    assert torch.equal(y[0, :, [0, 2, 3]], clean[0, :, [0, 2, 3]])  # the other heads
    assert torch.isnan(y[0, 21:, 1]).all()


def test_bad_shapes_are_named():
    x, dt, A, B, C, h0 = inputs(7)
    with pytest.raises(ValueError, match="dt must be"):
        ssd(x, dt[:, :3], A, B, C)
    with pytest.raises(ValueError, match="groups dividing heads"):
        ssd(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1))
    with pytest.raises(ValueError, match="initial_state must be"):
        ssd(x, dt, A, B, C, initial_state=h0[:, :1])
    with pytest.raises(ValueError, match="chunk_size"):
        ssd(x, dt, A, B, C, chunk_size=0)
