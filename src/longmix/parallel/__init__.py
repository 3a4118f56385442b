"""Sequence parallelism on torch.distributed, in two wings that share layouts and exchanges.

- ``attention/``: exact multi-head attention over a sequence sharded across processes;
- ``forms/``: whole mixers and models on sequence shards (shuffle, state passing, ring);
- shared: ``layout`` (shard/unshard), ``stats`` (bytes moved), ``exchange`` (all-to-all and
  record agreement), ``halo`` (left context), ``launch`` (local ranks).


    import longmix.parallel as ld
    q_local = ld.shard(q, layout="zigzag")             # this rank's rows
    out_local = ld.attention(q_local, k_local, v_local, causal=True, layout="zigzag")
    out = ld.unshard(out_local, layout="zigzag")       # the full output on every rank

Strategies: ``shuffle`` (the head all-to-all of Hè & Kabic 2023), ``ring``, ``hybrid`` and
``auto`` (chosen by :func:`plan`). See :mod:`longmix.parallel.attn.api` for the contract.

Whole mixers and models: ``parallelize(model, group, layout)`` runs any ``TokenMixer`` or
``SequenceModel`` on sequence shards, each mixer layer in an exact form (shuffle, state, ring)
chosen by :func:`plan_model` (by bytes, or by time with a :class:`StepTiming` that
:func:`calibrate_timing` measures on the ranks); see :mod:`longmix.parallel.forms.parallelize`.
"""
from .attn.api import attention
from .attn.plan import DEFAULT_RATES, Plan, Rates, StrategyCost, measure_rates, plan
from .attn.validate import STRATEGIES
from .forms.calibration import calibrate_timing
from .forms.model_plan import ModelPlan, plan_model
from .forms.parallelize import parallelize
from .forms.state_passing import state_passing_backward_bytes, state_passing_bytes, state_passing_mix
from .forms.timing import StepTiming
from .layout import DOCUMENT_LAYOUTS, LAYOUTS, local_length, segments, shard, unshard
from .stats import CommStats

__all__ = ["attention", "parallelize", "plan_model", "calibrate_timing", "StepTiming", "ModelPlan",
           "shard", "unshard", "segments", "local_length", "plan", "measure_rates",
           "Plan", "Rates", "StrategyCost", "CommStats", "LAYOUTS", "DOCUMENT_LAYOUTS", "STRATEGIES", "DEFAULT_RATES",
           "state_passing_mix", "state_passing_bytes", "state_passing_backward_bytes"]
