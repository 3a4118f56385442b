"""Name -> mixer class registry. Family modules register their classes with ``@register``."""
from __future__ import annotations

import inspect

from .base import TokenMixer

_REGISTRY: dict[str, type[TokenMixer]] = {}


def register(name: str):
    """Class decorator: make a TokenMixer subclass buildable as ``build(name, ...)``."""

    def decorator(cls: type[TokenMixer]) -> type[TokenMixer]:
        if name in _REGISTRY:
            raise ValueError(f"mixer name {name!r} is already registered by {_REGISTRY[name].__name__}")
        if not (isinstance(cls, type) and issubclass(cls, TokenMixer)):
            raise TypeError(f"@register({name!r}) expects a TokenMixer subclass, got {cls!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available() -> list[str]:
    """Names accepted by :func:`build`, sorted."""
    return sorted(_REGISTRY)


def get_class(name: str) -> type[TokenMixer]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown mixer name {name!r}; valid names: {', '.join(available())}")
    return _REGISTRY[name]


def build(name: str, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
          **options) -> TokenMixer:
    """Build the mixer registered as ``name``. Options are passed to its constructor."""
    cls = get_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = sorted(set(accepted) - {"self", "dim", "heads", "causal", "max_len"})
            raise ValueError(f"mixer {name!r} got unknown options {unknown}; its options are {valid}")
    return cls(dim=dim, heads=heads, causal=causal, max_len=max_len, **options)
