"""The chunked LM head + cross entropy against the plain head and F.cross_entropy, float64."""
import pytest
import torch
from torch.nn import functional as F

from longmix.ops.linear_cross_entropy import default_chunk_rows, linear_cross_entropy


def _inputs(shape, dim, vocab, bias=True, ignored=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape, dim, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, dim, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    target = torch.randint(0, vocab, shape, generator=g)
    target[torch.rand(shape, generator=g) < ignored] = -100
    return h, w, b, target


def _plain(h, w, b, target):
    logits = F.linear(h, w, b)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=-100, reduction="sum")


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("shape,chunk", [((2, 37), 8), ((1, 1), 4), ((3, 5), 1), ((1, 16), 16),
                                         ((1, 40), None)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_plain_head_and_cross_entropy(shape, chunk, bias):
    h, w, b, target = _inputs(shape, dim=6, vocab=11, bias=bias)
    ref = _plain(h, w, b, target)
    got = linear_cross_entropy(h, w, b, target, chunk_rows=chunk)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    scale = 0.7  # a non-unit upstream gradient, as in loss_sum / count
    for g_ref, g_got in zip(_grads(ref * scale, (h, w, b)), _grads(got * scale, (h, w, b))):
        torch.testing.assert_close(g_got, g_ref, rtol=1e-12, atol=1e-12)


def test_every_position_ignored_gives_zero_loss_and_gradients():
    h, w, b, target = _inputs((1, 9), dim=4, vocab=5, ignored=1.0)
    got = linear_cross_entropy(h, w, b, target, chunk_rows=4)
    assert got.item() == 0.0
    for g in _grads(got, (h, w, b)):
        assert torch.count_nonzero(g) == 0


def test_only_the_head_weight_needs_grad():
    h, w, b, target = _inputs((2, 7), dim=4, vocab=5)
    h = h.detach()
    ref = torch.autograd.grad(_plain(h, w, b, target), w)[0]
    got = torch.autograd.grad(linear_cross_entropy(h, w, b, target, chunk_rows=3), w)[0]
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_float32_is_close_to_float64():
    h, w, b, target = _inputs((1, 50), dim=8, vocab=300)
    ref = _plain(h, w, b, target)
    got = linear_cross_entropy(h.float(), w.float(), b.float(), target, chunk_rows=16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)


def test_chunk_rows_bound_the_logits_held():
    assert default_chunk_rows(256) * 256 == 1 << 20
    assert default_chunk_rows(10 ** 6) == 64


@pytest.mark.parametrize("change,match", [
    (dict(target=torch.tensor([[0, 5]])), r"target values must be in \[0, 5\)"),
    (dict(target=torch.tensor([[0]])), "target must have shape"),
    (dict(weight=torch.zeros(5, 3)), "weight must be"),
    (dict(bias=torch.zeros(4)), "bias must be"),
    (dict(chunk_rows=0), "chunk_rows must be"),
])
def test_bad_arguments_are_named(change, match):
    args = dict(h=torch.zeros(1, 2, 4), weight=torch.zeros(5, 4), bias=torch.zeros(5),
                target=torch.tensor([[0, 1]]), chunk_rows=None)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(**args)
