"""The blocked log-Vandermonde product against the literal Vandermonde matrix."""
import pytest
import torch

from longmix.ops.vandermonde import log_vandermonde, vandermonde_matrix

F64 = torch.float64


def poles(n=6, seed=0, decay=1.0):
    g = torch.Generator().manual_seed(seed)
    real = -decay * (0.5 + 0.5 * torch.rand(n, generator=g, dtype=F64))
    imag = 10 * torch.randn(n, generator=g, dtype=F64)
    v = torch.complex(torch.randn(3, n, generator=g, dtype=F64), torch.randn(3, n, generator=g, dtype=F64))
    return v, torch.complex(real, imag)


def test_vandermonde_matrix_is_powers():
    z = torch.tensor([0.5 + 0.5j, -1.0 + 0.0j, 2.0j], dtype=torch.complex128)
    V = vandermonde_matrix(z, 5)
    for l in range(5):
        assert torch.allclose(V[:, l], z ** l, rtol=1e-14, atol=0)


@pytest.mark.parametrize("length,block", [(1, None), (7, None), (33, None), (64, None), (33, 5), (10, 32)])
def test_blocked_product_matches_the_literal_matrix(length, block):
    v, x = poles()
    k = log_vandermonde(v, x, length, block=block)
    want = 2 * torch.einsum("cn,nl->cl", v, vandermonde_matrix(x.exp(), length)).real
    assert k.shape == (3, length)
    assert ((k - want).norm() / want.norm()).item() < 1e-12


def test_long_kernel_matches_the_literal_matrix():
    v, x = poles(decay=0.01)
    k = log_vandermonde(v, x, 2 ** 14)
    want = 2 * torch.einsum("cn,nl->cl", v, vandermonde_matrix(x.exp(), 2 ** 14)).real
    assert ((k - want).norm() / want.norm()).item() < 1e-10


def test_long_kernel_with_strong_decay_underflows_to_zero_not_overflow():
    v, x = poles(decay=200.0)  # |z| <= exp(-100): z^l is below float32's range (~exp(-103)) from l = 2 on
    k = log_vandermonde(v.to(torch.complex64), x.to(torch.complex64), 2 ** 14)
    assert torch.isfinite(k).all()
    assert k[:, 0].abs().min() > 0 and k[:, 2:].abs().max() == 0


def test_bad_arguments():
    v, x = poles()
    with pytest.raises(ValueError, match="complex"):
        log_vandermonde(v.real, x, 4)
    with pytest.raises(ValueError, match="state"):
        log_vandermonde(v[:, :2], x, 4)
    with pytest.raises(ValueError, match="length"):
        log_vandermonde(v, x, 0)
    with pytest.raises(ValueError, match="block"):
        log_vandermonde(v, x, 4, block=0)


@pytest.mark.parametrize("length", [1, 5, 16, 37])
def test_transposed_product_is_the_state_from_zero(length):
    """sum_l u_l z^(L-1-l) against the recurrence h = z h + u run from h = 0."""
    from longmix.ops.vandermonde import log_vandermonde_transpose

    _, x = poles(decay=0.1)
    u = torch.randn(2, 3, length, dtype=F64, generator=torch.Generator().manual_seed(1))
    h = torch.zeros(2, 3, x.shape[0], dtype=x.dtype)
    for t in range(length):
        h = x.exp() * h + u[..., t, None]
    torch.testing.assert_close(log_vandermonde_transpose(u, x),
                               h, rtol=1e-12, atol=1e-12)
