"""``output_router_logits`` as a forward argument of a parallel MoE model, as transformers takes it
(it overrides the config's flag): the router's load-balancing loss is then recomputed over ranks
as when the config asks for it.

Mixtral and Jamba (tiny, from ``hf_models.hybrid_configs``, saved and loaded) with
``output_router_logits=False`` in their config, called with ``output_router_logits=True``; and
Mixtral with the flag in its config, called with ``output_router_logits=False`` (no router loss).
On 2 ranks (one launch), L = 11, both layouts, float64: logits, loss, ``aux_loss`` and the
gradients of the loss and of ``aux_loss`` alone (summed over ranks) against transformers' own
unsharded run with the same argument (within ``TOL_HF``, transformers' float32 router statistics
and norms, as in test_parallelize_hybrids) and against longmix's one-process run (``TOL_P1``). Measured: at most 1.2e-7 (logits), 9.8e-8
(loss), 1.1e-8 (aux_loss) and 3.0e-7 (gradients) against transformers; 6.2e-16 against P = 1.
A bad value, and True on a model without a router, are refused by name on every rank; a router
loss longmix does not recognise (Doge) is refused as with the config's flag.
"""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

import longmix.hf as lh  # noqa: E402
import longmix.parallel as lp  # noqa: E402
from hf_models import (aux_errors, backward, errors, family_configs, hybrid_configs,  # noqa: E402
                       inputs, load, load_cached, outcome, save_families)
from longmix.parallel.launch import run_local  # noqa: E402

LAYOUTS = ("contiguous", "zigzag")
LENGTH = 11
TOL_HF, TOL_P1 = 3e-6, 1e-10
# (saved family, the forward's output_router_logits)
CASES = (("mixtral_config_off", True), ("jamba_config_off", True), ("mixtral_config_on", False))


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    hybrids = hybrid_configs()
    configs = {}
    for name, source, flag in (("mixtral_config_off", "mixtral_router", False),
                               ("jamba_config_off", "jamba_router", False),
                               ("mixtral_config_on", "mixtral_router", True)):
        configs[name] = copy.deepcopy(hybrids[source])
        configs[name].output_router_logits = flag
    configs["llama"] = family_configs()["llama"]
    return save_families(tmp_path_factory.mktemp("hf_router_argument"), configs=configs)


def parallel_run(path: str, asked: bool, layout: str, group=None):
    model = load_cached(path, torch.float64)
    ids, labels = inputs(LENGTH)
    pmodel = lh.parallelize(model, group=group, layout=layout)
    out = pmodel(lp.shard(ids, group, layout), labels=lp.shard(labels, group, layout),
                 output_router_logits=asked)
    grads = backward(model, out, group)
    return outcome(lp.unshard(out.logits.detach(), group, layout), out, grads)


def transformers_run(path: str, asked: bool):
    model = load_cached(path, torch.float64)
    ids, labels = inputs(LENGTH)
    out = model(ids, labels=labels, output_router_logits=asked)
    return outcome(out.logits.detach(), out, backward(model, out))


def refusals(group, path: str) -> dict:
    """The message of the ValueError each refused call raises on this rank (None if none)."""
    pmodel = lh.parallelize(load(path, torch.float64), group=group)
    local = lp.shard(inputs(LENGTH)[0], group)
    messages = {}
    for name, value in (("no_router", True), ("bad_value", "yes")):
        try:
            pmodel(local, output_router_logits=value)
            messages[name] = None
        except ValueError as err:
            messages[name] = str(err)
    return messages


def ranks_worker(group, paths):
    results = [parallel_run(paths[name], asked, layout, group)
               for name, asked in CASES for layout in LAYOUTS]
    return results, refusals(group, paths["llama"])


@pytest.fixture(scope="module")
def two_ranks(paths):
    return run_local(ranks_worker, 2, (paths,), timeout=300, collective_timeout=120)


def test_the_argument_computes_the_router_loss_over_ranks(paths, two_ranks):
    results, problems = two_ranks[0][0], []
    cases = [(name, asked, layout) for name, asked in CASES for layout in LAYOUTS]
    references = {}
    for (name, asked, layout), (result, aux) in zip(cases, results):
        if name not in references:
            references[name] = (transformers_run(paths[name], asked),
                                parallel_run(paths[name], asked, "contiguous"))
        for what, (ref, ref_aux), tol in zip(("transformers", "P=1"), references[name],
                                             (TOL_HF, TOL_P1)):
            errs = {**errors(result, ref), **aux_errors(aux, ref_aux)}
            if max(errs.values()) > tol:
                problems.append(f"{name} output_router_logits={asked} {layout} vs {what}: {errs}")
        if (aux is not None) != asked:
            problems.append(f"{name} output_router_logits={asked}: aux_loss {aux is not None}")
    assert not problems, "\n".join(problems)
    # the argument changed what transformers computed: a router loss exactly where it was asked
    assert references["mixtral_config_off"][0][1] is not None
    assert references["mixtral_config_on"][0][1] is None


def test_refusals_name_the_argument_on_every_rank(two_ranks):
    for _, messages in two_ranks:
        assert "output_router_logits=True, but LlamaForCausalLM has no router" in messages["no_router"]
        assert "output_router_logits must be None, True or False, got 'yes'" in messages["bad_value"]


def test_an_unrecognised_router_loss_is_refused_when_asked_by_argument():
    from transformers import AutoModelForCausalLM, DogeConfig

    doge = DogeConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, is_moe=True,
                      num_experts=4, num_experts_per_tok=2, output_router_logits=False)
    with torch.device("meta"):
        pmodel = lh.parallelize(AutoModelForCausalLM.from_config(doge))
    with pytest.raises(ValueError, match="DogeForCausalLM: output_router_logits=True, and its router loss"):
        pmodel(torch.zeros(1, 4, dtype=torch.long), output_router_logits=True)
