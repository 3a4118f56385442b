"""Long-context generation: prefill a prompt split across ranks, then decode with the cache or
state kept sharded (softmax) or replicated and fixed-size (state mixers).

    tokens = longmix.generate.generate(model, prompt_ids, max_new_tokens=64, group=group)

``model`` is a longmix ``SequenceModel`` or a transformers causal LM (:mod:`longmix.generate.hf`:
its layers hand their keys and values, or their state, to the same caches).

See :func:`generate`, :mod:`longmix.generate.cache` (what each layer keeps and why) and
docs/generate.md.
"""
from .api import DecodeError, GenerationStats, generate
from .cache import decode_kind, decode_owners, expected_cache_bytes

__all__ = ["generate", "GenerationStats", "DecodeError", "decode_kind", "decode_owners",
           "expected_cache_bytes"]
