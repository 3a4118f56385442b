"""Activation checkpointing is exact: the same logits and every gradient, float64, one process."""
from __future__ import annotations

import pytest
import torch

from longmix.models.model import build_model

TOL = 1e-12
OPTIONS = {"softmax": {}, "linear": {}, "s4d": {"d_state": 4}, "mamba": {"d_state": 4, "d_conv": 3},
           "hyena": {"filter_hidden": 8, "short_kernel": 3}}


def run(model, tokens, dlogits, checkpoint: bool):
    model.zero_grad(set_to_none=True)
    model.checkpoint_activations = checkpoint
    out = model(tokens)
    out.backward(dlogits)
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("mixer", sorted(OPTIONS))
@pytest.mark.parametrize("head,length", [("lm", 13), ("lm", 1), ("classify", 9)])
def test_checkpointed_equals_not_checkpointed(mixer, head, length):
    torch.manual_seed(0)
    model = build_model(vocab_size=11, mixer=mixer, head=head, dim=8, depth=2, heads=2,
                        mixer_options=OPTIONS[mixer]).double()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (2, length), generator=g)
    shape = (2, length, 11) if head == "lm" else (2, 2)
    dlogits = torch.randn(shape, generator=g, dtype=torch.float64)
    want, want_grads = run(model, tokens, dlogits, checkpoint=False)
    got, got_grads = run(model, tokens, dlogits, checkpoint=True)
    assert rel_err(got, want) <= TOL
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        assert rel_err(got_grads[name], want_grads[name]) <= TOL, name


def test_checkpointing_keeps_less_for_backward():
    """What autograd keeps after the forward: with checkpointing, about the blocks' inputs."""
    torch.manual_seed(0)
    model = build_model(vocab_size=11, mixer="mamba", head="lm", dim=8, depth=2, heads=1)
    tokens = torch.randint(0, 11, (1, 256))

    def saved_bytes(checkpoint: bool) -> int:
        model.checkpoint_activations = checkpoint
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(tokens)
        return total

    assert saved_bytes(True) < 0.5 * saved_bytes(False)


def test_evaluation_without_gradients_runs_plainly():
    torch.manual_seed(0)
    model = build_model(vocab_size=11, mixer="s4d", head="lm", dim=8, depth=2,
                        mixer_options={"d_state": 4}).double()
    model.checkpoint_activations = True
    tokens = torch.randint(0, 11, (1, 7))
    with torch.no_grad():
        got = model(tokens)
    model.checkpoint_activations = False
    with torch.no_grad():
        want = model(tokens)
    assert torch.equal(got, want)
