"""attention_with_lse / merge_partials against a float64 materialized softmax reference."""
import math

import pytest
import torch

from longmix.ops import attention_backward, attention_forward, attention_with_lse, merge_partials
from longmix.ops.blockwise_attention import blockwise_backward, blockwise_forward, visible

F64 = torch.float64


def reference(q, k, v, causal=False, scale=None, window=None):
    """Materialized (out, lse) in float64; top-left causal alignment; GQA by repeat_interleave."""
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    lq, h, d = q.shape[1], q.shape[2], q.shape[3]
    lk = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    k = k.repeat_interleave(h // k.shape[2], 2)
    v = v.repeat_interleave(h // v.shape[2], 2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    s = s.masked_fill(~visible(0, lq, 0, lk, causal, window), float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)  # rows that see nothing: 0
    return torch.einsum("bhij,bjhd->bihd", p, v), lse


def test_visibility_follows_the_stated_rules():
    """The mask the kernel and the reference share, written out: 4 queries x 5 keys, top-left."""
    rows = lambda *r: torch.tensor(r, dtype=torch.bool)  # noqa: E731
    assert torch.equal(visible(0, 4, 0, 5, False, None), torch.ones(4, 5, dtype=torch.bool))
    assert torch.equal(visible(0, 4, 0, 5, True, None),
                       rows([1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]))
    assert torch.equal(visible(0, 4, 0, 5, True, 2),
                       rows([1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0]))
    assert torch.equal(visible(0, 4, 0, 5, False, 2),
                       rows([1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]))
    # a tile is the same rows and columns of the whole
    assert torch.equal(visible(1, 3, 2, 5, True, 2), visible(0, 4, 0, 5, True, 2)[1:3, 2:5])


def _inputs(b, lq, lk, h, hk, d, dtype=F64, seed=0, logit_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, lq, h, d, generator=g, dtype=F64) * logit_scale).to(dtype)
    k = torch.randn(b, lk, hk, d, generator=g, dtype=F64).to(dtype)
    v = torch.randn(b, lk, hk, d, generator=g, dtype=F64).to(dtype)
    return [x.requires_grad_() for x in (q, k, v)]


def _loss(out, lse, go, gl):
    # Rows with lse = -inf carry no gradient into lse (and the reference's would be NaN).
    finite = torch.isfinite(lse)
    return (out.to(F64) * go).sum() + (torch.where(finite, lse, 0).to(F64) * gl).sum()


def _assert_same_gradients(out, lse, rout, rlse, inputs):
    """The gradients into ``inputs`` of (out, lse) and of the reference's (rout, rlse), under
    the same random output and lse gradients, agree to 1e-11."""
    go, gl = torch.randn_like(rout), torch.randn_like(rlse)
    grads = torch.autograd.grad(_loss(out, lse, go, gl), inputs)
    rgrads = torch.autograd.grad(_loss(rout, rlse, go, gl), inputs)
    for g, rg in zip(grads, rgrads):
        torch.testing.assert_close(g, rg, atol=1e-11, rtol=1e-11)


SHAPES = [  # (batch, Lq, Lk, heads, kv_heads, head_dim)
    (2, 7, 7, 4, 4, 8),
    (1, 6, 6, 4, 2, 8),    # GQA
    (1, 5, 11, 2, 1, 4),   # Lq < Lk, MQA
    (2, 9, 5, 6, 2, 8),    # GQA, groups of 3, batch 2, Lq > Lk
    (2, 9, 4, 2, 2, 8),    # Lq > Lk
    (1, 1, 1, 1, 1, 4),    # L = 1
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, 3])
def test_forward_backward_matches_reference(shape, causal, window):
    b, lq, lk, h, hk, d = shape
    q, k, v = _inputs(b, lq, lk, h, hk, d)
    out, lse = attention_with_lse(q, k, v, causal=causal, window=window)
    rout, rlse = reference(q, k, v, causal=causal, window=window)
    assert out.dtype == F64 and lse.dtype == F64 and lse.shape == (b, h, lq)
    torch.testing.assert_close(out, rout, atol=1e-12, rtol=1e-12)
    assert torch.equal(torch.isinf(lse), torch.isinf(rlse))
    torch.testing.assert_close(torch.where(torch.isinf(lse), 0, lse),
                               torch.where(torch.isinf(rlse), 0, rlse), atol=1e-12, rtol=1e-12)
    _assert_same_gradients(out, lse, rout, rlse, (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq,lk", [(13, 13), (10, 17), (17, 6)])
def test_blockwise_fallback_multi_tile(causal, lq, lk):
    """The pure-PyTorch path with tiles smaller than L (the default dispatch never uses it here)."""
    q, k, v = (x.detach() for x in _inputs(2, lq, lk, 3, 3, 8, seed=1))
    scale = 0.4
    out, lse = blockwise_forward(q, k, v, causal=causal, scale=scale, window=None, tile=4)
    rout, rlse = reference(q, k, v, causal=causal, scale=scale)
    torch.testing.assert_close(out, rout, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, rlse, atol=1e-12, rtol=1e-12)
    go, gl = torch.randn_like(out), torch.randn_like(lse)
    grads = blockwise_backward(go, q, k, v, out, lse, causal=causal, scale=scale, window=None,
                               dlse=gl, tile=4)
    qr, kr, vr = (x.clone().requires_grad_() for x in (q, k, v))
    ro, rl = reference(qr, kr, vr, causal=causal, scale=scale)
    rgrads = torch.autograd.grad(_loss(ro, rl, go, gl), (qr, kr, vr))
    for g, rg in zip(grads, rgrads):
        torch.testing.assert_close(g, rg, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 2), (False, 2)])
