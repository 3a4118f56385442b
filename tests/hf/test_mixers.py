"""``longmix.hf.mixer_from_hf`` against transformers' own modules, in float64.

Each HF mixer is built from a small config with every parameter perturbed away from its
initial value (so a dropped norm weight, a D of ones or a zero bias cannot hide). The longmix
mixer must:
- give HF's output and every parameter's (and the input's) gradient: to float64 rounding when
  transformers' float32 casts are switched off (``longmix.hf.float64``), and within the rounding
  those casts cause (measured by ``benchmarks/hf_mixers_precision.py``) when HF runs as it is;
- hold HF's parameters themselves (same objects, same storage; an in-place change shows);
- run exactly in longmix's sequence-parallel forms ("state", "shuffle") on 2 and 3 ranks;
- refuse, naming the option, every HF setting it does not compute.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import (FalconMambaConfig, FalconMambaForCausalLM, JambaConfig, JambaForCausalLM,  # noqa: E402
                          MambaConfig, MambaForCausalLM)
from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaMixer
from transformers.models.jamba.modeling_jamba import JambaMambaMixer  # noqa: E402
from transformers.models.mamba.modeling_mamba import MambaMixer  # noqa: E402

import longmix.parallel as ld  # noqa: E402
from longmix.hf import HF_MIXER_CLASSES, mixer_from_hf  # noqa: E402
from longmix.hf.float64 import float32_casts_off  # noqa: E402
from longmix.mixers.ssm import Mamba  # noqa: E402
from longmix.parallel.launch import run_local  # noqa: E402

BATCH = 2
LENGTHS = (1, 7, 33)
EXACT = 1e-12  # float64 rounding: HF with its float32 casts off
# HF as it runs in float64 keeps float32 casts (A_log, D, dt bias, B and the SSM input; Jamba's
# RMSNorms). benchmarks/results/hf_mixers_precision.md measured at most 3.1e-7 (outputs) and
# 8.4e-7 (gradients) over these 6 configs, 5 seeds each (HF in float32: 4.2e-7 and 2.1e-6); the
# tolerance leaves about 10x for other seeds.
HF_AS_IT_RUNS = 1e-5

# name -> (HF class, config kwargs): every option that changes the operator takes both values
CONFIGS = {
    "mamba": (MambaMixer, dict(hidden_size=16, state_size=4, expand=2, conv_kernel=4, time_step_rank=3)),
    "mamba_biases": (MambaMixer, dict(hidden_size=24, state_size=8, expand=1, conv_kernel=2,
                                      time_step_rank="auto", use_conv_bias=False, use_bias=True,
                                      hidden_act="swish")),
    "mamba_wide": (MambaMixer, dict(hidden_size=32, state_size=6, expand=3, conv_kernel=1, time_step_rank=5)),
    "jamba": (JambaMambaMixer, dict(hidden_size=16, mamba_d_state=4, mamba_expand=2, mamba_d_conv=4,
                                    mamba_dt_rank=3)),
    "jamba_biases": (JambaMambaMixer, dict(hidden_size=24, mamba_d_state=8, mamba_expand=1, mamba_d_conv=3,
                                           mamba_dt_rank=2, mamba_conv_bias=False, mamba_proj_bias=True,
                                           rms_norm_eps=1e-3)),
    "falcon": (FalconMambaMixer, dict(hidden_size=16, state_size=4, expand=2, conv_kernel=3, time_step_rank=3,
                                      mixer_rms_eps=1e-3, use_bias=True)),
}
CONFIG_CLASSES = {MambaMixer: MambaConfig, JambaMambaMixer: JambaConfig, FalconMambaMixer: FalconMambaConfig}


def _construct(cls, config) -> torch.nn.Module:
    """cls(config, 0) in float64. FalconMambaMixer initializes its weights before it creates the
    norms whose weights that initialization sets (transformers 5.23), so it is initialized after."""
    if cls is FalconMambaMixer:
        module = cls(config, 0, initialize_mixer_weights=False)
        module.init_falcon_mamba_weights()
        return module.double()
    return cls(config, 0).double()


def hf_mixer(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """The HF module of CONFIGS[name] in float64, every parameter perturbed from its init."""
    cls, kwargs = CONFIGS[name]
    config = CONFIG_CLASSES[cls](num_hidden_layers=1, **{**kwargs, **overrides})
    torch.manual_seed(seed)
    module = _construct(cls, config)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def inputs(module, length, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, length, module.hidden_size, generator=g, dtype=torch.float64)
    return x, torch.randn(x.shape, generator=g, dtype=torch.float64)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def output_and_grads(fn, module, x, dy):
    """fn(x), d/dx and d/d(every parameter of ``module``) of <fn(x), dy>, in module.parameters() order."""
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = fn(x)
    y.backward(dy)
    grads = {"x": x.grad}
    grads.update({name: p.grad.clone() for name, p in module.named_parameters()})
    module.zero_grad(set_to_none=True)
    return y.detach(), grads


def worst_errors(hf_module, mixer, x, dy, casts_off: bool):
    if casts_off:
        with float32_casts_off():
            want, want_grads = output_and_grads(hf_module, hf_module, x, dy)
    else:
        want, want_grads = output_and_grads(hf_module, hf_module, x, dy)
    got, got_grads = output_and_grads(mixer, hf_module, x, dy)
    grad_errors = {name: rel_err(got_grads[name], want_grads[name]) for name in want_grads}
    return rel_err(got, want), grad_errors


# -- the same operator -------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("length", LENGTHS)
def test_equals_hf_in_float64_with_its_float32_casts_off(name, length):
    module = hf_mixer(name)
    mixer = mixer_from_hf(module, chunk_size=4)  # chunks inside the sequence, not one
    x, dy = inputs(module, length)
    out, grads = worst_errors(module, mixer, x, dy, casts_off=True)
    assert out < EXACT, out
    assert max(grads.values()) < EXACT, grads
    with torch.no_grad():  # and longmix's literal path (L x L matrices) agrees with it
        assert rel_err(mixer.reference(x), mixer(x)) < EXACT


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("length", LENGTHS)
def test_equals_hf_as_it_runs_within_its_float32_rounding(name, length):
    module = hf_mixer(name)
    mixer = mixer_from_hf(module)
    x, dy = inputs(module, length)
    out, grads = worst_errors(module, mixer, x, dy, casts_off=False)
    assert out < HF_AS_IT_RUNS and max(grads.values()) < HF_AS_IT_RUNS, (out, grads)


def test_jamba_and_falcon_mamba_are_mamba_with_bcdt_norms():
    mixer = mixer_from_hf(hf_mixer("jamba_biases"))
    assert isinstance(mixer, Mamba) and mixer.causal and len(mixer.selective) == 1
    norms = mixer.selective[0].norms
    assert norms is not None and all(norm.eps == 1e-3 for norm in norms)
    assert mixer_from_hf(hf_mixer("mamba")).selective[0].norms is None
    falcon = mixer_from_hf(hf_mixer("falcon")).selective[0].norms  # weightless
    assert all(norm.weight is None and norm.eps == 1e-3 for norm in falcon)


@pytest.mark.parametrize("name", ["mamba_biases", "jamba"])
def test_continuation_from_a_state_equals_forward(name):
    """Step mode of the HF-derived mixer (conv without bias, projection biases, norms)."""
    module = hf_mixer(name)
    mixer = mixer_from_hf(module)
    x, _ = inputs(module, 11)
    with torch.no_grad():
        state, ys = mixer.init_state(BATCH), []
        for a, b in ((0, 1), (1, 5), (5, 5), (5, 11)):
            y, state = mixer.forward_with_state(x[:, a:b], state)
            ys.append(y)
        assert rel_err(torch.cat(ys, 1), mixer(x)) < EXACT


# -- inside a whole model, saved and loaded -------------------------------------------------------
MODELS = {
    "mamba": (MambaForCausalLM, MambaConfig(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=2,
                                            conv_kernel=3, time_step_rank=2), {}),
    "falcon": (FalconMambaForCausalLM, FalconMambaConfig(vocab_size=50, hidden_size=16, state_size=4,
                                                         num_hidden_layers=2, conv_kernel=3, time_step_rank=2), {}),
    # attention at layer 2, MoE at odd layers; float64 experts need the eager implementation
    "jamba": (JambaForCausalLM, JambaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                            num_attention_heads=2, num_key_value_heads=1, num_experts=4,
                                            num_experts_per_tok=2, attn_layer_period=4, attn_layer_offset=2,
                                            mamba_d_state=4, mamba_d_conv=3, mamba_dt_rank=2),
              {"experts_implementation": "eager"}),
}


@pytest.mark.parametrize("name", MODELS)
def test_longmix_mixers_in_place_of_a_loaded_models_mixers_give_its_logits(name, tmp_path):
    """A model saved to and loaded from a directory (the real loading path), every HF mixer's
    output replaced by its longmix mixer's (a forward hook): the same logits, in float64."""
    model_cls, config, load_options = MODELS[name]
    torch.manual_seed(0)
    model_cls(config).save_pretrained(tmp_path)
    model = model_cls.from_pretrained(tmp_path, dtype=torch.float64, **load_options).eval()
    hf_mixers = [m for m in model.modules() if type(m).__name__ in HF_MIXER_CLASSES]
    with torch.no_grad():  # the initial mixers barely touch the residual stream: make them count
        for module in hf_mixers:
            for p in module.parameters():
                p.add_(0.3 * torch.randn_like(p))
    ours = {module: mixer_from_hf(module) for module in hf_mixers}
    ids = torch.randint(config.vocab_size, (BATCH, 9), generator=torch.Generator().manual_seed(1))
    calls = []

    def logits_with(replace):
        def hook(module, args, kwargs, output):
            calls.append(module)
            return replace(module, args[0] if args else kwargs["hidden_states"])
        hooks = [module.register_forward_hook(hook, with_kwargs=True) for module in hf_mixers]
        try:
            with torch.no_grad(), float32_casts_off():
                return model(ids).logits
        finally:
            for handle in hooks:
                handle.remove()

    with torch.no_grad(), float32_casts_off():
        want = model(ids).logits
    got = logits_with(lambda module, x: ours[module](x))
    assert len(calls) == len(hf_mixers) >= 2
    assert rel_err(got, want) < EXACT
    without = logits_with(lambda module, x: torch.zeros_like(x))  # the mixers do matter
    assert rel_err(without, want) > 1e-3


