"""The checks every HF -> longmix converter makes, so that each refusal reads the same."""
from __future__ import annotations

from torch import nn


def require(owner: str, ok: bool, option: str, why: str) -> None:
    """A ValueError naming the HF class ``owner``, its ``option`` and ``why``, unless ``ok``."""
    if not ok:
        raise ValueError(f"mixer_from_hf({owner}): {option}: {why}")


def plain_submodule(owner: str, module: nn.Module, name: str, expected: type) -> nn.Module:
    """A submodule of exactly ``expected`` type: a subclass (a quantized or hooked Linear) may
    compute something else."""
    sub = getattr(module, name, None)
    require(owner, type(sub) is expected, name,
            f"expected a plain torch {expected.__name__}, got {type(sub).__name__} (quantized or "
            "replaced layers are not supported)")
    return sub
