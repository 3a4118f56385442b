"""The gated delta rule: the chunked WY/UT form against the sequential recurrence and the
materialized L x L operator, in float64, with initial and final states and gradients."""
import pytest
import torch
import torch.nn.functional as F

from longmix.ops.delta_rule import gated_delta_rule, gated_delta_rule_matrix, gated_delta_rule_sequential

F64 = torch.float64
HEADS, K, V = 3, 4, 5


def inputs(length, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    q, k = (F.normalize(r(batch, length, HEADS, K), dim=-1) for _ in range(2))  # as the layer does
    gate = -2 * torch.rand(batch, length, HEADS, generator=g, dtype=F64)
    beta = torch.rand(batch, length, HEADS, generator=g, dtype=F64)
    return q, k, r(batch, length, HEADS, V), gate, beta, r(batch, HEADS, K, V)


def assert_close(a, b, tol=1e-10):
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()
    assert err < tol, f"relative error {err:.3g} >= {tol:g}"


CASES = [(1, 1), (1, 8), (7, 7), (7, 3), (64, 16), (64, 24), (257, 64), (257, 257), (257, 300)]


@pytest.mark.parametrize("length,chunk_size", CASES)
def test_chunked_equals_recurrence_with_states(length, chunk_size):
    q, k, v, g, beta, s0 = inputs(length)
    o, s = gated_delta_rule(q, k, v, g, beta, chunk_size=chunk_size, initial_state=s0, return_final_state=True)
    o_ref, s_ref = gated_delta_rule_sequential(q, k, v, g, beta, initial_state=s0, return_final_state=True)
    assert_close(o, o_ref)
    assert_close(s, s_ref)


@pytest.mark.parametrize("length", [1, 7, 64])
def test_chunked_equals_materialized_operator(length):
    q, k, v, g, beta, _ = inputs(length)
    M = gated_delta_rule_matrix(q, k, g, beta)
    upper = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
    if length > 1:
        assert M[..., upper].abs().max() == 0
    assert_close(gated_delta_rule(q, k, v, g, beta, chunk_size=5), torch.einsum("bhts,bshv->bthv", M, v))


def test_scale_is_applied_to_q():
    q, k, v, g, beta, _ = inputs(9)
    assert_close(gated_delta_rule(q, k, v, g, beta, scale=1.0, chunk_size=4),
                 gated_delta_rule_sequential(q * 0.5, k, v, g, beta, scale=2.0))


@pytest.mark.parametrize("length,chunk_size", [(7, 3), (64, 16), (65, 16)])
def test_gradients_match_autograd_through_the_recurrence(length, chunk_size):
    args = [t.requires_grad_() for t in inputs(length)]
    gen = torch.Generator().manual_seed(5)
    do, ds = torch.randn(2, length, HEADS, V, generator=gen, dtype=F64), torch.randn(2, HEADS, K, V, generator=gen, dtype=F64)

    def grads(fn, **kw):
        o, s = fn(*args[:5], initial_state=args[5], return_final_state=True, **kw)
        return torch.autograd.grad((o * do).sum() + (s * ds).sum(), args)

    for got, want in zip(grads(gated_delta_rule, chunk_size=chunk_size), grads(gated_delta_rule_sequential)):
        assert_close(got, want)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_input_reaches_only_later_positions(bad):
    q, k, v, g, beta, _ = inputs(40)
    clean = gated_delta_rule(q, k, v, g, beta, chunk_size=16)
    k[0, 21, 1, 0] = bad
    o = gated_delta_rule(q, k, v, g, beta, chunk_size=16)
    assert torch.equal(o[:, :21], clean[:, :21]) and torch.equal(o[1], clean[1])
    assert torch.equal(o[0, :, [0, 2]], clean[0, :, [0, 2]])  # the other heads
    assert torch.isnan(o[0, 21:, 1]).all()


def test_bad_shapes_are_named():
    q, k, v, g, beta, s0 = inputs(7)
    with pytest.raises(ValueError, match="q and k must be"):
        gated_delta_rule(q, k[..., :2], v, g, beta)
    with pytest.raises(ValueError, match="beta must be"):
        gated_delta_rule(q, k, v, g, beta[:, :3])
    with pytest.raises(ValueError, match="initial_state must be"):
        gated_delta_rule(q, k, v, g, beta, initial_state=s0[..., :2])
