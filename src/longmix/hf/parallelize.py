"""``longmix.hf.parallelize``: a Hugging Face causal LM that runs on this rank's shard of the sequence.

    pmodel = longmix.hf.parallelize(model, group=group, layout="zigzag")
    ids = longmix.parallel.shard(input_ids, group, layout="zigzag")
    out = pmodel(ids, labels=longmix.parallel.shard(labels, group, layout="zigzag"))
    out.loss.backward()    # out.loss: the global mean, the same on every rank

The returned module holds a copy of the model's modules and config that shares every parameter
and buffer with the original (so the original keeps working unsharded, and its ``.grad`` fields
receive this rank's share of the gradient; summed over ranks, the one-process gradient). In the
copy:

- every attention module runs longmix's exact distributed attention (registered with
  transformers as ``attn_implementation="longmix"``, see :mod:`longmix.hf.attention`), with the
  mask transformers asks for per layer: causal, or causal with a sliding window;
- every module of a class ``longmix.hf.mixers`` maps (an SSM mixer) is replaced by an adapter that
  runs ``mixer_from_hf(module)`` in a longmix parallel form (:class:`MixerAdapter`);
- everything else (embeddings, norms, MLPs, MoE, the lm head) is pointwise in the sequence and runs
  on local rows, with global ``position_ids`` from the layout.

``labels`` are this rank's shard of the unshifted labels; the shift across shard edges is one
halo exchange of one label per piece. The loss is transformers' causal LM cross entropy
(``ignore_index=-100``), summed over ranks and divided by the global count of scored labels, in
float64 for a float64 model (transformers computes it in float32).

An MoE causal LM whose config has ``output_router_logits=True``, or called with that forward
argument (which overrides the config, as in transformers), returns ``aux_loss``, the router's
load-balancing loss of the whole sequence (statistics summed over ranks,
:mod:`longmix.hf.router_loss`), and adds ``router_aux_loss_coef * aux_loss`` to the loss, as
transformers does; ``router_logits`` are this rank's rows.

``checkpoint_activations=True`` checkpoints every decoder layer of the copy in training mode
(transformers' own per-layer checkpointing, given longmix's options: :mod:`longmix.hf.checkpointing`):
backward recomputes each layer, its collectives included, in the same order on every rank. The
user's model is left as it was.
"""
from __future__ import annotations

import copy
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from longmix.parallel.forms.parallelize import AllReduceSum, ScaleGrad, Shards, agree_on_shards
from longmix.parallel.halo import fetch_halo, halo_plan
from longmix.parallel.layout import check_sequence_layout, resolve_group
from longmix.parallel.stats import CommStats
from longmix.vocabulary import STRATEGIES

from . import attention as hf_attention
from . import plan as hf_plan
from .checkpointing import checkpoint_layers
from .moe import load_balancing_loss
from .plan import HFLayerPlan, plan_hf
from .router_loss import RouterLoss, router_loss_of

IGNORE_INDEX = -100  # transformers' (and torch's) cross-entropy ignore_index
_FORWARD_ARGS = ("input_ids", "labels", "attention_mask", "num_items_in_batch", "logits_to_keep",
                 "output_router_logits")


