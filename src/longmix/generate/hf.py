"""``generate`` for transformers causal LMs: the prefill through ``longmix.hf.parallelize``, then
one token at a time through the same parallel copy of the model.

The parallel copy runs transformers' own code for everything per position (embeddings, norms,
MLPs, MoE, the lm head, RoPE at the ``position_ids`` it is given); its layers hand the
per-layer work to :class:`HFGeneration` (``RunState.generation``, see
:mod:`longmix.hf.attention`):

- an attention layer, in the prefill, runs longmix's distributed attention and hands over the
  keys and values of this rank's own rows as the layer computed them (after its projections,
  k-norm and RoPE at their global positions); they become a :class:`ShardedKVCache`, the very
  cache longmix's softmax layers keep (only the window with a sliding window). While decoding,
  the layer hands over the new token's q, k, v (RoPE at the token's global position, passed as
  ``position_ids``): each rank scores q against its shard and the partials are merged on the
  log-sum-exp; the new key goes to the ranks in turn (``decode_owners``).
- a mapped mixer (Mamba, Jamba's Mamba layers: ``longmix.hf.mixers``) runs state passing in
  the prefill, which also gives its state after the whole prompt on every rank
  (:class:`StateCache`, as longmix's state layers); decoding steps that state locally.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..parallel.forms.shards import Shards
from ..parallel.forms.state_passing import state_passing_mix
from ..parallel.layout import all_segments, resolve_group, shard
from .cache import ShardedKVCache, StateCache, decode_kind


def check_hf_model(model) -> tuple[int, int | None, str]:
    """ValueError naming the model class and the reason unless ``generate`` can run ``model``;
    returns (the number of token ids it embeds, its position limit or None, that limit's name)."""
    import longmix.hf as lh
    from ..hf.plan import _configs, mixer_layers

    kind = type(model).__name__
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"generate: {kind} has no language-model head (a base model?): pass "
                         f"the *ForCausalLM model, whose logits generate samples from")
    if model.training:
        raise ValueError(f"generate: {kind} is in training mode (its dropout would draw differently "
                         f"on each rank); call model.eval() first")
    try:
        lh.plan_hf(model)
    except ValueError as exc:
        raise ValueError(f"generate: {kind} cannot run sharded: {exc}") from exc
    for name, module in mixer_layers(model):
        kind_of_layer = decode_kind(lh.mixer_from_hf(module))
        if kind_of_layer != "state":
            raise ValueError(f"generate: {kind}: layer {name!r} ({type(module).__name__}) decodes "
                             f"as {kind_of_layer!r}; only mixers with a fixed-size state are "
                             f"supported in transformers models")
    limit = next((c.max_position_embeddings for c in _configs(model)
                  if getattr(c, "max_position_embeddings", None)), None)
    return model.get_input_embeddings().num_embeddings, limit, "max_position_embeddings"


def hf_cache_layers(model) -> list[tuple]:
    """``cache.cache_layers`` of a transformers model: an attention layer keeps keys of kv_heads x
    head_dim (GQA's kv heads, not repeated) and its window; a mapped mixer its state."""
    import longmix.hf as lh

    out = []
    for plan in lh.plan_hf(model):
        module = model.get_submodule(plan.name)
        if plan.kind == "attention":
            config = getattr(module, "config", None) or model.config
            kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
            out.append(("kv", module, kv_heads * module.head_dim, plan.window))
        else:
            out.append(("state", lh.mixer_from_hf(module), 0, None))
    return out


