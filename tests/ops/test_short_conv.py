"""Mamba's short depthwise conv with its own backward, against F.conv1d in float64."""
import pytest
import torch
import torch.nn.functional as F

from longmix.ops.short_conv import short_conv

F64 = torch.float64


@pytest.mark.parametrize("rows,width", [(12, 4), (4, 4), (5, 1), (7, 2)])
def test_matches_conv1d_forward_and_gradients(rows, width):
    g = torch.Generator().manual_seed(rows + width)
    window = torch.randn(2, rows, 5, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(5, width, generator=g, dtype=F64, requires_grad=True)
    bias = torch.randn(5, generator=g, dtype=F64, requires_grad=True)
    out = short_conv(window, weight, bias)
    ref = F.conv1d(window.mT, weight[:, None], bias, groups=5).mT
    assert out.shape == (2, rows - width + 1, 5)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    grad = torch.randn(out.shape, generator=g, dtype=F64)
    for mine, want in zip(torch.autograd.grad(out, (window, weight, bias), grad),
                          torch.autograd.grad(ref, (window, weight, bias), grad)):
        torch.testing.assert_close(mine, want, rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(short_conv, (window, weight, bias))


def test_a_window_of_only_the_previous_rows_gives_no_output():
    """An empty shard: width - 1 rows of context and no row of its own."""
    window = torch.randn(2, 3, 5, dtype=F64, requires_grad=True)
    out = short_conv(window, torch.randn(5, 4, dtype=F64), torch.randn(5, dtype=F64))
    assert out.shape == (2, 0, 5)
    (grad,) = torch.autograd.grad(out.sum(), window)
    assert (grad == 0).all()


def test_bad_shapes_name_what_was_expected():
    with pytest.raises(ValueError, match="window needs at least width - 1 = 3 rows"):
        short_conv(torch.zeros(1, 2, 4), torch.zeros(4, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="weight \\(channels, width\\)"):
        short_conv(torch.zeros(1, 8, 4), torch.zeros(3, 4), torch.zeros(4))
