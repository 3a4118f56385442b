"""transformers' Gated DeltaNet layers -> longmix's ``gated_deltanet``, sharing their parameters.

``from_hf(module)`` returns a causal :class:`~longmix.mixers.delta.GatedDeltaNet` whose forward on
hidden states (batch, L, hidden) equals the module's forward on them (no cache, no padding mask)
and whose parameters ARE the module's (the same ``nn.Parameter`` objects): longmix's layer keeps
Qwen3-Next's layout (in_proj_qkvz and in_proj_ba grouped per key head, a bias-free depthwise
conv1d over [q, k, v], dt_bias and A_log per value head, the norm-then-gate RMSNorm per head,
out_proj), so nothing is copied or viewed.

Mapped (:data:`HF_CLASSES`): ``Qwen3NextGatedDeltaNet``. Refused (:data:`REFUSED`), by name and
reason: the Qwen3.5 line's layers, the same operator with q/k/v, z, b and a in separate
projections (a layout longmix's layer does not hold, so they cannot share parameters).
"""
from __future__ import annotations

import torch
from torch import nn

from ..mixers.delta import GatedDeltaNet

HF_CLASSES = ("Qwen3NextGatedDeltaNet",)
_SEPARATE = ("the same operator, but its projections are separate (in_proj_qkv, in_proj_z, in_proj_b, "
             "in_proj_a) where longmix's gated_deltanet holds Qwen3-Next's grouped in_proj_qkvz and "
             "in_proj_ba, so the parameters cannot be shared")
REFUSED = {"Qwen3_5GatedDeltaNet": _SEPARATE, "Qwen3_5MoeGatedDeltaNet": _SEPARATE}
#: Options of the longmix mixer that choose how, not what, it computes; from_hf passes them on.
EXECUTION_OPTIONS = ("chunk_size",)
_SILU_NAMES = ("silu", "swish")


def _require(owner: str, ok: bool, option: str, why: str) -> None:
    if not ok:
        raise ValueError(f"from_hf({owner}): {option}: {why}")


def _plain(owner: str, module: nn.Module, name: str, expected: type) -> nn.Module:
    sub = getattr(module, name, None)
    _require(owner, type(sub) is expected, name,
             f"expected a plain torch {expected.__name__}, got {type(sub).__name__}")
    return sub


def from_hf(module: nn.Module, **options) -> GatedDeltaNet:
    """The longmix ``gated_deltanet`` equal to the transformers layer ``module``, sharing its
    parameters. ``options``: :data:`EXECUTION_OPTIONS` (default chunk_size 64, as transformers').

    Raises ValueError naming the class and the reason for a class it does not map, and the HF
    option for a setting longmix cannot compute exactly."""
    cls = type(module)
    owner = cls.__name__
    if owner in REFUSED:
        raise ValueError(f"from_hf: {owner} is refused: {REFUSED[owner]}")
    if owner not in HF_CLASSES or not cls.__module__.startswith("transformers."):
        raise ValueError(f"from_hf: no longmix gated_deltanet for {cls.__module__}.{cls.__qualname__}; "
                         f"supported: {', '.join(HF_CLASSES)}")
    unknown = sorted(set(options) - set(EXECUTION_OPTIONS))
    _require(owner, not unknown, "options", f"unknown {unknown}; the options are {list(EXECUTION_OPTIONS)}")
    hidden, heads, key_heads = module.hidden_size, module.num_v_heads, module.num_k_heads
    dk, dv, width = module.head_k_dim, module.head_v_dim, module.conv_kernel_size
    _require(owner, module.activation in _SILU_NAMES, "hidden_act",
             f"the conv activation must be SiLU as in longmix's gated_deltanet, got {module.activation!r}")
    _require(owner, heads % key_heads == 0, "linear_num_key_heads",
             f"key heads ({key_heads}) must divide value heads ({heads})")
    _require(owner, hidden % heads == 0, "linear_num_value_heads",
             f"a longmix mixer's heads must divide its dim: hidden_size {hidden} by {heads} value heads")
    qkvz, ba = _plain(owner, module, "in_proj_qkvz", nn.Linear), _plain(owner, module, "in_proj_ba", nn.Linear)
    out_proj, conv = _plain(owner, module, "out_proj", nn.Linear), _plain(owner, module, "conv1d", nn.Conv1d)
    for name, layer in (("in_proj_qkvz", qkvz), ("in_proj_ba", ba), ("out_proj", out_proj)):
        _require(owner, layer.bias is None, name, "has a bias; Qwen3-Next's has none, nor has longmix's")
    conv_dim = 2 * key_heads * dk + heads * dv
    _require(owner, conv.groups == conv_dim == conv.in_channels and conv.kernel_size == (width,)
             and conv.padding == (width - 1,) and conv.stride == (1,) and conv.dilation == (1,)
             and conv.padding_mode == "zeros" and conv.bias is None, "linear_conv_kernel_dim",
             f"conv1d must be a causal depthwise conv of width {width} over {conv_dim} channels without bias, got {conv}")
    with torch.device("meta"):  # no memory: every parameter is replaced by the module's below
        mixer = GatedDeltaNet(hidden, heads=heads, causal=True, key_heads=key_heads, head_k_dim=dk, head_v_dim=dv,
                              d_conv=width, chunk_size=options.get("chunk_size", 64),
                              norm_eps=module.norm.variance_epsilon)
    _require(owner, tuple(qkvz.weight.shape) == tuple(mixer.in_proj_qkvz.weight.shape)
             and tuple(ba.weight.shape) == tuple(mixer.in_proj_ba.weight.shape)
             and tuple(module.norm.weight.shape) == (dv,), "sizes",
             f"in_proj_qkvz {tuple(qkvz.weight.shape)}, in_proj_ba {tuple(ba.weight.shape)} or the norm do not "
             f"match {key_heads} key heads of {dk} and {heads} value heads of {dv}")
    mixer.in_proj_qkvz, mixer.in_proj_ba, mixer.conv1d, mixer.out_proj = qkvz, ba, conv, out_proj
    mixer.dt_bias, mixer.A_log, mixer.norm.weight = module.dt_bias, module.A_log, module.norm.weight
    theirs = {id(p) for p in module.parameters()}
    assert all(id(p) in theirs for p in mixer.parameters()), "from_hf left a parameter of its own"
    return mixer
