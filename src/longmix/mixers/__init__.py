"""The unified view: every long-sequence model as a token mixer behind one interface.

    >>> from longmix import mixers
    >>> mixers.available()            # every registered name
    >>> m = mixers.build("s4d", dim=64, causal=True)
    >>> y = m(x)                      # fast path, x: (batch, length, dim)
    >>> y_lit = m.reference(x)        # the literal formula, L x L matrices materialized
    >>> M = m.mixing_matrix(x)        # (batch, groups, L, L)
"""
from .base import FAMILIES, Taxonomy, TokenMixer
from .registry import available, build, get_class, register

# Importing a family module registers its mixers.
from . import attention, kernel, sparse, lowrank, fourier, conv, ssm, mlp  # noqa: E402,F401
from . import ssd, delta  # noqa: E402,F401

__all__ = ["FAMILIES", "Taxonomy", "TokenMixer", "available", "build", "get_class", "register"]
