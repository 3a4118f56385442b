"""Run transformers' own torch path in float64 end to end, for tests.

transformers keeps float32 casts inside its torch paths even for a float64 module (Mamba-2's
chunk scan and gated norm, the gated delta rule in ``torch_chunk_gated_delta_rule``), so compared
as it runs an exact float64 implementation differs by float32 rounding, which can hide smaller
disagreements. Inside :func:`float32_casts_off`, ``Tensor.float()`` and ``Tensor.to(float32)``
leave a float64 tensor float64, so the same HF code runs in float64 and a longmix operator equal
to it agrees to float64 rounding. Test-only: it swaps two ``torch.Tensor`` methods process-wide
for the ``with`` block. (The hfssm branch has the same helper as ``longmix.hf.float64``; when both
are merged, these tests should import that one.)
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def float32_casts_off():
    original_float, original_to = torch.Tensor.float, torch.Tensor.to

    def as_float(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else original_float(self, *args, **kwargs)

    def to(self, *args, **kwargs):
        target = kwargs.get("dtype", next((a for a in args if isinstance(a, torch.dtype)), None))
        if self.dtype == torch.float64 and target == torch.float32:
            return self
        return original_to(self, *args, **kwargs)

    torch.Tensor.float, torch.Tensor.to = as_float, to
    try:
        yield
    finally:
        torch.Tensor.float, torch.Tensor.to = original_float, original_to
