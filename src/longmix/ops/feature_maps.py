"""Feature maps phi for kernel (linear) attention: softmax-like weights as phi(q) . phi(k).

All maps act on the last dimension; layouts are (..., head_dim) -> (..., features).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 (Katharopoulos et al. 2020): positive, so attention weights are >= 0."""
    return F.elu(x) + 1


def orthogonal_gaussian_projection(features: int, dim: int, generator: torch.Generator | None = None,
                                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Random projection W of shape (features, dim) for FAVOR+ (Choromanski et al. 2021, sec. 2.4).

    Rows are orthogonal within each block of ``dim`` rows (QR of a Gaussian block), then rescaled
    to the norms of independent Gaussian vectors, so each row is marginally N(0, I_dim) while the
    rows of a block are exactly orthogonal (lower variance than i.i.d. features).
    Built in float64, returned in ``dtype`` (default: torch's default dtype, as a module's
    parameters are, so that a model built under float64 is float64 throughout).
    """
    if features < 1 or dim < 1:
        raise ValueError(f"features and dim must be >= 1, got features={features}, dim={dim}")
    blocks = []
    for _ in range(math.ceil(features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        # Fix the signs so that Q is uniform (Haar) on the orthogonal group; LAPACK's sign
        # convention alone leaves a bias, which shows as an error floor in the estimate.
        q = q * torch.sign(torch.diagonal(r))
        blocks.append(q.T)  # rows orthonormal
    w = torch.cat(blocks)[:features]
    norms = torch.randn(features, dim, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).to(dtype or torch.get_default_dtype())


def positive_random_features(x: torch.Tensor, projection: torch.Tensor, stabilize_rows: bool = False
                             ) -> torch.Tensor:
    """FAVOR+ positive features phi(x) = exp(W x - |x|^2 / 2) / sqrt(m), so that
    E[phi(q) . phi(k)] = exp(q . k) for W with N(0, I) rows.

    Args:
        x: (..., dim); scale it by dim**-0.25 beforehand to estimate exp(q . k / sqrt(dim)).
        projection: (m, dim), e.g. from :func:`orthogonal_gaussian_projection`.
        stabilize_rows: subtract each row's max exponent before exp. Use it for queries only:
            a per-query factor cancels between the numerator and the normalizer of that query's
            output, whereas a per-key factor would change the weights.
    Returns:
        (..., m), all entries >= 0.
    """
    exponent = x @ projection.T - x.square().sum(-1, keepdim=True) / 2
    if stabilize_rows:
        exponent = exponent - exponent.amax(-1, keepdim=True).detach()
    return torch.exp(exponent) / math.sqrt(projection.shape[0])
