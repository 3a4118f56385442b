"""ssm family beyond the generic contract: S4D's convolution against its recurrence, Mamba's
chunked scan against the sequential recurrence, mixing matrices that reproduce the operator,
and stability over long sequences."""
import pytest
import torch

from longmix import mixers
from longmix.ops.scan import selective_scan_sequential

F64 = torch.float64


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def randn(batch, length, dim, seed=1, dtype=F64):
    return torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def build(name, dim=6, causal=True, seed=0, **options):
    torch.manual_seed(seed)
    return mixers.build(name, dim, causal=causal, **options).double()


# -- s4d ------------------------------------------------------------------------------------
def test_s4d_kernel_is_the_recurrence_impulse_response():
    m = build("s4d", causal=True, d_state=8)
    length = 50
    impulse = torch.zeros(1, length, 6, dtype=F64)
    impulse[:, 0] = 1
    with torch.no_grad():
        response = m.recurrence(impulse)[0] - impulse[0] * m.D  # drop the skip term D u
        kernel = m.kernel(length)[0].T  # (L, dim)
    assert rel_err(kernel, response) < 1e-12


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [1, 2, 100, 129])
def test_s4d_convolution_matches_recurrence(causal, length):
    m = build("s4d", causal=causal, d_state=8)
    x = randn(2, length, 6)
    with torch.no_grad():
        assert rel_err(m(x), m.recurrence(x)) < 1e-10


@pytest.mark.parametrize("causal", [True, False])
def test_s4d_mixing_matrix_is_toeplitz_and_reproduces_forward(causal):
    m = build("s4d", causal=causal)
    x = randn(2, 20, 6)
    with torch.no_grad():
        M = m.mixing_matrix(x)
        assert M.shape == (2, 6, 20, 20)
        # Toeplitz: every entry equals the one a step down the same diagonal
        assert torch.equal(M[..., 1:, 1:], M[..., :-1, :-1])
        assert rel_err(torch.einsum("bdts,bsd->btd", M, x), m(x)) < 1e-12
        assert (M.triu(1) == 0).all() == causal  # bidirectional mode does look ahead


def test_s4d_runs_any_length_without_max_len_in_float32():
    m = build("s4d", dim=4, causal=False).float()
    x = randn(1, 1000, 4, dtype=torch.float32)
    with torch.no_grad():
        y32 = m(x)
        y64 = m.double().reference(x.double())
    assert rel_err(y32.double(), y64) < 1e-4


def test_s4d_long_strongly_decaying_kernel_is_stable():
    """2^14 taps with dt up to 10 (|dt A| up to ~5 per step): powers underflow, never overflow."""
    m = build("s4d", dim=2, causal=True, d_state=4, dt_min=1.0, dt_max=10.0).float()
    x = randn(1, 2 ** 14, 2, dtype=torch.float32)
    with torch.no_grad():
        y = m(x)
        assert torch.isfinite(m.kernel(2 ** 14)).all() and torch.isfinite(y).all()
        y_rec = m.double().recurrence(x.double())
    assert rel_err(y.double(), y_rec) < 1e-4


def test_s4d_bad_options():
    with pytest.raises(ValueError, match="d_state"):
        mixers.build("s4d", 4, d_state=5)
    with pytest.raises(ValueError, match="dt_min"):
        mixers.build("s4d", 4, dt_min=0.1, dt_max=0.01)


# -- mamba ----------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length,chunk_size", [(1, 8), (33, 8), (33, 5), (40, 8), (40, 64)])
def test_mamba_chunked_scan_matches_sequential_recurrence(causal, length, chunk_size):
    m = build("mamba", causal=causal, chunk_size=chunk_size)
    x = randn(2, length, 6)
    with torch.no_grad():
        u, z = m.ssm_input(x)
        fast = m.ssm(u)
        slow = m.ssm(u, scan=selective_scan_sequential)
        assert rel_err(fast, slow) < 1e-12
        assert rel_err(m(x), m.output(slow, z)) < 1e-12


@pytest.mark.parametrize("causal", [True, False])
def test_mamba_gradients_match_the_sequential_recurrence(causal):
    """The whole block's gradients (every parameter and the input) with the scan by each backend
    against the block with the plain recurrence, in float64: the fused D term, the short conv's
    own backward and the bidirectional wiring included."""
    x = randn(2, 21, 6).requires_grad_()
    grads = {}
    for scan in ("cpu", "torch", "sequential"):
        m = build("mamba", causal=causal, chunk_size=8, scan_backend="auto" if scan == "sequential" else scan)
        u, z = m.ssm_input(x)
        y = m.ssm(u, scan=selective_scan_sequential if scan == "sequential" else None)
        out = m.output(y, z)
        params = [x, *m.parameters()]
        grads[scan] = torch.autograd.grad(out.square().sum(), params)
    for scan in ("cpu", "torch"):
        for g, g_ref in zip(grads[scan], grads["sequential"]):
            assert rel_err(g, g_ref) < 1e-10


