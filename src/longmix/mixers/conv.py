"""convolution family: long convolutions along the sequence, applied by FFT in O(L log L).

* ``longconv``: one long filter per channel, y[:, c] = h_c * x[:, c]. Its mixing matrix is the
  Toeplitz matrix of h_c (lower-triangular when causal), the same for every input.
* ``hyena`` (Poli et al. 2023): the order-2 Hyena operator, y = x2 * (h * (x1 * v)) with
  (v, x1, x2) projections of x, so the mixing matrix diag(x2) T_h diag(x1) depends on x.

Filters are *implicit* (:class:`ImplicitFilter`): a small network of the lag, so one set of
weights gives a filter of any length, with no max_len. Layout: x (batch, L, dim); kernels
(lags, channels) as in :mod:`longmix.ops.fftconv`; mixing matrices (batch, channels, L, L).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..ops.fftconv import fft_conv, toeplitz_matrix
from ..checks import check_int
from ..recompute import recomputed
from .base import ChannelMixer, Taxonomy, TokenMixer, last_rows, shift_in
from .forms import ShuffleHooks
from .registry import register


LAG_CHUNK = 4096  # lags whose filter activations exist at once in a training step


class Sin(nn.Module):
    """sin(w * x) with a learned frequency per feature (Hyena's filter activation)."""

    def __init__(self, features: int, w: float = 1.0):
        super().__init__()
        self.freq = nn.Parameter(torch.full((features,), float(w)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """Implicit long filter h_c(t) = g_c exp(-a_c |t|) FFN(PE(t))_c for integer lags t.

    Follows Hyena's filter (Poli et al. 2023, Sec. 3.3: positional features -> FFN with sine
    activations -> exponential-decay window), with one change: Hyena feeds positions normalized
    by the sequence length, so its filter changes with L; here the features are of the absolute
    lag, PE(t) = [cos(w_j t), sin(w_j t)], w_j = base^(-j / features) (the Transformer's
    sinusoids), so a filter trained at one length is the same filter at any other. The decay
    rates a_c are fixed (as Hyena's), spread log-uniformly over channels so that the window
    falls to 1e-2 between ``min_reach`` and ``max_reach`` lags: some channels stay local, some
    see a million tokens. Each window is scaled to unit energy over t >= 0, so the output scale
    does not grow with the reach (the concern behind the kernel regularization of Fu et al.
    2023). Signed lags (two-sided filters) are told apart by the sines.

    Args:
        channels: number of filters C.
        features: number of sinusoid frequencies (2 * features inputs to the FFN).
        hidden: FFN width.
        min_reach, max_reach: lags at which the fastest / slowest window reaches 1e-2.
        base: the longest sinusoid period is about 2 pi base lags.
    """

    def __init__(self, channels: int, features: int = 8, hidden: int = 32,
                 min_reach: float = 16.0, max_reach: float = 2.0 ** 20, base: float = 1e4):
        super().__init__()
        for name, value in (("channels", channels), ("features", features), ("hidden", hidden)):
            check_int(name, value, owner="ImplicitFilter")
        if not 0 < min_reach <= max_reach:
            raise ValueError(f"ImplicitFilter: need 0 < min_reach <= max_reach, got {min_reach}, {max_reach}")
        self.channels = channels
        self.register_buffer("freqs", base ** (-torch.arange(features) / features))
        reach = torch.logspace(math.log10(min_reach), math.log10(max_reach), channels)
        decay = math.log(100.0) / reach  # exp(-decay * reach) = 1e-2
        self.register_buffer("decay", decay)
        # sum_{t >= 0} (gain exp(-decay t))^2 = 1: the output scale does not grow with the reach
        self.register_buffer("gain", torch.sqrt(-torch.expm1(-2 * decay)))
        self.ffn = nn.Sequential(nn.Linear(2 * features, hidden), Sin(hidden),
                                 nn.Linear(hidden, hidden), Sin(hidden),
                                 nn.Linear(hidden, channels))

    def forward(self, length: int, causal: bool, channels: slice = slice(None)) -> torch.Tensor:
        """The kernel for sequences of ``length``: (L, C) over lags 0..L-1 if ``causal``,
        else (2L-1, C) over lags -(L-1)..L-1 (the layout of :func:`longmix.ops.fftconv.fft_conv`).
        ``channels`` selects filters: only their output layer is computed (a rank of the
        sequence-parallel shuffle needs just its own channels)."""
        first = 0 if causal else -(length - 1)
        return self.at(torch.arange(first, length, device=self.freqs.device), channels)

    def at(self, lags: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """The filters at the integer ``lags`` (n,): (n, C). A decoder with a sharded history
        reads only the lags its own rows need (``longmix.generate``), not all L of them.

        With gradients, :data:`LAG_CHUNK` lags at a time, each chunk's hidden layers recomputed
        in backward (:func:`longmix.recompute.recomputed`): the FFN's activations (about
        6 x ``hidden`` numbers per lag) are not kept for all L lags. They do not divide by P in
        the shuffle form (every rank needs every lag of its channels), so they would cost every
        rank as much per token as one process."""
        if not torch.is_grad_enabled() or lags.numel() <= LAG_CHUNK:
            return self._at(lags, channels)
        return torch.cat([recomputed(self._at, lags[i:i + LAG_CHUNK], channels)
                          for i in range(0, lags.numel(), LAG_CHUNK)])

    def _at(self, lags: torch.Tensor, channels: slice) -> torch.Tensor:
        t = lags.to(dtype=self.freqs.dtype, device=self.freqs.device)
        angle = t[:, None] * self.freqs
        hidden = self.ffn[:-1](torch.cat([angle.cos(), angle.sin()], dim=-1))
        last = self.ffn[-1]
        h = F.linear(hidden, last.weight[channels], last.bias[channels])  # (lags, C)
        return h * (self.gain[channels] * torch.exp(-t.abs()[:, None] * self.decay[channels]))


def _continue_long_conv(filter: ImplicitFilter, x: torch.Tensor, history: torch.Tensor):
    """Causal long convolution of the chunk x (batch, L, C) after the inputs ``history``
    (batch, H, C): (the chunk's outputs, the new history)."""
    signal = torch.cat([history.to(x.dtype), x], 1)
    y = fft_conv(signal, filter(signal.shape[1], True), causal=True)[:, history.shape[1]:]
    return y, {"history": signal.to(history.dtype)}


def _channels_matrix(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Apply per-channel L x L matrices t (C, L, L) or (b, C, L, L) to u (b, L, C)."""
    eq = "cts,bsc->btc" if t.dim() == 3 else "bcts,bsc->btc"
    return torch.einsum(eq, t, u)


@register("longconv")
class LongConv(ChannelMixer):
    """A learned long convolution per channel, y[:, c] = h_c * x[:, c], by zero-padded FFT.

    Causal: h_c over lags 0..L-1 (lower-triangular Toeplitz). Non-causal: two-sided h_c over
    lags -(L-1)..L-1. The filter is implicit (Hyena-style, :class:`ImplicitFilter`) rather than
    one weight per lag (Fu et al. 2023), so any length works without ``max_len``.

    Mixing matrix: groups = channels (``dim``), the Toeplitz matrix T_c[t, s] = h_c(t - s).
    ``heads`` is accepted for the common interface but unused: every channel has its own filter.

    Args:
        filter_features, filter_hidden, min_reach, max_reach: see :class:`ImplicitFilter`.
    """

    taxonomy = Taxonomy("convolution", learned=True, input_dependent=False, causal=True,
                        time="O(L log L)", memory="O(L)")
    uses_heads = False  # one filter per channel
    nonfinite_causal = True  # fft_conv gives a NaN/inf only to the outputs that read it
    no_decay_patterns = ("filter.*",)  # the implicit filter, excluded from decay as in Hyena's code

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 filter_features: int = 8, filter_hidden: int = 32,
                 min_reach: float = 16.0, max_reach: float = 2.0 ** 20):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len)
        self.filter = ImplicitFilter(dim, filter_features, filter_hidden, min_reach, max_reach)

    def _mix_channels(self, u, groups):
        return fft_conv(u, self.filter(u.shape[1], self.causal, groups), causal=self.causal)

    # -- step mode: the input history ----------------------------------------------------------
    # The filter has no finite state form (it is an arbitrary implicit function of the lag), so
    # the state is every input so far and a continuation convolves history + chunk: exact, but
    # the state grows with L (no state-passing form).
    def _init_state(self, batch_size, device, dtype):
        return {"history": torch.zeros(batch_size, 0, self.dim, device=device, dtype=dtype)}

    def _forward_with_state(self, x, state):
        return _continue_long_conv(self.filter, x, state["history"])

    def _toeplitz(self, length: int) -> torch.Tensor:
        return toeplitz_matrix(self.filter(length, self.causal), length, causal=self.causal)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_matrix(self._toeplitz(x.shape[1]), x)

    def _mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        return self._toeplitz(x.shape[1]).expand(x.shape[0], -1, -1, -1)


@register("hyena")
class Hyena(ShuffleHooks, TokenMixer):
    """Hyena operator of order 2 (Poli et al. 2023): y = W_out (x2 * (h * (x1 * v))).

    (v, x1, x2) = S(x W_in + b): a linear projection to 3 * dim channels followed by Hyena's
    short depthwise convolution S (``short_kernel`` taps, no bias). In causal mode S is causal
    (padded on the left only, as in the Hyena code) and h runs over lags 0..L-1; otherwise S is
    centred and h is two-sided. h is an :class:`ImplicitFilter`, one per channel. Hyena's
    extra per-channel skip term (``u * D`` inside its fftconv) is left out.

    Mixing matrix, groups = channels: M_c = diag(x2_c) T_c diag(x1_c) S_c, the full operator from
    the value projection (x W_in + b)[:, :dim] to the output before W_out; it depends on x
    through the gates x1, x2. ``heads`` is accepted but unused.

    Args:
        short_kernel: taps of the short convolution (odd; 1 makes it a per-channel scale).
        filter_features, filter_hidden, min_reach, max_reach: see :class:`ImplicitFilter`.
    """

    taxonomy = Taxonomy("convolution", learned=True, input_dependent=True, causal=True,
                        time="O(L log L)", memory="O(L)")
    uses_heads = False  # one filter per channel
    nonfinite_causal = True  # causal short conv, pointwise gates and fft_conv
    no_decay_patterns = ("filter.*",)  # the implicit filter (Hyena's reference: wd=0 for the kernel)

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 short_kernel: int = 3, filter_features: int = 8, filter_hidden: int = 32,
                 min_reach: float = 16.0, max_reach: float = 2.0 ** 20):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len)
        if check_int("short_kernel", short_kernel, owner="Hyena") % 2 == 0:
            raise ValueError(f"Hyena: short_kernel must be a positive odd int, got {short_kernel!r}")
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.short = nn.Conv1d(3 * dim, 3 * dim, short_kernel, groups=3 * dim, bias=False)
        self.filter = ImplicitFilter(dim, filter_features, filter_hidden, min_reach, max_reach)
        self.out_proj = nn.Linear(dim, dim)

    def _short_conv(self, u: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """Depthwise short conv of u (b, L, 3 c), the (v, x1, x2) projections of ``channels``
        laid out as in_proj's output, causal or centred, same length out."""
        k = self.short.kernel_size[0]
        pad = (k - 1, 0) if self.causal else ((k - 1) // 2, (k - 1) // 2)
        weight = self.short.weight.view(3, self.dim, 1, k)[:, channels].reshape(-1, 1, k)
        return F.conv1d(F.pad(u.mT, pad), weight, groups=u.shape[-1]).mT

    def _short_lags(self) -> torch.Tensor:
        """The short conv as a lag kernel (taps, 3 dim) for toeplitz_matrix: Conv1d is a
        cross-correlation, so tap j sits at lag (k - 1 - j) causally, ((k-1)/2 - j) centred."""
        return self.short.weight[:, 0, :].flip(-1).T

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_by_groups(x)

    # -- shuffle hooks: channel c is a group; its (v, x1, x2) streams travel together, and the
    # short conv, being depthwise, runs with the long one over the whole length ----------------

    def shuffle_groups(self) -> int:
        return self.dim

    def _shuffle_prepare(self, x, pieces):
        return rearrange(self.in_proj(x), "b l (three c) -> b l c three", three=3), None, None

    def _shuffle_mix(self, streams, shared, groups):
        u = self._short_conv(rearrange(streams, "b l c three -> b l (three c)"), groups)
        v, x1, x2 = u.chunk(3, dim=-1)
        kernel = self.filter(streams.shape[1], self.causal, groups)
        return (x2 * fft_conv(x1 * v, kernel, causal=self.causal))[..., None]

    def _shuffle_finish(self, mixed, ctx):
        return self.out_proj(mixed[..., 0])

    # -- step mode: the short conv's last inputs and the long conv's history -------------------
    # "proj": the last short_kernel - 1 rows of in_proj(x); "history": every x1 * v so far (the
    # long filter has no finite state form, so this part grows with L).
    def _init_state(self, batch_size, device, dtype):
        taps = self.short.kernel_size[0] - 1
        return {"proj": torch.zeros(batch_size, taps, 3 * self.dim, device=device, dtype=dtype),
                "history": torch.zeros(batch_size, 0, self.dim, device=device, dtype=dtype)}

    def _forward_with_state(self, x, state):
        proj = self.in_proj(x)
        window = torch.cat([state["proj"].to(proj.dtype), proj], 1)  # no padding: exactly L outputs
        v, x1, x2 = self.short(window.mT).mT.chunk(3, dim=-1)
        y, history = _continue_long_conv(self.filter, x1 * v, state["history"])
        new_proj = shift_in(state["proj"], last_rows(proj, state["proj"].shape[1]), x.shape[1])
        return self.out_proj(x2 * y), {"proj": new_proj, **history}

    def _operator(self, x: torch.Tensor):
        """(M, v_proj): M (b, dim, L, L) = diag(x2) T diag(x1) S_v with every matrix materialized."""
        length = x.shape[1]
        proj = self.in_proj(x)  # (b, L, 3 dim)
        s = toeplitz_matrix(self._short_lags(), length, causal=self.causal)  # (3 dim, L, L)
        _, x1, x2 = _channels_matrix(s, proj).chunk(3, dim=-1)
        t = toeplitz_matrix(self.filter(length, self.causal), length, causal=self.causal)  # (dim, L, L)
        s_v = s[:self.dim]
        m = x2.mT[..., :, None] * (t * x1.mT[..., None, :]) @ s_v  # diag(x2) T diag(x1) S_v
        return m, proj[..., :self.dim]

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        m, v_proj = self._operator(x)
        return self.out_proj(_channels_matrix(m, v_proj))

    def _mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        return self._operator(x)[0]
