"""transformers' Gated DeltaNet layers -> longmix's ``gated_deltanet``, sharing their parameters.

``from_hf(module)`` returns a causal :class:`~longmix.mixers.delta.GatedDeltaNet` whose forward on
hidden states (batch, L, hidden) equals the module's forward on them (no cache, no padding mask)
and whose parameters ARE the module's (the same ``nn.Parameter`` objects): longmix's layer holds
either layout of these models' projections (``projections="grouped"``: Qwen3-Next's in_proj_qkvz
and in_proj_ba, grouped per key head; ``"separate"``: Qwen3.5's in_proj_qkv, in_proj_z,
in_proj_b, in_proj_a) and the rest alike (a bias-free depthwise conv1d over [q, k, v], dt_bias and
A_log per value head, the norm-then-gate RMSNorm per head, out_proj), so nothing is copied.

Mapped (:data:`HF_CLASSES`, transformers 5.23): ``Qwen3NextGatedDeltaNet`` (grouped);
``Qwen3_5GatedDeltaNet``, ``Qwen3_5MoeGatedDeltaNet`` (separate; the two classes are identical)
and ``Qwen4ExpTextGatedDeltaNet`` (separate; the same but for a configurable output-gate
activation, accepted when it is SiLU). Refused (:data:`REFUSED`), by name and reason:
``OlmoHybridGatedDeltaNet``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..mixers.delta import GatedDeltaNet
from .checks import check_convertible, plain_submodule, require

#: class name -> the layout of its projections (GatedDeltaNet's ``projections``)
PROJECTIONS_OF = {"Qwen3NextGatedDeltaNet": "grouped", "Qwen3_5GatedDeltaNet": "separate",
                  "Qwen3_5MoeGatedDeltaNet": "separate", "Qwen4ExpTextGatedDeltaNet": "separate"}
HF_CLASSES = tuple(PROJECTIONS_OF)
REFUSED = {
    "OlmoHybridGatedDeltaNet": "its q, k, v, a, b and output gate come from six projections named q_proj ... "
                               "g_proj, and linear_allow_neg_eigval doubles beta (range [0, 2]): not a layout "
                               "longmix's gated_deltanet holds",
}
#: Options of the longmix mixer that choose how, not what, it computes; from_hf passes them on.
EXECUTION_OPTIONS = ("chunk_size",)
_SILU_NAMES = ("silu", "swish")


def from_hf(module: nn.Module, **options) -> GatedDeltaNet:
    """The longmix ``gated_deltanet`` equal to the transformers layer ``module``, sharing its
    parameters. ``options``: :data:`EXECUTION_OPTIONS` (default chunk_size 64, as transformers').

    Raises ValueError naming the class and the reason for a class it does not map, and the HF
    option for a setting longmix cannot compute exactly."""
    owner = check_convertible(module, HF_CLASSES, REFUSED, options, EXECUTION_OPTIONS, "gated_deltanet")
    hidden, heads, key_heads = module.hidden_size, module.num_v_heads, module.num_k_heads
    dk, dv, width = module.head_k_dim, module.head_v_dim, module.conv_kernel_size
    require(owner, module.activation in _SILU_NAMES, "hidden_act",
             f"the conv activation must be SiLU as in longmix's gated_deltanet, got {module.activation!r}")
    require(owner, heads % key_heads == 0, "linear_num_key_heads",
             f"key heads ({key_heads}) must divide value heads ({heads})")
    require(owner, hidden % heads == 0, "linear_num_value_heads",
             f"a longmix mixer's heads must divide its dim: hidden_size {hidden} by {heads} value heads")
    require(owner, getattr(module.norm, "activation", "silu") in _SILU_NAMES, "output_gate_type",
             f"the output gate must be SiLU as in longmix's gated_deltanet, got {module.norm.activation!r}")
    projections = PROJECTIONS_OF[owner]
    names = (("in_proj_qkvz", "in_proj_ba") if projections == "grouped"
             else ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")) + ("out_proj",)
    layers = {name: plain_submodule(owner, module, name, nn.Linear) for name in names}
    conv = plain_submodule(owner, module, "conv1d", nn.Conv1d)
    for name, layer in layers.items():
        require(owner, layer.bias is None, name, "has a bias; the model's has none, nor has longmix's")
    conv_dim = 2 * key_heads * dk + heads * dv
    require(owner, conv.groups == conv_dim == conv.in_channels and conv.kernel_size == (width,)
             and conv.padding == (width - 1,) and conv.stride == (1,) and conv.dilation == (1,)
             and conv.padding_mode == "zeros" and conv.bias is None, "linear_conv_kernel_dim",
             f"conv1d must be a causal depthwise conv of width {width} over {conv_dim} channels without bias, got {conv}")
    with torch.device("meta"):  # no memory: every parameter is replaced by the module's below
        mixer = GatedDeltaNet(hidden, heads=heads, causal=True, key_heads=key_heads, head_k_dim=dk, head_v_dim=dv,
                              d_conv=width, chunk_size=options.get("chunk_size", 64),
                              norm_eps=module.norm.variance_epsilon, projections=projections)
    shapes = {name: tuple(layer.weight.shape) for name, layer in layers.items()}
    require(owner, shapes == {name: tuple(getattr(mixer, name).weight.shape) for name in names}
             and tuple(module.norm.weight.shape) == (dv,), "sizes",
             f"the projections {shapes} or the norm do not match {key_heads} key heads of {dk} and {heads} "
             f"value heads of {dv}")
    for name, layer in layers.items():
        setattr(mixer, name, layer)
    mixer.conv1d = conv
    mixer.dt_bias, mixer.A_log, mixer.norm.weight = module.dt_bias, module.A_log, module.norm.weight
    theirs = {id(p) for p in module.parameters()}
    assert all(id(p) in theirs for p in mixer.parameters()), "from_hf left a parameter of its own"
    return mixer
