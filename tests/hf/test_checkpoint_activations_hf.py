"""``longmix.hf.parallelize(..., checkpoint_activations=True)``: every decoder layer recomputed in
backward, collectives included, gives what the run without checkpointing gives.

A tiny Llama (ring attention) and a tiny Mamba (its mixers in a longmix parallel form), float64,
in training mode, L = 11 (uneven over 2 ranks), both layouts, on one process and on P = 2 (one
2-rank launch): logits (unsharded), loss and every parameter gradient (summed over ranks) with
checkpointing equal those without, to 1e-12 relative (the recompute runs the same operations on
the same inputs; measured 0). That the recompute really ran: the layers' Linear modules are
called more often, and on 2 ranks the ranks move more bytes (``CommStats``: the layers'
collectives run again in backward). The user's model is not changed either way. A rank with no
rows (L < P) refuses checkpointing, on every rank.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

import longmix.hf as lh  # noqa: E402
import longmix.parallel as lp  # noqa: E402
from hf_models import errors, inputs, load, save_families  # noqa: E402
from longmix.parallel.launch import run_local  # noqa: E402
from longmix.parallel.stats import CommStats  # noqa: E402

FAMILIES = ("llama", "mamba")
LAYOUTS = ("contiguous", "zigzag")
LENGTH = 11
TOL = 1e-12


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return save_families(tmp_path_factory.mktemp("hf_checkpoint"), names=FAMILIES)


def checkpointed_run(path: str, layout: str, checkpoint: bool, group=None) -> dict:
    """Logits (unsharded), loss and gradients (summed over ranks) of one training-mode forward
    and backward, with the calls of every Linear module and the bytes this rank moved."""
    model = load(path, torch.float64)
    ids, labels = inputs(LENGTH)
    stats = CommStats()
    pmodel = lh.parallelize(model, group=group, layout=layout, stats=stats,
                            checkpoint_activations=checkpoint).train()
    calls = [0]
    for module in pmodel.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    out = pmodel(lp.shard(ids, group, layout), labels=lp.shard(labels, group, layout))
    out.loss.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    if torch.distributed.is_initialized():
        for g in grads:
            torch.distributed.all_reduce(g, group=group)
    return {"result": (lp.unshard(out.logits.detach(), group, layout), out.loss.detach(), grads),
            "calls": calls[0], "bytes": stats.bytes_sent + stats.bytes_received,
            "model_checkpointing": model.is_activation_checkpointing}


def pairs(group, paths):
    """Rank body: (without, with) checkpointing for every family and layout."""
    return [(checkpointed_run(paths[name], layout, False, group),
             checkpointed_run(paths[name], layout, True, group))
            for name in FAMILIES for layout in LAYOUTS]


def pairs_and_refusal(group, paths):
    """:func:`pairs`, then the message of the ValueError a training forward with checkpointing
    raises when a rank holds no rows (L = 1 on 2 ranks; None if it does not raise)."""
    results = pairs(group, paths)
    pmodel = lh.parallelize(load(paths["llama"], torch.float64), group=group,
                            checkpoint_activations=True).train()
    try:
        pmodel(lp.shard(inputs(1)[0], group))
        return results, None
    except ValueError as err:
        return results, str(err)


def check(cases, ranks: int):
    problems = []
    for (name, layout), (plain, kept) in cases:
        errs = errors(kept["result"], plain["result"])
        where = f"P={ranks} {name} {layout}"
        if max(errs.values()) > TOL:
            problems.append(f"{where}: {errs}")
        if kept["calls"] <= plain["calls"]:
            problems.append(f"{where}: no recompute ({kept['calls']} Linear calls, "
                            f"{plain['calls']} without)")
        if ranks > 1 and kept["bytes"] <= plain["bytes"]:
            problems.append(f"{where}: collectives not rerun ({kept['bytes']} bytes, "
                            f"{plain['bytes']} without)")
        if kept["model_checkpointing"] or plain["model_checkpointing"]:
            problems.append(f"{where}: the user's model was switched to checkpointing")
    assert not problems, "\n".join(problems)


def labelled(results):
    return list(zip([(n, lay) for n in FAMILIES for lay in LAYOUTS], results))


def test_one_process_checkpointing_equals_no_checkpointing(paths):
    check(labelled(pairs(None, paths)), 1)


def test_two_ranks_checkpointing_equals_no_checkpointing(paths):
    got = run_local(pairs_and_refusal, 2, args=(paths,), timeout=300, collective_timeout=60)
    for results, refusal in got:
        check(labelled(results), 2)
        # the stand-in row of an empty rank is set up for one forward, not for a recompute
        assert refusal is not None and "checkpoint_activations needs every rank to hold rows " \
            "(L = 1 over 2 ranks leaves some empty)" in refusal, refusal


def test_the_models_own_setting_is_the_default_and_stays_its_own(paths):
    model = load(paths["llama"], torch.float64)
    model.activation_checkpointing_enable()  # transformers' own options (early stopping on)
    assert lh.parallelize(model).checkpoint_activations is True  # None: as the model
    off = lh.parallelize(model, checkpoint_activations=False)
    assert not off.model.is_activation_checkpointing and model.is_activation_checkpointing
    model.activation_checkpointing_disable()
    on = lh.parallelize(model, checkpoint_activations=True)
    assert on.model.is_activation_checkpointing and not model.is_activation_checkpointing
    assert {id(p) for p in on.parameters()} == {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match="checkpoint_activations must be None, True or False"):
        lh.parallelize(model, checkpoint_activations="yes")
