"""``generate``: a sharded prefill of the prompt, then decoding one token at a time."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..parallel.layout import resolve_group
from .cache import total_cache_bytes
from .prefill import prefill
from .sampling import next_token
from .validate import agree_on_request, check_request


class DecodeError(RuntimeError):
    """A collective failed during decoding: another rank stopped (or timed out)."""


@dataclass
class GenerationStats:
    """Filled by :func:`generate` when passed in: this rank's figures."""

    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0  # tokens fed back through the model (max_new_tokens - 1)
    cache_bytes: int = 0  # this rank's caches after the prefill (buffers sized for the decode)
    forms: list = field(default_factory=list)  # the form each layer's prefill ran in
    world: int = 1

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, group=None,
             layout: str = "contiguous", temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, seed: int = 0, output_logits: bool = False, *,
             stats: GenerationStats | None = None, progress=None):
    """Continue ``input_ids`` by ``max_new_tokens`` tokens, the prompt's forward split over ranks.

    Args:
        model: a longmix ``SequenceModel`` with the lm head (causal).
        input_ids: (batch, L) LongTensor, the whole prompt, the same on every rank.
        max_new_tokens: tokens to generate (>= 0); no end-of-sequence stop.
        group: the process group (None: the default group, or one process).
        layout: how the prompt is split: "contiguous" or "zigzag".
        temperature: 0 (greedy) or the softmax temperature of sampling; ``top_k``, ``top_p``
            filter the distribution first. Draws use a ``torch.Generator`` seeded by ``seed``,
            the same on every rank, so every rank draws the same tokens.
        output_logits: also return each new position's logits.
        stats: a :class:`GenerationStats` to fill with this rank's timings and cache bytes.
        progress: ``progress(done_layers, total_layers)`` during the prefill.

    Returns:
        the new tokens (batch, max_new_tokens), the same on every rank; with ``output_logits``
        (tokens, logits (batch, max_new_tokens, vocab)). The logits of new token i are those of
        position L - 1 + i of a single-process forward over the prompt and the tokens before it.
    Raises:
        ValueError (the same on every rank) before the prefill for a request that cannot run;
        DecodeError when a collective fails during decoding (another rank died or timed out).
    """
    error = ""
    try:
        check_request(model, input_ids, max_new_tokens, layout, temperature, top_k, top_p, seed)
    except ValueError as exc:
        error = str(exc)
    agree_on_request(group, error, (input_ids, max_new_tokens, seed))
    group, world, rank = resolve_group(group)
    batch, prompt_len = input_ids.shape
    vocab = model.cfg.vocab_size
    tokens = input_ids.new_zeros(batch, max_new_tokens)
    dtype = next(model.parameters()).dtype
    logits_out = torch.zeros(batch, max_new_tokens, vocab, dtype=dtype, device=input_ids.device) \
        if output_logits else None
    stats = GenerationStats() if stats is None else stats
    stats.world = world
    if max_new_tokens == 0:
        return (tokens, logits_out) if output_logits else tokens

    start = time.perf_counter()
    state = prefill(model, input_ids, max_new_tokens, group, layout, progress)
    stats.prefill_seconds = time.perf_counter() - start
    stats.cache_bytes, stats.forms = total_cache_bytes(state.caches), state.forms

    generator = torch.Generator().manual_seed(seed)
    device = input_ids.device
    # no position table: each decode step computes its own row (a table up to L would be O(L)
    # on every rank, see ``Positional``)
    logits = model.head(state.last_features)
    start = time.perf_counter()
    for i in range(max_new_tokens):
        if output_logits:
            logits_out[:, i] = logits
        tokens[:, i] = next_token(logits, temperature, top_k, top_p, generator)
        if i == max_new_tokens - 1:
            break
        position = prompt_len + i
        steppers = [lambda h, cache=cache: cache.step(h, position) for cache in state.caches]
        try:
            h = model.features(tokens[:, i:i + 1], positions=torch.tensor([position], device=device),
                               mixers=steppers)
        except RuntimeError as exc:  # gloo/NCCL errors: a peer died or a collective timed out
            if world == 1:
                raise  # no collective ran: not a peer's failure
            raise DecodeError(f"generate: rank {rank} of {world}: a collective failed at decode "
                              f"step {i + 1} of {max_new_tokens - 1} (another rank stopped or "
                              f"timed out): {exc}") from exc
        logits = model.head(h[:, 0])
    stats.decode_seconds = time.perf_counter() - start
    stats.decode_steps = max_new_tokens - 1
    return (tokens, logits_out) if output_logits else tokens
