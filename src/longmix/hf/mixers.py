"""HF token-mixer modules -> the longmix mixers that compute the same operator, sharing parameters.

``mixer_from_hf(module)`` returns a :class:`~longmix.mixers.base.TokenMixer` whose forward on
hidden states (batch, L, hidden) equals the HF module's forward on them (no cache, no padding
mask), and whose parameters ARE the HF module's parameters: the same ``nn.Parameter`` objects,
nothing copied, so training either trains both and ``longmix.parallel.parallelize`` can run an
HF layer in longmix's sequence-parallel forms.

``HF_MIXER_CLASSES`` is the one place mapping HF classes to longmix mixers: class name ->
converter ``(module, **options) -> TokenMixer``. A new HF mixer is one entry.

Layouts. HF's ``MambaMixer``, ``JambaMambaMixer`` and ``FalconMambaMixer`` hold exactly the
layout of longmix's ``mamba`` mixer (mamba_simple's): in_proj (hidden -> 2 d_inner, [x, z]), a depthwise
Conv1d (d_inner, 1, d_conv), x_proj (d_inner -> dt_rank + 2N, [dt, B, C]), dt_proj (dt_rank ->
d_inner, with bias), A_log (d_inner, N) with A = -exp(A_log), D (d_inner), out_proj. So no view
or re-layout is needed: the longmix mixer is built on the meta device (no memory) and its
submodules and parameters are then replaced by the HF ones (the same objects).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..mixers.base import TokenMixer
from ..mixers.ssm import Mamba
from . import gated_deltanet, mamba2
from .checks import plain_submodule, require

#: Activations equal to the SiLU that longmix's ``mamba`` applies after its conv (HF ACT2FN names).
_SILU_NAMES = ("silu", "swish")
#: Options of the longmix mixer that choose how, not what, it computes; mixer_from_hf passes them on.
MAMBA_EXECUTION_OPTIONS = ("chunk_size", "scan_backend")


def is_mapped(module: nn.Module) -> bool:
    """Whether ``module`` is an instance of a transformers class :func:`mixer_from_hf` maps."""
    cls = type(module)
    return cls.__name__ in HF_MIXER_CLASSES and cls.__module__.startswith("transformers.")


def mixer_from_hf(module: nn.Module, **options) -> TokenMixer:
    """The longmix ``TokenMixer`` equal to the HF mixer ``module``, sharing its parameters.

    ``module`` must be an instance of a class named in :data:`HF_MIXER_CLASSES` (exactly that
    class, from ``transformers``). ``options`` are execution options of the longmix mixer that
    leave the operator unchanged (for Mamba: ``chunk_size``, ``scan_backend``).

    Raises ValueError naming the module's class and the reason when there is no longmix mixer
    for it, or naming the HF option whose value longmix cannot compute exactly.
    """
    cls = type(module)
    converter = HF_MIXER_CLASSES.get(cls.__name__)
    if converter is None or not cls.__module__.startswith("transformers."):
        raise ValueError(f"mixer_from_hf: no longmix mixer for {cls.__module__}.{cls.__qualname__}; "
                         f"supported transformers classes: {', '.join(sorted(HF_MIXER_CLASSES))}")
    return converter(module, **options)


# -- Mamba ---------------------------------------------------------------------------------------
def _mamba_sizes(owner: str, module: nn.Module) -> dict:
    """The longmix ``Mamba`` options equal to the HF Mamba-style mixer ``module``, checking every
    HF option that changes the operator against the module's actual layers."""
    hidden, d_inner = module.hidden_size, module.intermediate_size
    d_state, d_conv, dt_rank = module.ssm_state_size, module.conv_kernel_size, int(module.time_step_rank)
    require(owner, module.activation in _SILU_NAMES, "hidden_act",
             f"the conv activation must be SiLU ({' or '.join(_SILU_NAMES)}) as in longmix's mamba, "
             f"got {module.activation!r}")
    require(owner, d_inner % hidden == 0, "expand",
             f"intermediate_size ({d_inner}) must be an integer multiple of hidden_size ({hidden})")
    require(owner, not hasattr(getattr(module, "config", None), "_is_quantized"), "quantization",
             "quantized models are not supported")
    in_proj = plain_submodule(owner, module, "in_proj", nn.Linear)
    out_proj = plain_submodule(owner, module, "out_proj", nn.Linear)
    x_proj = plain_submodule(owner, module, "x_proj", nn.Linear)
    dt_proj = plain_submodule(owner, module, "dt_proj", nn.Linear)
    conv = plain_submodule(owner, module, "conv1d", nn.Conv1d)
    require(owner, tuple(in_proj.weight.shape) == (2 * d_inner, hidden)
             and tuple(out_proj.weight.shape) == (hidden, d_inner), "intermediate_size",
             f"in_proj {tuple(in_proj.weight.shape)} / out_proj {tuple(out_proj.weight.shape)} do not match "
             f"hidden_size={hidden}, intermediate_size={d_inner}")
    require(owner, (in_proj.bias is None) == (out_proj.bias is None), "use_bias",
             "in_proj and out_proj must both have a bias or both not")
    require(owner, tuple(x_proj.weight.shape) == (dt_rank + 2 * d_state, d_inner) and x_proj.bias is None,
             "time_step_rank/state_size", f"x_proj {tuple(x_proj.weight.shape)} (bias {x_proj.bias is not None}) "
             f"is not ({dt_rank} + 2 * {d_state}, {d_inner}) without bias")
    require(owner, tuple(dt_proj.weight.shape) == (d_inner, dt_rank) and dt_proj.bias is not None,
             "time_step_rank", f"dt_proj {tuple(dt_proj.weight.shape)} is not ({d_inner}, {dt_rank}) with a bias")
    require(owner, conv.groups == d_inner == conv.in_channels == conv.out_channels
             and conv.kernel_size == (d_conv,) and conv.stride == (1,) and conv.dilation == (1,)
             and conv.padding == (d_conv - 1,) and conv.padding_mode == "zeros", "conv_kernel",
             f"conv1d must be a causal depthwise conv of width conv_kernel={d_conv} over {d_inner} channels, "
             f"got {conv}")
    require(owner, (conv.bias is not None) == bool(module.use_conv_bias), "use_conv_bias",
             f"use_conv_bias={module.use_conv_bias} but conv1d has {'a' if conv.bias is not None else 'no'} bias")
    require(owner, tuple(module.A_log.shape) == (d_inner, d_state) and tuple(module.D.shape) == (d_inner,),
             "state_size", f"A_log {tuple(module.A_log.shape)} / D {tuple(module.D.shape)} do not match "
             f"({d_inner}, {d_state}) / ({d_inner},)")
    return dict(dim=hidden, d_state=d_state, expand=d_inner // hidden, d_conv=d_conv, dt_rank=dt_rank)


def _check_execution_options(owner: str, options: dict) -> None:
    unknown = sorted(set(options) - set(MAMBA_EXECUTION_OPTIONS))
    if unknown:
        raise ValueError(f"mixer_from_hf({owner}): unknown options {unknown}; the options are "
                         f"{list(MAMBA_EXECUTION_OPTIONS)} (how longmix computes, not what)")


def _share_mamba(owner: str, module: nn.Module, options: dict, norm_eps: float | None = None,
                 norm_weights: list[nn.Parameter] | None = None) -> Mamba:
    """A causal longmix ``Mamba`` built on the meta device, then given ``module``'s layers and
    parameters (the same objects). ``norm_eps``: dt/B/C RMSNorms, with ``norm_weights`` (dt, B, C)
    or weightless. Every parameter must come from ``module``: checked."""
    _check_execution_options(owner, options)
    sizes = _mamba_sizes(owner, module)
    norm = dict(bcdt_norm=False) if norm_eps is None else dict(
        bcdt_norm=True, norm_eps=norm_eps, norm_weight=norm_weights is not None)
    with torch.device("meta"):  # sizes only: every parameter is replaced below
        mixer = Mamba(causal=True, **norm, **sizes, **options)
    mixer.in_proj, mixer.out_proj, mixer.conv = module.in_proj, module.out_proj, module.conv1d
    mixer.D = module.D
    params = mixer.selective[0]
    params.x_proj, params.dt_proj, params.A_log = module.x_proj, module.dt_proj, module.A_log
    if norm_weights is not None:
        for rms_norm, weight in zip(params.norms, norm_weights):
            rms_norm.weight = weight
    hf_params = {id(p) for p in module.parameters()}
    foreign = [name for name, p in mixer.named_parameters() if id(p) not in hf_params]
    if foreign:  # a layer of longmix's mamba that the HF module has no counterpart for
        raise AssertionError(f"mixer_from_hf({owner}): parameters not taken from the HF module: {foreign}")
    return mixer


def mamba_from_hf(module: nn.Module, **options) -> Mamba:
    """transformers' ``MambaMixer`` (models/mamba) -> longmix ``mamba`` (causal), same parameters.

    HF options: ``state_size`` -> d_state, ``expand`` -> d_inner / hidden (an integer),
    ``conv_kernel`` -> d_conv, ``time_step_rank`` -> dt_rank, ``use_conv_bias`` and ``use_bias``
    (in/out projection biases) are carried by the shared layers, ``hidden_act`` must be SiLU (the
    conv's activation; the gate is always SiLU). ``use_mambapy`` / ``use_associative_scan`` choose
    HF's scan algorithm, not the operator. ``residual_in_fp32`` and the norm belong to the block."""
    return _share_mamba(type(module).__name__, module, options)


def jamba_mamba_from_hf(module: nn.Module, **options) -> Mamba:
    """transformers' ``JambaMambaMixer`` -> longmix ``mamba`` with ``bcdt_norm=True``: Jamba adds
    RMSNorms (weights shared, eps ``rms_norm_eps``) on dt, B and C. Options as for Mamba, with
    Jamba's names (``mamba_d_state``, ``mamba_expand``, ``mamba_d_conv``, ``mamba_dt_rank``,
    ``mamba_conv_bias``, ``mamba_proj_bias``)."""
    owner = type(module).__name__
    hf_norms = _bcdt_norms(module)
    eps = _one_eps(owner, hf_norms, "variance_epsilon", "rms_norm_eps")
    weights = [norm.weight for norm in hf_norms]
    require(owner, all(isinstance(w, nn.Parameter) for w in weights), "dt/B/C norms",
             "the dt/B/C norms must have weight parameters")
    return _share_mamba(owner, module, options, eps, weights)


def falcon_mamba_from_hf(module: nn.Module, **options) -> Mamba:
    """transformers' ``FalconMambaMixer`` -> longmix ``mamba`` with ``bcdt_norm=True,
    norm_weight=False``: Falcon-Mamba adds weightless RMSNorms (eps ``mixer_rms_eps``) on dt, B and
    C; other options as for Mamba.

    This is transformers' PyTorch path (dt normalized over its dt_rank entries before dt_proj).
    Its fused-kernel path (``mamba_ssm`` installed, training) passes a dt norm sized
    intermediate_size, which suggests it normalizes after dt_proj: not verified here."""
    owner = type(module).__name__
    return _share_mamba(owner, module, options, _one_eps(owner, _bcdt_norms(module), "eps", "mixer_rms_eps"))


def _bcdt_norms(module: nn.Module) -> list[nn.Module]:
    return [getattr(module, name, None) for name in ("dt_layernorm", "b_layernorm", "c_layernorm")]


def _one_eps(owner: str, norms: list, attribute: str, option: str) -> float:
    """The epsilon the dt/B/C norms share (HF reads it from one config option)."""
    eps = {getattr(norm, attribute, None) for norm in norms}
    require(owner, len(eps) == 1 and None not in eps, option,
             f"the dt/B/C norms must share one {attribute}, got {sorted(map(str, eps))}")
    return eps.pop()


#: HF class name -> converter (module, **options) -> TokenMixer. One entry per HF mixer class.
HF_MIXER_CLASSES: dict[str, Callable[..., TokenMixer]] = {
    "MambaMixer": mamba_from_hf,
    "JambaMambaMixer": jamba_mamba_from_hf,
    "FalconMambaMixer": falcon_mamba_from_hf,
    **dict.fromkeys(mamba2.HF_CLASSES, mamba2.from_hf),
    **dict.fromkeys(gated_deltanet.HF_CLASSES, gated_deltanet.from_hf),
}
