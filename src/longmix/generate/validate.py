"""The checks :func:`longmix.generate.generate` runs before the prefill: clear ValueErrors, and
the same verdict on every rank (a rank refusing alone would leave the others waiting)."""
from __future__ import annotations

import torch

from ..checks import check_int
from ..parallel.exchange import agree
from ..parallel.layout import check_sequence_layout, resolve_group
from .cache import decode_kind
from .sampling import check_sampling


def is_hf_model(model) -> bool:
    """A transformers ``PreTrainedModel`` (found by class, without importing transformers)."""
    return any(cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers")
               for cls in type(model).__mro__)


def check_model(model) -> tuple[int, int | None, str]:
    """A longmix ``SequenceModel`` with the lm head whose every mixer can decode, or a
    transformers causal LM ``longmix.generate.hf`` can run; returns (the number of token ids the
    model reads, its longest sequence or None, the name of that limit)."""
    from ..models.model import SequenceModel

    if is_hf_model(model):
        from .hf import check_hf_model
        return check_hf_model(model)
    if not isinstance(model, SequenceModel):
        raise ValueError(f"generate: model must be a longmix SequenceModel with the lm head or a "
                         f"transformers causal LM (*ForCausalLM), got {type(model).__name__}")
    if model.cfg.head != "lm" or not model.causal:
        raise ValueError(f"generate: the model must be a causal language model (head='lm'), got "
                         f"head={model.cfg.head!r}, causal={model.causal}: a bidirectional model "
                         "reads the future, so it cannot generate")
    for block in model.blocks:
        decode_kind(block.mixer)  # raises for mixers that cannot decode after a sharded prefill
    return model.cfg.vocab_size, model.cfg.max_len, "max_len"


def output_width(model) -> tuple[int, torch.dtype]:
    """The width and dtype of ``model``'s logits (what ``output_logits`` returns for no token)."""
    if is_hf_model(model):
        head = model.get_output_embeddings().weight
        return head.shape[0], head.dtype
    return model.cfg.vocab_size, next(model.parameters()).dtype


def check_request(model, input_ids, max_new_tokens, layout, temperature, top_k, top_p, seed) -> None:
    vocab, max_len, max_len_name = check_model(model)
    check_sequence_layout(layout, "generate")
    check_int("max_new_tokens", max_new_tokens, low=0)
    check_int("seed", seed, low=0)
    check_sampling(temperature, top_k, top_p)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        got = (f"{input_ids.dtype} of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor)
               else type(input_ids).__name__)
        raise ValueError(f"generate: input_ids must be a (batch, length) LongTensor, got {got}")
    batch, length = input_ids.shape
    if batch < 1 or length < 1:
        raise ValueError(f"generate: input_ids must hold at least one sequence of at least one "
                         f"token (an empty prompt has nothing to continue), got shape {(batch, length)}")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(f"generate: token ids must be in [0, {vocab}) (the model's vocab_size), got "
                         f"ids in [{low}, {high}]: a prompt encoded for another vocabulary?")
    if max_len is not None and length + max_new_tokens > max_len:
        raise ValueError(f"generate: the prompt ({length} tokens) plus max_new_tokens "
                         f"({max_new_tokens}) exceeds the model's {max_len_name}={max_len}")


def _fingerprint(input_ids, max_new_tokens, seed) -> list[int]:
    ids = input_ids.detach().cpu().reshape(-1)
    weights = torch.arange(1, ids.numel() + 1, dtype=torch.long)
    checksum = int((ids * weights).sum())  # wraps on overflow, deterministically: fine for a hash
    return [input_ids.shape[0], input_ids.shape[1], int(max_new_tokens), int(seed), checksum]


def agree_on_request(group, error: str, request: tuple) -> None:
    """Raise the same ValueError on every rank unless every rank accepted the request and all
    passed the same prompt, max_new_tokens and seed (the function's contract). One process
    raises its own error as it is."""
    _, world, _ = resolve_group(group)
    if world == 1:
        if error:
            raise ValueError(error)
        return
    fingerprint = [0] * 5 if error else _fingerprint(*request)
    errors = [error.removeprefix("generate: ")] if error else []
    prints = agree(fingerprint, errors, group, "generate")
    if any(p != prints[0] for p in prints):
        raise ValueError("generate: every rank must pass the same input_ids, max_new_tokens and seed; "
                         f"(batch, length, max_new_tokens, seed, checksum of ids) by rank: {prints}")
