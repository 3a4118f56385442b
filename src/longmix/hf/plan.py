"""What each token-mixing layer of an HF model becomes over ranks, or why it cannot run exactly.

:func:`plan_hf` inspects a ``transformers`` model (weights may live on the meta device: nothing
runs) and returns one :class:`HFLayerPlan` per token-mixing layer:

- ``"attention"``: an attention module that goes through transformers' ``AttentionInterface``;
  it will run longmix's exact distributed attention (full causal, or a sliding window);
- ``"mixer"``: a module of a class that ``longmix.hf.mixers`` maps to a longmix ``TokenMixer``
  (``HF_MIXER_CLASSES``, ``mixer_from_hf``); it will run in a longmix parallel form.

Layers that mix no tokens (MLPs, MoE blocks: Nemotron-H's ``"mlp"`` and ``"moe"`` layer types)
run on local rows. A ``"hybrid"`` layer type (Zamba2: the shared transformer, then a Mamba-2
mixer) is planned by its modules; an attention module shared by several layers has
``layer_idx = -1`` and no layer type of its own.

Anything else raises a ValueError naming the layer and the reason (a soft-cap, sinks, a
bidirectional or chunked mask, a length-dependent RoPE, an SSM or convolution layer with no
mapping, a mixer refused by name such as Falcon-H1's, a model whose attention bypasses the
interface). The router loss is checked by :mod:`longmix.hf.router_loss`. A model's forward
re-checks what it can only see at run time (see :mod:`longmix.hf.attention`).
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from torch import nn

from . import gated_deltanet, mamba2
from .mixers import HF_MIXER_CLASSES, is_mapped, mixer_from_hf  # noqa: F401  (the SSM hook)

ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")
#: ``layer_types`` entries whose layers hold a mapped mixer (checked by class in ``mixer_layers``)
MAPPED_LAYER_TYPES = ("mamba", "linear_attention")
#: ``layer_types`` entries whose layers mix no tokens (Nemotron-H's MLP and MoE layers)
POINTWISE_LAYER_TYPES = ("mlp", "moe")
#: per model type, ``layer_types`` entries whose layers hold attention and a mapped mixer, each
#: checked by its module. Zamba2's "hybrid": its shared transformer (one attention module, used
#: by several layers, ``layer_idx=-1``), then a Mamba-2 mixer. The name alone says nothing:
#: Falcon-H1's "hybrid" runs both in parallel, Zaya's is an attention with convolutions inside.
HYBRID_LAYER_TYPES = {"zamba2": ("hybrid",)}
# class names of token mixers that are not softmax attention: refused unless mapped
# (convolutions are found by type: transformers' GPT-2 "Conv1D" is a linear layer)
# "SSM"/"Ssm" by case: a lower-case "ssm" also runs across words ("SeedOssMLP")
_OTHER_MIXER = re.compile(r"mamba|(?-i:SSM|Ssm)|mixer|deltanet|recurrent|rwkv|linearattention|shortconv"
                          r"|retention|hyena|lightning|xlstm|mlstm|slstm", re.IGNORECASE)
_DYNAMIC_ROPE = ("dynamic", "longrope")
#: mixer classes known by name not to be the operator of any longmix mixer: class -> reason
REFUSED_MIXERS = {**mamba2.REFUSED, **gated_deltanet.REFUSED}


@dataclass(frozen=True)
class HFLayerPlan:
    """One token-mixing layer: its qualified name, kind ("attention" or "mixer") and details."""

    name: str
    kind: str
    window: int | None = None   # attention: sliding window (keys i - window < j <= i), None: full
    module_class: str = ""


def _refuse(where: str, reason: str) -> ValueError:
    return ValueError(f"longmix.hf.parallelize: {where}: {reason}")


def mixer_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` that ``longmix.hf.mixers`` maps (``HF_MIXER_CLASSES``), as
    (qualified name, module), outermost first."""
    found = []
    for name, module in model.named_modules():
        if is_mapped(module) and not any(
                name.startswith(outer + ".") for outer, _ in found):
            found.append((name, module))
    return found


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that compute attention through transformers' interface: those with a
    ``layer_idx`` whose class name ends in "Attention" (every interface-based model's convention)."""
    return [(name, m) for name, m in model.named_modules()
            if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]


def _configs(model: nn.Module) -> list:
    """The model's config and every sub-config (a text config inside a multimodal one)."""
    out, todo = [], [model.config]
    while todo:
        cfg = todo.pop()
        if cfg is None or any(cfg is c for c in out):
            continue
        out.append(cfg)
        todo.extend(getattr(cfg, key, None) for key in getattr(cfg, "sub_configs", {}) or {})
    return out


def _check_model(model: nn.Module, has_attention: bool) -> None:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"longmix.hf.parallelize: model must be a transformers PreTrainedModel, "
                         f"got {type(model).__name__}")
    kind = type(model).__name__
    for cfg in _configs(model):
        if getattr(cfg, "is_encoder_decoder", False):
            raise _refuse(kind, "encoder-decoder models are not supported (decoder-only only)")
        if getattr(cfg, "is_causal", True) is False or getattr(cfg, "use_bidirectional_attention", False):
            raise _refuse(kind, "bidirectional attention (config) is not supported")
        if getattr(cfg, "attention_chunk_size", None):
            raise _refuse(kind, f"chunked attention (attention_chunk_size="
                                f"{cfg.attention_chunk_size}) is not supported")
    # transformers' own test: the modeling file's attention classes call the interface (the
    # ``_supports_attention_backend`` flag is about serving backends, and hybrids leave it unset)
    if has_attention and not type(model)._can_set_attn_implementation():
        raise _refuse(kind, "its attention does not go through transformers' AttentionInterface")
    loss_type = getattr(model, "loss_type", None)
    if "_loss_function" in vars(model) or loss_type not in (None, "ForCausalLM"):
        raise _refuse(kind, f"a custom loss ({loss_type or 'set on the model'}) is not supported; "
                            f"longmix computes the causal LM cross entropy")
    if has_attention and "position_ids" not in inspect.signature(model.forward).parameters:
        raise _refuse(kind, "its forward takes no position_ids, so global positions cannot be given")