# -- the same parameters -----------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_parameters_are_the_hf_modules_own(name):
    module = hf_mixer(name)
    mixer = mixer_from_hf(module)
    hf_params = list(module.parameters())
    ours = list(mixer.parameters())
    # the same objects, every HF parameter used once, none of longmix's own
    assert {id(p) for p in ours} == {id(p) for p in hf_params} and len(ours) == len(hf_params)
    assert {p.data_ptr() for p in ours} == {p.data_ptr() for p in hf_params}
    assert sum(p.numel() for p in ours) == sum(p.numel() for p in hf_params)
    # a dtype conversion of the HF module (Module._apply keeps Parameter objects) keeps them shared
    module.float()
    assert all(p.dtype == torch.float32 for p in mixer.parameters())
    assert {id(p) for p in mixer.parameters()} == {id(p) for p in module.parameters()}


@pytest.mark.parametrize("name", ["mamba_biases", "jamba", "falcon"])
def test_an_in_place_change_to_an_hf_weight_changes_the_longmix_output(name):
    module = hf_mixer(name)
    mixer = mixer_from_hf(module)
    x, _ = inputs(module, 7)
    for pname, p in module.named_parameters():
        with torch.no_grad():
            before = mixer(x)
            p.mul_(1.5)  # HF's parameter, changed where it lives
            after = mixer(x)
            with float32_casts_off():
                want = module(x)
        assert rel_err(after, before) > 1e-6, f"{pname}: the longmix output did not change"
        assert rel_err(after, want) < EXACT, pname


