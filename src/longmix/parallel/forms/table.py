"""The one table of sequence-parallel forms: name -> the mixer hooks it needs, its cost, its runner.

A mixer admits a form when it implements that form's hooks (a mixin of ``longmix.mixers.forms``)
and its options allow it (``TokenMixer.parallel_forms``). The planner (``model_plan``) prices
every admitted form with ``cost``; ``ParallelMixer`` runs the chosen one with ``run``. Adding a
form is one row here, one mixin, one cost and one runner (docs/ARCHITECTURE.md has the checklist).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from longmix.mixers.forms import RingHooks, ShuffleHooks, StateHooks

from .ring_form import ring_cost, run_ring
from .shuffle_form import run_shuffle, shuffle_cost
from .state_form import run_state, state_cost


@dataclass(frozen=True)
class Form:
    name: str
    hooks: type        # the mixin a mixer implements to admit this form
    cost: Callable     # (mixer, seq_len, world, batch, dtype, layout, documents) -> FormCost
    run: Callable      # (mixer, x_local, shards, group, stats) -> y_local
    summary: str       # what moves, for help texts and errors


#: In preference order: when no bytes are predicted, the first feasible form is taken (the
#: shuffle first: it runs the mixer's own kernel).
FORMS: dict[str, Form] = {f.name: f for f in (
    Form("shuffle", ShuffleHooks, shuffle_cost, run_shuffle,
         "all-to-all to head/channel shards, the mixer's own kernel, all-to-all back"),
    Form("state", StateHooks, state_cost, run_state,
         "one all-gather of fixed-size state summaries (causal mixers with a finite state)"),
    Form("ring", RingHooks, ring_cost, run_ring,
         "K/V blocks around the ranks merged on the log-sum-exp; a halo with a window"),
)}

