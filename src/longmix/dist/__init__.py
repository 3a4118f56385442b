"""Exact multi-head attention over a sequence sharded across processes (torch.distributed).

    import longmix.dist as ld
    q_local = ld.shard(q, layout="zigzag")             # this rank's rows
    out_local = ld.attention(q_local, k_local, v_local, causal=True, layout="zigzag")
    out = ld.unshard(out_local, layout="zigzag")       # the full output on every rank

Strategies: ``shuffle`` (the head all-to-all of Hè & Kabic 2023), ``ring``, ``hybrid`` and
``auto`` (chosen by :func:`plan`). See :mod:`longmix.dist.api` for the contract.

Whole mixers and models: ``parallelize(model, group, layout)`` runs any ``TokenMixer`` or
``SequenceModel`` on sequence shards, each mixer layer in an exact form (shuffle, state, ring)
chosen by :func:`plan_model`; see :mod:`longmix.dist.parallelize`.
"""
from .api import attention
from .layout import LAYOUTS, local_length, segments, shard, unshard
from .model_plan import ModelPlan, plan_model
from .parallelize import parallelize
from .plan import DEFAULT_RATES, Plan, Rates, StrategyCost, measure_rates, plan
from .state_passing import state_passing_backward_bytes, state_passing_bytes, state_passing_mix
from .stats import CommStats
from .validate import STRATEGIES

__all__ = ["attention", "parallelize", "plan_model", "ModelPlan", "shard", "unshard", "segments", "local_length", "plan", "measure_rates",
           "Plan", "Rates", "StrategyCost", "CommStats", "LAYOUTS", "STRATEGIES", "DEFAULT_RATES",
           "state_passing_mix", "state_passing_bytes", "state_passing_backward_bytes"]
