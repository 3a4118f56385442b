"""Name -> Task class registry. Task modules register their classes with ``@register``."""
from __future__ import annotations

import inspect

from .base import KINDS, Task

_REGISTRY: dict[str, type[Task]] = {}


def register(name: str):
    """Class decorator: make a Task subclass buildable as ``build(name, seed=..., **params)``."""

    def decorator(cls: type[Task]) -> type[Task]:
        if name in _REGISTRY:
            raise ValueError(f"task name {name!r} is already registered by {_REGISTRY[name].__name__}")
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"@register({name!r}) expects a Task subclass, got {cls!r}")
        if cls.kind not in KINDS:  # the trainer picks the model head and the loss from it
            raise ValueError(f"@register({name!r}): {cls.__name__}.kind must be one of {KINDS}, got {cls.kind!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available() -> list[str]:
    """Names accepted by :func:`build`, in registration order (simple to hard, synthetic first)."""
    return list(_REGISTRY)


def get_class(name: str) -> type[Task]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task name {name!r}; valid names: {', '.join(available())}")
    return _REGISTRY[name]


def parameters(name: str) -> dict:
    """The parameters of task ``name`` and their defaults (``seed`` excluded)."""
    sig = inspect.signature(get_class(name).__init__)
    return {k: p.default for k, p in sig.parameters.items() if k not in ("self", "seed")}


def build(name: str, seed: int = 0, **params) -> Task:
    """Build the task registered as ``name``; ``params`` go to its constructor.

    Raises ValueError for an unknown name (listing the valid ones), for unknown parameters
    (listing the task's parameters) and for bad parameter values (naming the parameter).
    """
    valid = parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"task {name!r} got unknown parameters {unknown}; its parameters are "
                         f"{sorted(valid)}")
    return get_class(name)(seed=seed, **params)