def test_gradcheck_out_and_lse(causal, window):
    q, k, v = _inputs(1, 4, 4, 2, 1, 3, seed=2)

    def f(q, k, v):
        return attention_with_lse(q, k, v, causal=causal, scale=0.7, window=window)

    assert torch.autograd.gradcheck(f, (q, k, v), atol=1e-8)


def test_large_logits_are_finite_and_accurate():
    """Logits around 1e4 in float32: no overflow, results close to the float64 reference."""
    q, k, v = _inputs(1, 64, 64, 2, 2, 16, dtype=torch.float32, seed=3, logit_scale=1e3)
    for causal in (False, True):
        out, lse = attention_with_lse(q, k, v, causal=causal, scale=1.0)
        rout, rlse = reference(q, k, v, causal=causal, scale=1.0)
        assert rlse.abs().max() > 1e3
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        torch.testing.assert_close(lse.to(F64), rlse, rtol=1e-5, atol=0)
        (out.sum() + lse.sum()).backward()
        assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_smoke(dtype):
    q, k, v = _inputs(2, 33, 33, 4, 2, 16, dtype=dtype, seed=4)
    out, lse = attention_with_lse(q, k, v, causal=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    rout, rlse = reference(q, k, v, causal=True)
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.to(F64), rout, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.to(F64), rlse, atol=tol, rtol=tol)
    out.float().square().sum().backward()
    assert q.grad.dtype == dtype and torch.isfinite(q.grad.float()).all()


def test_empty_keys_and_queries():
    q, k, v = _inputs(1, 3, 0, 2, 2, 4)
    out, lse = attention_with_lse(q, k, v)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    out.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))
    q, k, v = _inputs(1, 0, 3, 2, 2, 4)
    out, lse = attention_with_lse(q, k, v, causal=True)
    assert out.shape == (1, 0, 2, 4) and lse.shape == (1, 2, 0)


