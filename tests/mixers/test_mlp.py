"""mlpmixer: cropping for short inputs, channel sharing, no mixing matrix."""
import pytest
import torch
import torch.nn.functional as F

from longmix import mixers

DIM, MAX_LEN = 8, 16


def make(seed=0, **options):
    torch.manual_seed(seed)
    return mixers.build("mlpmixer", DIM, heads=2, max_len=MAX_LEN, **options).double()


def x_of(length, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, length, DIM, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("length", [1, 5, MAX_LEN])
def test_short_input_is_zero_padded_full_mlp_cropped(length):
    """Using the first L rows/cols of the weights == running the max_len MLP on x padded with 0."""
    mixer = make()
    x = x_of(length)
    padded = F.pad(x, (0, 0, 0, MAX_LEN - length))  # zeros after the sequence
    with torch.no_grad():
        full = mixer.fc2(F.gelu(mixer.fc1(padded.mT))).mT  # nn.Linear over the length axis
        assert torch.allclose(mixer(x), full[:, :length], rtol=0, atol=1e-12)


def test_the_same_mlp_mixes_every_channel():
    mixer = make()
    x = x_of(9)
    x[..., 3] = x[..., 5]
    with torch.no_grad():
        y = mixer(x)
    assert torch.equal(y[..., 3], y[..., 5])


def test_no_mixing_matrix_because_nonlinear():
    with pytest.raises(NotImplementedError, match="nonlinear"):
        make().mixing_matrix(x_of(4))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="hidden"):
        make(hidden=0)
    with pytest.raises(ValueError, match="causal"):
        mixers.build("mlpmixer", DIM, causal=True, max_len=MAX_LEN)