def _mixer_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The hook the SSM mapping plugs into: the modules of ``model`` whose class is in
    ``longmix.hf.mixers.HF_MIXER_CLASSES`` (none when that module is absent), as (name, module)."""
    return hf_plan.mixer_layers(model)


class MixerAdapter(nn.Module):
    """Stands in for an HF mixer module (e.g. ``MambaMixer``) in the parallel copy: runs the longmix
    ``TokenMixer`` equal to it (``mixer_from_hf``, sharing its parameters) in a longmix parallel
    form on this rank's rows. Takes the HF mixer's call, ``(hidden_states, cache_params=None,
    attention_mask=None)``, and refuses a cache or a padding mask."""

    def __init__(self, name: str, hf_module: nn.Module, group, layout: str,
                 stats: CommStats | None, run: hf_attention.RunState):
        super().__init__()
        from longmix.parallel import parallelize as parallelize_mixer

        mixer = hf_plan.mixer_from_hf(hf_module)
        shared = {id(p) for p in hf_module.parameters()}
        foreign = [n for n, p in mixer.named_parameters() if id(p) not in shared]
        if foreign:  # gradients must reach the user's parameters, not copies
            raise ValueError(f"longmix.hf.parallelize: layer {name!r}: mixer_from_hf returned "
                             f"parameters {foreign} that are not the HF module's own")
        self.name, self.run = name, run
        self.parallel = parallelize_mixer(mixer, group=group, layout=layout, stats=stats)

    def forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask=None, **kwargs):
        if cache_params is not None or kwargs.get("cache_position") is not None:
            raise ValueError(f"longmix.hf: layer {self.name!r}: a cache is not supported")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(f"longmix.hf: layer {self.name!r}: a padding mask is not supported")
        generation = self.run.generation
        if generation is not None and generation.decoding:  # one new row: step the state
            return generation.step_mixer(self.name, hidden_states)
        # the stand-in row of an empty rank is not part of the sequence: join with 0 rows
        rows = hidden_states[:, :0] if self.run.empty else hidden_states
        out = self.parallel(rows) if generation is None else \
            generation.prefill_mixer(self.name, self.parallel.mixer, rows)  # keeps the final state
        return hf_attention.stand_in(out, hidden_states.shape) if self.run.empty else out


def _shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules and config holding the very same parameter and buffer tensors."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo=memo)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def next_labels(labels: torch.Tensor, shards: Shards, group, stats=None) -> torch.Tensor:
    """For each local row, the label of the next global position (IGNORE_INDEX after the last):
    the HF shift done across shard edges; each piece's next label comes in one halo exchange."""
    batch = labels.shape[0]
    end = labels.new_full((batch, 1), IGNORE_INDEX)
    mine = shards.segments[shards.rank]
    if shards.world == 1:
        return torch.cat([labels[:, 1:], end], dim=1)
    plan = halo_plan(shards.segments, shards.rank, left=0, right=1)
    sides, _ = fetch_halo(labels.contiguous(), plan, group, stats)
    pieces, offset = [], 0
    for (_, n), (_, after) in zip(mine, sides):
        pieces.append(labels[:, offset + 1:offset + n])
        pieces.append(after if after.shape[1] else end)
        offset += n
    return torch.cat(pieces, dim=1) if pieces else labels[:, :0]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, shards: Shards, group,
                   num_items_in_batch=None, stats=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """transformers' causal LM loss of the whole sequence from this rank's rows, the same on every
    rank, computed in ``dtype`` or wider. Backpropagated on every rank, each rank's parameter
    gradients are its share."""
    target = next_labels(labels, shards, group, stats)
    wide = logits.to(torch.promote_types(logits.dtype, dtype))
    total = F.cross_entropy(wide.reshape(-1, wide.shape[-1]), target.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    sums = torch.stack([total, (target != IGNORE_INDEX).sum().to(total.dtype)])
    if shards.world > 1:
        # every rank backpropagates the same loss: each keeps 1/P of the reduced gradient
        sums = ScaleGrad.apply(AllReduceSum.apply(sums, group), 1.0 / shards.world)
    count = sums[1] if num_items_in_batch is None else num_items_in_batch
    return sums[0] / count


class ParallelHFModel(nn.Module):
    """An HF model over the ranks of ``group``: forward(input_ids_local, labels=None,
    attention_mask=None, num_items_in_batch=None, logits_to_keep=None, output_router_logits=None)
    returns the HF output with this rank's rows of ``logits`` (or ``last_hidden_state``) and the
    global ``loss``. ``logits_to_keep``: a 1-D LongTensor of this rank's local rows whose logits to
    compute (the others are never computed), without labels. ``output_router_logits``: an MoE
    model's router logits (this rank's rows) and, for a causal LM, its router loss over every
    rank; None: as its config. ``layers`` is the plan."""

    def __init__(self, model: nn.Module, layers: list[HFLayerPlan], group, layout: str,
                 stats: CommStats | None, run: hf_attention.RunState,
                 router_loss: RouterLoss | None = None, checkpoint_activations: bool = False):
        super().__init__()
        self.model = model
        self.layers, self.group, self.layout, self.stats = layers, group, layout, stats
        self.run = run
        self._router_losses = {None: router_loss}  # by output_router_logits: computed once each
        self.checkpoint_activations = checkpoint_activations
        # an SSM-only model (Mamba) takes no positions; attention models must (checked by the plan)
        self.takes_positions = "position_ids" in inspect.signature(model.forward).parameters

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, num_items_in_batch=None,
                logits_to_keep: torch.Tensor | None = None, output_router_logits: bool | None = None,
                **kwargs):
        if kwargs:
            raise ValueError(f"longmix.hf: unsupported forward arguments {sorted(kwargs)}; the "
                             f"parallel model takes {_FORWARD_ARGS} (positions come from the layout)")
        # before any collective: a refusal here is the same on every rank
        router_loss = self.router_loss_for(output_router_logits)
        shards = agree_on_shards(input_ids, self.group, self.layout, what="input_ids", dims=2)
        group, _, _ = resolve_group(self.group)
        batch, local = input_ids.shape
        if labels is not None:
            if not hasattr(self.model, "get_output_embeddings") or self.model.get_output_embeddings() is None:
                raise ValueError("longmix.hf: labels need a model with an lm head (a *ForCausalLM)")
            # compared from the gathered shapes, so every rank raises together or none does
            label_shards = agree_on_shards(labels, self.group, self.layout, what="labels", dims=2)
            if (label_shards.lengths, label_shards.batch) != (shards.lengths, shards.batch):
                raise ValueError(f"longmix.hf: labels must have input_ids' shape on every rank: "
                                 f"batch {shards.batch}, lengths {shards.lengths}; got batch "
                                 f"{label_shards.batch}, lengths {label_shards.lengths}")
        if logits_to_keep is not None:
            if labels is not None or not isinstance(logits_to_keep, torch.Tensor) \
                    or logits_to_keep.dim() != 1:
                raise ValueError("longmix.hf: logits_to_keep must be a 1-D LongTensor of local rows, "
                                 "and without labels (the loss needs every row's logits)")
            extra_out = {"logits_to_keep": logits_to_keep[:0] if local == 0 else logits_to_keep}
        else:
            extra_out = {}
        if output_router_logits is not None:
            extra_out["output_router_logits"] = output_router_logits
        if attention_mask is not None:
            expected = (batch, shards.seq_len)
            if tuple(attention_mask.shape) != expected:
                raise ValueError(f"longmix.hf: attention_mask must be the whole (batch, L) mask "
                                 f"{expected}, got {tuple(attention_mask.shape)}")
            if not bool(attention_mask.all()):
                raise ValueError("longmix.hf: a padding attention_mask (zeros) is not supported; "
                                 "pass sequences without padding")
        if (0 in shards.lengths and torch.is_grad_enabled() and self.model.training
                and self.checkpoint_activations):
            # the stand-in row of an empty rank is set up for one forward, not for a recompute
            raise ValueError(f"longmix.hf: checkpoint_activations needs every rank to hold rows "
                             f"(L = {shards.seq_len} over {shards.world} ranks leaves some empty)")
        positions = shards.positions.to(input_ids.device)[None].expand(batch, -1)
        empty = local == 0
        if empty:  # transformers cannot reshape 0 rows: run one stand-in row, joined with 0 rows
            input_ids = input_ids.new_zeros(batch, 1)
            positions = positions.new_zeros(batch, 1)
        # a local all-ones mask: transformers then builds its mask through longmix's mask function
        # (and skips its packed-sequence detection, which zigzag's jumping positions would trigger)
        ones = torch.ones_like(input_ids)
        extra = {"position_ids": positions} if self.takes_positions else {}
        self.run.empty = empty
        try:
            out = self.model(input_ids=input_ids, attention_mask=ones, use_cache=False, **extra,
                             **extra_out)
        finally:
            self.run.empty = False
        if empty:  # drop the stand-in row (its gradient is zero; its graph still joins backward)
            for key in ("logits", "last_hidden_state"):
                if getattr(out, key, None) is not None:
                    out[key] = out[key][:, :0]
            if getattr(out, "router_logits", None) is not None:  # (batch * rows, experts) per layer
                out["router_logits"] = tuple(t[:0] for t in out.router_logits)
        if router_loss is not None:  # the model's own aux_loss saw this rank's rows only
            out.aux_loss = load_balancing_loss(out.router_logits, router_loss.num_experts,
                                               router_loss.top_k, group=group)
        if labels is not None:
            # at least float32 (as transformers), and float64 for a float64 model even where
            # transformers casts its logits to float32 (Mamba)
            dtype = torch.promote_types(self.model.dtype, torch.float32)
            out.loss = causal_lm_loss(out.logits, labels, shards, group, num_items_in_batch,
                                      self.stats, dtype)
            if router_loss is not None:  # as transformers: loss += coef * aux_loss
                out.loss = out.loss + router_loss.coef * out.aux_loss.to(out.loss.dtype)
        return out

    def router_loss_for(self, output_router_logits: bool | None) -> RouterLoss | None:
        """The router loss a forward with this ``output_router_logits`` argument computes (None:
        none). ValueError for a value that is not None, True or False, for True on a model
        without a router, and for a router loss longmix does not recognise (naming the model)."""
        if output_router_logits is not None and not isinstance(output_router_logits, bool):
            raise ValueError(f"longmix.hf: output_router_logits must be None, True or False, "
                             f"got {output_router_logits!r}")
        if output_router_logits not in self._router_losses:
            if output_router_logits and not hasattr(self.model.config, "output_router_logits"):
                raise ValueError(f"longmix.hf: output_router_logits=True, but "
                                 f"{type(self.model).__name__} has no router (its config has no "
                                 f"output_router_logits)")
            self._router_losses[output_router_logits] = router_loss_of(self.model,
                                                                       output_router_logits)
        return self._router_losses[output_router_logits]

    def extra_repr(self) -> str:
        kinds = [f"{p.kind}" + (f"(window={p.window})" if p.window else "") for p in self.layers]
        return f"layout={self.layout!r}, layers={kinds}"