class HFGeneration:
    """What the layers of a parallel copy hand over during the prefill, and go through while
    decoding (set as ``RunState.generation``). Caches are keyed by layer name."""

    def __init__(self, shards: Shards, group, max_new_tokens: int, total_layers: int, progress=None):
        self.shards, self.group = shards, group
        self.steps = max(0, max_new_tokens - 1)  # the last new token is returned, never fed back
        self.total_layers, self.progress = total_layers, progress
        self.caches: dict = {}
        self.forms: list[str] = []
        self.decoding = False
        self.position: int | None = None  # the global position of the token being decoded

    def _kept(self, name: str, cache, form: str) -> None:
        if name in self.caches:
            raise RuntimeError(f"generate: layer {name!r} ran twice in one prefill")
        self.caches[name] = cache
        self.forms.append(form)
        if self.progress is not None:
            self.progress(len(self.caches), self.total_layers)

    # the prefill
    def keep_kv(self, name: str, k, v, scale, window) -> None:
        """k, v (batch, local_len, kv_heads, head_dim): this rank's prefill rows of one layer."""
        s = self.shards
        cache = ShardedKVCache.from_rows(k, v, s.positions, s.seq_len, s.lengths, self.steps,
                                         self.group, window, scale)
        self._kept(name, cache, "attention")

    def prefill_mixer(self, name: str, mixer, x):
        """Run ``mixer`` on this rank's rows by state passing, keeping the state after the prompt."""
        out, final = state_passing_mix(mixer, x, group=self.group, layout=self.shards.layout,
                                       seq_len=self.shards.seq_len, return_final_state=True)
        self._kept(name, StateCache(mixer, final), "state")
        return out

    # decoding
    def attend(self, name: str, q, k, v):
        return self.caches[name].attend(q, k, v, self.position)

    def step_mixer(self, name: str, x):
        return self.caches[name].step(x, self.position)


class HFDecoder:
    """A transformers causal LM after the prefill: ``logits`` of the prompt's last position
    (batch, vocab), the caches, and :meth:`step` feeding one new token through them."""

    def __init__(self, model, input_ids: torch.Tensor, max_new_tokens: int, group=None,
                 layout: str = "contiguous", progress=None):
        import longmix.hf as lh

        group, world, rank = resolve_group(group)
        batch, prompt_len = input_ids.shape
        self.pmodel = lh.parallelize(model, group=group, layout=layout)
        segments = all_segments(prompt_len, world, layout)
        shards = Shards(world=world, rank=rank, layout=layout, seq_len=prompt_len, batch=batch,
                        segments=segments, lengths=[sum(n for _, n in s) for s in segments])
        self.generation = HFGeneration(shards, group, max_new_tokens, len(self.pmodel.layers), progress)
        self.pmodel.run.generation = self.generation  # this copy is ours: it stays set
        last_row = shards.last_row
        keep = torch.tensor([] if last_row is None else [last_row], dtype=torch.long,
                            device=input_ids.device)
        out = self.pmodel(shard(input_ids, group, layout), logits_to_keep=keep)
        missing = [p.name for p in self.pmodel.layers if p.name not in self.generation.caches]
        if missing:
            raise RuntimeError(f"generate: {type(model).__name__}: layers {missing} did not go "
                               f"through longmix's attention or mixer adapter in the prefill")
        self.caches = [self.generation.caches[p.name] for p in self.pmodel.layers]
        self.forms = self.generation.forms
        logits = out.logits[:, 0] if last_row is not None else out.logits.new_empty(
            batch, out.logits.shape[-1])
        if world > 1:  # the rank holding the prompt's last row has its logits
            owner = next(r for r, segs in enumerate(segments) if any(s + n == prompt_len for s, n in segs))
            dist.broadcast(logits, group=group, group_src=owner)
        self.logits = logits
        self.generation.decoding = True

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """tokens (batch, 1) at global ``position`` -> their logits (batch, vocab)."""
        self.generation.position = position
        extra = {}
        if self.pmodel.takes_positions:  # RoPE (or a position table) at the global position
            extra["position_ids"] = torch.full_like(tokens, position)
        out = self.pmodel.model(input_ids=tokens, attention_mask=torch.ones_like(tokens),
                                use_cache=False, **extra)
        return out.logits[:, -1]
