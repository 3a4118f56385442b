"""FNet against numpy.fft, the DFT (Vandermonde) matrix, and the [Re F_s, Im F_s] decomposition."""
import numpy as np
import pytest
import torch

from longmix import mixers
from longmix.ops.dft import dft_matrix

LENGTHS = (1, 7, 33, 64)


def x_of(length, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, length, dim, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 7, 16, 33])
def test_dft_matrix_is_numpy_fft_of_identity(n):
    expected = np.fft.fft(np.eye(n), axis=0)
    assert np.abs(dft_matrix(n).numpy() - expected).max() < 1e-12


def test_dft_matrix_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must be"):
        dft_matrix(0)
    with pytest.raises(ValueError, match="dtype must be complex"):
        dft_matrix(4, dtype=torch.float64)


@pytest.mark.parametrize("length", LENGTHS)
def test_fnet_is_real_part_of_numpy_fft2(length):
    mixer = mixers.build("fnet", 8, heads=2)
    x = x_of(length)
    expected = np.fft.fft(np.fft.fft(x.numpy(), axis=-1), axis=-2).real  # hidden, then sequence
    assert np.abs(mixer(x).numpy() - expected).max() < 1e-10 * np.abs(expected).max()
    assert np.abs(mixer.reference(x).numpy() - expected).max() < 1e-10 * np.abs(expected).max()


@pytest.mark.parametrize("length", LENGTHS)
def test_fnet_mixing_matrix_decomposition_reproduces_forward(length):
    """y = Re(F_s) X Re(F_h) - Im(F_s) X Im(F_h), with groups [Re F_s, Im F_s]."""
    mixer = mixers.build("fnet", 8, heads=2)
    x = x_of(length)
    m = mixer.mixing_matrix(x)
    assert m.shape == (2, 2, length, length)
    f_h = torch.from_numpy(np.fft.fft(np.eye(8), axis=0))
    y = m[:, 0] @ x @ f_h.real - m[:, 1] @ x @ f_h.imag
    assert torch.allclose(y, mixer(x), rtol=0, atol=1e-10 * y.abs().max().item())


def test_fnet_is_fixed_and_parameter_free():
    mixer = mixers.build("fnet", 8, heads=2)
    assert list(mixer.parameters()) == []
    assert torch.equal(mixer.mixing_matrix(x_of(9, seed=1)), mixer.mixing_matrix(x_of(9, seed=2)))
