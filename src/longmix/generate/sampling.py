"""Choosing the next token from one position's logits: greedy, or sampled with temperature,
top-k and top-p (nucleus) filtering. Pure functions on tensors; the randomness comes from the
``torch.Generator`` the caller passes, so ranks holding the same generator and the same logits
draw the same tokens."""
from __future__ import annotations

import torch


def check_sampling(temperature, top_k, top_p) -> None:
    """ValueError naming the argument unless the sampling options are usable."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator) -> torch.Tensor:
    """logits (batch, vocab) -> token ids (batch,). ``temperature == 0``: argmax (the filters do
    not change it). Otherwise softmax(logits / temperature) restricted to the ``top_k`` most
    likely tokens and to the smallest set whose probability reaches ``top_p``, then one draw."""
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits.double() / temperature  # float64: the same draw whatever the model's dtype
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = scores.sort(-1, descending=True)
        probs = ordered.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p (the top one stays)
        drop = probs.cumsum(-1) - probs >= top_p
        scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    probs = scores.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
