"""``parallelize``: run a token mixer or a whole ``SequenceModel`` on a sequence split over ranks.

    pmodel = longmix.parallel.forms.parallelize(model, group=group, layout="zigzag")
    logits_local = pmodel(longmix.parallel.shard(tokens, group, layout="zigzag"))

The returned module shares the parameters of the one given. Its forward takes this rank's shard
(dim 1) and returns this rank's shard of the output; a classifier returns the full (B, classes)
logits on every rank. Every rank must then backpropagate the same loss of those logits (for an
LM: its own part of the loss); each rank's parameter gradients are its share, and their sum over
the ranks is the single-process gradient (all-reduce them to train).

Each mixer layer runs in one exact form (``forms``, chosen per layer by
:func:`longmix.parallel.forms.model_plan.plan_model` or forced):

* ``"shuffle"``: the mixer's ``_shuffle_prepare`` on local rows, an all-to-all to group shards
  (heads or channels, with all L rows), the mixer's own ``_shuffle_mix`` over the whole
  sequence, an all-to-all back, ``_shuffle_finish``. One code path for every mixer with hooks.
* ``"state"``: state passing (``longmix.parallel.forms.state_passing``): a fixed-size state per rank.
* ``"ring"``: softmax attention with K/V blocks around a ring, or only a halo with a window.

Everything else (embeddings, norms, MLPs, the lm head) is pointwise in the sequence and runs on
local rows; positions are the rows' global indices; classification pooling sums per-rank
partials. All collectives have hand-written backward passes (``Exchange``, ``AllReduceSum``).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from longmix.ops.documents import document_positions
from longmix.recompute import recomputed

from ..layout import check_layout, follows_documents, resolve_group
from ..mesh import seq_group
from ..stats import CommStats
from .model_plan import mixer_layers, plan_model
from .packed import check_packed_form
from .shards import Shards, agree_on_shards
from .table import FORMS


class AllReduceSum(torch.autograd.Function):
    """Sum over ranks. Backward: every rank's input feeds every rank's output, so the gradient
    of an input is the sum over ranks of the output gradients: the same all-reduce."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ScaleGrad(torch.autograd.Function):
    """Identity forward; backward scales by ``factor``. Every rank backpropagates the same loss of
    replicated outputs, so each rank takes 1/P of their gradient: the ranks' shares then sum to
    the single-process gradient."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class ParallelMixer(nn.Module):
    """A token mixer running in one sequence-parallel ``form`` over ``group``.

    forward(x_local (batch, local_len, dim)) -> this rank's output rows. ``own_mixer=False``
    keeps the mixer out of this module's submodules (a parallel model already holds it).
    ``checkpoint_activations``: recompute the form's activations in backward (forward only).
    """

    def __init__(self, mixer, form: str, group=None, layout: str = "contiguous",
                 stats: CommStats | None = None, name: str = "", own_mixer: bool = True,
                 checkpoint_activations: bool = False):
        super().__init__()
        check_layout(layout)
        if own_mixer:
            self.mixer = mixer
        else:
            self.__dict__["mixer"] = mixer  # shared, not registered
        self.form, self.group, self.layout, self.stats, self.name = form, group, layout, stats, name
        self.checkpoint_activations = bool(checkpoint_activations)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """``cu_seqlens``: packed documents, global (the same tensor on every rank)."""
        shards = agree_on_shards(x, self.group, self.layout, what="x", dims=3,
                                 width=self.mixer.dim, max_len=self.mixer.max_len,
                                 cu_seqlens=cu_seqlens)
        if self.checkpoint_activations:
            return recomputed(self.run, x, shards)
        return self.run(x, shards)

    def run(self, x: torch.Tensor, shards: Shards) -> torch.Tensor:
        """The forward once the shards are agreed (a parallel model agrees once for all layers)."""
        if shards.documents is not None and shards.world > 1:  # one process: the mixer checks
            check_packed_form(self.mixer, self.form, f"layer {self.name!r}" if self.name else "parallelize")
        if shards.world == 1:
            return self.mixer(x, None if shards.documents is None else
                              torch.tensor(shards.documents, device=x.device))
        group, _, _ = resolve_group(self.group)
        return FORMS[self.form].run(self.mixer, x, shards, group, self.stats)

    @property
    def forms(self) -> list[str]:
        return [self.form]

    def extra_repr(self) -> str:
        return f"form={self.form!r}, layout={self.layout!r}"


class ParallelSequenceModel(nn.Module):
    """A ``SequenceModel`` whose forward takes this rank's token shard (batch, local_len).

    Returns (batch, local_len, vocab) logits for the lm head, (batch, classes) on every rank for
    the classify head. ``forms`` lists the form of each block's mixer. ``checkpoint_activations``
    (None: the model's own setting) recomputes each block in backward, its collectives included.
    """

    def __init__(self, model, forms: list[str], group=None, layout: str = "contiguous",
                 stats: CommStats | None = None, checkpoint_activations: bool | None = None):
        super().__init__()
        self.model = model
        self.group, self.layout, self.stats = group, layout, stats
        self.checkpoint_activations = checkpoint_activations
        self.layers = [ParallelMixer(block.mixer, form, group, layout, stats,
                                     name=f"blocks.{i}.mixer", own_mixer=False)
                       for i, (block, form) in enumerate(zip(model.blocks, forms))]

    @property
    def forms(self) -> list[str]:
        return [layer.form for layer in self.layers]

    def forward(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """``cu_seqlens``: packed documents (lm head), global: the same tensor on every rank;
        positions restart at every document."""
        model = self.model
        h, shards = self._features(tokens, cu_seqlens)
        if h is None:
            return model(tokens, cu_seqlens, checkpoint_activations=self.checkpoint_activations)
        if model.cfg.head == "lm":
            return model.head(h)
        group, world, _ = resolve_group(self.group)
        pooled = model.pooled(h, tokens, total=lambda t: AllReduceSum.apply(t, group),
                              last_row=shards.last_row)
        return ScaleGrad.apply(model.head(pooled), 1.0 / world)

    def lm_loss_sum(self, tokens: torch.Tensor, target: torch.Tensor,
                    cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's summed cross entropy of the lm head over its shard, ``target`` being this
        rank's shard of the targets: :meth:`SequenceModel.lm_loss_sum`, chunked, so that a
        training step never holds the shard's (batch, local_len, vocab) logits."""
        h, _ = self._features(tokens, cu_seqlens)
        if h is None:
            return self.model.lm_loss_sum(tokens, target, cu_seqlens,
                                          checkpoint_activations=self.checkpoint_activations)
        return self.model.head_loss_sum(h, target)

    def _features(self, tokens, cu_seqlens):
        """This rank's final features (batch, local_len, dim) and the shards; (None, shards) on
        one process, where the model runs as it is."""
        model = self.model
        shards = agree_on_shards(tokens, self.group, self.layout, what="tokens", dims=2,
                                 max_len=model.cfg.max_len, cu_seqlens=cu_seqlens)
        if shards.world == 1:
            return None, shards
        positions = shards.positions.to(tokens.device)
        if shards.documents is not None:
            if model.cfg.head != "lm":
                raise ValueError("cu_seqlens (packed documents) needs the lm head: the classify "
                                 "head gives one label per sequence, not per document")
            positions = document_positions(shards.documents, positions)
        mixers = [lambda x, layer=layer: layer.run(x, shards) for layer in self.layers]
        h = model.features(tokens, positions=positions, mixers=mixers,
                           checkpoint_activations=self.checkpoint_activations)
        return h, shards

    def extra_repr(self) -> str:
        return f"forms={self.forms}, layout={self.layout!r}"


def parallelize(module: nn.Module, group=None, layout: str = "contiguous", forms=None,
                stats: CommStats | None = None, *, seq_len: int | None = None,
                batch: int = 1, packed: bool = False, mesh=None,
                checkpoint_activations: bool | None = None, timing=None) -> nn.Module:
    """The sequence-parallel form of a ``TokenMixer`` or a ``SequenceModel`` over ``group``.

    Args:
        module: the mixer or model; the result shares its parameters.
        group: the process group (None: the default group, or one process when
            torch.distributed is not initialized).
        layout: ``"contiguous"`` or ``"zigzag"``, as given to :func:`longmix.parallel.shard`;
            with ``packed=True`` also ``"doc_zigzag"`` (a zigzag of every document, which
            balances causal attention over packed documents; the forward's ``cu_seqlens`` places
            the rows). To plan its bytes at a length, call ``plan_model(..., cu_seqlens=...)``
            and pass ``forms=plan.forms``.
        forms: None (planned per layer), a form name for every layer, or a list per layer.
        stats: a :class:`CommStats` that counts the bytes every layer sends and receives.
        seq_len, batch: when given, ``forms=None`` picks the form sending the fewest bytes at this
            length (or, with ``timing``, the form predicted fastest); otherwise the first
            feasible form in ``mixer.parallel_forms`` order.
        packed: the forward will get ``cu_seqlens`` (packed documents): plan only forms that
            support them (``forms.packed``); a layer with none raises here.
        mesh: instead of ``group``, a ``DeviceMesh`` with a ``"seq"`` dimension (e.g.
            ``mesh_dim_names=("data", "seq")``): its sequence group splits the sequence; each data
            row feeds its own part of the batch, and gradients summed over every rank are one
            process's on the combined batch.
        checkpoint_activations: keep only each block's input (a mixer: its input) for backward
            and recompute the rest there, collectives included (they run, and ``stats`` counts
            their bytes, twice). None: the model's own setting (a mixer: no checkpointing).
        timing: a calibrated :class:`~longmix.parallel.forms.timing.StepTiming` (see
            ``plan_model``), as :func:`~longmix.parallel.calibrate_timing` measures one on the
            ranks (``benchmarks/planner_time.py`` checks its predictions).

    Returns a module with ``.forms`` (one form per mixer layer). Raises ValueError naming the
    layer when a layer has no exact form on this many ranks (e.g. more ranks than its heads).
    """
    from longmix.mixers import TokenMixer
    from longmix.models.model import SequenceModel

    check_layout(layout)
    if follows_documents(layout) and not packed:
        raise ValueError(f"parallelize: layout {layout!r} places rows by packed documents: pass "
                         "packed=True (and cu_seqlens to the forward)")
    if follows_documents(layout) and seq_len is not None:
        raise ValueError(f"parallelize: with layout {layout!r} the bytes depend on the documents, "
                         "not only on seq_len: plan with longmix.parallel.plan_model(..., "
                         "packed=True, cu_seqlens=...) and pass forms=plan.forms (or seq_len=None)")
    group = seq_group(group, mesh)
    if not isinstance(module, (TokenMixer, SequenceModel)):
        raise ValueError(f"parallelize: module must be a TokenMixer or a SequenceModel, got "
                         f"{type(module).__name__}")
    _, world, _ = resolve_group(group)
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    plan = plan_model(module, seq_len, world, batch, dtype=dtype, layout=layout, forms=forms,
                      packed=packed, timing=timing)
    if isinstance(module, TokenMixer):
        return ParallelMixer(module, plan.forms[0], group, layout, stats,
                             checkpoint_activations=bool(checkpoint_activations))
    if len(mixer_layers(module)) != len(module.blocks):
        raise ValueError("parallelize: every mixer of a SequenceModel must be a block's mixer")
    return ParallelSequenceModel(module, plan.forms, group, layout, stats,
                                 checkpoint_activations=checkpoint_activations)