@pytest.mark.parametrize("causal", [False, True])
def test_merge_of_split_keys_equals_full_attention(causal):
    """Split K/V into pieces, attend to each, merge on lse: equals attention over all keys.

    Causal: query block [8, 12) against key pieces [0, 5) (full), [5, 8) (full), [8, 12) (diag).
    """
    q, k, v = _inputs(2, 12, 12, 4, 2, 8, seed=5)
    cuts = [(0, 5), (5, 8), (8, 12)]
    qs = q[:, 8:] if causal else q
    outs, lses = [], []
    for a, b in cuts:
        o, l = attention_with_lse(qs, k[:, a:b], v[:, a:b], causal=causal and a == 8)
        outs.append(o)
        lses.append(l)
    out, lse = merge_partials(outs, lses)
    rout, rlse = reference(q, k, v, causal=causal)
    rows = slice(8, 12) if causal else slice(None)
    rout, rlse = rout[:, rows], rlse[:, :, rows]
    torch.testing.assert_close(out, rout, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, rlse, atol=1e-12, rtol=1e-12)
    _assert_same_gradients(out, lse, rout, rlse, (q, k, v))


def test_merge_with_empty_partials_never_nan():
    q, k, v = _inputs(1, 4, 5, 2, 2, 4, seed=6)
    o_full, l_full = attention_with_lse(q, k, v)
    o_empty, l_empty = attention_with_lse(q, k[:, :0], v[:, :0])
    out, lse = merge_partials([o_empty, o_full, o_empty], [l_empty, l_full, l_empty])
    torch.testing.assert_close(out, o_full, atol=0, rtol=0)
    torch.testing.assert_close(lse, l_full, atol=0, rtol=0)
    out, lse = merge_partials([o_empty, o_empty], [l_empty, l_empty])
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    q.grad = None
    (out.sum() + torch.where(torch.isinf(lse), 0, lse).sum()).backward()
    for x in (q, k, v):  # the gradient arrives, and it is exactly 0: no key, no dependence
        assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_autograd_free_backward_with_global_statistics():
    """A key block's gradient share from the merged out/lse: the identity ring attention uses."""
    q, k, v = (x.detach() for x in _inputs(1, 6, 10, 2, 1, 8, seed=7))
    out, lse = attention_forward(q, k, v)
    go = torch.randn_like(out)
    dq, dk, dv = attention_backward(go, q, k, v, out, lse)
    parts = [attention_backward(go, q, k[:, a:b], v[:, a:b], out, lse) for a, b in ((0, 4), (4, 10))]
    torch.testing.assert_close(parts[0][0] + parts[1][0], dq, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(torch.cat([parts[0][1], parts[1][1]], 1), dk, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cat([parts[0][2], parts[1][2]], 1), dv, atol=1e-12, rtol=0)


@pytest.mark.parametrize("bad,match", [
    (dict(k=torch.randn(1, 4, 3, 8), v=torch.randn(1, 4, 3, 8)), "kv_heads"),
    (dict(v=torch.randn(1, 5, 2, 8)), "same shape"),
    (dict(q=torch.randn(1, 4, 4, 6)), "head_dim"),
    (dict(q=torch.randn(4, 4, 8)), "4-D"),
    (dict(v=torch.randn(1, 4, 2, 8, dtype=F64)), "dtype"),
    (dict(window=0), "window"),
])
def test_bad_arguments_raise_value_error(bad, match):
    args = dict(q=torch.randn(1, 4, 4, 8), k=torch.randn(1, 4, 2, 8), v=torch.randn(1, 4, 2, 8))
    window = bad.pop("window", None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        attention_with_lse(args["q"], args["k"], args["v"], window=window)


def test_merge_stays_accurate_when_lse_is_large():
    """Equal partials at lse ~ 5e3 in float32: out must not inherit lse's rounding (~ulp 5e-4).

    Weighting by exp(lse_i - lse) with a rounded lse would scale out by (1 +- 2e-5) here;
    normalizing by the sum of exp(lse_i - max) keeps it at float32 precision.
    """
    q, k, v = (x.detach() for x in _inputs(1, 32, 16, 2, 2, 16, dtype=torch.float32, seed=8,
                                           logit_scale=300.0))
    o, l = attention_with_lse(q, k, v, scale=1.0)
    assert l.abs().max() > 1e3
    out, lse = merge_partials([o, o, o], [l, l, l])
    assert ((out - o).abs().max() / o.abs().max()).item() < 1e-6
    torch.testing.assert_close(lse, l + math.log(3), rtol=1e-6, atol=0)


@pytest.mark.parametrize("length", [33, 100, 128])  # odd and even halvings, several levels deep
def test_causal_triangle_split_is_exact(monkeypatch, length):
    """The CPU causal path (diagonal leaves + full blocks merged on the lse) against float64,
    forward and gradients, with leaves small enough to recurse at these lengths."""
    import longmix.ops.attention as op

    monkeypatch.setattr(op, "_CAUSAL_LEAF", 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the split is taken with more than one thread only
    try:
        q, k, v = _inputs(2, length, length, 4, 2, 8)
        calls = []
        real = op._cpu_flash
        monkeypatch.setattr(op, "_cpu_flash", lambda *a: calls.append(a[3]) or real(*a))
        out, lse = attention_with_lse(q, k, v, causal=True)
        assert False in calls and calls.count(True) > 2  # it did split
        ref_out, ref_lse = reference(q, k, v, causal=True)
        torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-10)
        go = torch.randn_like(ref_out)
        grads = torch.autograd.grad((out * go).sum(), (q, k, v))
        ref_grads = torch.autograd.grad((ref_out * go).sum(), (q, k, v))
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    finally:
        torch.set_num_threads(threads)


def test_cpu_gqa_never_repeats_kv(monkeypatch):
    """On the CPU flash path GQA runs per K/V head over a stride-0 view: K/V are never repeated
    (repeating them cost 2 * heads/kv_heads times K/V's memory per call), forward and backward."""
    import longmix.ops.attention as op

    def repeated(*args):
        raise AssertionError("K/V were repeated on the CPU flash path")

    monkeypatch.setattr(op, "_expand_kv", repeated)
    q, k, v = _inputs(2, 7, 7, 4, 2, 8, seed=9)
    for causal in (False, True):
        out, lse = attention_with_lse(q, k, v, causal=causal)
        rout, rlse = reference(q, k, v, causal=causal)
        torch.testing.assert_close(out, rout, atol=1e-12, rtol=1e-12)
        _assert_same_gradients(out, lse, rout, rlse, (q, k, v))


def test_merge_into_equals_merge_partials():
    """The in-place merge (the ring's) gives merge_partials' result, also with empty partials."""
    from longmix.ops.attention import merge_into

    q, k, v = (x.detach() for x in _inputs(2, 6, 9, 4, 2, 8, seed=10))
    o1, l1 = attention_forward(q, k[:, :4], v[:, :4])
    o2, l2 = attention_forward(q, k[:, 4:], v[:, 4:])
    empty_o, empty_l = attention_forward(q, k[:, :0], v[:, :0])
    for parts in ([(o1, l1), (o2, l2)], [(empty_o, empty_l), (o1, l1)], [(o1, l1), (empty_o, empty_l)],
                  [(empty_o, empty_l), (empty_o, empty_l)]):
        want_o, want_l = merge_partials([o for o, _ in parts], [l for _, l in parts])
        out, lse = parts[0][0].clone(), parts[0][1].clone()
        merge_into(out, lse, *parts[1])
        torch.testing.assert_close(out, want_o, atol=1e-14, rtol=1e-14)
        assert torch.equal(torch.isneginf(lse), torch.isneginf(want_l))
        torch.testing.assert_close(torch.where(torch.isinf(lse), 0, lse),
                                   torch.where(torch.isinf(want_l), 0, want_l), atol=1e-14, rtol=0)
