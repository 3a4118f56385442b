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


def check_convertible(module: nn.Module, mapped: tuple[str, ...], refused: dict[str, str],
                      options: dict, allowed: tuple[str, ...], target: str) -> str:
    """The HF class name of ``module`` once it is a transformers class this converter maps (to the
    longmix mixer ``target``) and ``options`` are among ``allowed``; else the ValueError saying why
    (a class refused by name gives its reason)."""
    cls = type(module)
    owner = cls.__name__
    if owner in refused:
        raise ValueError(f"mixer_from_hf: {owner} is refused: {refused[owner]}")
    if owner not in mapped or not cls.__module__.startswith("transformers."):
        raise ValueError(f"mixer_from_hf: no longmix {target} for {cls.__module__}.{cls.__qualname__}; "
                         f"supported: {', '.join(mapped)}")
    unknown = sorted(set(options) - set(allowed))
    require(owner, not unknown, "options", f"unknown {unknown}; the options are {list(allowed)}")
    return owner
