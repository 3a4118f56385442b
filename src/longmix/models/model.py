"""A pre-norm residual stack that takes any token mixer by name (nanoGPT-style).

    tokens (B, L) -> embedding + position -> depth x [x + mixer(norm(x)); x + mlp(norm(x))]
                  -> norm -> head

Heads:

* ``"lm"``: causal language model. Every mixer is built with ``causal=True`` and the head maps
  each position to next-token logits (B, L, vocab_size). A mixer that cannot run causally
  (e.g. FNet, whose DFT mixes every position with every other) is refused with a clear error.
* ``"classify"``: one label per sequence, logits (B, num_classes). The per-position features
  are pooled over the sequence before the head:

  - ``pool="mean"`` (the default for non-causal models, as in the Long Range Arena baselines):
    the mean over non-pad positions, so left padding never dilutes the features;
  - ``pool="last"`` (the default for causal models): the last position, the only one that has
    seen the whole sequence when the mixer is causal. Tasks left-pad, so it is never a pad.

Positional information depends on the mixer family; see :mod:`longmix.models.positional`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .. import mixers
from ..checks import check_int
from ..ops.linear_cross_entropy import linear_cross_entropy
from .positional import Positional, resolve
from ..recompute import recomputed

HEADS = ("classify", "lm")
IGNORE_INDEX = -100  # the target of a position the lm loss does not score (as in F.cross_entropy)
POOLS = ("auto", "mean", "last")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model. ``max_len=None`` means no length limit."""

    vocab_size: int
    mixer: str
    head: str = "classify"
    num_classes: int = 2
    dim: int = 64
    depth: int = 2
    heads: int = 1
    mlp_ratio: int = 4
    max_len: int | None = None
    causal: bool | None = None  # None: True for the "lm" head, False for "classify"
    pool: str = "auto"  # classify only; "auto": "last" when causal, else "mean"
    positional: str = "auto"  # see longmix.models.positional.KINDS
    pad_id: int = 0
    mixer_options: dict = field(default_factory=dict)


def _validate(cfg: ModelConfig) -> tuple[bool, str]:
    """Check ``cfg`` and return the resolved (causal, pool)."""
    if cfg.head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {cfg.head!r}")
    if cfg.pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {cfg.pool!r}")
    for name in ("vocab_size", "dim", "depth", "heads", "mlp_ratio"):
        check_int(name, getattr(cfg, name))
    if cfg.head == "classify":
        check_int("num_classes", cfg.num_classes, low=2, owner="the classify head")
    cls = mixers.get_class(cfg.mixer)  # ValueError listing the valid names
    # These are set by the model itself; passing them again would be a TypeError deep in build().
    reserved = sorted({"dim", "heads", "causal", "max_len"} & set(cfg.mixer_options))
    if reserved:
        raise ValueError(f"mixer_options must not set {reserved}: use the ModelConfig fields of the same "
                         "name (causal follows the head)")
    causal = cfg.head == "lm" if cfg.causal is None else bool(cfg.causal)
    if cfg.head == "lm" and not causal:
        raise ValueError("the lm head needs causal=True (next-token prediction must not see the future)")
    if causal and not cls.taxonomy.causal:
        able = [n for n in mixers.available() if mixers.get_class(n).taxonomy.causal]
        raise ValueError(f"mixer {cfg.mixer!r} ({cls.taxonomy.family}) cannot run causally, so it cannot "
                         f"drive a causal model (head={cfg.head!r}); causal mixers: {', '.join(able)}")
    if cls.requires_max_len and cfg.max_len is None:
        raise ValueError(f"mixer {cfg.mixer!r} has weights sized by the sequence length: max_len is required")
    pool = cfg.pool if cfg.pool != "auto" else ("last" if causal else "mean")
    return causal, pool


class MLP(nn.Module):
    """Position-wise feed-forward: (B, L, dim) -> (B, L, dim)."""

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.up = nn.Linear(dim, ratio * dim)
        self.down = nn.Linear(ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(x)))


