"""ssm family: state space models as token mixers.

* ``s4d``: a diagonal, linear time-invariant SSM per channel (Gu et al. 2022, "On the
  Parameterization and Initialization of Diagonal State Space Models"; after the standalone
  ``s4d.py`` of state-spaces/s4). Its token mixing is a long convolution whose kernel comes
  from a Vandermonde product: a Toeplitz mixing matrix, the same for every input.
* ``mamba``: the selective SSM (S6) block of Mamba (Gu & Dao 2023): Δ, B, C are projections of
  the input, so the mixing matrix is an input-dependent lower-triangular semiseparable matrix.

Neither uses heads: every channel carries its own SSM. ``heads`` is accepted (and must divide
``dim``, as for every mixer) but ignored; ``uses_heads = False`` tells benchmarks so.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.fftconv import fft_conv, toeplitz_matrix
from ..ops.scan import check_backend, selective_scan, selective_scan_matrix
from ..ops.short_conv import short_conv
from ..ops.vandermonde import log_vandermonde, log_vandermonde_transpose, vandermonde_matrix
from ..checks import check_int
from .base import ChannelMixer, Taxonomy, TokenMixer, last_rows, shift_in
from .forms import ShuffleHooks, StateHooks, WholeSequence
from .registry import register


def _check_dt_range(owner: str, dt_min, dt_max) -> None:
    if not (0 < dt_min <= dt_max):
        raise ValueError(f"{owner}: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")


def _log_uniform(n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n) * (math.log(high) - math.log(low)) + math.log(low)


@register("s4d")
class S4D(StateHooks, ChannelMixer):
    """S4D: per channel h, a diagonal complex SSM x' = A x + B u, y = 2 Re(C x) + D u.

    Continuous parameters (S4D-Lin init): A_n = -1/2 + i pi n for n < d_state/2 (the other half
    of the poles are the complex conjugates, hence the 2 Re), B = 1 (folded into C), C ~ CN(0, 1),
    dt log-uniform in [dt_min, dt_max]. Zero-order hold gives Abar = exp(dt A),
    Bbar = (exp(dt A) - 1) / A and the convolution kernel

        K[l] = 2 Re( sum_n C_n Bbar_n Abar_n^l ),   l = 0 .. L-1,

    a Vandermonde product (:func:`~longmix.ops.vandermonde.log_vandermonde`), applied by FFT
    convolution in O(L log L) for any L (no max_len needed).

    ``causal=False`` is bidirectional as S4's ``bidirectional=True``: a second C (sharing A and
    dt) gives an anti-causal kernel K', and y_t = sum_{s<=t} K[t-s] u_s + sum_{s>t} K'[s-t-1] u_s
    + D u_t.

    Token mixing only: the GELU and output GLU of S4D's block are channel mixing and belong to
    the model block. x (batch, L, dim) -> (batch, L, dim).

    Args:
        d_state: N, the state size per channel (even: N/2 complex poles and their conjugates).
        dt_min, dt_max: range of the initial step sizes.
    """

    taxonomy = Taxonomy(family="ssm", learned=True, input_dependent=False, causal=True,
                        time="O(L log L)", memory="O(L)")
    uses_heads = False
    nonfinite_causal = True  # fft_conv gives a NaN/inf only to the outputs that read it
    # The SSM dynamics, as S4's reference registers them with weight_decay 0.0; C (B folded in)
    # and D decay there like ordinary weights.
    no_decay_patterns = ("log_dt", "log_A_real", "A_imag")

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len)
        check_int("d_state", d_state, low=2, owner="S4D")
        if d_state % 2:
            raise ValueError(f"S4D: d_state must be even (conjugate pairs of poles), got {d_state}")
        _check_dt_range("S4D", dt_min, dt_max)
        modes = d_state // 2
        directions = 1 if causal else 2
        self.log_dt = nn.Parameter(_log_uniform(dim, dt_min, dt_max))
        self.log_A_real = nn.Parameter(torch.full((dim, modes), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.get_default_dtype()).repeat(dim, 1))
        # C stored as real pairs so that .double()/.float() convert it like every other parameter;
        # drawn as the complex type of the default dtype (complex128 under float64)
        cdtype = torch.promote_types(torch.get_default_dtype(), torch.complex64)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(directions, dim, modes, dtype=cdtype)))
        self.D = nn.Parameter(torch.randn(dim))

    def discretize(self, channels: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZOH discretization: (dtA (dim, N/2) = log Abar, Bbar (dim, N/2), C (directions, dim, N/2)),
        for the selected ``channels`` only."""
        dt = self.log_dt[channels].exp()
        A = torch.complex(-self.log_A_real[channels].exp(), self.A_imag[channels])
        dtA = A * dt.unsqueeze(-1)
        Bbar = (dtA.exp() - 1) / A
        return dtA, Bbar, torch.view_as_complex(self.C)[:, channels]

    def kernel(self, length: int, channels: slice = slice(None)) -> torch.Tensor:
        """The SSM convolution kernels (directions, dim, L) by the (chunked) Vandermonde product."""
        dtA, Bbar, C = self.discretize(channels)
        return log_vandermonde(C * Bbar, dtA, length)

    @staticmethod
    def _lags(k: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Kernels (directions, dim, L) -> (lags, dim) in ``ops.fftconv``'s layout, and causal flag."""
        if k.shape[0] == 1:
            return k[0].T, True
        # two-sided: lags -(L-1)..-1 hold K'[L-2]..K'[0] (s > t uses K'[s-t-1]), lags 0..L-1 hold K
        return torch.cat([k[1, :, :-1].flip(-1), k[0]], dim=-1).T, False

    def _mix_channels(self, u, groups):
        lags, causal = self._lags(self.kernel(u.shape[1], groups))
        return fft_conv(u, lags.to(u.dtype), causal=causal) + u * self.D[groups]

    def _toeplitz(self, length: int) -> torch.Tensor:
        """The literal mixing matrix (dim, L, L): Vandermonde matrix -> kernel -> Toeplitz + D I."""
        dtA, Bbar, C = self.discretize()
        V = vandermonde_matrix(dtA.exp(), length)  # (dim, N/2, L): Abar^l by repeated products
        k = 2 * torch.einsum("cdn,dnl->cdl", C * Bbar, V).real
        lags, causal = self._lags(k)
        eye = torch.eye(length, dtype=k.dtype, device=k.device)
        return toeplitz_matrix(lags, length, causal=causal) + self.D[:, None, None] * eye

    def _reference(self, x):
        return torch.einsum("dts,bsd->btd", self._toeplitz(x.shape[1]), x)

    def _mixing_matrix(self, x):
        return self._toeplitz(x.shape[1]).expand(x.shape[0], -1, -1, -1)

    # -- step mode and state passing: the SSM state h (batch, dim, N/2), complex --------------
    # Stored as (real, imag) pairs, (batch, dim, N/2, 2), so states have a real dtype like every
    # other tensor. Continuing from h0 adds the free response y_t += 2 Re(C Abar^(t+1) h0) (a
    # Vandermonde product) to the zero-state convolution; a chunk of n inputs moves the state to
    # Abar^n h0 + (its state from zero), so the chunk's summary is that zero-state final state.
    def _init_state(self, batch_size, device, dtype):
        return {"h": torch.zeros(batch_size, self.dim, self.log_A_real.shape[1], 2, device=device, dtype=dtype)}

    @staticmethod
    def _complex(pairs: torch.Tensor, dtA: torch.Tensor) -> torch.Tensor:
        """(real, imag) pairs -> complex in the precision of dtA."""
        return torch.view_as_complex(pairs.to(dtA.real.dtype).contiguous())

    def _state_from_zero(self, x, dtA, Bbar):
        """The state after x from a zero state: sum_s Abar^(n-1-s) Bbar u_s, (batch, dim, N/2)."""
        if x.shape[1] == 0:
            return torch.zeros(x.shape[0], *dtA.shape, dtype=dtA.dtype, device=x.device)
        return Bbar * log_vandermonde_transpose(x.mT, dtA)

    def _forward_with_state(self, x, state):
        dtA, Bbar, C = self.discretize()
        h0 = self._complex(state["h"], dtA)
        length = x.shape[1]
        free = log_vandermonde(C[0] * dtA.exp() * h0, dtA, length)  # (batch, dim, L)
        y = self._forward(x) + free.mT.to(x.dtype)
        h = (dtA * length).exp() * h0 + self._state_from_zero(x, dtA, Bbar)
        return y, {"h": torch.view_as_real(h).to(state["h"].dtype)}

    def _state_summary(self, x, state, stage):
        dtA, Bbar, _ = self.discretize()
        h = torch.view_as_real(self._state_from_zero(x, dtA, Bbar))
        return {"h": h.to(self.state_dtype(x.dtype)),
                "length": torch.tensor(x.shape[1], dtype=torch.int64, device=x.device)}

    def _chain_state(self, state, summary, stage):
        dtA = self.discretize()[0]
        h = (dtA * int(summary["length"])).exp() * self._complex(state["h"], dtA) + self._complex(summary["h"], dtA)
        return {"h": torch.view_as_real(h).to(state["h"].dtype)}

    def recurrence(self, x: torch.Tensor) -> torch.Tensor:
        """The same operator run as a recurrence, one position at a time (O(L) sequential steps):

            h_t = Abar h_{t-1} + Bbar u_t,  y_t = 2 Re(C h_t) + D u_t

        plus, when not causal, the backward recurrence g_t = Abar g_{t+1} + Bbar u_{t+1} read out
        by the second C. An independent cross-check of the convolution; x (batch, L, dim).
        """
        self.check_input(x)
        dtA, Bbar, C = self.discretize()
        Abar, u = dtA.exp(), x.to(dtA.dtype).unsqueeze(-1)  # u: (batch, L, dim, 1)
        h = torch.zeros_like(u[:, 0] * Abar)
        ys = []
        for t in range(x.shape[1]):
            h = Abar * h + Bbar * u[:, t]
            ys.append(2 * (C[0] * h).sum(-1).real)
        y = torch.stack(ys, dim=1)
        if not self.causal:
            g, back = torch.zeros_like(h), []
            for t in reversed(range(x.shape[1])):
                back.append(2 * (C[1] * g).sum(-1).real)
                g = Abar * g + Bbar * u[:, t]
            y = y + torch.stack(back[::-1], dim=1)
        return y + x * self.D


class _SelectiveParams(nn.Module):
    """Δ, B, C from the input and A = -exp(A_log): one direction of Mamba's S6 (as mamba_simple).

    ``norm_eps`` not None adds an RMSNorm on each of dt (before dt_proj), B and C, as Jamba's
    Mamba layers do: x / sqrt(mean(x^2) + eps) * weight over each one's last dim; without the
    weight when ``norm_weight`` is False (Falcon-Mamba)."""

    def __init__(self, d_inner: int, d_state: int, dt_rank: int, dt_min: float, dt_max: float,
                 norm_eps: float | None = None, norm_weight: bool = True):
        super().__init__()
        self.dt_rank, self.d_state = dt_rank, d_state
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        dt = _log_uniform(d_inner, dt_min, dt_max).exp().clamp_min(1e-4)
        with torch.no_grad():  # bias = softplus^-1(dt), so that softplus(dt_proj(0)) = dt at init
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-Real init: A[d, n] = -(n + 1)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.get_default_dtype()))
                                  .repeat(d_inner, 1))
        self.norms = None if norm_eps is None else nn.ModuleList(
            nn.RMSNorm(size, eps=norm_eps, elementwise_affine=norm_weight) for size in (dt_rank, d_state, d_state))

    def inputs(self, u: torch.Tensor) -> torch.Tensor:
        """u (batch, L, d_inner) -> [dt, B, C] (batch, L, dt_rank + 2N), normalized if ``norms``.
        Pointwise in the sequence: what every channel's scan reads at each position."""
        projected = self.x_proj(u)
        if self.norms is None:
            return projected
        parts = projected.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return torch.cat([norm(part) for norm, part in zip(self.norms, parts)], dim=-1)

    def forward(self, u):
        """u (batch, L, d_inner) -> delta (batch, L, d_inner), A (d_inner, N), B, C (batch, L, N)."""
        dt, B, C = self.inputs(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), -self.A_log.exp(), B, C


