"""longconv and hyena: Toeplitz structure, any length without max_len, the gated operator."""
import pytest
import torch

from longmix import mixers
from longmix.mixers import conv
from longmix.mixers.conv import Hyena

DIM, HEADS = 8, 2


def make(name, causal, seed=0, **options):
    torch.manual_seed(seed)
    return mixers.build(name, DIM, heads=HEADS, causal=causal, **options).double()


def x_of(length, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, length, DIM, generator=g, dtype=torch.float64)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("causal", [False, True])
def test_longconv_mixing_matrix_is_toeplitz(causal):
    length = 12
    t = make("longconv", causal).mixing_matrix(x_of(length))
    assert t.shape == (2, DIM, length, length)  # groups = channels
    for lag in range(-(length - 1), length):
        diag = torch.diagonal(t, offset=-lag, dim1=-2, dim2=-1)  # entries T[i, i - lag]
        assert torch.equal(diag, diag[..., :1].expand_as(diag)), f"lag {lag} is not constant"
        if causal and lag < 0:
            assert (diag == 0).all()
        else:
            assert diag.abs().amax() > 0, f"lag {lag} is zero: the filter should reach every lag"


@pytest.mark.parametrize("name", ["longconv", "hyena"])
@pytest.mark.parametrize("causal", [False, True])
def test_any_length_without_max_len(name, causal):
    mixer = make(name, causal)
    assert mixer.max_len is None
    x = x_of(150)
    with torch.no_grad():
        assert rel_err(mixer(x), mixer.reference(x)) < 1e-8


@pytest.mark.parametrize("name", ["longconv", "hyena"])
def test_causal_filter_does_not_depend_on_length(name):
    """The filter is a function of the absolute lag: a causal output is prefix-consistent."""
    mixer = make(name, causal=True)
    x = x_of(40)
    with torch.no_grad():
        assert torch.allclose(mixer(x[:, :17]), mixer(x)[:, :17], rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_hyena_mixing_matrix_reproduces_forward(causal):
    """forward(x) == W_out (M(x) v_proj(x)) + b_out, M = diag(x2) T diag(x1) S_v."""
    mixer = make("hyena", causal)
    x = x_of(21)
    with torch.no_grad():
        m = mixer.mixing_matrix(x)
        v_proj = mixer.in_proj(x)[..., :DIM]
        mixed = torch.einsum("bcts,bsc->btc", m, v_proj)
        assert rel_err(mixer.out_proj(mixed), mixer(x)) < 1e-10


def test_hyena_short_conv_is_causal_in_causal_mode():
    """The short depthwise conv alone must not look ahead (it pads on the left only)."""
    mixer = make("hyena", causal=True, short_kernel=5)
    u = torch.randn(1, 10, 3 * DIM, dtype=torch.float64)
    u2 = u.clone()
    u2[:, 6:] += 1.0
    with torch.no_grad():
        assert torch.equal(mixer._short_conv(u)[:, :6], mixer._short_conv(u2)[:, :6])


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="short_kernel"):
        mixers.build("hyena", DIM, short_kernel=4)
    with pytest.raises(ValueError, match="min_reach"):
        mixers.build("longconv", DIM, min_reach=100.0, max_reach=10.0)


@pytest.mark.parametrize("causal,in_checkpoint", [(True, False), (False, False), (True, True)])
def test_hyena_filter_recomputed_by_lag_chunks_is_exact(monkeypatch, causal, in_checkpoint):
    """A training step computes the implicit filter LAG_CHUNK lags at a time, recomputing each
    chunk's hidden layers in backward: the same output and gradients as all lags at once, also
    inside a checkpointed block (a checkpoint within a checkpoint)."""
    from longmix.recompute import recomputed

    torch.manual_seed(0)
    mixer = Hyena(6, causal=causal, filter_hidden=8).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)

    def run():
        mixer.zero_grad()
        y = recomputed(mixer, x) if in_checkpoint else mixer(x)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=torch.float64)).view_as(y))
        return y.detach(), [p.grad.clone() for p in mixer.parameters()]

    monkeypatch.setattr(conv, "LAG_CHUNK", 10 ** 9)  # every lag at once
    ref, ref_grads = run()
    monkeypatch.setattr(conv, "LAG_CHUNK", 4)  # 11 or 21 lags: chunks 4, 4, ... and a short one
    got, got_grads = run()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for (name, _), g, r in zip(mixer.named_parameters(), got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12, msg=name)
