"""FFT convolution against direct convolution (numpy), causal and two-sided, and its Toeplitz matrix."""
import numpy as np
import pytest
import torch

from longmix.ops.fftconv import fft_conv, next_fast_len, toeplitz_matrix

CHANNELS = 3


def direct_conv(u, kernel, causal):
    """y[:, t, c] = sum_s k[lag(t - s), c] u[:, s, c] by numpy's full linear convolution."""
    u, kernel = u.numpy(), kernel.numpy()
    length, n_lags = u.shape[1], kernel.shape[0]
    start = 0 if causal else (n_lags - 1) // 2  # lag 0 position in the full convolution
    out = np.empty_like(u)
    for b in range(u.shape[0]):
        for c in range(u.shape[2]):
            out[b, :, c] = np.convolve(u[b, :, c], kernel[:, c])[start:start + length]
    return torch.from_numpy(out)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [1, 2, 7, 33, 64])
@pytest.mark.parametrize("reach", ["short", "full", "long"])
def test_fft_conv_matches_direct_convolution(causal, length, reach):
    g = torch.Generator().manual_seed(length)
    k = {"short": 3, "full": length, "long": length + 5}[reach]  # kernel reach K (lags 0..K-1)
    n_lags = k if causal else 2 * k - 1
    u = torch.randn(2, length, CHANNELS, generator=g, dtype=torch.float64)
    kernel = torch.randn(n_lags, CHANNELS, generator=g, dtype=torch.float64)
    expected = direct_conv(u, kernel, causal)
    assert fft_conv(u, kernel, causal=causal).shape == u.shape
    assert rel_err(fft_conv(u, kernel, causal=causal), expected) < 1e-12
    t = toeplitz_matrix(kernel, length, causal=causal)
    assert rel_err(torch.einsum("cts,bsc->btc", t, u), expected) < 1e-12


def test_causal_toeplitz_is_lower_triangular_with_constant_diagonals():
    kernel = torch.arange(1.0, 6.0)[:, None]  # lags 0..4 = 1..5
    t = toeplitz_matrix(kernel, 5, causal=True)[0]
    for lag in range(-4, 5):
        diag = torch.diagonal(t, offset=-lag)
        assert (diag == (kernel[lag, 0] if lag >= 0 else 0)).all()


def test_two_sided_kernel_centre_is_lag_zero():
    kernel = torch.zeros(5, 1)  # lags -2..2
    kernel[2 + 1] = 1.0  # lag +1: y[t] = u[t - 1]
    u = torch.arange(1.0, 7.0)[None, :, None]
    expected = torch.tensor([0.0, 1, 2, 3, 4, 5])
    assert torch.allclose(fft_conv(u, kernel, causal=False)[0, :, 0], expected, atol=1e-5)


def test_next_fast_len_is_smallest_5_smooth():
    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 400):
        assert next_fast_len(n) == next(m for m in range(n, 2 * n + 1) if smooth(m))


def test_bad_kernels_are_named():
    u = torch.randn(1, 8, 2)
    with pytest.raises(ValueError, match="odd number of lags"):
        fft_conv(u, torch.randn(4, 2), causal=False)
    with pytest.raises(ValueError, match="channels"):
        fft_conv(u, torch.randn(3, 5), causal=True)
    with pytest.raises(ValueError, match="kernel must have shape"):
        fft_conv(u, torch.randn(3), causal=True)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("reach", [4, 40])  # a banded kernel, and one covering every lag
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_input_reaches_exactly_the_outputs_that_read_it(causal, reach, bad):
    """A bare FFT spreads a NaN over every output of its channel; fft_conv must leave non-finite
    exactly the outputs a direct sum leaves non-finite (for a causal kernel: none before it)."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, 40, CHANNELS, generator=g, dtype=torch.float64)
    kernel = torch.rand(reach if causal else 2 * reach - 1, CHANNELS, generator=g, dtype=torch.float64) + 0.1
    u[0, 17, 1] = bad
    u[1, 3, 2] = bad
    got, want = fft_conv(u, kernel, causal=causal), direct_conv(u, kernel, causal)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    assert not torch.isfinite(want).all()
    finite = torch.isfinite(want)
    assert torch.allclose(got[finite], want[finite], rtol=0, atol=1e-12)
