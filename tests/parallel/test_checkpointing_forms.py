"""Activation checkpointing on ranks is exact: a checkpointed parallel LM gives the logits and
gradients of the same model without checkpointing, on the same ranks and on one process (float64),
in every form; its collectives run again in backward, and CommStats counts them."""
from __future__ import annotations

import torch

import longmix.parallel as ld
from helpers import rel_err, summed_grads
from longmix.models.model import build_model
from longmix.parallel.launch import run_local

SAME_RANKS_TOL = 1e-12  # the same computation recomputed
ONE_PROCESS_TOL = 1e-10  # sums in another order (as tests/parallel/test_parallelize.py)

# (mixer, options, form, layout)
CASES = [
    ("mamba", {"d_state": 4, "d_conv": 3}, "shuffle", "contiguous"),
    ("mamba", {"d_state": 4, "d_conv": 3}, "state", "zigzag"),
    ("s4d", {"d_state": 4}, "state", "contiguous"),
    ("softmax", {}, "ring", "zigzag"),
    ("softmax", {}, "shuffle", "contiguous"),
]


def step(runner, model, tokens, dlogits, group, layout):
    """Forward and backward on this rank's shard: (full logits, summed gradients, bytes sent
    by the forward, bytes sent in all)."""
    model.zero_grad(set_to_none=True)
    stats = runner.stats
    stats.bytes_sent = 0
    out = runner(ld.shard(tokens, group, layout))
    forward_bytes = stats.bytes_sent
    out.backward(ld.shard(dlogits, group, layout))
    return (ld.unshard(out.detach(), group, layout), summed_grads(model, group), forward_bytes,
            stats.bytes_sent)


def checkpoint_worker(group, seq_len: int) -> list[str]:
    problems = []
    for mixer, options, form, layout in CASES:
        torch.manual_seed(0)
        model = build_model(vocab_size=11, mixer=mixer, head="lm", dim=8, depth=2, heads=4,
                            mixer_options=options).double()
        g = torch.Generator().manual_seed(1)
        tokens = torch.randint(0, 11, (2, seq_len), generator=g)
        dlogits = torch.randn(2, seq_len, 11, generator=g, dtype=torch.float64)
        model.zero_grad(set_to_none=True)
        ref = model(tokens)
        ref.backward(dlogits)
        ref_grads = [p.grad.clone() for p in model.parameters()]
        plain = ld.parallelize(model, group, layout, forms=form, stats=ld.CommStats())
        kept = ld.parallelize(model, group, layout, forms=form, stats=ld.CommStats(),
                              checkpoint_activations=True)
        out, grads, fwd, total = step(plain, model, tokens, dlogits, group, layout)
        c_out, c_grads, c_fwd, c_total = step(kept, model, tokens, dlogits, group, layout)
        name = f"{mixer} {form} {layout} L={seq_len}"
        errors = {"logits": rel_err(c_out, out)}
        errors.update({f"grad {i}": rel_err(a, b) for i, (a, b) in enumerate(zip(c_grads, grads))})
        worst = max(errors, key=errors.get)
        if not errors[worst] <= SAME_RANKS_TOL:
            problems.append(f"{name}: checkpointed vs not, {worst} error {errors[worst]:.2e}")
        errors = {"logits": rel_err(c_out, ref.detach())}
        errors.update({f"grad {i}": rel_err(a, b) for i, (a, b) in enumerate(zip(c_grads, ref_grads))})
        worst = max(errors, key=errors.get)
        if not errors[worst] <= ONE_PROCESS_TOL:
            problems.append(f"{name}: checkpointed vs one process, {worst} error {errors[worst]:.2e}")
        # the recompute runs every forward collective once more, in backward
        if c_fwd != fwd or c_total != total + fwd or not fwd:
            problems.append(f"{name}: bytes forward {c_fwd} vs {fwd}, in all {c_total} vs "
                            f"{total} + {fwd}")
    return problems


def test_checkpointed_parallel_models_equal_plain_ones_and_one_process():
    for seq_len in (9, 2):  # uneven shards; a shard of one row
        results = run_local(checkpoint_worker, 2, (seq_len,), timeout=300, collective_timeout=60)
        problems = [p for rank_problems in results for p in rank_problems]
        assert not problems, "\n".join(problems)


def mixer_worker(group) -> list[str]:
    """parallelize(mixer, checkpoint_activations=True): the same output and gradients."""
    torch.manual_seed(0)
    from longmix import mixers

    mixer = mixers.build("s4d", 8, causal=True, d_state=4).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = []
    for checkpoint in (False, True):
        mixer.zero_grad(set_to_none=True)
        local = ld.shard(x, group).clone().requires_grad_(True)
        y = ld.parallelize(mixer, group, forms="state", checkpoint_activations=checkpoint)(local)
        y.backward(torch.ones_like(y))
        results.append([y.detach(), local.grad] + [p.grad.clone() for p in mixer.parameters()])
    return [f"tensor {i}: {rel_err(a, b):.2e}" for i, (a, b) in enumerate(zip(*results))
            if not rel_err(a, b) <= SAME_RANKS_TOL]


def test_checkpointed_parallel_mixer_is_exact():
    results = run_local(mixer_worker, 2, timeout=120, collective_timeout=60)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)
