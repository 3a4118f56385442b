"""transformers' Gated DeltaNet layers (Qwen3-Next, Qwen3.5, Qwen3.5-MoE, Qwen4-Exp) -> longmix's
gated_deltanet, sharing parameters: float64 output and gradients against the HF module's own torch
path (``torch_chunk_gated_delta_rule``).

Two tolerances. As transformers runs ("as_run"), its torch path computes the whole delta rule in
float32 even for a float64 module (q, k, v, beta, g cast to float32; the gated norm too): measured
max relative error (max |diff| / max |HF|) 1.9e-6 for outputs, 1.1e-3 for gradients (dA_log and
ddt_bias: small sums of cancelling terms), at L = 1, 7, 64. With those casts off ("float64",
longmix.hf.float64) the same HF code runs in float64 and agrees to 5e-12: the as-run gap
is float32 rounding, not a difference of operator.
"""
import contextlib

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (OlmoHybridConfig, Qwen3_5MoeTextConfig, Qwen3_5TextConfig, Qwen3NextConfig,  # noqa: E402
                          Qwen4ExpTextConfig)
from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridGatedDeltaNet  # noqa: E402
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet  # noqa: E402
from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeGatedDeltaNet  # noqa: E402
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet  # noqa: E402
from transformers.models.qwen4_exp.modeling_qwen4_exp import Qwen4ExpTextGatedDeltaNet  # noqa: E402

from longmix.hf.float64 import float32_casts_off  # noqa: E402
from longmix.hf.gated_deltanet import HF_CLASSES, from_hf  # noqa: E402
from longmix.mixers.delta import GatedDeltaNet  # noqa: E402

# (outputs, gradients) per mode; measured maxima in the module docstring
TOLS = {"as_run": (1e-5, 1e-2), "float64": (1e-10, 1e-10)}
SMALL = dict(num_hidden_layers=1, vocab_size=10, num_attention_heads=2, num_key_value_heads=2,
             layer_types=["linear_attention"])
CONFIGS = {
    "grouped": dict(linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=6,
                    linear_value_head_dim=5, linear_conv_kernel_dim=4),
    "equal": dict(linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=4,
                  linear_value_head_dim=8, linear_conv_kernel_dim=3),
}


# (HF class, its config) for every mapped class
MODELS = {"Qwen3NextGatedDeltaNet": (Qwen3NextGatedDeltaNet, Qwen3NextConfig),
          "Qwen3_5GatedDeltaNet": (Qwen3_5GatedDeltaNet, Qwen3_5TextConfig),
          "Qwen3_5MoeGatedDeltaNet": (Qwen3_5MoeGatedDeltaNet, Qwen3_5MoeTextConfig),
          "Qwen4ExpTextGatedDeltaNet": (Qwen4ExpTextGatedDeltaNet, Qwen4ExpTextConfig)}
CASES = [(model, kind) for model in MODELS for kind in CONFIGS]


def build(model, kind, seed=0):
    torch.manual_seed(seed)
    cls, config = MODELS[model]
    module = cls(config(hidden_size=16, **CONFIGS[kind], **SMALL), 0).double()
    with torch.no_grad():  # move the dynamics and the norm off their init values
        for p in (module.A_log, module.dt_bias, module.norm.weight):
            p.add_(0.3 * torch.randn_like(p))
    return module


def test_every_mapped_class_is_tested():
    assert set(MODELS) == set(HF_CLASSES)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("model,kind", CASES)
def test_parameters_are_the_modules_own(model, kind):
    module = build(model, kind)
    mixer = from_hf(module)
    assert isinstance(mixer, GatedDeltaNet) and mixer.causal
    assert {id(p) for p in mixer.parameters()} == {id(p) for p in module.parameters()}


@pytest.mark.parametrize("mode", list(TOLS))
@pytest.mark.parametrize("model,kind", CASES)
@pytest.mark.parametrize("length", [1, 7, 64])
def test_output_and_gradients_match_transformers(model, kind, length, mode):
    module = build(model, kind)
    mixer = from_hf(module, chunk_size=5)  # a chunk size that divides none of the lengths but 1
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, length, 16, generator=g, dtype=torch.float64)
    dy = torch.randn(2, length, 16, generator=g, dtype=torch.float64)

    def run(fn):
        module.zero_grad()
        xg = x.clone().requires_grad_()
        y = fn(xg)
        y.backward(dy)
        return [y.detach(), xg.grad] + [p.grad.clone() for p in module.parameters()]

    with float32_casts_off() if mode == "float64" else contextlib.nullcontext():
        want = run(module)
    got = run(mixer)
    names = ["out", "dx"] + [n for n, _ in module.named_parameters()]
    errors = {n: rel_err(a, b) for n, a, b in zip(names, got, want)}
    out_tol, grad_tol = TOLS[mode]
    assert errors.pop("out") < out_tol and max(errors.values()) < grad_tol, errors


def test_olmo_hybrid_is_refused_by_name():
    config = OlmoHybridConfig(hidden_size=16, **CONFIGS["equal"],
                              **{**SMALL, "num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"]})
    module = OlmoHybridGatedDeltaNet(config, 0)
    with pytest.raises(ValueError, match="OlmoHybridGatedDeltaNet is refused: .*allow_neg_eigval"):
        from_hf(module)


def test_other_modules_and_options_are_refused():
    with pytest.raises(ValueError, match="no longmix gated_deltanet for torch.nn.modules.linear.Linear"):
        from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"options: unknown \['heads'\]"):
        from_hf(build("Qwen3NextGatedDeltaNet", "equal"), heads=3)
