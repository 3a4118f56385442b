"""An MoE router's load-balancing loss over a sequence split across ranks, equal to one process's.

The Switch-Transformer auxiliary loss of transformers' MoE models (Jamba, Mixtral, ...:
``load_balancing_loss_func``, added to the LM loss when ``output_router_logits=True``) is

    aux = E * sum_e f_e P_e,   f_e = (top-k assignments to expert e) / N,
                               P_e = (sum of router probabilities of e) / N,

with the sums and N (the count of (non-padding) rows) taken over every layer's rows of the whole
batch. Neither is a sum of per-token terms, so per-rank losses do not add up to it. Here each rank
computes its rows' statistics (2 E + 1 numbers), one all-reduce sums them, and every rank
evaluates the same global value.

Gradients: only P depends on the logits. Every rank backpropagates the same global loss, so the
all-reduce's backward is the identity: rank r's logits get d aux / d P_e (the same everywhere)
times d P_e / d (its own rows), exactly its share of the one-process gradient; the shares sum to
it over ranks, as every other gradient in ``longmix.parallel`` does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..checks import check_int
from ..parallel.layout import resolve_group


class _SumOverRanks(torch.autograd.Function):
    """All-reduce sum; backward the identity (see the module docstring: every rank
    backpropagates the same replicated result, and each keeps its own share)."""

    @staticmethod
    def forward(ctx, x, group):
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _check(gate_logits, num_experts: int, top_k: int, attention_mask) -> None:
    check_int("num_experts", num_experts, owner="load_balancing_loss")
    check_int("top_k", top_k, 1, num_experts, owner="load_balancing_loss")
    if not isinstance(gate_logits, (tuple, list)) or not gate_logits:
        raise ValueError("load_balancing_loss: gate_logits must be a non-empty tuple of per-layer router "
                         f"logits (rows, num_experts), got {type(gate_logits).__name__}")
    rows = {tuple(t.shape) for t in gate_logits}
    if len(rows) != 1 or any(t.dim() != 2 or t.shape[1] != num_experts for t in gate_logits):
        raise ValueError(f"load_balancing_loss: every layer's gate_logits must be (rows, num_experts="
                         f"{num_experts}) with the same rows, got shapes {sorted(rows)}")
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.numel() != gate_logits[0].shape[0]):
        raise ValueError(f"load_balancing_loss: attention_mask must be this rank's (batch, local_len) shard with "
                         f"batch * local_len = {gate_logits[0].shape[0]} rows, got shape {tuple(attention_mask.shape)}")


def load_balancing_loss(gate_logits: Sequence[torch.Tensor], num_experts: int, top_k: int = 2,
                        attention_mask: torch.Tensor | None = None, group=None) -> torch.Tensor:
    """The load-balancing loss of the whole sequence, from this rank's rows, on every rank.

    Args:
        gate_logits: per MoE layer, this rank's router logits (rows, num_experts), rows = batch *
            local_len in HF's order (the (batch, local_len) tokens of this rank's shard, flattened).
        num_experts, top_k: as the model's config (``num_experts``, ``num_experts_per_tok``).
        attention_mask: this rank's shard (``longmix.parallel.shard``) of the (batch, L) padding
            mask, or None: padding rows then count for nothing, as in transformers.
        group: the process group (None: the default group, or one process).

    Returns the scalar loss in float64 or the logits' dtype if wider; the same value on every rank,
    equal to transformers' ``load_balancing_loss_func`` on the whole sequence. A rank with no rows
    still joins the all-reduce.
    """
    _check(gate_logits, num_experts, top_k, attention_mask)
    group, world, _ = resolve_group(group)
    dtype = torch.promote_types(gate_logits[0].dtype, torch.float64)  # counts and sums stay exact
    device = gate_logits[0].device
    weight = (torch.ones(gate_logits[0].shape[0], dtype=dtype, device=device) if attention_mask is None
              else attention_mask.reshape(-1).to(device=device, dtype=dtype))
    counts = torch.zeros(num_experts, dtype=dtype, device=device)
    prob_sums = torch.zeros(num_experts, dtype=dtype, device=device)
    for logits in gate_logits:
        probs = F.softmax(logits.to(dtype), dim=-1)
        chosen = probs.topk(top_k, dim=-1).indices  # (rows, top_k)
        counts = counts.scatter_add(0, chosen.reshape(-1), weight.repeat_interleave(top_k))
        prob_sums = prob_sums + (probs * weight[:, None]).sum(0)
    rows = (weight.sum() * len(gate_logits)).reshape(1)
    stats = torch.cat([counts, prob_sums, rows])
    if world > 1:
        stats = _SumOverRanks.apply(stats, group)
    counts, prob_sums, rows = stats.split([num_experts, num_experts, 1])
    return num_experts * ((counts / rows) * (prob_sums / rows)).sum()
