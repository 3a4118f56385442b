"""The one dtype vocabulary of longmix's jobs, benchmarks and command line: ``fp32``, ``bf16``, ``fp64``.

    DTYPES["bf16"]            # torch.bfloat16
    dtype_name("bfloat16")    # "bf16": the long (torch) spellings are accepted at the CLI edge only
    unit_roundoff("bf16")     # 2**-8: half the gap between 1 and the next number

Reports, file names and records always use the short names.
"""
from __future__ import annotations

import torch

from .vocabulary import DTYPE_ALIASES as ALIASES
from .vocabulary import DTYPE_NAMES as NAMES

DTYPES: dict[str, torch.dtype] = dict(zip(NAMES, (torch.float32, torch.bfloat16, torch.float64)))

# Significand bits (the implicit one included): the unit roundoff is 2**-bits.
_BITS = {"fp32": 24, "bf16": 8, "fp64": 53}


def dtype_name(text: str) -> str:
    """The short name for ``text`` (a short name or an alias); ValueError naming the choices."""
    name = ALIASES.get(text, text)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(NAMES)} (or {list(ALIASES)}), got {text!r}")
    return name


def unit_roundoff(name: str) -> float:
    """The relative rounding error of one operation in dtype ``name`` (2**-24 for fp32)."""
    return 2.0 ** -_BITS[dtype_name(name)]
