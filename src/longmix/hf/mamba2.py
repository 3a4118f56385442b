"""transformers' Mamba-2 mixers -> longmix's ``mamba2``, sharing their parameters.

``from_hf(module)`` returns a causal :class:`~longmix.mixers.ssd.Mamba2` whose forward on hidden
states (batch, L, hidden) equals the module's forward on them (no cache, no padding mask) and
whose parameters ARE the module's (the same ``nn.Parameter`` objects): the layouts agree
(in_proj -> [z, xBC, dt], depthwise conv1d over xBC, dt_bias, A_log, D per head, the gated
RMSNorm over n_groups groups, out_proj), so nothing is copied or viewed.

Which transformers 5.23 classes are the same operator (:data:`HF_CLASSES`): ``Mamba2Mixer``;
``BambaMixer``, ``Zamba2MambaMixer`` and ``NemotronHMamba2Mixer`` have a forward identical to
``Mamba2Mixer``'s line for line and the same gated norm (gate, then RMS over groups);
``GraniteMoeHybridMambaLayer``'s source is ``BambaMixer``'s with the names changed; they differ
only in where their config keeps the sizes, Zamba2 and Nemotron-H clamp dt from below at
``time_step_min`` (longmix's ``dt_limit``), and Nemotron-H sizes d_inner as heads x head_dim.
Refused (:data:`REFUSED`), with the reason: ``FalconH1Mixer``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..mixers.ssd import Mamba2
from .checks import check_convertible, plain_submodule, require

HF_CLASSES = ("Mamba2Mixer", "BambaMixer", "Zamba2MambaMixer", "NemotronHMamba2Mixer",
              "GraniteMoeHybridMambaLayer")
REFUSED = {
    "FalconH1Mixer": "Falcon-H1 scales the hidden states by ssm_in_multiplier and in_proj's outputs by a "
                     "muP vector before the SSM, and optionally gates without the norm (mamba_rms_norm=False) "
                     "or normalizes before the gate: not longmix's mamba2 operator on the shared parameters",
}
#: Options of the longmix mixer that choose how, not what, it computes; from_hf passes them on.
EXECUTION_OPTIONS = ("chunk_size",)
_SILU_NAMES = ("silu", "swish")


def from_hf(module: nn.Module, **options) -> Mamba2:
    """The longmix ``mamba2`` equal to the transformers Mamba-2 mixer ``module``, sharing its
    parameters. ``options``: :data:`EXECUTION_OPTIONS` (default: the module's chunk_size).

    Raises ValueError naming the class and the reason for a class that is not the same operator,
    and the HF option for a setting longmix cannot compute exactly."""
    owner = check_convertible(module, HF_CLASSES, REFUSED, options, EXECUTION_OPTIONS, "mamba2")
    hidden, d_inner, heads = module.hidden_size, module.intermediate_size, module.num_heads
    groups, d_state, d_conv = module.n_groups, module.ssm_state_size, module.conv_kernel_size
    require(owner, module.activation in _SILU_NAMES, "hidden_act",
             f"the conv activation must be SiLU as in longmix's mamba2, got {module.activation!r}")
    require(owner, heads * module.head_dim == d_inner, "head_dim",
             f"num_heads ({heads}) x head_dim ({module.head_dim}) must be intermediate_size ({d_inner})")
    require(owner, hidden % heads == 0, "num_heads",
             f"a longmix mixer's heads must divide its dim: hidden_size {hidden} by num_heads {heads}")
    in_proj, out_proj = plain_submodule(owner, module, "in_proj", nn.Linear), plain_submodule(owner, module, "out_proj", nn.Linear)
    conv = plain_submodule(owner, module, "conv1d", nn.Conv1d)
    conv_dim = d_inner + 2 * groups * d_state
    require(owner, tuple(in_proj.weight.shape) == (d_inner + conv_dim + heads, hidden), "in_proj",
             f"expected ({d_inner + conv_dim + heads}, {hidden}) = [z, xBC, dt], got {tuple(in_proj.weight.shape)}")
    require(owner, (in_proj.bias is None) == (out_proj.bias is None), "use_bias",
             "in_proj and out_proj must both have a bias or both not")
    require(owner, conv.groups == conv_dim == conv.in_channels == conv.out_channels and conv.kernel_size == (d_conv,)
             and conv.padding == (d_conv - 1,) and conv.stride == (1,) and conv.dilation == (1,)
             and conv.padding_mode == "zeros", "conv_kernel",
             f"conv1d must be a causal depthwise conv of width {d_conv} over {conv_dim} channels, got {conv}")
    norm = module.norm
    require(owner, norm.group_size == d_inner // groups and tuple(norm.weight.shape) == (d_inner,), "n_groups",
             f"the gated norm must cover {groups} groups of {d_inner // groups}")
    low, high = module.time_step_limit
    with torch.device("meta"):  # no memory: every parameter is replaced by the module's below
        mixer = Mamba2(hidden, heads=heads, causal=True, d_state=d_state, groups=groups, d_conv=d_conv,
                       d_inner=d_inner, chunk_size=options.get("chunk_size", module.chunk_size),
                       dt_limit=(float(low), float(high)), norm_eps=norm.variance_epsilon,
                       bias=in_proj.bias is not None, conv_bias=conv.bias is not None)
    mixer.in_proj, mixer.conv1d, mixer.out_proj = in_proj, conv, out_proj
    mixer.dt_bias, mixer.A_log, mixer.D = module.dt_bias, module.A_log, module.D
    mixer.norm.weight = norm.weight
    theirs = {id(p) for p in module.parameters()}
    assert all(id(p) in theirs for p in mixer.parameters()), "from_hf left a parameter of its own"
    return mixer
