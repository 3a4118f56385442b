"""transformers' own forward in float64 throughout: a reference at 1e-12 instead of float32 rounding.

Even in a float64 model, transformers keeps some float32 casts: its RMSNorms compute in float32,
Mamba's torch path takes ``A_log.float()``, ``D.float()``, the dt bias, B and the SSM input in
float32. Compared with transformers as it runs, an exact float64 implementation therefore differs
by float32 rounding (~1e-7), which hides any smaller disagreement. Inside
:func:`float32_casts_off`, ``Tensor.float()`` and ``Tensor.to(torch.float32)`` leave a float64
tensor float64, so the same HF code runs in float64 end to end; a longmix operator equal to it
agrees to float64 rounding.

For tests and measurements only: it swaps two ``torch.Tensor`` methods for the duration of the
``with`` block, process-wide (not thread-safe), and restores them on exit.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def _keeps_float64(tensor: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """Is this ``tensor.to(...)`` call a float64 -> float32 cast?"""
    target = kwargs.get("dtype", next((a for a in args if isinstance(a, torch.dtype)), None))
    return tensor.dtype == torch.float64 and target == torch.float32


@contextlib.contextmanager
def float32_casts_off() -> Iterator[None]:
    """Within the block, float64 tensors ignore casts to float32 (see the module docstring)."""
    original_float, original_to = torch.Tensor.float, torch.Tensor.to

    def as_float(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else original_float(self, *args, **kwargs)

    def to(self, *args, **kwargs):
        return self if _keeps_float64(self, args, kwargs) else original_to(self, *args, **kwargs)

    torch.Tensor.float, torch.Tensor.to = as_float, to
    try:
        yield
    finally:
        torch.Tensor.float, torch.Tensor.to = original_float, original_to
