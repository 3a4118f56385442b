"""The hooks a mixer implements to admit each sequence-parallel form, as mixins.

``TokenMixer`` keeps the core contract (forward, reference, mixing matrix, step mode). A mixer
that also runs sequence-parallel inherits the mixin of each form it admits:

* :class:`ShuffleHooks`: its sequence mixing is independent across G groups (heads or channels),
  so an all-to-all can hand each rank whole sequences of some groups;
* :class:`StateHooks`: it is a recurrence with a fixed-size state, so ranks can pass states;
* :class:`RingHooks`: softmax attention, whose K/V blocks can travel around a ring.

``longmix.parallel.forms.table.FORMS`` maps each form's name to these hooks, its cost and its runner.
"""
from __future__ import annotations

import torch


class WholeSequence:
    """What ``_shuffle_prepare`` sees in one process: one piece, the whole sequence. A sharded
    run passes an object with the same method that fetches the context from other ranks."""

    @staticmethod
    def left_context(t: torch.Tensor, rows: int) -> list[torch.Tensor]:
        """[t (batch, L, C) with ``rows`` zero rows prepended]: one entry per local piece."""
        return [torch.nn.functional.pad(t, (0, 0, rows, 0))]


class ShuffleHooks:
    """The shuffle form: hooks that split forward at its all-to-all points."""

    # A mixer whose sequence mixing is independent across G groups (heads or channels) runs as
    # finish(mix(prepare(x))). prepare and finish are pointwise in the sequence (apart from short
    # left context, fetched through ``pieces``), mix runs the mixer's own kernel on some groups
    # over the whole length. One process calls them in a row (``_forward_by_groups``); the
    # sequence-parallel shuffle (``longmix.parallel.forms.parallelize``) puts an all-to-all between them.
    def shuffle_groups(self) -> int:
        """G, the number of groups whose sequence mixing is independent."""
        raise NotImplementedError

    def _shuffle_prepare(self, x: torch.Tensor, pieces) -> tuple:
        """x (batch, l, dim) -> (streams (batch, l, G, *F), shared (batch, l, S) or None, ctx).

        ``streams`` go to the rank owning their group; ``shared`` per-position inputs every group
        needs (e.g. Mamba's B, C) go to every rank; ``ctx`` stays here for ``_shuffle_finish``.
        ``pieces.left_context(t, rows)`` gives each local piece of t with the ``rows`` rows that
        precede it in the global sequence (zeros before position 0)."""
        raise NotImplementedError

    def _shuffle_mix(self, streams: torch.Tensor, shared, groups: slice) -> torch.Tensor:
        """The sequence mixing of ``groups`` over the whole length: streams (batch, L, g, *F) ->
        (batch, L, g, *F_out)."""
        raise NotImplementedError

    def _shuffle_finish(self, mixed: torch.Tensor, ctx) -> torch.Tensor:
        """(batch, l, G, *F_out) and ``ctx`` -> the output (batch, l, dim)."""
        raise NotImplementedError

    def _forward_by_groups(self, x: torch.Tensor) -> torch.Tensor:
        streams, shared, ctx = self._shuffle_prepare(x, WholeSequence)
        return self._shuffle_finish(self._shuffle_mix(streams, shared, slice(None)), ctx)


class StateHooks:
    """The state form: what a chunk does to the state, from the chunk alone, and how to apply it.

    Ranks holding consecutive chunks find their incoming states from one all-gather of these
    fixed-size summaries per stage (``longmix.parallel.forms.state_passing``). Requires the step
    mode (``_init_state``, ``_forward_with_state``) of ``TokenMixer``."""

    @property
    def state_stages(self) -> dict[str, tuple[str, ...]]:
        """The stages of state passing, in order, each with the state keys it resolves (one
        all-gather each). A later stage's summary may read the incoming state's keys resolved by
        earlier stages (Mamba's SSM summary needs the conv inputs that precede the chunk).
        Default: one stage resolving the whole state."""
        return {"state": tuple(self._init_state(1, torch.device("meta"), torch.float32))}

    def _stage(self, stage: str | None) -> str:
        stages = tuple(self.state_stages)
        if stage is None:
            return stages[0]
        if stage not in stages:
            raise ValueError(f"{type(self).__name__}: stage must be one of {stages}, got {stage!r}")
        return stage

    def _state_summary(self, x: torch.Tensor, state: dict | None, stage: str) -> dict:
        raise NotImplementedError

    def _chain_state(self, state: dict, summary: dict, stage: str) -> dict:
        raise NotImplementedError


class RingHooks:
    """The ring form: softmax attention exposing ``_qkv(x) -> (q, k, v)`` in the flash layout,
    ``_merge(out) -> y``, and its ``causal``, ``window`` and ``scale``."""


#: (form name, hooks) in preference order; ``longmix.parallel.forms.table`` holds the rest of each row.
FORM_HOOKS = (("shuffle", ShuffleHooks), ("state", StateHooks), ("ring", RingHooks))