def _joined(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """torch.cat, without the copy (and its backward) when there is one part: the usual case
    of one direction and of one sequence piece."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


@register("mamba")
class Mamba(ShuffleHooks, StateHooks, TokenMixer):
    """Mamba's block around a selective SSM (S6), x (batch, L, dim) -> (batch, L, dim).

        u, z = in_proj(x);  u = silu(causal depthwise conv(u));  y = SSM(u) + D u
        out  = out_proj(y * silu(z))

    SSM(u) per inner channel d and state n: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t,
    y_t = C_t . h_t, with Δ_t = softplus(dt_proj(.)), B_t, C_t projections of u_t. The fast path
    is the chunked scan :func:`~longmix.ops.scan.selective_scan` (O(L) time, memory bounded per
    chunk); the reference materializes the scan's (L, L) matrix. The scan has its own
    backward, which recomputes each chunk's states (as Mamba's CUDA kernel does) instead of
    storing O(L d_inner d_state) of them.

    ``causal=False`` runs a bidirectional selective SSM (as in Vision Mamba): a second set of
    Δ/B/C projections and A scans the reversed sequence and the two outputs are added (the
    diagonal, i.e. position t's own input, enters through both scans and D). The short conv
    stays causal in both modes, so both scans read the same u.

    ``mixing_matrix(x)`` is (batch, d_inner, L, L), one group per inner channel:
    M[t, s] = C_t^T (prod_{r=s+1..t} exp(Δ_r A)) Δ_s B_s (+ its reversed twin) + D on the
    diagonal. It is the operator the SSM applies to u, ``ssm(u) == M u``; the in/out projections,
    the conv and the gate around it are channel-wise or pointwise-nonlinear and not included.

    Args:
        d_state: N, the state size per channel.
        expand: d_inner = expand * dim.
        d_conv: width of the causal depthwise conv before the SSM; 0 removes it.
        dt_rank: rank of the Δ projection, default ceil(dim / 16).
        chunk_size: positions per chunk of :func:`~longmix.ops.scan.selective_scan`.
        scan_backend: its ``backend``: "auto" (the fused kernel on CPU), "cpu" or "torch".
        bcdt_norm: RMSNorms (eps ``norm_eps``) on dt, B and C after their projection, as in
            Jamba's and Falcon-Mamba's Mamba layers; dt is normalized before dt_proj.
        norm_eps: their epsilon.
        norm_weight: whether they have weights (Jamba) or not (Falcon-Mamba).
    """

    taxonomy = Taxonomy(family="ssm", learned=True, input_dependent=True, causal=True,
                        time="O(L)", memory="O(L)")
    uses_heads = False
    nonfinite_causal = True  # a recurrence: position s only reaches later states
    no_decay_patterns = ("selective.*.A_log", "D")  # mamba_simple's _no_weight_decay parameters

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 d_state: int = 16, expand: int = 2, d_conv: int = 4, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, chunk_size: int = 64, scan_backend: str = "auto",
                 bcdt_norm: bool = False, norm_eps: float = 1e-6, norm_weight: bool = True):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len)
        dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        for label, value, low in (("d_state", d_state, 1), ("expand", expand, 1), ("d_conv", d_conv, 0),
                                  ("dt_rank", dt_rank, 1), ("chunk_size", chunk_size, 1)):
            check_int(label, value, low=low, owner="Mamba")
        _check_dt_range("Mamba", dt_min, dt_max)
        check_backend(scan_backend, owner="Mamba", name="scan_backend")
        for label, value in (("bcdt_norm", bcdt_norm), ("norm_weight", norm_weight)):
            if not isinstance(value, bool):
                raise ValueError(f"Mamba: {label} must be a bool, got {value!r}")
        if not (isinstance(norm_eps, (int, float)) and not isinstance(norm_eps, bool) and norm_eps > 0):
            raise ValueError(f"Mamba: norm_eps must be a number > 0, got {norm_eps!r}")
        if not (bcdt_norm or norm_weight):
            raise ValueError("Mamba: norm_weight=False (weightless dt/B/C norms) needs bcdt_norm=True")
        self.d_inner, self.d_state = expand * dim, d_state
        self.chunk_size, self.scan_backend = chunk_size, scan_backend
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
        self.conv = (nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
                     if d_conv else None)
        directions = 1 if causal else 2
        self.selective = nn.ModuleList(
            _SelectiveParams(self.d_inner, d_state, dt_rank, dt_min, dt_max, norm_eps if bcdt_norm else None,
                             norm_weight)
            for _ in range(directions))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)

    # -- the three stages: ssm_input -> ssm -> output ----------------------------------------
    def ssm_input(self, x: torch.Tensor, pieces=WholeSequence) -> tuple[torch.Tensor, torch.Tensor]:
        """x (batch, L, dim) -> (u, z), both (batch, L, d_inner): the SSM input and the gate.

        The causal conv reads d_conv - 1 rows before each piece of x (``pieces``, see
        ``TokenMixer._shuffle_prepare``): zeros before position 0, another rank's rows when the
        sequence is sharded."""
        u, z = self.in_proj(x).chunk(2, dim=-1)
        if self.conv is not None:
            rows = self.conv.kernel_size[0] - 1
            convolved = [self._short_conv(piece) for piece in pieces.left_context(u, rows)]
            u = _joined(convolved, dim=1) if convolved else u  # no pieces: an empty shard
        return F.silu(u), z

    def _short_conv(self, window: torch.Tensor) -> torch.Tensor:
        """The depthwise conv over (batch, d_conv - 1 + L, d_inner) rows -> L outputs (no padding)."""
        return short_conv(window, self.conv.weight[:, 0], self._conv_bias())

    def _conv_bias(self) -> torch.Tensor:
        """The conv's bias, zeros for a conv built without one (HF's ``use_conv_bias=False``)."""
        bias = self.conv.bias
        return self.conv.weight.new_zeros(self.conv.weight.shape[0]) if bias is None else bias

    def _selective_inputs(self, u: torch.Tensor) -> torch.Tensor:
        """Per position, what every channel's scan reads: [dt (dt_rank), B (N), C (N)] of each
        direction (normalized when ``bcdt_norm``), (batch, L, directions * (dt_rank + 2N)).
        Pointwise in the sequence."""
        return _joined([params.inputs(u) for params in self.selective], dim=-1)

    def _ssm_channels(self, u: torch.Tensor, inputs: torch.Tensor, channels: slice, scan=None):
        """The token mixing of ``channels``: u (batch, L, c), inputs from ``_selective_inputs``."""
        if scan is None:
            def scan(*args):
                return selective_scan(*args, chunk_size=self.chunk_size, backend=self.scan_backend)
        y = None
        for direction, (params, proj) in enumerate(
                zip(self.selective, inputs.chunk(len(self.selective), dim=-1))):
            dt, B, C = proj.split([params.dt_rank, params.d_state, params.d_state], dim=-1)
            delta = F.softplus(F.linear(dt, params.dt_proj.weight[channels], params.dt_proj.bias[channels]))
            A = -params.A_log[channels].exp()
            if direction == 0:  # with the skip term D u, which the scan fuses
                y = scan(u, delta, A, B, C, self.D[channels])
            else:  # the reversed scan of the bidirectional mode
                y = y + scan(*(t.flip(1) for t in (u, delta)), A, *(t.flip(1) for t in (B, C))).flip(1)
        return y

    def ssm(self, u: torch.Tensor, scan=None) -> torch.Tensor:
        """The token mixing: u (batch, L, d_inner) -> (batch, L, d_inner), equal to M u.

        ``scan`` defaults to the chunked :func:`selective_scan`; tests pass the sequential one.
        """
        return self._ssm_channels(u, self._selective_inputs(u), slice(None), scan)

    # -- shuffle hooks: inner channels are the groups; B, C and the low-rank dt are shared by all
    # channels, so they travel to every rank (dt_rank + 2N numbers per position and direction) --

    def shuffle_groups(self) -> int:
        return self.d_inner

    def _shuffle_prepare(self, x, pieces):
        u, z = self.ssm_input(x, pieces)
        return u.unsqueeze(-1), self._selective_inputs(u), z

    def _shuffle_mix(self, streams, shared, groups):
        return self._ssm_channels(streams[..., 0], shared, groups)[..., None]

    def _shuffle_finish(self, mixed, ctx):
        return self.output(mixed[..., 0], ctx)

    def output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out_proj(y * F.silu(z))

    def _forward(self, x):
        return self._forward_by_groups(x)

    # -- step mode and state passing ---------------------------------------------------------
    # The state: "ssm", the scan's state h (batch, d_inner, d_state), and "conv", the last
    # d_conv - 1 inputs of the causal conv (batch, d_conv - 1, d_inner), pre-activation.
    # State passing resolves them in two stages: a chunk's conv inputs depend on the previous
    # chunk's last rows (a halo), and its SSM summary needs them. The SSM summary of a chunk
    # is its final state from zero and sum_t Δ_t: the chunk's transition is
    # prod_t exp(Δ_t A) = exp(A sum_t Δ_t), input dependent but fixed in size.
    @property
    def state_stages(self) -> dict[str, tuple[str, ...]]:
        return {"conv": ("conv",), "ssm": ("ssm",)} if self.conv is not None else {"ssm": ("ssm",)}

    def _init_state(self, batch_size, device, dtype):
        state = {"ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype)}
        if self.conv is not None:
            state["conv"] = torch.zeros(batch_size, self.conv.kernel_size[0] - 1, self.d_inner,
                                        device=device, dtype=dtype)
        return state

    def _continued_input(self, x: torch.Tensor, conv_state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ssm_input for a chunk that follows the inputs in ``conv_state``: (u, z, conv inputs)."""
        raw, z = self.in_proj(x).chunk(2, dim=-1)
        if self.conv is None:
            return F.silu(raw), z, raw
        window = torch.cat([conv_state.to(raw.dtype), raw], 1)  # no padding: exactly L outputs
        return F.silu(self._short_conv(window)), z, raw

    def _scan(self, u, h0):
        delta, A, B, C = self.selective[0](u)
        y, h = selective_scan(u, delta, A, B, C, self.D, chunk_size=self.chunk_size, backend=self.scan_backend,
                              initial_state=h0, return_final_state=True)
        return y, h, delta

    def _forward_with_state(self, x, state):
        u, z, raw = self._continued_input(x, state.get("conv"))
        y, h, _ = self._scan(u, state["ssm"].to(u.dtype))
        new = {"ssm": h.to(state["ssm"].dtype)}
        if self.conv is not None:
            new["conv"] = shift_in(state["conv"], last_rows(raw, state["conv"].shape[1]), x.shape[1])
        return self.output(y, z), new

    def _state_summary(self, x, state, stage):
        dtype, length = self.state_dtype(x.dtype), x.shape[1]
        if stage == "conv":  # in_proj is per position: project only the rows the next chunk reads
            rows = self.conv.kernel_size[0] - 1
            raw = self.in_proj(x[:, max(0, length - rows):]).chunk(2, dim=-1)[0]
            return {"conv": last_rows(raw, rows).to(dtype),
                    "length": torch.tensor(length, dtype=torch.int64, device=x.device)}
        if length == 0:
            zero = x.new_zeros(x.shape[0], self.d_inner, dtype=dtype)
            return {"ssm": zero[..., None].expand(-1, -1, self.d_state).contiguous(), "delta_sum": zero}
        if self.conv is not None and (state is None or "conv" not in state):
            raise ValueError("Mamba.state_summary: stage 'ssm' needs the incoming state's 'conv' "
                             "part (resolve stage 'conv' first)")
        u = self._continued_input(x, None if state is None else state.get("conv"))[0]
        _, h, delta = self._scan(u, None)
        return {"ssm": h.to(dtype), "delta_sum": delta.sum(1).to(dtype)}

    def _chain_state(self, state, summary, stage):
        if stage == "conv":
            return {**state, "conv": shift_in(state["conv"], summary["conv"], int(summary["length"]))}
        A = -self.selective[0].A_log.exp()
        h = state["ssm"]
        decay = torch.exp(summary["delta_sum"].to(h.dtype)[..., None] * A.to(h.dtype))  # <= 1
        return {**state, "ssm": decay * h + summary["ssm"].to(h.dtype)}

    def _matrix(self, u: torch.Tensor) -> torch.Tensor:
        """(batch, d_inner, L, L) with ssm(u) == einsum('bdts,bsd->btd', M, u)."""
        eye = torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
        m = self.D[:, None, None] * eye
        for direction, params in enumerate(self.selective):
            v = u if direction == 0 else u.flip(1)
            md = selective_scan_matrix(*params(v))  # params: (delta, A, B, C)
            m = m + (md if direction == 0 else md.flip(-1, -2))
        return m

    def _conv_matrix(self, length: int) -> torch.Tensor:
        """The causal depthwise conv as banded Toeplitz matrices (d_inner, L, L)."""
        w = self.conv.weight[:, 0]  # (d_inner, d_conv); Conv1d correlates: lag j uses w[d_conv-1-j]
        return toeplitz_matrix(w.flip(-1).T, length, causal=True)

    def _reference(self, x):
        # Literal path: projections as matmuls, the conv and the scan as materialized L x L matrices.
        u, z = self.in_proj(x).chunk(2, dim=-1)
        if self.conv is not None:
            u = torch.einsum("dts,bsd->btd", self._conv_matrix(x.shape[1]), u) + self._conv_bias()
        u = F.silu(u)
        y = torch.einsum("bdts,bsd->btd", self._matrix(u), u)
        return self.output(y, z)

    def _mixing_matrix(self, x):
        return self._matrix(self.ssm_input(x)[0])