def _check_rope(model: nn.Module) -> None:
    for name, module in model.named_modules():
        rope = getattr(module, "rope_type", None)
        types = rope.values() if isinstance(rope, dict) else [rope]
        for t in types:
            if isinstance(t, str) and any(d in t for d in _DYNAMIC_ROPE):
                raise _refuse(name or type(module).__name__,
                              f"RoPE type {t!r} depends on the local sequence length "
                              f"(max of the position ids on each rank); not supported")


def _attention_plan(name: str, module: nn.Module, config) -> HFLayerPlan:
    where = f"layer {name!r} ({type(module).__name__})"
    if getattr(module, "is_causal", True) is False:
        raise _refuse(where, "bidirectional attention is not supported (only causal)")
    cap = getattr(module, "attn_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None)
    if cap is not None:
        raise _refuse(where, f"attention logit soft-capping ({cap}) cannot be expressed by "
                             f"longmix's attention op")
    if getattr(module, "sinks", None) is not None:
        raise _refuse(where, "attention sinks cannot be expressed by longmix's attention op")
    layer_types = getattr(config, "layer_types", None)
    index = module.layer_idx
    # a module shared by several layers has no index of its own (Zamba2's shared transformer: -1)
    own = layer_types and isinstance(index, int) and 0 <= index < len(layer_types)
    layer_type = layer_types[index] if own else None
    if layer_type is not None and layer_type not in ATTENTION_LAYER_TYPES:
        raise _refuse(where, f"layer type {layer_type!r} is not softmax attention longmix supports")
    if hasattr(module, "sliding_window"):
        window = module.sliding_window
    else:  # Mistral-style: every layer of a config with a sliding_window
        window = getattr(config, "sliding_window", None)
    return HFLayerPlan(name, "attention", window=window, module_class=type(module).__name__)


def _check_unmapped(model: nn.Module, covered: list[str], mixers: list[str]) -> None:
    """Refuse any token mixer that is neither an attention module nor a mapped one. Inside an
    attention module (unlike inside a mapped mixer) a convolution or a mixer is still refused:
    longmix's attention op would silently drop it (Zaya's convolutions on q and k)."""
    def inside(name: str) -> bool:
        return name in covered or any(name.startswith(m + ".") for m in mixers)

    from transformers import PreTrainedModel

    suspects = []
    for name, module in model.named_modules():
        holds_covered = any(c.startswith(name + ".") for c in covered)  # a block around one
        if inside(name) or holds_covered or isinstance(module, PreTrainedModel):
            continue
        cls = type(module).__name__
        pointwise = "Norm" in cls or "Embedding" in cls  # e.g. MambaRMSNorm
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) or (_OTHER_MIXER.search(cls) and not pointwise):
            suspects.append((name, cls))
    # report the innermost one (the mixer, not the block around it)
    innermost = [(n, c) for n, c in suspects if not any(o.startswith(n + ".") for o, _ in suspects)]
    if innermost:
        name, cls = innermost[0]
        if isinstance(model.get_submodule(name), (nn.Conv1d, nn.Conv2d)) and "." in name:
            owner = name.rpartition(".")[0]  # name the layer holding the convolution
            name, cls = owner, f"{type(model.get_submodule(owner)).__name__}, with a {cls}"
        raise _refuse(f"layer {name!r} ({cls})", "a token mixer longmix has no exact form for "
                      f"(mapped: {', '.join(sorted(HF_MIXER_CLASSES))})")
    for cfg in _configs(model):
        for i, t in enumerate(getattr(cfg, "layer_types", None) or []):
            known = ATTENTION_LAYER_TYPES + MAPPED_LAYER_TYPES + POINTWISE_LAYER_TYPES
            if t not in known + HYBRID_LAYER_TYPES.get(getattr(cfg, "model_type", None), ()):
                raise _refuse(f"layer {i}", f"layer type {t!r} has no exact form in longmix")


def _check_refused_mixers(model: nn.Module) -> None:
    """A mixer class refused by name (a near-miss of a mapped one) says why, before anything else."""
    for name, module in model.named_modules():
        reason = REFUSED_MIXERS.get(type(module).__name__)
        if reason is not None and type(module).__module__.startswith("transformers."):
            raise _refuse(f"layer {name!r} ({type(module).__name__})", reason)


def plan_hf(model: nn.Module) -> list[HFLayerPlan]:
    """Per token-mixing layer of ``model``, what it runs as (see the module doc); raises a
    ValueError naming the layer and the reason when any layer cannot run exactly."""
    _check_refused_mixers(model)
    attention = attention_modules(model)
    mixers = mixer_layers(model)
    _check_model(model, bool(attention))
    _check_rope(model)
    plans = [_attention_plan(name, module, module.config if hasattr(module, "config") else model.config)
             for name, module in attention]
    plans += [HFLayerPlan(name, "mixer", module_class=type(m).__name__) for name, m in mixers]
    _check_unmapped(model, [p.name for p in plans], [p.name for p in plans if p.kind == "mixer"])
    if not plans:
        raise _refuse(type(model).__name__, "found no attention or mapped mixer layer to run")
    return plans
