"""Vandermonde / DFT matrices, materialized (for the literal Fourier formulas)."""
from __future__ import annotations

import math

import torch

from ..checks import check_int

__all__ = ["dft_matrix"]


def dft_matrix(n: int, dtype: torch.dtype = torch.complex128, device=None) -> torch.Tensor:
    """The n x n DFT matrix F[j, k] = w^(j k), w = exp(-2 pi i / n): the Vandermonde matrix
    of the n-th roots of unity, so ``F @ x == torch.fft.fft(x, dim=0)``.

    The exponent j*k is reduced mod n in integers first, which keeps the phases exact for
    large n (j*k itself would lose digits as a float).
    """
    check_int("n", n, owner="dft_matrix")
    if not dtype.is_complex:
        raise ValueError(f"dft_matrix: dtype must be complex, got {dtype}")
    idx = torch.arange(n, device=device, dtype=torch.int64)
    phase = (idx[:, None] * idx[None, :]) % n
    angle = phase.to(torch.float64) * (-2 * math.pi / n)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)
