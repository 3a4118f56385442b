"""``longmix.hf.parallelize`` on whole hybrid and MoE models against transformers' unsharded model.

The models of ``hf_models.hybrid_configs`` (tiny, random, saved with ``save_pretrained`` and
loaded with ``from_pretrained(path)``): Mamba-2; Bamba, Nemotron-H and Zamba2, whose Mamba-2
layers run as longmix ``mamba2`` between attention (and MLP/MoE) layers; Granite-MoE-Hybrid, the
same with MoE layers and muP multipliers; Qwen3-Next, gated DeltaNet layers as longmix
``gated_deltanet`` with attention and MoE layers; and the router's load-balancing loss
(``output_router_logits=True``, coefficient 0.5) of Qwen3-Next, Granite-MoE-Hybrid, Mixtral and
Jamba, reduced over ranks by ``longmix.hf.moe.load_balancing_loss``.

For P in {2, 3} (the first P ranks of one 3-rank launch), L = 11 (uneven for both) and L = 2 < P
= 3, both layouts, float64: logits (unsharded), loss, ``aux_loss`` and every parameter gradient
(summed over ranks), and for the router families the gradients of ``aux_loss`` alone, against

- transformers' own run, unsharded: within :data:`TOL_HF` (its float32 casts in norms, SSM
  parameters, rotary tables, the loss and the router statistics). Measured at most 2.4e-7
  (logits), 1.6e-7 (loss), 1.0e-7 (aux_loss) and 1.2e-6 (gradients of the loss or of
  aux_loss, relative per parameter), except Qwen3-Next's gradients, 8.1e-6 (:data:`TOL_HF_OF`);
- longmix's own one-process run: within :data:`TOL_P1`. Measured at most 5.4e-15, except the
  RMSNorm weights of Nemotron-H and Qwen3-Next, whose gradient transformers sums over rows in
  float32 (``hf_models.float32_grads``): 2.3e-7, held to :data:`TOL_HF`.

One launch of 3 ranks holds every case; most of its time (about a minute on a loaded 2-core
machine) is starting ranks that import transformers.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import longmix.hf as lh  # noqa: E402
import longmix.parallel as lp  # noqa: E402
from hf_models import (aux_errors, backward, errors, float32_grads, hybrid_configs,  # noqa: E402
                       inputs, load, load_cached, outcome, save_families)
from longmix.parallel.launch import run_local  # noqa: E402

SIZES = (2, 3)
LAYOUTS = ("contiguous", "zigzag")
LONG, SHORT = 11, 2   # SHORT < P = 3: one rank holds no rows
SHORT_FAMILY = "qwen3_next"  # DeltaNet, attention, MoE and the router loss at once
TOL_HF, TOL_P1 = 3e-6, 1e-10
# Qwen3-Next's DeltaNet torch path runs the whole delta rule in float32 (test_gated_deltanet_hf:
# up to 1.1e-3 on dA_log per module at L = 64); measured here 8.1e-6 (A_log, dt_bias)
TOL_HF_OF = {"qwen3_next": 3e-5}
ROUTER_FAMILIES = ("qwen3_next", "granite_hybrid", "mixtral_router", "jamba_router")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return save_families(tmp_path_factory.mktemp("hf_hybrids"), configs=hybrid_configs())


def cases(paths, size):
    out = [(name, LONG, layout) for name in paths for layout in LAYOUTS]
    if SHORT < size:
        out += [(SHORT_FAMILY, SHORT, layout) for layout in LAYOUTS]
    return out


def run(path: str, seq_len: int, layout: str, group=None):
    """:func:`outcome` of the parallel model: logits unsharded, gradients summed over the ranks of
    ``group`` (one process without torch.distributed)."""
    model = load_cached(path, torch.float64)
    ids, labels = inputs(seq_len)
    pmodel = lh.parallelize(model, group=group, layout=layout)
    out = pmodel(lp.shard(ids, group, layout), labels=lp.shard(labels, group, layout))
    grads = backward(model, out, group)
    return outcome(lp.unshard(out.logits.detach(), group, layout), out, grads)


def transformers_run(path: str, seq_len: int):
    """:func:`outcome` of transformers' own model, unsharded."""
    model = load_cached(path, torch.float64)
    ids, labels = inputs(seq_len)
    out = model(ids, labels=labels)
    return outcome(out.logits.detach(), out, backward(model, out))


