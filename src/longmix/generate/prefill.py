"""The sharded prefill: the prompt's forward split over ranks, keeping per layer what decoding needs.

The model's layers run through :func:`longmix.parallel.parallelize` (its :class:`ParallelMixer`
per layer, in the forms its planner picks), with one difference: a layer with a fixed-size state
runs in the "state" form, whose state passing also yields the state after the whole prompt
(``state_passing_mix(return_final_state=True)``). A softmax layer runs in the planned form
(ring or shuffle); its cache is the keys and values of this rank's own rows, projected from the
layer's input rows. A long convolution (longconv, hyena) also runs in the planned form and keeps its input rows.
See :mod:`longmix.generate.cache`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..parallel.forms.model_plan import mixer_layers
from ..parallel.forms.parallelize import Shards, agree_on_shards, parallelize
from ..parallel.forms.state_passing import state_passing_mix
from ..parallel.layout import resolve_group, shard
from ..mixers.conv import Hyena
from .cache import HyenaCache, ShardedHistoryCache, ShardedKVCache, StateCache, decode_kind, decode_owners


@dataclass
class Prefilled:
    """What the prefill leaves: one cache per block, the final normalized features of the
    prompt's last position (batch, dim) on every rank, the forms the layers ran in."""

    caches: list
    last_features: torch.Tensor
    forms: list[str]
    shards: Shards


def prefill_forms(model) -> list[str | None]:
    """Per block: "state" for fixed-state mixers (their final state comes with it), None (the
    planner's choice) for softmax."""
    return ["state" if decode_kind(mixer) == "state" else None for _, mixer in mixer_layers(model)]


def _broadcast_from(t: torch.Tensor, owner: int, group, world: int) -> torch.Tensor:
    if world == 1:
        return t
    dist.broadcast(t, group=group, group_src=owner)
    return t


def prefill(model, input_ids: torch.Tensor, max_new_tokens: int, group=None,
            layout: str = "contiguous", progress=None) -> Prefilled:
    """Run the prompt ``input_ids`` (batch, L), the same on every rank, sharded over ``group``.

    ``progress(done_layers, total_layers)`` is called after each layer (a progress bar)."""
    group, world, rank = resolve_group(group)
    batch, prompt_len = input_ids.shape
    pmodel = parallelize(model, group=group, layout=layout, forms=prefill_forms(model),
                         seq_len=prompt_len, batch=batch)
    tokens = shard(input_ids, group, layout)
    shards = agree_on_shards(tokens, group, layout, what="input_ids", dims=2,
                             max_len=model.cfg.max_len)
    positions = shards.positions.to(tokens.device)
    steps = max(0, max_new_tokens - 1)  # the last new token is returned, never fed back
    caches: list = [None] * len(pmodel.layers)

    def run_layer(i, layer, x):
        if layer.form == "state":
            out, final = state_passing_mix(layer.mixer, x, group=group, layout=layout,
                                           seq_len=prompt_len, return_final_state=True)
            caches[i] = StateCache(layer.mixer, final)
        else:
            out = layer.run(x, shards)
            if decode_kind(layer.mixer) == "kv":
                caches[i] = ShardedKVCache.from_prefill(layer.mixer, x, positions, prompt_len,
                                                        shards.lengths, steps, group)
            elif isinstance(layer.mixer, Hyena):
                caches[i] = HyenaCache(layer.mixer, x, shards, prompt_len,
                                       decode_owners(shards.lengths, steps), group)
            else:
                caches[i] = ShardedHistoryCache(layer.mixer, x, shards.segments[rank], prompt_len,
                                                decode_owners(shards.lengths, steps), group)
        if progress is not None:
            progress(i + 1, len(pmodel.layers))
        return out

    mixers = [lambda x, i=i, layer=layer: run_layer(i, layer, x) for i, layer in enumerate(pmodel.layers)]
    h = model.features(tokens, positions=positions, mixers=mixers)
    owner = next(r for r, segs in enumerate(shards.segments)
                 if any(s + n == prompt_len for s, n in segs))
    last = h[:, shards.last_row].contiguous() if rank == owner else h.new_empty(batch, h.shape[-1])
    return Prefilled(caches=caches, last_features=_broadcast_from(last, owner, group, world),
                     forms=pmodel.forms, shards=shards)


class SequenceDecoder:
    """A longmix ``SequenceModel`` after the prefill: ``logits`` of the prompt's last position
    (batch, vocab), the caches, and :meth:`step` feeding one new token through them."""

    def __init__(self, model, input_ids: torch.Tensor, max_new_tokens: int, group=None,
                 layout: str = "contiguous", progress=None):
        self.model = model
        state = prefill(model, input_ids, max_new_tokens, group, layout, progress)
        self.caches, self.forms = state.caches, state.forms
        # no position table: each decode step computes its own row (a table up to L would be
        # O(L) on every rank, see ``Positional``)
        self.logits = model.head(state.last_features)

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """tokens (batch, 1) at global ``position`` -> their logits (batch, vocab)."""
        steppers = [lambda h, cache=cache: cache.step(h, position) for cache in self.caches]
        h = self.model.features(tokens, positions=torch.tensor([position], device=tokens.device),
                                mixers=steppers)
        return self.model.head(h[:, 0])
