"""The state form: state passing (``state_passing.py``), one all-gather of fixed-size per-chunk state
summaries per stage, for causal mixers with a fixed-size recurrent state."""
from __future__ import annotations

from ..stats import CommStats
from .cost import FormCost
from .shards import Shards
from .state_passing import state_passing_backward_bytes, state_passing_bytes, state_passing_mix


def state_cost(mixer, seq_len, world, batch, dtype, layout, documents=None) -> FormCost:
    if seq_len is None:
        return FormCost("state", True)
    # the same on every rank, and independent of L (doc_zigzag: of the number of documents)
    sent = state_passing_bytes(mixer, batch, world, layout, dtype=dtype, documents=documents)
    back = state_passing_backward_bytes(mixer, batch, world, layout, dtype=dtype,
                                        documents=documents)
    return FormCost("state", True, forward_bytes=(sent,) * world, backward_bytes=(back,) * world)


def run_state(mixer, x, shards: Shards, group, stats: CommStats | None):
    """The state form's forward. The shards were agreed by the caller, so state passing skips its
    own all-gathered shape check."""
    return state_passing_mix(mixer, x, group=group, layout=shards.layout, stats=stats,
                             seq_len=shards.seq_len, documents=shards.documents)
