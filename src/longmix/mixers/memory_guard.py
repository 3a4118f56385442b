"""Refuse a literal path that cannot fit, before it allocates.

``reference(x)`` and ``mixing_matrix(x)`` materialize L x L matrices per sequence and per head or
channel group: at L = 4,096 a small SSM's literal path needs tens of GiB, and the OOM killer, not
an error, is what a user would meet. :func:`check_literal_path_fits` estimates the peak first
and raises :class:`LiteralPathTooLarge` with the numbers when the machine does not have them.

The estimate is an upper bound of the peak resident memory of the call (forward, with or
without autograd recording): ``(k * batch * groups + SHARED_MATRICES) * L^2 * itemsize`` plus a
term linear in L, where ``groups`` is the mixing matrix's group count and ``k`` the mixer's
factor in :data:`FACTORS`, calibrated by ``benchmarks/reference_memory.py`` (stored in
``benchmarks/results/reference_memory.md``) with headroom; tests/mixers/test_memory_guard.py
checks the bound against a measured peak for every registered mixer. A new mixer whose literal
path keeps more L x L matrices than :data:`DEFAULT_FACTOR` allows gets an entry here.
"""
from __future__ import annotations

import math

import torch

from .. import machine

#: Live L x L matrices per (sequence, group) at the literal path's peak, upper bounds with
#: headroom over the measured ratios (benchmarks/results/reference_memory.md; grad on and off).
#: Mamba keeps one (L, L) matrix per state entry and direction while it builds its operator.
FACTORS = {
    "bigbird": 5, "fnet": 2, "hyena": 9, "linear": 3, "linformer": 2, "local": 4, "longconv": 2,
    "mlpmixer": 1, "nystrom": 2, "performer": 3, "s4d": 3, "softmax": 4,
    "mamba2": 40, "gated_deltanet": 32,  # conv Toeplitz, decay mask, C B^T and a solve per head
    "mamba": lambda mixer: 4 * mixer.d_state * len(mixer.selective) + 6,
}
#: For a mixer not in :data:`FACTORS`.
DEFAULT_FACTOR = 16
#: L x L matrices shared by the whole batch (DFT and Toeplitz matrices built once), in complex
#: numbers (two reals each).
SHARED_MATRICES = 8
#: Per (sequence, position, channel): projections, activations and saved tensors, in elements.
LINEAR_ELEMENTS = 64
#: Allocator rounding and small temporaries, independent of L.
SLACK_BYTES = 16 * 2**20


class LiteralPathTooLarge(MemoryError):
    """The literal path of a mixer would need more memory than the machine has available."""


def _groups(mixer, x: torch.Tensor) -> int:
    """The mixing matrix's group count, read off the operator of one position (cheap); the
    model width where the mixer has no mixing matrix."""
    try:
        with torch.no_grad():
            return int(mixer._mixing_matrix(x[:1, :1].detach()).shape[1])
    except (NotImplementedError, ValueError, RuntimeError):  # no operator (or none at L = 1)
        return max(mixer.dim, mixer.heads)


def factor(mixer) -> float:
    """``k`` of the estimate for this mixer instance (see the module docstring)."""
    k = FACTORS.get(getattr(mixer, "name", None), DEFAULT_FACTOR)
    return k(mixer) if callable(k) else k


def literal_path_bytes(mixer, x: torch.Tensor) -> int:
    """An upper bound of the peak memory of ``mixer.reference(x)`` and ``mixer.mixing_matrix(x)``."""
    batch, length, dim = x.shape
    itemsize, groups = x.element_size(), _groups(mixer, x)
    quadratic = (factor(mixer) * batch * groups + SHARED_MATRICES) * length**2 * itemsize
    linear = LINEAR_ELEMENTS * batch * length * max(dim, groups) * itemsize
    return int(math.ceil(quadratic + linear + SLACK_BYTES))


def _available(device: torch.device) -> tuple[int | None, str]:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device}"
    if device.type == "cpu":
        return machine.available_bytes()
    return None, f"not checked on {device.type}"


def check_literal_path_fits(mixer, x: torch.Tensor, what: str) -> None:
    """Raise :class:`LiteralPathTooLarge` if ``mixer.<what>(x)`` would need more memory than
    is available on x's device; do nothing where the available memory is unknown."""
    have, source = _available(x.device)
    if have is None:
        return
    need = literal_path_bytes(mixer, x)
    if need <= have:
        return
    batch, length, _ = x.shape
    raise LiteralPathTooLarge(
        f"{type(mixer).__name__}.{what}: L = {length} (batch {batch}, {x.dtype}) needs about "
        f"{need / 2**30:.3g} GiB for its L x L matrices, but only {have / 2**30:.3g} GiB is "
        f"available ({source}); the literal path is for tests and teaching: use a shorter x, "
        f"or forward(x), which never builds them")