def parallelize(model: nn.Module, group=None, layout: str = "contiguous",
                stats: CommStats | None = None, strategy: str = "auto",
                checkpoint_activations: bool | None = None) -> ParallelHFModel:
    """The sequence-parallel form of a transformers decoder-only model over ``group``.

    Args:
        model: a ``PreTrainedModel`` (a ``*ForCausalLM`` or its base model). Not modified.
        group: the process group (None: the default group, or one process when torch.distributed
            is not initialized).
        layout: ``"contiguous"`` or ``"zigzag"``, as given to :func:`longmix.parallel.shard`.
        stats: a :class:`longmix.parallel.CommStats` counting the bytes this rank moves.
        strategy: every attention layer's, as :func:`longmix.parallel.attention` takes it:
            ``"auto"`` (its cost model picks the fastest predicted), ``"shuffle"``, ``"ring"`` or
            ``"hybrid"``. ``"ring"`` holds the least memory per rank: O(L/P) whatever the head
            counts, where the shuffle holds every row of its heads (with fewer K/V heads than
            ranks, a whole K/V head each); for the longest context in a fixed memory, pass it
            (docs/hf.md, ``benchmarks/hf_context.py``).
        checkpoint_activations: in training mode, keep only each decoder layer's input for
            backward and recompute the rest there, collectives included (they run, and ``stats``
            counts their bytes, twice). None: as the model (``model.is_activation_checkpointing``);
            the copy then checkpoints every decoder layer with longmix's options whatever options
            the model's own checkpointing has. Either way the model itself is not changed.

    Returns a :class:`ParallelHFModel` sharing the model's parameters. Raises ValueError naming
    the layer and the reason when any layer cannot run exactly (see :func:`longmix.hf.plan.plan_hf`).
    """
    check_sequence_layout(layout, "longmix.hf.parallelize")
    if strategy not in STRATEGIES:
        raise ValueError(f"longmix.hf.parallelize: strategy must be one of {STRATEGIES}, "
                         f"got {strategy!r}")
    if checkpoint_activations not in (None, True, False):
        raise ValueError(f"longmix.hf.parallelize: checkpoint_activations must be None, True or "
                         f"False, got {checkpoint_activations!r}")
    if checkpoint_activations is None:
        checkpoint_activations = bool(getattr(model, "is_activation_checkpointing", False))
    resolve_group(group)  # a group without torch.distributed is an error now, not at forward
    layers = plan_hf(model)
    router_loss = router_loss_of(model)
    hf_attention.register()
    twin = _shared_copy(model)
    # on the copy only: its layers' flags are its own (the user's model keeps its setting)
    checkpoint_layers(twin, checkpoint_activations, "longmix.hf.parallelize")
    run = hf_attention.RunState()
    for name, module in _mixer_layers(twin):
        _replace(twin, name, MixerAdapter(name, module, group, layout, stats, run))
    attention = [p for p in layers if p.kind == "attention"]
    if attention:
        twin.set_attn_implementation(hf_attention.ATTENTION_NAME)
        for p in attention:
            module = twin.get_submodule(p.name)
            setattr(module, hf_attention.SETUP_ATTRIBUTE, hf_attention.AttentionSetup(
                name=p.name, group=group, layout=layout, stats=stats, run=run, strategy=strategy))
            if getattr(module, "config", twin.config)._attn_implementation != hf_attention.ATTENTION_NAME:
                raise ValueError(f"longmix.hf.parallelize: layer {p.name!r}: could not select "
                                 f"longmix's attention for it")
    return ParallelHFModel(twin, layers, group, layout, stats, run, router_loss,
                           checkpoint_activations)
