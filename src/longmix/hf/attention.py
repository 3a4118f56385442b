"""longmix's exact distributed attention, registered with transformers under one name.

transformers dispatches each attention layer through ``AttentionInterface`` by the name in
``config._attn_implementation``, and builds the layer's mask through ``AttentionMaskInterface``
under the same name. Both are registered here as :data:`ATTENTION_NAME`:

- the mask function does not build an (L x L) mask: it reads which mask transformers asked for
  (causal, or causal with a sliding window of W keys) from the mask function it is given, and
  returns a :class:`CausalMask` saying so. Any other mask (bidirectional, chunked, padding, image
  tokens, packed documents, a cache offset) raises a ValueError: it is never dropped silently;
- the attention function runs :func:`longmix.parallel.attention` on this rank's rows with that
  mask, after checking every argument the layer passes (a soft-cap, sinks, a position bias or
  attention dropout raise: longmix's attention op cannot express them exactly).

A layer only runs here inside a model returned by :func:`longmix.hf.parallelize`, which sets an
:class:`AttentionSetup` (process group, layout, stats, the layer's name) on each attention module
of its copy of the model. Registration is idempotent and changes no model: a model uses it only
if its config names it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (AttentionMaskInterface, and_masks, causal_mask_function,
                                        sliding_window_overlay)

import longmix.parallel as lp
from longmix.parallel.stats import CommStats

ATTENTION_NAME = "longmix"
SETUP_ATTRIBUTE = "_longmix_attention_setup"


@dataclass
class RunState:
    """What one forward of a parallel copy says to its layers: ``empty`` when this rank holds no
    rows and runs one stand-in row instead (transformers' reshapes cannot take 0 rows);
    ``generation``, set by ``longmix.generate`` around its forwards: during the prefill each
    layer hands it what decoding keeps (its keys and values, or its mixer's final state), and
    while ``generation.decoding`` each layer's one new row goes through it (the sharded cache)."""

    empty: bool = False
    generation: object = None


@dataclass(frozen=True)
class AttentionSetup:
    """Where one attention module of a parallel copy runs: set on the module by ``parallelize``."""

    name: str                 # the module's qualified name, for error messages
    group: object
    layout: str
    stats: CommStats | None
    run: RunState
    strategy: str = "auto"


def stand_in(rows: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Zeros of ``shape`` (the stand-in row's output) that depend on ``rows`` (this rank's 0 rows
    of a collective's output), so that backward still runs the collective's reverse exchange."""
    return rows.new_zeros(shape) + rows.sum()


@dataclass(frozen=True)
class CausalMask:
    """The mask transformers asked for, as longmix's attention op expresses it: causal over global
    positions, with keys ``i - window < j <= i`` when ``window`` is set (transformers'
    ``sliding_window_overlay``: ``kv_idx > q_idx - sliding_window``)."""

    window: int | None = None


# transformers' own closures, recognised by their code objects (exact, unlike evaluating a mask)
_AND_CODE = and_masks(causal_mask_function).__code__
_SLIDING_CODE = sliding_window_overlay(1).__code__


def _closure(fn) -> dict:
    cells = fn.__closure__ or ()
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in cells)))


def mask_window(mask_function) -> int | None:
    """The window of a transformers causal mask function: None for plain causal, W for causal with
    a sliding window of W keys. Raises ValueError for any other mask function."""
    if mask_function is causal_mask_function:
        return None
    code = getattr(mask_function, "__code__", None)
    if code is _AND_CODE:
        parts = _closure(mask_function).get("mask_functions", ())
        if (len(parts) == 2 and parts[1] is causal_mask_function
                and getattr(parts[0], "__code__", None) is _SLIDING_CODE):
            return int(_closure(parts[0])["sliding_window"])
    name = getattr(mask_function, "__qualname__", type(mask_function).__name__)
    raise ValueError(f"longmix.hf: the model asked for an attention mask ({name}) that is neither "
                     f"causal nor causal with a sliding window; longmix cannot run it exactly")


def _is_zero(value) -> bool:
    return isinstance(value, (int, float)) and value == 0


def longmix_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                 mask_function=causal_mask_function, attention_mask=None, **kwargs) -> CausalMask:
    """transformers' mask-interface signature; returns a :class:`CausalMask` (see the module doc)."""
    if not (_is_zero(q_offset) and _is_zero(kv_offset)) or kv_length != q_length:
        raise ValueError("longmix.hf: a key/value cache (past_key_values) is not supported; "
                         f"got q_length={q_length}, kv_length={kv_length}, offsets "
                         f"{q_offset}, {kv_offset}")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("longmix.hf: a padding attention_mask is not supported")
    return CausalMask(window=mask_window(mask_function))


# arguments a layer may pass that do not change what attention computes
_PASSTHROUGH = {"position_ids", "use_cache", "cache_position", "output_hidden_states",
                "return_dict", "layer_idx", "past_key_values", "position_embeddings",
                "output_router_logits"}  # MoE models pass it down every layer
# arguments longmix's attention op cannot express, refused unless None / False
_REFUSED = {"softcap": "attention logit soft-capping", "s_aux": "attention sinks",
            "sinks": "attention sinks", "position_bias": "a position bias added to the logits",
            "output_attentions": "returning attention weights", "head_mask": "a head mask",
            "cu_seq_lens_q": "packed sequences", "cu_seq_lens_k": "packed sequences"}


def longmix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, sliding_window: int | None = None,
                      is_causal: bool | None = None, **kwargs):
    """transformers' attention-interface signature: query (batch, heads, L_local, head_dim), key
    and value (batch, kv_heads, L_local, head_dim). Returns (batch, L_local, heads, head_dim) and
    None (no attention weights)."""
    setup = getattr(module, SETUP_ATTRIBUTE, None)
    if setup is None:
        raise ValueError(f"attn_implementation={ATTENTION_NAME!r} runs only inside a model returned "
                         f"by longmix.hf.parallelize ({type(module).__name__} has no setup)")
    where = f"longmix.hf: layer {setup.name!r}"
    if not isinstance(attention_mask, CausalMask):
        raise ValueError(f"{where}: its attention mask was not built by longmix (got "
                         f"{type(attention_mask).__name__}); a custom or 4-D mask is not supported")
    window = attention_mask.window
    if sliding_window is not None and sliding_window != window:
        raise ValueError(f"{where}: passes sliding_window={sliding_window} but its mask has "
                         f"window={window}; refusing an ambiguous window")
    if is_causal is False or getattr(module, "is_causal", True) is False:
        raise ValueError(f"{where}: bidirectional attention is not supported (only causal)")
    if not _is_zero(dropout):
        raise ValueError(f"{where}: attention dropout {dropout} is not supported; call "
                         f"model.eval() or set config.attention_dropout = 0")
    for name, value_ in kwargs.items():
        if name in _PASSTHROUGH or value_ is None or value_ is False:
            continue
        reason = _REFUSED.get(name, f"an argument longmix does not know ({name})")
        raise ValueError(f"{where}: {reason} is not supported by longmix's attention")
    if key.shape[-1] != query.shape[-1] or value.shape[-1] != query.shape[-1]:
        raise ValueError(f"{where}: query, key and value head dims differ "
                         f"({query.shape[-1]}, {key.shape[-1]}, {value.shape[-1]})")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    generation = setup.run.generation
    if generation is not None and generation.decoding:  # the new row over the sharded cache
        return generation.attend(setup.name, q, k, v), None
    if setup.run.empty:  # the stand-in row is not part of the sequence: join with 0 rows
        q, k, v = q[:, :0], k[:, :0], v[:, :0]
    out = lp.attention(q, k, v, causal=True, group=setup.group, layout=setup.layout, scale=scaling,
                       window=window, stats=setup.stats, strategy=setup.strategy)
    if generation is not None:  # a prefill: this rank's rows' keys and values stay here
        generation.keep_kv(setup.name, k, v, scaling, window)
    if setup.run.empty:
        out = stand_in(out, (query.shape[0], query.shape[2], *out.shape[2:]))
    return out, None


def register() -> None:
    """Register :func:`longmix_attention` and :func:`longmix_mask` as ``ATTENTION_NAME``."""
    AttentionInterface.register(ATTENTION_NAME, longmix_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, longmix_mask)
