"""The router's auxiliary load-balancing loss of transformers' MoE causal LMs, over ranks.

With ``output_router_logits=True`` in its config (or as a forward argument, which overrides the
config), a transformers MoE causal LM (Mixtral, Qwen2/3-MoE,
Qwen3-Next, Jamba, OLMoE, ...) returns ``aux_loss = load_balancing_loss_func(router_logits,
self.num_experts, self.num_experts_per_tok, attention_mask)`` and, given labels, adds
``router_aux_loss_coef * aux_loss`` to its loss. That loss is not a sum over tokens (it multiplies
two means over every token of every MoE layer), so it is recomputed here from this rank's router
logits by :func:`longmix.hf.moe.load_balancing_loss`, whose statistics are summed over ranks.

:func:`router_loss_of` recognises the computation by its code: the model's module must hold
transformers' one ``load_balancing_loss_func`` (Mixtral's, which the others copy) and its forward
must call it with those arguments. A model computing some other router loss is refused by name.
"""
from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass

from torch import nn

# how every covered transformers 5.x causal LM calls it (its attention_mask: longmix's all-ones one)
_CALL = re.compile(r"load_balancing_loss_func\(\s*outputs\.router_logits,\s*self\.num_experts,\s*"
                   r"self\.num_experts_per_tok,\s*attention_mask,?\s*\)")


@dataclass(frozen=True)
class RouterLoss:
    """What the model's forward computes: ``coef * aux`` added to the loss, aux over ``num_experts``
    experts with ``top_k`` chosen per token."""

    num_experts: int
    top_k: int
    coef: float


def _code(func) -> tuple:
    code = func.__code__  # the docstring (first constant) may differ between modeling files
    return code.co_code, code.co_names, code.co_varnames, code.co_consts[1:]


def router_loss_of(model: nn.Module, asked: bool | None = None) -> RouterLoss | None:
    """The router loss ``model``'s forward computes, or None when it computes none (router logits
    are not asked for, a base model, or an MoE model whose forward adds no such loss: its
    ``router_logits`` output is then simply this rank's rows). ``asked``: the forward's
    ``output_router_logits`` argument (None: the config's flag decides, as in transformers).
    Raises a ValueError naming the model and the reason for a router loss longmix does not
    recognise."""
    if asked is None:
        asked = getattr(model.config, "output_router_logits", False)
    if not asked:
        return None
    forward = inspect.getsource(type(model).forward)
    if "load_balancing_loss_func(" not in forward and "aux_loss" not in forward:
        return None
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as reference

    kind = type(model).__name__
    func = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
    if func is None or _code(func) != _code(reference) or not _CALL.search(forward):
        raise ValueError(f"longmix.hf.parallelize: {kind}: output_router_logits=True, and its router "
                         f"loss is not transformers' load_balancing_loss_func(router_logits, "
                         f"num_experts, num_experts_per_tok, attention_mask) that longmix reduces "
                         f"across ranks")
    return RouterLoss(int(model.num_experts), int(model.num_experts_per_tok),
                      float(model.router_aux_loss_coef))