class Block(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)); x of shape (B, L, dim)."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.mixer = mixers.build(cfg.mixer, cfg.dim, heads=cfg.heads, causal=causal,
                                  max_len=cfg.max_len, **cfg.mixer_options)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = MLP(cfg.dim, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor, mixer=None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """``mixer`` replaces ``self.mixer`` in this call (a sequence-parallel form of it);
        ``cu_seqlens``: packed documents, passed to the mixer."""
        mix = self.mixer if mixer is None else mixer
        h = self.norm1(x)
        x = x + (mix(h) if cu_seqlens is None else mix(h, cu_seqlens))
        return x + self.mlp(self.norm2(x))


class SequenceModel(nn.Module):
    """The whole model. ``forward(tokens)`` with tokens a (B, L) LongTensor returns logits:
    (B, num_classes) for the classify head, (B, L, vocab_size) for the lm head.

    ``checkpoint_activations``: keep only each block's input for backward and recompute the
    block's activations there (:mod:`longmix.recompute`): a training step's memory per
    token drops to about the blocks' inputs, for about one more forward of compute. Exact: the
    same outputs and gradients. It is a way to run the model, not part of it (not in ``cfg``);
    set the attribute to change it."""

    def __init__(self, cfg: ModelConfig, checkpoint_activations: bool = False):
        super().__init__()
        self.causal, self.pool = _validate(cfg)
        self.cfg = cfg
        self.checkpoint_activations = bool(checkpoint_activations)
        family = mixers.get_class(cfg.mixer).taxonomy.family
        self.positional_kind = resolve(cfg.positional, family)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position = Positional(self.positional_kind, cfg.dim, cfg.max_len)
        self.blocks = nn.ModuleList(Block(cfg, self.causal) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        out = cfg.vocab_size if cfg.head == "lm" else cfg.num_classes
        self.head = nn.Linear(cfg.dim, out)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
            got = f"{tokens.dtype} of shape {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) \
                else type(tokens).__name__
            raise ValueError(f"tokens must be a (batch, length) LongTensor, got {got}")
        if self.cfg.max_len is not None and tokens.shape[1] > self.cfg.max_len:
            raise ValueError(f"context {tokens.shape[1]} exceeds max_len={self.cfg.max_len} "
                             f"of this model (mixer {self.cfg.mixer!r})")

    def features(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                 mixers=None, cu_seqlens: torch.Tensor | None = None,
                 checkpoint_activations: bool | None = None) -> torch.Tensor:
        """Final normalized per-position features, (B, L, dim).

        A sequence-parallel run passes this rank's tokens with their global ``positions`` (L,)
        and, per block, the parallel form of its mixer (``mixers``). ``cu_seqlens``: packed
        documents (batch 1); positions restart at every document. ``checkpoint_activations``
        overrides the model's setting for this call (None: ``self.checkpoint_activations``)."""
        self.check_tokens(tokens)
        if checkpoint_activations is None:
            checkpoint_activations = self.checkpoint_activations
        if cu_seqlens is not None:
            positions = self.packed_positions(tokens, cu_seqlens)
        x = self.position(self.embed(tokens), positions)
        for i, block in enumerate(self.blocks):
            mixer = None if mixers is None else mixers[i]
            x = (recomputed(block, x, mixer, cu_seqlens) if checkpoint_activations
                 else block(x, mixer, cu_seqlens))
        return self.norm(x)

    def packed_positions(self, tokens: torch.Tensor, cu_seqlens) -> torch.Tensor:
        """The position of each row within its document of ``cu_seqlens`` (checked): 0 .. L-1
        restarted at every document."""
        from ..ops.documents import check_cu_seqlens, document_positions

        if self.cfg.head != "lm":
            raise ValueError("cu_seqlens (packed documents) needs the lm head: the classify head "
                             "gives one label per sequence, not per document")
        bounds = check_cu_seqlens(cu_seqlens, tokens.shape[1], batch=tokens.shape[0],
                                  owner="SequenceModel")
        return document_positions(bounds, torch.arange(tokens.shape[1], device=tokens.device))

    def pooled(self, h: torch.Tensor, tokens: torch.Tensor, total=None, last_row: int | None = -1):
        """Sequence features (B, dim) from per-position ones h (B, L, dim), by ``self.pool``.

        Sharded, ``total`` sums a per-rank partial over the ranks, and ``last_row`` is the local
        row of the sequence's last token (None where another rank holds it)."""
        total = total or (lambda partial: partial)
        if self.pool == "last":
            # elsewhere: a zero sum that stays in the graph, so this rank's backward still runs
            # (and joins) every collective behind h
            return total(h[:, last_row] if last_row is not None else h[:, :0].sum(1))
        keep = (tokens != self.cfg.pad_id).unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        sums = total(torch.cat([(h * keep).sum(1), keep.sum(1)], dim=-1))  # features, then count
        return sums[:, :-1] / sums[:, -1:].clamp_min(1.0)

    def forward(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                checkpoint_activations: bool | None = None) -> torch.Tensor:
        """``cu_seqlens``: packed documents (lm head, batch 1), each run as if alone;
        ``checkpoint_activations``: overrides the model's setting for this call."""
        h = self.features(tokens, cu_seqlens=cu_seqlens, checkpoint_activations=checkpoint_activations)
        if self.cfg.head == "lm":
            return self.head(h)
        return self.head(self.pooled(h, tokens))

    def lm_loss_sum(self, tokens: torch.Tensor, target: torch.Tensor,
                    cu_seqlens: torch.Tensor | None = None,
                    checkpoint_activations: bool | None = None) -> torch.Tensor:
        """The lm head's summed cross entropy (nats) of ``tokens`` (B, L) against ``target``
        (B, L; ``IGNORE_INDEX`` where not scored): ``F.cross_entropy`` of ``forward``'s logits,
        but computed a chunk of positions at a time (:func:`head_loss_sum`), so that a training
        step never holds the (B, L, vocab) logits. Use ``forward`` where logits are wanted."""
        h = self.features(tokens, cu_seqlens=cu_seqlens, checkpoint_activations=checkpoint_activations)
        return self.head_loss_sum(h, target)

    def head_loss_sum(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed cross entropy of the lm head on features ``h`` (B, L, dim), chunked
        (:func:`longmix.ops.linear_cross_entropy.linear_cross_entropy`)."""
        if self.cfg.head != "lm":
            raise ValueError(f"lm_loss_sum needs the lm head, this model has head={self.cfg.head!r}")
        return linear_cross_entropy(h, self.head.weight, self.head.bias, target,
                                    ignore_index=IGNORE_INDEX)


def build_model(cfg: ModelConfig | None = None, **kwargs) -> SequenceModel:
    """``build_model(ModelConfig(...))`` or ``build_model(vocab_size=..., mixer=..., ...)``."""
    if cfg is None:
        cfg = ModelConfig(**kwargs)
    elif kwargs:
        raise ValueError("pass either a ModelConfig or keyword arguments, not both")
    return SequenceModel(cfg)
