"""The core test of the library: every registered mixer honours the TokenMixer contract.

Fast path == literal formula in float64, causality by perturbation, the taxonomy tells the
truth about input dependence, gradients flow, and bad input gets a clear ValueError.
"""
import fnmatch

import pytest
import torch

from longmix import mixers

DIM, HEADS, MAX_LEN, BATCH = 8, 2, 64, 2
LENGTHS = (1, 7, 33, 64)
NAMES = mixers.available()


def causal_modes(name):
    return (False, True) if mixers.get_class(name).taxonomy.causal else (False,)


CASES = [(n, c) for n in NAMES for c in causal_modes(n)]


def make(name, causal, seed=0):
    torch.manual_seed(seed)
    return mixers.build(name, DIM, heads=HEADS, causal=causal, max_len=MAX_LEN).double()


def randn(length, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, length, DIM, generator=g, dtype=torch.float64)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def test_every_family_is_covered():
    families = {mixers.get_class(n).taxonomy.family for n in NAMES}
    assert families == set(mixers.FAMILIES)


@pytest.mark.parametrize("name,causal", CASES)
@pytest.mark.parametrize("length", LENGTHS)
def test_fast_path_matches_reference(name, causal, length):
    mixer = make(name, causal)
    x = randn(length)
    with torch.no_grad():
        fast, literal = mixer(x), mixer.reference(x)
    assert fast.shape == x.shape
    assert rel_err(fast, literal) < 1e-8


