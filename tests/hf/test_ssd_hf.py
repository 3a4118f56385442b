"""transformers' Mamba-2 mixers (and the hybrids' identical ones) -> longmix's mamba2, sharing
parameters: float64 output and gradients against the HF module's own torch path.

Tolerance: transformers' torch path casts to float32 inside even for a float64 module (A, the
SSM inputs, B, C in ``mamba2_chunk_scan``; the gated norm), so the two agree to float32 rounding,
not float64: measured max relative error (max |diff| / max |HF|) 1.1e-7 for outputs and 1.3e-6
for gradients here, at L = 1, 7, 64. TOL = 1e-5 leaves room for other seeds yet catches any real difference (a wrong
layout, norm order or dt clamp is O(1)). longmix's own paths agree to ~1e-10 (tests/mixers).
"""
import contextlib

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (BambaConfig, FalconH1Config, GraniteMoeHybridConfig, Mamba2Config,  # noqa: E402
                          NemotronHConfig, Zamba2Config)
from transformers.models.bamba.modeling_bamba import BambaMixer  # noqa: E402
from transformers.models.granitemoehybrid.modeling_granitemoehybrid import GraniteMoeHybridMambaLayer  # noqa: E402
from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1Mixer  # noqa: E402
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer  # noqa: E402
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer  # noqa: E402
from transformers.models.zamba2.modeling_zamba2 import Zamba2MambaMixer  # noqa: E402

from longmix.hf.float64 import float32_casts_off  # noqa: E402
from longmix.hf.mamba2 import HF_CLASSES, from_hf  # noqa: E402
from longmix.mixers.ssd import Mamba2  # noqa: E402

TOLS = {"as_run": 1e-5, "float64": 1e-10}  # measured maxima in the module docstring
HIDDEN = 16
SMALL = dict(num_hidden_layers=1, vocab_size=10)
ATTN = dict(num_attention_heads=2, num_key_value_heads=2)

BUILDERS = {
    "Mamba2Mixer": lambda: Mamba2Mixer(Mamba2Config(
        hidden_size=HIDDEN, num_heads=4, head_dim=8, expand=2, state_size=8, n_groups=2, conv_kernel=4,
        chunk_size=8, **SMALL), 0),
    "BambaMixer": lambda: BambaMixer(BambaConfig(
        hidden_size=HIDDEN, mamba_n_heads=4, mamba_d_head=8, mamba_expand=2, mamba_d_state=8, mamba_n_groups=2,
        mamba_d_conv=4, mamba_chunk_size=8, intermediate_size=32, **ATTN, **SMALL), 0),
    "Zamba2MambaMixer": lambda: Zamba2MambaMixer(Zamba2Config(
        hidden_size=HIDDEN, n_mamba_heads=4, mamba_headdim=8, mamba_expand=2, mamba_d_state=8, mamba_ngroups=2,
        mamba_d_conv=4, chunk_size=8, layers_block_type=["mamba"], **ATTN, **SMALL), 0),
    # Nemotron-H: d_inner = heads x head_dim (here 3 x 10 = 30, not a multiple of hidden 12), dt >= time_step_min
    "NemotronHMamba2Mixer": lambda: NemotronHMamba2Mixer(NemotronHConfig(
        hidden_size=HIDDEN - 4, mamba_num_heads=3, mamba_head_dim=10, ssm_state_size=8, n_groups=1, conv_kernel=3,
        chunk_size=8, hybrid_override_pattern="M", **ATTN, **SMALL), 0),
    "GraniteMoeHybridMambaLayer": lambda: GraniteMoeHybridMambaLayer(GraniteMoeHybridConfig(
        hidden_size=HIDDEN, mamba_n_heads=4, mamba_d_head=8, mamba_expand=2, mamba_d_state=8, mamba_n_groups=2,
        mamba_d_conv=4, mamba_chunk_size=8, intermediate_size=32, layer_types=["mamba"], **ATTN, **SMALL), 0),
}


def build(name, seed=0):
    torch.manual_seed(seed)
    module = BUILDERS[name]().double()
    with torch.no_grad():  # move the dynamics and the norm off their init values
        for p in (module.A_log, module.D, module.dt_bias, module.norm.weight):
            p.add_(0.3 * torch.randn_like(p))
    return module


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_every_mapped_class_is_tested():
    assert set(BUILDERS) == set(HF_CLASSES)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_parameters_are_the_modules_own(name):
    module = build(name)
    mixer = from_hf(module)
    assert isinstance(mixer, Mamba2) and mixer.causal
    theirs = {id(p) for p in module.parameters()}
    assert {id(p) for p in mixer.parameters()} == theirs


@pytest.mark.parametrize("mode", list(TOLS))
@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("length", [1, 7, 64])
def test_output_and_gradients_match_transformers(name, length, mode):
    module = build(name)
    mixer = from_hf(module, chunk_size=5)  # a chunk size that divides none of the lengths but 1
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, length, module.hidden_size, generator=g, dtype=torch.float64)
    dy = torch.randn(2, length, module.hidden_size, generator=g, dtype=torch.float64)

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
    assert max(errors.values()) < TOLS[mode], errors


def test_falcon_h1_is_refused_by_name():
    module = FalconH1Mixer(FalconH1Config(hidden_size=HIDDEN, mamba_n_heads=4, mamba_d_head=8, mamba_d_ssm=32,
                                          mamba_d_state=8, mamba_n_groups=1, mamba_d_conv=4, mamba_chunk_size=8,
                                          **ATTN, **SMALL), 0)
    with pytest.raises(ValueError, match="FalconH1Mixer is refused: .*muP"):
        from_hf(module)


def test_other_modules_and_options_are_refused():
    with pytest.raises(ValueError, match="no longmix mamba2 for torch.nn.modules.linear.Linear"):
        from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"options: unknown \['scan_backend'\]"):
        from_hf(build("Mamba2Mixer"), scan_backend="cpu")
