"""``longmix.hf.moe.load_balancing_loss`` over ranks vs one process, float64: the value on every
rank and each rank's share of the logits' gradient (its own rows of the one-process gradient).

One process is checked against the Switch-Transformer formula written out with one-hot matrices
(float64, 1e-12) and against transformers' ``load_balancing_loss_func`` (which keeps its
statistics in float32 buffers even for float64 logits: within float32 rounding)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers.models.jamba.modeling_jamba import load_balancing_loss_func  # noqa: E402

import longmix.parallel as ld  # noqa: E402
from longmix.hf.moe import load_balancing_loss  # noqa: E402
from longmix.parallel.launch import run_local  # noqa: E402

EXPERTS, TOP_K, LAYERS, BATCH = 4, 2, 2, 2
EXACT = 1e-12
HF_AS_IT_RUNS = 1e-6  # HF's float32 statistics: 6e-8 relative rounding per division


def full_logits(length, seed=0):
    """Per layer, the whole sequence's router logits (batch, L, experts)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, length, EXPERTS, generator=g, dtype=torch.float64) for _ in range(LAYERS)]


def padding_mask(length):
    mask = torch.ones(BATCH, length, dtype=torch.int64)
    mask[0, : length // 3] = 0  # left padding in one row
    return mask


def switch_loss(flat_logits, mask):
    """E * sum_e f_e P_e with f and P over every layer's (unmasked) rows, by one-hot matrices."""
    weight = torch.ones(flat_logits[0].shape[0], dtype=torch.float64) if mask is None else mask.reshape(-1).double()
    probs = torch.stack([torch.softmax(t, -1) for t in flat_logits])  # (layers, rows, E)
    chosen = torch.nn.functional.one_hot(probs.topk(TOP_K, -1).indices, EXPERTS).sum(-2).double()
    rows = weight.sum() * len(flat_logits)
    f = torch.einsum("lre,r->e", chosen, weight) / rows
    p = torch.einsum("lre,r->e", probs, weight) / rows
    return EXPERTS * (f * p).sum()


def loss_and_grads(fn, logits, mask):
    leaves = [t.clone().requires_grad_() for t in logits]
    loss = fn(tuple(t.reshape(-1, EXPERTS) for t in leaves), mask)
    loss.backward()
    return loss.detach().double(), [t.grad for t in leaves]


def hf_loss(flat_logits, mask):
    return load_balancing_loss_func(flat_logits, EXPERTS, TOP_K, mask)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("length", [1, 9])
def test_one_process_equals_transformers(masked, length):
    logits = full_logits(length)
    mask = padding_mask(length) if masked else None
    got, grads = loss_and_grads(lambda t, m: load_balancing_loss(t, EXPERTS, TOP_K, m), logits, mask)
    for reference, tol in ((switch_loss, EXACT), (hf_loss, HF_AS_IT_RUNS)):
        want, want_grads = loss_and_grads(reference, logits, mask)
        assert rel_err(got, want) < tol, reference.__name__
        assert max(rel_err(a, b) for a, b in zip(grads, want_grads)) < tol, reference.__name__


def ranks_worker(group, cases):
    problems = []
    for length, layout, masked in cases:
        logits = full_logits(length)
        mask = padding_mask(length) if masked else None
        want, want_grads = loss_and_grads(switch_loss, logits, mask)
        local = [ld.shard(t, group, layout).detach().requires_grad_() for t in logits]
        local_mask = None if mask is None else ld.shard(mask, group, layout)
        loss = load_balancing_loss([t.reshape(-1, EXPERTS) for t in local], EXPERTS, TOP_K, local_mask, group)
        loss.backward()
        errors = {"loss": rel_err(loss.detach(), want)}
        for i, (t, g) in enumerate(zip(local, want_grads)):  # this rank's rows of the one-process gradient
            errors[f"grad layer {i}"] = (t.grad - ld.shard(g, group, layout)).abs().max().item() if t.numel() else 0.0
        if max(errors.values()) > EXACT:
            problems.append(f"L={length} {layout} masked={masked}: {errors}")
    return problems


@pytest.mark.parametrize("world", [2, 3])
def test_over_ranks_equals_one_process(world):
    cases = [(length, layout, masked) for length in (2, 11) for layout in ("contiguous", "zigzag")
             for masked in (False, True)]
    results = run_local(ranks_worker, world, (cases,), timeout=120, collective_timeout=60)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)


def test_bad_input_is_refused():
    logits = [torch.randn(6, EXPERTS)]
    with pytest.raises(ValueError, match="top_k must be"):
        load_balancing_loss(logits, EXPERTS, top_k=5)
    with pytest.raises(ValueError, match="gate_logits must be a non-empty tuple"):
        load_balancing_loss(logits[0], EXPERTS)
    with pytest.raises(ValueError, match="gate_logits must be"):
        load_balancing_loss([torch.randn(6, 3)], EXPERTS)
    with pytest.raises(ValueError, match="attention_mask must be"):
        load_balancing_loss(logits, EXPERTS, attention_mask=torch.ones(2, 4))