# -- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, overrides, option", [
    ("mamba", dict(hidden_act="gelu"), "hidden_act"),
    ("mamba", dict(hidden_act="relu"), "hidden_act"),  # (expand: HF's config itself takes integers only)
    ("jamba", dict(hidden_act="relu"), "hidden_act"),
    ("falcon", dict(hidden_act="gelu"), "hidden_act"),
])
def test_an_hf_option_longmix_does_not_compute_is_refused_by_name(name, overrides, option):
    with pytest.raises(ValueError, match=option):
        mixer_from_hf(hf_mixer(name, **overrides))


def test_replaced_layers_and_quantized_models_are_refused():
    class OtherLinear(torch.nn.Linear):
        pass

    module = hf_mixer("mamba")
    module.in_proj = OtherLinear(16, 64).double()
    with pytest.raises(ValueError, match="in_proj: expected a plain torch Linear"):
        mixer_from_hf(module)
    module = hf_mixer("jamba")
    module.config._is_quantized = True
    with pytest.raises(ValueError, match="quantization"):
        mixer_from_hf(module)
    module = hf_mixer("jamba")
    module.b_layernorm.variance_epsilon = 1e-5
    with pytest.raises(ValueError, match="rms_norm_eps"):
        mixer_from_hf(module)


def test_modules_without_a_longmix_mixer_are_refused():
    with pytest.raises(ValueError, match="no longmix mixer for torch.nn.modules.linear.Linear"):
        mixer_from_hf(torch.nn.Linear(2, 2))

    class MambaMixer(torch.nn.Module):  # the name alone is not enough: not transformers' class
        pass

    supported = "supported transformers classes: .*JambaMambaMixer.*MambaMixer"
    with pytest.raises(ValueError, match=supported):
        mixer_from_hf(MambaMixer())
    with pytest.raises(ValueError, match=r"unknown options \['d_state'\]"):
        mixer_from_hf(hf_mixer("mamba"), d_state=8)
    assert set(HF_MIXER_CLASSES) >= {"MambaMixer", "JambaMambaMixer", "FalconMambaMixer"}