def ranks_worker(group, sizes, cases_by_size, paths):
    dist = torch.distributed
    rank, results = dist.get_rank(), {}
    for size in sizes:
        sub = dist.new_group(list(range(size)))  # every rank takes part in creating each group
        if rank < size:
            results[size] = [run(paths[name], seq_len, layout, sub)
                             for name, seq_len, layout in cases_by_size[size]]
        dist.barrier()
    return results if rank == 0 else None


@pytest.fixture(scope="module")
def sharded(paths):
    by_size = {size: cases(paths, size) for size in SIZES}
    return run_local(ranks_worker, max(SIZES), (SIZES, by_size, paths), timeout=300,
                     collective_timeout=120)[0]


def test_hybrids_match_transformers_and_one_process(paths, sharded):
    references, problems = {}, []
    for size in SIZES:
        for (name, seq_len, layout), (result, aux) in zip(cases(paths, size), sharded[size]):
            key = (name, seq_len)
            if key not in references:
                references[key] = (transformers_run(paths[name], seq_len),
                                   run(paths[name], seq_len, "contiguous"))
            bounds = (TOL_HF_OF.get(name, TOL_HF), TOL_P1)
            for what, (ref, ref_aux), tol in zip(("transformers", "P=1"), references[key], bounds):
                loose = float32_grads(paths[name]) if what == "P=1" else set()
                errs = {**errors(result, ref, loose), **aux_errors(aux, ref_aux, loose)}
                float32 = ("float32_grads", "aux_float32_grads")
                if not (max(v for k, v in errs.items() if k not in float32) <= tol
                        and max(errs.get(k, 0.0) for k in float32) <= TOL_HF):
                    problems.append(f"P={size} {name} L={seq_len} {layout} vs {what}: {errs} "
                                    f"(bound {tol:g})")
    assert not problems, "\n".join(problems)
    assert all(references[(name, LONG)][0][1] is not None for name in ROUTER_FAMILIES)


def test_plans_name_each_layer_kind(paths):
    kinds = {name: [p.kind for p in lh.parallelize(load_cached(path, torch.float64)).layers]
             for name, path in paths.items()}
    assert kinds["bamba"] == ["attention", "mixer", "mixer"]
    assert kinds["nemotron_h"] == ["attention", "mixer"]
    assert kinds["zamba2"] == ["attention", "mixer", "mixer", "mixer"]  # one shared attention
    assert kinds["qwen3_next"] == ["attention", "mixer", "mixer"]
    assert kinds["granite_hybrid"] == ["attention", "mixer", "mixer"]


def test_router_loss_counts_in_the_loss(paths):
    """The aux loss is really added: with the coefficient set to 0 the loss drops by 0.5 * aux."""
    model = load(paths["mixtral_router"], torch.float64)
    ids, labels = inputs(LONG)
    with_aux = lh.parallelize(model)(ids, labels=labels)
    model.config.router_aux_loss_coef = 0.0
    model.router_aux_loss_coef = 0.0
    without = lh.parallelize(model)(ids, labels=labels)
    assert with_aux.aux_loss > 0
    assert torch.allclose(with_aux.loss - without.loss, 0.5 * with_aux.aux_loss, rtol=1e-12, atol=0)


def _meta_model(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def test_refusals_name_the_reason():
    from transformers import DogeConfig, FalconH1Config, LlamaConfig, ZayaConfig

    small = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    falcon_h1 = FalconH1Config(**small, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8,
                               mamba_d_state=4, mamba_d_conv=3)
    with pytest.raises(ValueError, match=r"'model.layers.0.mamba' \(FalconH1Mixer\): Falcon-H1 scales"):
        lh.parallelize(_meta_model(falcon_h1))
    doge = DogeConfig(**small, is_moe=True, num_experts=4, num_experts_per_tok=2,
                      output_router_logits=True)
    with pytest.raises(ValueError, match="DogeForCausalLM: output_router_logits=True, and its router loss"):
        lh.parallelize(_meta_model(doge))
    # Zaya's "hybrid" layers: attention with convolutions on q and k, not Zamba2's "hybrid"
    zaya = ZayaConfig(**{k: v for k, v in small.items() if k != "intermediate_size"})
    with pytest.raises(ValueError, match="layer type 'hybrid' is not softmax attention"):
        lh.parallelize(_meta_model(zaya))
    # a convolution inside an attention module is refused, not dropped
    llama = _meta_model(LlamaConfig(**small))
    with torch.device("meta"):
        llama.model.layers[1].self_attn.qk_conv = torch.nn.Conv1d(8, 8, 3, groups=8)
    with pytest.raises(ValueError, match=r"'model.layers.1.self_attn' \(LlamaAttention, with a Conv1d\)"):
        lh.parallelize(llama)
