"""fourier family: fixed token mixing by the discrete Fourier transform.

``fnet`` (Lee-Thorp et al. 2021): y = Re(F_s X F_h), a DFT along the hidden dim, a DFT along the
sequence, keep the real part. No parameters; the same operator for every input.
"""
from __future__ import annotations

import torch

from ..ops.dft import dft_matrix
from .base import Taxonomy, TokenMixer
from .forms import ShuffleHooks
from .registry import register


def _complex_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.complex128 if x.dtype == torch.float64 else torch.complex64


@register("fnet")
class FNet(ShuffleHooks, TokenMixer):
    """FNet: y = Re(F_s X F_h) for x (batch, L, dim), computed by ``torch.fft.fft2``.

    F_s (L x L) and F_h (dim x dim) are the DFT (Vandermonde) matrices F[j, k] = w^(j k),
    w = exp(-2 pi i / n). ``heads`` is accepted for the common interface but unused: the hidden
    DFT mixes all channels.

    Mixing matrix. Re(F_s X F_h) is not a single real operator along the sequence, but
    Re(F_s X F_h) = Re(F_s) X Re(F_h) - Im(F_s) X Im(F_h) for real X. ``mixing_matrix`` returns
    the two sequence operators as groups, (batch, 2, L, L) = [Re F_s, Im F_s]: group 0 acts on
    X Re(F_h), group 1 (with a minus sign) on X Im(F_h). Identical for every input.
    """

    taxonomy = Taxonomy("fourier", learned=False, input_dependent=False, causal=False,
                        time="O(L log L)", memory="O(L)")
    uses_heads = False  # the DFT runs over the whole hidden dimension

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_by_groups(x)

    # -- shuffle hooks: the hidden DFT is pointwise in the sequence; after it every channel's
    # sequence DFT is independent. A channel travels as (real, imaginary) and returns real. ----

    def shuffle_groups(self) -> int:
        return self.dim

    def _shuffle_prepare(self, x, pieces):
        if x.shape[1] == 0:  # an empty shard (MKL's FFT refuses empty input): nothing to transform
            return torch.stack([x, x], dim=-1), None, None
        return torch.view_as_real(torch.fft.fft(x, dim=-1)), None, None

    def _shuffle_mix(self, streams, shared, groups):
        return torch.fft.fft(torch.view_as_complex(streams.contiguous()), dim=1).real[..., None]

    def _shuffle_finish(self, mixed, ctx):
        return mixed[..., 0]

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        cdtype = _complex_dtype(x)
        f_s = dft_matrix(x.shape[1], dtype=cdtype, device=x.device)
        f_h = dft_matrix(x.shape[2], dtype=cdtype, device=x.device)
        return (f_s @ x.to(cdtype) @ f_h).real

    def _mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        f_s = dft_matrix(x.shape[1], dtype=_complex_dtype(x), device=x.device)
        ops = torch.stack([f_s.real, f_s.imag])  # (2, L, L)
        return ops.expand(x.shape[0], -1, -1, -1)