# -- sequence-parallel forms -------------------------------------------------------------------
PARALLEL_TOL = 1e-10


def parallel_worker(group, cases) -> list[str]:
    """Each case: an HF mixer's longmix form on this group vs one process; problems found."""
    problems = []
    for name, form, layout, length in cases:
        module = hf_mixer(name)
        mixer = mixer_from_hf(module, chunk_size=3)
        x, dy = inputs(module, length)
        want, want_grads = output_and_grads(mixer, module, x, dy)
        pmixer = ld.parallelize(mixer, group, layout, forms=form)
        x_local = ld.shard(x, group, layout).requires_grad_()
        y = pmixer(x_local)
        y.backward(ld.shard(dy, group, layout))
        errors = {"out": rel_err(ld.unshard(y.detach(), group, layout), want),
                  "dx": rel_err(ld.unshard(x_local.grad, group, layout), want_grads["x"])}
        for pname, p in module.named_parameters():  # the HF parameters' grads, summed over ranks
            grad = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            torch.distributed.all_reduce(grad, group=group)
            errors[pname] = rel_err(grad, want_grads[pname])
        module.zero_grad(set_to_none=True)
        worst = max(errors, key=errors.get)
        if not errors[worst] <= PARALLEL_TOL:
            problems.append(f"{name} {form} {layout} L={length}: {worst} error {errors[worst]:.2e}")
    return problems


@pytest.mark.parametrize("world, length", [(2, 7), (3, 11), (3, 2)])  # uneven; L < P
def test_hf_mixers_run_exactly_in_longmix_parallel_forms(world, length):
    cases = [(name, form, layout, length) for name in ("mamba_biases", "jamba_biases", "falcon")
             for form in ("state", "shuffle") for layout in ("contiguous", "zigzag")]
    results = run_local(parallel_worker, world, (cases,), timeout=240, collective_timeout=60)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)