@pytest.mark.parametrize("name,causal", CASES)
def test_parameters_and_buffers_follow_the_default_dtype(name, causal):
    """Built under ``torch.set_default_dtype(torch.float64)``, a mixer is float64 throughout."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        mixer = mixers.build(name, DIM, heads=HEADS, causal=causal, max_len=MAX_LEN)
        mixer(randn(7))  # and runs in float64
    finally:
        torch.set_default_dtype(before)
    dtypes = {k: t.dtype for k, t in mixer.state_dict().items() if t.is_floating_point()}
    assert set(dtypes.values()) <= {torch.float64}, dtypes


@pytest.mark.parametrize("name", [n for n, c in CASES if c])
def test_causal_output_ignores_the_future(name):
    mixer = make(name, causal=True)
    x = randn(33)
    with torch.no_grad():
        before = mixer(x)
        for t in (0, 10, 31):
            x2 = x.clone()
            x2[:, t + 1:] += torch.randn_like(x2[:, t + 1:])
            after = mixer(x2)
            assert torch.allclose(before[:, :t + 1], after[:, :t + 1], atol=1e-12, rtol=0), \
                f"{name}: output at <= {t} changed when inputs after {t} changed"


@pytest.mark.parametrize("name,causal", CASES)
def test_taxonomy_input_dependence_is_true(name, causal):
    mixer = make(name, causal)
    try:
        m1 = mixer.mixing_matrix(randn(16, seed=1))
    except NotImplementedError:
        assert mixer.taxonomy.family == "mlp", f"{name}: only nonlinear token mixing may skip this"
        return
    m2 = mixer.mixing_matrix(randn(16, seed=2))
    assert m1.shape[0] == BATCH and m1.shape[-2:] == (16, 16)
    same = torch.allclose(m1, m2, atol=1e-12, rtol=0)
    assert same != mixer.taxonomy.input_dependent
    if causal:
        upper = torch.triu(torch.ones(16, 16, dtype=torch.bool), diagonal=1)
        assert m1[..., upper].abs().max() == 0, f"{name}: causal mixing matrix has future entries"


@pytest.mark.parametrize("name,causal", CASES)
def test_gradients_flow(name, causal):
    mixer = make(name, causal)
    x = randn(33).requires_grad_()
    mixer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: parameter {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_names_the_problem(name):
    mixer = make(name, False)
    with pytest.raises(ValueError, match="x"):
        mixer(torch.randn(4, DIM, dtype=torch.float64))  # rank 2
    with pytest.raises(ValueError, match="dim"):
        mixer(torch.randn(1, 4, DIM + 1, dtype=torch.float64))  # wrong last dim
    with pytest.raises(ValueError, match="max_len"):
        mixer(torch.randn(1, MAX_LEN + 1, DIM, dtype=torch.float64))
    with pytest.raises(ValueError, match="divisible by heads"):
        mixers.build(name, 10, heads=3, max_len=MAX_LEN)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: .*" + NAMES[0]):
        mixers.build("no-such-mixer", 8)


@pytest.mark.parametrize("name", [n for n in NAMES if not mixers.get_class(n).taxonomy.causal])
def test_causal_request_rejected_when_unsupported(name):
    with pytest.raises(ValueError, match="causal"):
        mixers.build(name, DIM, heads=HEADS, causal=True, max_len=MAX_LEN)


@pytest.mark.parametrize("name", [n for n in NAMES if mixers.get_class(n).requires_max_len])
def test_max_len_required_when_weights_are_length_sized(name):
    with pytest.raises(ValueError, match="max_len"):
        mixers.build(name, DIM, heads=HEADS)


@pytest.mark.parametrize("name,option", [("local", "block_size"), ("mamba", "d_conv"), ("mlpmixer", "hidden"),
                                         ("nystrom", "pinv_refine"), ("softmax", "window")])
def test_integer_options_refuse_bools(name, option):
    # True is an int to Python; as a size it is always a mistake, and every mixer says so alike.
    with pytest.raises(ValueError, match=f"{option} must be an int"):
        mixers.build(name, DIM, heads=HEADS, max_len=MAX_LEN, **{option: True})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_non_float_input_is_refused(name, dtype):
    # Token ids or masks passed by mistake would otherwise be cast silently by the projections.
    mixer = make(name, False)
    with pytest.raises(ValueError, match=rf"x must be a floating-point tensor, got dtype {dtype}"):
        mixer(torch.zeros(BATCH, 7, DIM, dtype=dtype))


@pytest.mark.parametrize("name,causal", CASES)
def test_empty_batch_gives_empty_output(name, causal):
    mixer = make(name, causal)
    x = torch.randn(0, 7, DIM, dtype=torch.float64, requires_grad=True)
    out = mixer(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_uses_heads_is_declared_and_true(name):
    cls = mixers.get_class(name)
    assert isinstance(getattr(cls, "uses_heads", None), bool), f"{name}: declare uses_heads: bool"
    x = randn(9)
    outs = []
    for heads in (1, 2):
        torch.manual_seed(0)
        mixer = mixers.build(name, DIM, heads=heads, max_len=MAX_LEN).double()
        with torch.no_grad():
            outs.append(mixer(x))
    same = torch.allclose(outs[0], outs[1], atol=1e-12, rtol=0)
    assert same != cls.uses_heads, f"{name}: uses_heads={cls.uses_heads} but heads {'did not change' if same else 'changed'} the output"


CAUSAL_NAMES = [n for n, c in CASES if c]


def test_nonfinite_causality_is_declared_by_every_causal_mixer():
    undeclared = [n for n in CAUSAL_NAMES if not isinstance(getattr(mixers.get_class(n), "nonfinite_causal", None), bool)]
    assert not undeclared, f"declare nonfinite_causal: bool on {undeclared}"


@pytest.mark.parametrize("name", CAUSAL_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_input_reaches_the_past_only_where_declared(name, bad):
    """A NaN/inf at position t of sequence 0: with ``nonfinite_causal`` the outputs before t are
    exactly those of the clean input and t's own output is non-finite (the value is not dropped);
    without it the documented leak is there, so the declaration cannot go stale either way."""
    mixer = make(name, causal=True)
    x = randn(33)
    with torch.no_grad():
        clean = mixer(x)
        for t in (0, 20, 32):
            x2 = x.clone()
            x2[0, t, 3] = bad
            out = mixer(x2)
            assert torch.equal(out[1], clean[1]), f"{name}: sequence 1 changed"
            assert not torch.isfinite(out[0, t]).all(), f"{name}: the non-finite input at {t} was lost"
            past_finite = torch.isfinite(out[0, :t]).all()
            if mixers.get_class(name).nonfinite_causal:
                assert past_finite and torch.allclose(out[0, :t], clean[0, :t], atol=1e-10, rtol=0), \
                    f"{name}: a non-finite input at {t} changed earlier outputs"
            elif t > 0:
                assert not past_finite, f"{name}: declares nonfinite_causal=False, yet the past stayed finite"


@pytest.mark.parametrize("name,causal", CASES)
def test_no_decay_patterns_name_existing_parameters(name, causal):
    mixer = make(name, causal)
    params = [n for n, _ in mixer.named_parameters()]
    names = mixer.no_decay_parameter_names()
    assert set(names) <= set(params)
    for pattern in mixer.no_decay_patterns:  # a stale pattern would silently decay the parameter
        assert any(fnmatch.fnmatchcase(n, pattern) for n in params), f"{name}: {pattern!r} matches nothing"


@pytest.mark.parametrize("name,expected", [
    ("s4d", {"log_dt", "log_A_real", "A_imag"}),            # state-spaces/s4: register(..., wd=0.0)
    ("mamba", {"selective.0.A_log", "D"}),                  # mamba_simple: _no_weight_decay
    ("longconv", None), ("hyena", None),                    # the whole implicit filter (Hyena: wd=0)
])
def test_dynamics_parameters_take_no_weight_decay(name, expected):
    mixer = make(name, causal=True)
    names = set(mixer.no_decay_parameter_names())
    if expected is None:
        expected = {n for n, _ in mixer.named_parameters() if n.startswith("filter.")}
        assert expected
    assert names == expected