@pytest.mark.parametrize("causal", [True, False])
def test_mamba_mixing_matrix_reproduces_the_scan(causal):
    m = build("mamba", causal=causal)
    x = randn(2, 17, 6)
    with torch.no_grad():
        M = m.mixing_matrix(x)
        u, _ = m.ssm_input(x)
        assert M.shape == (2, m.d_inner, 17, 17)
        assert rel_err(torch.einsum("bdts,bsd->btd", M, u), m.ssm(u)) < 1e-12
        assert (M.triu(1) == 0).all() == causal


def test_mamba_bidirectional_mode_sees_the_future():
    """causal=False is honestly non-causal: changing a later input changes earlier outputs."""
    m = build("mamba", causal=False)
    x = randn(1, 16, 6)
    x2 = x.clone()
    x2[:, 10:] += 1
    with torch.no_grad():
        assert not torch.allclose(m(x)[:, :10], m(x2)[:, :10])


def test_mamba_without_conv():
    m = build("mamba", d_conv=0)
    x = randn(2, 9, 6)
    with torch.no_grad():
        assert rel_err(m(x), m.reference(x)) < 1e-12


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [1, 7, 33])
@pytest.mark.parametrize("norm_weight", [True, False])
def test_mamba_bcdt_norm_fast_path_matches_reference(causal, length, norm_weight):
    m = build("mamba", causal=causal, bcdt_norm=True, norm_weight=norm_weight, chunk_size=4)
    with torch.no_grad():  # non-trivial norm weights, so a dropped weight would show
        for params in m.selective:
            for norm in params.norms:
                assert (norm.weight is not None) == norm_weight
                if norm_weight:
                    norm.weight.uniform_(0.5, 1.5)
    x = randn(2, length, 6)
    with torch.no_grad():
        assert rel_err(m(x), m.reference(x)) < 1e-12


def test_mamba_bcdt_norm_is_an_rms_norm_of_dt_b_and_c():
    """Against the formula written out: x / sqrt(mean(x^2) + eps) * weight on each of dt, B, C,
    with dt normalized before dt_proj (Jamba's order)."""
    m = build("mamba", bcdt_norm=True, norm_eps=1e-3, d_state=4, dt_rank=3)
    params = m.selective[0]
    with torch.no_grad():
        for norm in params.norms:
            norm.weight.uniform_(0.5, 1.5)
        u = randn(2, 5, m.d_inner)
        delta, A, B, C = params(u)
        dt, B0, C0 = params.x_proj(u).split([3, 4, 4], dim=-1)
        rms = [(t / (t.pow(2).mean(-1, keepdim=True) + 1e-3).sqrt()) * n.weight
               for t, n in zip((dt, B0, C0), params.norms)]
        assert rel_err(B, rms[1]) < 1e-14 and rel_err(C, rms[2]) < 1e-14
        assert rel_err(delta, torch.nn.functional.softplus(params.dt_proj(rms[0]))) < 1e-14
        assert rel_err(A, -params.A_log.exp()) == 0
    # and it changes the operator: without the norms the output differs
    plain = build("mamba", d_state=4, dt_rank=3)
    x = randn(1, 9, 6)
    with torch.no_grad():
        assert rel_err(m(x), plain(x)) > 1e-3


def test_mamba_long_strongly_decaying_sequence_is_stable():
    """2^14 steps with delta ~ 10 and A down to -16: decays of exp(-160) per step in float32."""
    m = build("mamba", dim=2, causal=True, d_state=16, dt_min=5.0, dt_max=10.0).float()
    x = randn(1, 2 ** 14, 2, dtype=torch.float32)
    with torch.no_grad():
        u, _ = m.ssm_input(x)
        fast = m.ssm(u)
        assert torch.isfinite(fast).all()
        slow = m.double().ssm(u.double(), scan=selective_scan_sequential)
    assert rel_err(fast.double(), slow) < 1e-4


def test_mamba_bad_options():
    with pytest.raises(ValueError, match="d_state"):
        mixers.build("mamba", 4, d_state=0)
    with pytest.raises(ValueError, match="chunk_size"):
        mixers.build("mamba", 4, chunk_size=0)
    with pytest.raises(ValueError, match="dt_min"):
        mixers.build("mamba", 4, dt_min=1.0, dt_max=0.5)
    with pytest.raises(ValueError, match="Mamba: scan_backend must be one of"):
        mixers.build("mamba", 4, scan_backend="numba")
    with pytest.raises(ValueError, match="bcdt_norm must be a bool"):
        mixers.build("mamba", 4, bcdt_norm="yes")
    with pytest.raises(ValueError, match="norm_eps must be a number > 0"):
        mixers.build("mamba", 4, bcdt_norm=True, norm_eps=0.0)
    with pytest.raises(ValueError, match="norm_weight must be a bool"):
        mixers.build("mamba", 4, bcdt_norm=True, norm_weight=None)
    with pytest.raises(ValueError, match="norm_weight=False .* needs bcdt_norm=True"):
        mixers.build("mamba", 4, norm_weight=False)
