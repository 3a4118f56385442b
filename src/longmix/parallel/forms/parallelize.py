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

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..halo import HaloPieces, join_backward, window_attention
from ..layout import Segment, all_segments, check_layout, resolve_group, sequence_order
from .model_plan import mixer_layers, plan_model
from .regroup import (group_split, pack_for_groups, pack_for_sequence, to_group_shards,
                      to_sequence_shards)
from ..stats import CommStats
from ..exchange import gather_records

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64)
_MESSAGE_BYTES = 300


@dataclass(frozen=True)
class Shards:
    """How the sequence is split, agreed by every rank at the start of a forward."""

    world: int
    rank: int
    layout: str
    seq_len: int
    batch: int
    segments: list[list[Segment]]
    lengths: list[int]

    @property
    def positions(self) -> torch.Tensor:
        """Global index of each local row, (local_len,)."""
        mine = self.segments[self.rank]
        if not mine:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([torch.arange(s, s + n) for s, n in mine])

    @property
    def last_row(self) -> int | None:
        """Local row of the sequence's last position, None if another rank holds it."""
        offset = 0
        for s, n in self.segments[self.rank]:
            if s + n == self.seq_len:
                return offset + n - 1
            offset += n
        return None


def agree_on_shards(x, group, layout: str, *, what: str, dims: int, width: int | None = None,
                    max_len: int | None = None) -> Shards:
    """Check this rank's shard ``x`` against every other rank's in one small all-gather, so bad
    or disagreeing shards raise the same ValueError on every rank instead of hanging.

    ``dims``: the expected rank of x (batch, local_len[, width]); ``width``: its last dim."""
    group, world, rank = resolve_group(group)
    error = ""
    if not isinstance(x, torch.Tensor):
        error = f"{what} must be a torch.Tensor, got {type(x).__name__}"
    elif x.dim() != dims or (width is not None and x.shape[-1] != width):
        shape = "(batch, local_len" + (f", {width})" if width is not None else ")")
        error = f"{what} must have shape {shape}, got {tuple(x.shape)}"
    elif x.dtype not in _DTYPES:
        error = f"{what} has unsupported dtype {x.dtype}"
    text = error.encode()[:_MESSAGE_BYTES]
    record = ([-1, -1, -1] if error else
              [x.shape[0], x.shape[1], _DTYPES.index(x.dtype)]) + \
        [len(text)] + list(text) + [0] * (_MESSAGE_BYTES - len(text))
    records = gather_records(record, group) if world > 1 else [record]
    bad = {r: bytes(rec[4:4 + rec[3]]).decode(errors="replace")
           for r, rec in enumerate(records) if rec[3] > 0}
    if bad:
        detail = "; ".join(f"rank {r}: {msg}" for r, msg in bad.items())
        raise ValueError(f"parallelize: invalid {what} on rank(s) {sorted(bad)}: {detail}")
    for i, name in ((0, "batch size (dim 0)"), (2, "dtype")):
        values = [rec[i] for rec in records]
        if len(set(values)) > 1:
            shown = [str(_DTYPES[v]) if i == 2 else v for v in values]
            raise ValueError(f"parallelize: {what} {name} must agree across ranks, got "
                             f"{', '.join(f'rank {r}: {v}' for r, v in enumerate(shown))}")
    lengths = [rec[1] for rec in records]
    seq_len = sum(lengths)
    segments = all_segments(seq_len, world, layout)
    expected = [sum(n for _, n in s) for s in segments]
    if seq_len < 1:
        raise ValueError(f"parallelize: the sequence is empty (every rank's {what} has length 0)")
    if lengths != expected:
        raise ValueError(f"parallelize: shard lengths (dim 1) {lengths} of {what} do not match the "
                         f"{layout!r} layout of a length-{seq_len} sequence over {world} ranks "
                         f"(expected {expected}); use longmix.parallel.shard(x, layout={layout!r})")
    if max_len is not None and seq_len > max_len:
        raise ValueError(f"parallelize: the sequence length {seq_len} exceeds max_len={max_len}")
    return Shards(world=world, rank=rank, layout=layout, seq_len=seq_len,
                  batch=records[0][0], segments=segments, lengths=lengths)


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
    """

    def __init__(self, mixer, form: str, group=None, layout: str = "contiguous",
                 stats: CommStats | None = None, name: str = "", own_mixer: bool = True):
        super().__init__()
        check_layout(layout)
        if own_mixer:
            self.mixer = mixer
        else:
            self.__dict__["mixer"] = mixer  # shared, not registered
        self.form, self.group, self.layout, self.stats, self.name = form, group, layout, stats, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shards = agree_on_shards(x, self.group, self.layout, what="x", dims=3,
                                 width=self.mixer.dim, max_len=self.mixer.max_len)
        return self.run(x, shards)

    def run(self, x: torch.Tensor, shards: Shards) -> torch.Tensor:
        """The forward once the shards are agreed (a parallel model agrees once for all layers)."""
        if shards.world == 1:
            return self.mixer(x)
        group, _, _ = resolve_group(self.group)
        if self.form == "shuffle":
            return self._shuffle(x, shards, group)
        if self.form == "ring":
            return self._ring(x, shards, group)
        if self.form == "state":
            from .state_passing import state_passing_mix

            # the shards were agreed above: skip state passing's own all-gathered shape check
            return state_passing_mix(self.mixer, x, group=group, layout=self.layout,
                                     stats=self.stats, seq_len=shards.seq_len)
        raise ValueError(f"unknown form {self.form!r}")

    def _shuffle(self, x, shards: Shards, group):
        mixer = self.mixer
        split = group_split(mixer.shuffle_groups(), shards.world)
        start, count = split[shards.rank]
        pieces = HaloPieces(shards.segments, shards.rank, group, self.stats)
        streams, shared, ctx = mixer._shuffle_prepare(x, pieces)
        wire = dict(batch=x.shape[0], lengths=shards.lengths, split=split, group=group,
                    stats=self.stats)
        features, width = tuple(streams.shape[3:]), 0 if shared is None else shared.shape[-1]
        send = pack_for_groups(streams, shared, split)
        del streams, shared  # freed before the exchange allocates (without autograd holding them)
        streams, shared = to_group_shards(send, features=features, shared=width, **wire)
        del send
        order = sequence_order(shards.segments)  # zigzag rows arrive rank-major
        if order is not None:
            order = order.to(x.device)
            streams = streams.index_select(1, order)
            shared = None if shared is None else shared.index_select(1, order)
        mixed = mixer._shuffle_mix(streams, shared, slice(start, start + count))
        del streams, shared
        if order is not None:
            mixed = mixed.index_select(1, torch.argsort(order))
        features = tuple(mixed.shape[3:])
        send = pack_for_sequence(mixed, shards.lengths)
        del mixed
        out = mixer._shuffle_finish(to_sequence_shards(send, features=features, **wire), ctx)
        return out if shards.lengths[shards.rank] else join_backward(out, *pieces.received)

    def _ring(self, x, shards: Shards, group):
        from ..attn.ring import ring_attention

        mixer = self.mixer  # softmax attention: the only mixer with the ring form
        q, k, v = mixer._qkv(x)
        if mixer.window is not None:
            out = window_attention(q, k, v, segments=shards.segments, causal=mixer.causal,
                                   window=mixer.window, group=group, scale=mixer.scale,
                                   stats=self.stats)
        else:
            out = ring_attention(q.contiguous(), k.contiguous(), v.contiguous(),
                                 segments=shards.segments, causal=mixer.causal, group=group,
                                 scale=mixer.scale, stats=self.stats)
        return mixer._merge(out)

    @property
    def forms(self) -> list[str]:
        return [self.form]

    def extra_repr(self) -> str:
        return f"form={self.form!r}, layout={self.layout!r}"


class ParallelSequenceModel(nn.Module):
    """A ``SequenceModel`` whose forward takes this rank's token shard (batch, local_len).

    Returns (batch, local_len, vocab) logits for the lm head, (batch, classes) on every rank for
    the classify head. ``forms`` lists the form of each block's mixer.
    """

    def __init__(self, model, forms: list[str], group=None, layout: str = "contiguous",
                 stats: CommStats | None = None):
        super().__init__()
        self.model = model
        self.group, self.layout, self.stats = group, layout, stats
        self.layers = [ParallelMixer(block.mixer, form, group, layout, stats,
                                     name=f"blocks.{i}.mixer", own_mixer=False)
                       for i, (block, form) in enumerate(zip(model.blocks, forms))]

    @property
    def forms(self) -> list[str]:
        return [layer.form for layer in self.layers]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self.model
        shards = agree_on_shards(tokens, self.group, self.layout, what="tokens", dims=2,
                                 max_len=model.cfg.max_len)
        if shards.world == 1:
            return model(tokens)
        group, world, _ = resolve_group(self.group)
        mixers = [lambda x, layer=layer: layer.run(x, shards) for layer in self.layers]
        h = model.features(tokens, positions=shards.positions.to(tokens.device), mixers=mixers)
        if model.cfg.head == "lm":
            return model.head(h)
        pooled = model.pooled(h, tokens, total=lambda t: AllReduceSum.apply(t, group),
                              last_row=shards.last_row)
        return ScaleGrad.apply(model.head(pooled), 1.0 / world)

    def extra_repr(self) -> str:
        return f"forms={self.forms}, layout={self.layout!r}"


def parallelize(module: nn.Module, group=None, layout: str = "contiguous", forms=None,
                stats: CommStats | None = None, *, seq_len: int | None = None,
                batch: int = 1) -> nn.Module:
    """The sequence-parallel form of a ``TokenMixer`` or a ``SequenceModel`` over ``group``.

    Args:
        module: the mixer or model; the result shares its parameters.
        group: the process group (None: the default group, or one process when
            torch.distributed is not initialized).
        layout: ``"contiguous"`` or ``"zigzag"``, as given to :func:`longmix.parallel.shard`.
        forms: None (planned per layer), a form name for every layer, or a list per layer.
        stats: a :class:`CommStats` that counts the bytes every layer sends and receives.
        seq_len, batch: when given, ``forms=None`` picks the form sending the fewest bytes at this
            length; otherwise the first feasible form in ``mixer.parallel_forms`` order.

    Returns a module with ``.forms`` (one form per mixer layer). Raises ValueError naming the
    layer when a layer has no exact form on this many ranks (e.g. more ranks than its heads).
    """
    from longmix.mixers import TokenMixer
    from longmix.models.model import SequenceModel

    check_layout(layout)
    if not isinstance(module, (TokenMixer, SequenceModel)):
        raise ValueError(f"parallelize: module must be a TokenMixer or a SequenceModel, got "
                         f"{type(module).__name__}")
    _, world, _ = resolve_group(group)
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    plan = plan_model(module, seq_len, world, batch, dtype=dtype, layout=layout, forms=forms)
    if isinstance(module, TokenMixer):
        return ParallelMixer(module, plan.forms[0], group, layout, stats)
    if len(mixer_layers(module)) != len(module.blocks):
        raise ValueError("parallelize: every mixer of a SequenceModel must be a block's mixer")
    return ParallelSequenceModel(module, plan.forms, group, layout, stats)
