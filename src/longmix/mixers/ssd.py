"""ssm family: Mamba-2 (Dao & Gu 2024, "Transformers are SSMs"), the state space duality (SSD).

Mamba-2's SSM has one scalar decay per head, so its mixing matrix is the 1-semiseparable
decay mask applied elementwise to C B^T (:mod:`longmix.ops.ssd`): an SSM and a masked linear
attention at once. The layer around it is Mamba-2's (mamba_ssm ``Mamba2``, transformers'
``Mamba2Mixer``), so that ``longmix.hf`` can map those modules onto it with their parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int
from ..ops.ssd import ssd, ssd_matrix
from .base import Taxonomy, TokenMixer, last_rows, shift_in
from .conv_stage import conv_literal, conv_pieces, conv_window
from .forms import ShuffleHooks, StateHooks, WholeSequence
from .registry import register


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: y * silu(z), then RMS-normalized over groups of ``group_size``
    channels, times a gain (``norm_before_gate=False`` in mamba_ssm, transformers'
    ``MambaRMSNormGated``)."""

    def __init__(self, size: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gated = (y * F.silu(z)).unflatten(-1, (-1, self.group_size))
        normed = gated * torch.rsqrt(gated.square().mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.flatten(-2)


def check_dt_init(owner: str, dt_min, dt_max, A_init_range) -> None:
    """The ranges of the initial step sizes and decay rates, for Mamba-2 and Gated DeltaNet."""
    if not (0 < dt_min <= dt_max):
        raise ValueError(f"{owner}: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    if len(A_init_range) != 2 or not (0 < A_init_range[0] <= A_init_range[1]):
        raise ValueError(f"{owner}: A_init_range must be (low, high) with 0 < low <= high, got {A_init_range!r}")


def init_dt_bias(heads: int, dt_min: float, dt_max: float, dt_floor: float) -> torch.Tensor:
    """softplus^-1 of step sizes log-uniform in [dt_min, dt_max] (Mamba-2's init)."""
    dt = (torch.rand(heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).exp().clamp_min(dt_floor)
    return dt + torch.log(-torch.expm1(-dt))


@register("mamba2")
class Mamba2(ShuffleHooks, StateHooks, TokenMixer):
    """Mamba-2's block, x (batch, L, dim) -> (batch, L, dim):

        z, xBC, dt = in_proj(x);   xBC = silu(causal depthwise conv(xBC));   x', B, C = xBC
        y = SSD(x', dt, A, B, C) + D x'   (per head: x' (L, P), a scalar decay, B, C (L, N))
        out = out_proj(norm(y * silu(z)))

    with dt = softplus(dt + dt_bias) clamped to ``dt_limit`` and A = -exp(A_log), one per head.
    B and C are shared by the heads of each of ``groups`` groups (Mamba-2's ngroups). The fast
    path is the chunked SSD (:func:`~longmix.ops.ssd.ssd`); the literal path materializes the
    conv's Toeplitz matrices and the SSD's (L, L) matrix per head.

    ``mixing_matrix(x)`` is (batch, heads, L, L): M[t, s] = (C_t . B_s) exp(A sum_{r=s+1..t} dt_r)
    dt_s + D on the diagonal, the operator each head applies to its P channels of x' (the
    projections, conv, gate and norm around it are per position, or nonlinear, and not in it).

    ``causal=False`` is bidirectional, as Hydra (Hwang et al. 2024) makes Mamba-2 bidirectional
    with a quasiseparable matrix: a second SSD runs over the reversed sequence with the same x',
    B, C, dt and A, and the two are added (the upper triangle mirrors the lower one's structure;
    the diagonal, position t's own input, is read by both, as longmix's bidirectional ``mamba``).
    The conv stays causal in both modes.

    Args:
        d_state: N, the state size per head.
        expand: d_inner = expand * dim, unless ``d_inner`` is given; head_dim P = d_inner / heads.
        groups: groups of heads sharing B and C; divides heads.
        d_conv: width of the causal depthwise conv over (x', B, C).
        chunk_size: positions per chunk of the SSD.
        dt_min, dt_max, dt_floor: range of the initial step sizes.
        dt_limit: (low, high) clamp of dt after the softplus.
        A_init_range: -A is drawn uniformly in it.
        norm_eps: epsilon of the gated RMSNorm.
        bias: bias of in_proj and out_proj; conv_bias: bias of the conv.
    """

    taxonomy = Taxonomy(family="ssm", learned=True, input_dependent=True, causal=True,
                        time="O(L)", memory="O(L)")
    uses_heads = True
    nonfinite_causal = True  # the conv and the SSD carry position s only to later positions
    # mamba_ssm's Mamba2 marks A_log, D and dt_bias _no_weight_decay; the norm's gain too
    no_decay_patterns = ("A_log", "dt_bias", "D", "norm.weight")

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 d_state: int = 16, expand: int = 2, groups: int = 1, d_conv: int = 4, chunk_size: int = 64,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4,
                 dt_limit: tuple[float, float] = (0.0, float("inf")), A_init_range: tuple[float, float] = (1, 16),
                 norm_eps: float = 1e-5, bias: bool = False, conv_bias: bool = True, d_inner: int | None = None):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len)
        d_inner = expand * dim if d_inner is None else d_inner
        for label, value in (("d_state", d_state), ("expand", expand), ("groups", groups), ("d_conv", d_conv),
                             ("chunk_size", chunk_size), ("d_inner", d_inner)):
            check_int(label, value, owner="Mamba2")
        if heads % groups:
            raise ValueError(f"Mamba2: groups ({groups}) must divide heads ({heads})")
        if d_inner % heads:
            raise ValueError(f"Mamba2: heads ({heads}) must divide d_inner ({d_inner})")
        check_dt_init("Mamba2", dt_min, dt_max, A_init_range)
        if len(dt_limit) != 2 or not (0 <= dt_limit[0] < dt_limit[1]):
            raise ValueError(f"Mamba2: dt_limit must be (low, high) with 0 <= low < high, got {dt_limit!r}")
        self.d_inner, self.d_state, self.groups = d_inner, d_state, groups
        self.P = self.d_inner // heads
        self.chunk_size, self.dt_limit = chunk_size, tuple(dt_limit)
        self.conv_dim = self.d_inner + 2 * groups * d_state
        self.in_proj = nn.Linear(dim, self.d_inner + self.conv_dim + heads, bias=bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(init_dt_bias(heads, dt_min, dt_max, dt_floor))
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(*A_init_range).log())
        self.D = nn.Parameter(torch.ones(heads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // groups, norm_eps)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias)

    # -- the stages: inputs (per position, conv with left context) -> SSD per head -> output ----
    def _split(self, zxbcdt: torch.Tensor):
        """in_proj's output -> (z, xBC, dt)."""
        return zxbcdt.split([self.d_inner, self.conv_dim, self.heads], dim=-1)

    def ssm_inputs(self, x: torch.Tensor, pieces=WholeSequence):
        """x (batch, L, dim) -> (z (batch, L, d_inner), xBC after conv and silu, dt before softplus)."""
        z, xbc, dt = self._split(self.in_proj(x))
        return z, F.silu(conv_pieces(self.conv1d, xbc, pieces)), dt

    def _unpack(self, xbc: torch.Tensor):
        """xBC (batch, L, conv_dim) -> x' (batch, L, heads, P), B, C (batch, L, groups, N)."""
        xs, B, C = xbc.split([self.d_inner, self.groups * self.d_state, self.groups * self.d_state], dim=-1)
        return xs.unflatten(-1, (self.heads, self.P)), *(t.unflatten(-1, (self.groups, self.d_state)) for t in (B, C))

    def _dynamics(self, dt_raw: torch.Tensor, heads: slice):
        """dt (softplus, bias, clamp) and A of the selected heads."""
        dt = F.softplus(dt_raw + self.dt_bias[heads]).clamp(*self.dt_limit)
        return dt, -self.A_log[heads].exp()

    def _head_groups(self, B: torch.Tensor, C: torch.Tensor, heads: slice):
        """B, C (batch, L, groups, N) -> those of the selected heads (batch, L, h, N)."""
        index = torch.arange(self.heads, device=B.device)[heads] // (self.heads // self.groups)
        return B[:, :, index], C[:, :, index]

    def _ssd_heads(self, xs, dt_raw, B, C, heads: slice, initial_state=None):
        """The token mixing of ``heads``: x' (batch, L, h, P) -> (y (batch, L, h, P), final state)."""
        dt, A = self._dynamics(dt_raw, heads)
        B, C = self._head_groups(B, C, heads)
        y, state = ssd(xs, dt, A, B, C, chunk_size=self.chunk_size, initial_state=initial_state,
                       return_final_state=True)
        if not self.causal:  # the reversed scan of the bidirectional mode
            y = y + ssd(*(t.flip(1) for t in (xs, dt)), A, *(t.flip(1) for t in (B, C)),
                        chunk_size=self.chunk_size).flip(1)
        return y + self.D[heads, None] * xs, state

    def output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y (batch, L, heads, P), the gate z -> out_proj(norm(y * silu(z)))."""
        return self.out_proj(self.norm(y.flatten(2), z))

    # -- shuffle hooks: heads are the groups; B and C travel to every rank -------------------------

    def shuffle_groups(self) -> int:
        return self.heads

    def _shuffle_prepare(self, x, pieces):
        z, xbc, dt = self.ssm_inputs(x, pieces)
        xs, B, C = self._unpack(xbc)
        return torch.cat([xs, dt.unsqueeze(-1)], -1), torch.cat([B, C], -1).flatten(2), z

    def _shuffle_mix(self, streams, shared, groups):
        B, C = shared.unflatten(-1, (self.groups, 2 * self.d_state)).chunk(2, dim=-1)
        return self._ssd_heads(streams[..., :self.P], streams[..., self.P], B, C, groups)[0]

    def _shuffle_finish(self, mixed, ctx):
        return self.output(mixed, ctx)

    def _forward(self, x):
        return self._forward_by_groups(x)

    # -- step mode and state passing ---------------------------------------------------------------
    # The state: "ssm" (batch, heads, P, N) and "conv", the last d_conv - 1 conv inputs
    # (batch, d_conv - 1, conv_dim), pre-activation. Two stages as for mamba: a chunk's conv reads
    # the previous chunk's last rows, and its SSM summary needs them. The SSM summary is the
    # chunk's final state from zero and sum_t dt_t per head: the chunk's transition is
    # exp(A sum_t dt_t), one scalar per head.
    @property
    def state_stages(self) -> dict[str, tuple[str, ...]]:
        return {"conv": ("conv",), "ssm": ("ssm",)}

    def _init_state(self, batch_size, device, dtype):
        return {"ssm": torch.zeros(batch_size, self.heads, self.P, self.d_state, device=device, dtype=dtype),
                "conv": torch.zeros(batch_size, self.conv1d.kernel_size[0] - 1, self.conv_dim,
                                    device=device, dtype=dtype)}

    def _continued(self, x: torch.Tensor, conv_state: torch.Tensor):
        """ssm_inputs of a chunk that follows the conv inputs in ``conv_state``, and its raw conv inputs."""
        z, raw, dt = self._split(self.in_proj(x))
        window = torch.cat([conv_state.to(raw.dtype), raw], 1)
        return z, F.silu(conv_window(self.conv1d, window)), dt, raw

    def _forward_with_state(self, x, state):
        z, xbc, dt, raw = self._continued(x, state["conv"])
        xs, B, C = self._unpack(xbc)
        y, h = self._ssd_heads(xs, dt, B, C, slice(None), initial_state=state["ssm"].to(x.dtype))
        conv = shift_in(state["conv"], last_rows(raw, state["conv"].shape[1]), x.shape[1])
        return self.output(y, z), {"ssm": h.to(state["ssm"].dtype), "conv": conv}

    def _state_summary(self, x, state, stage):
        dtype, length = self.state_dtype(x.dtype), x.shape[1]
        if stage == "conv":  # in_proj is per position: project only the rows the next chunk reads
            rows = self.conv1d.kernel_size[0] - 1
            raw = self._split(self.in_proj(x[:, max(0, length - rows):]))[1]
            return {"conv": last_rows(raw, rows).to(dtype),
                    "length": torch.tensor(length, dtype=torch.int64, device=x.device)}
        if length == 0:
            return {"ssm": x.new_zeros(x.shape[0], self.heads, self.P, self.d_state, dtype=dtype),
                    "dt_sum": x.new_zeros(x.shape[0], self.heads, dtype=dtype)}
        if state is None or "conv" not in state:
            raise ValueError("Mamba2.state_summary: stage 'ssm' needs the incoming state's 'conv' part "
                             "(resolve stage 'conv' first)")
        _, xbc, dt_raw, _ = self._continued(x, state["conv"])
        xs, B, C = self._unpack(xbc)
        dt, A = self._dynamics(dt_raw, slice(None))
        h = ssd(xs, dt, A, B, C, chunk_size=self.chunk_size, return_final_state=True)[1]
        return {"ssm": h.to(dtype), "dt_sum": dt.sum(1).to(dtype)}

    def _chain_state(self, state, summary, stage):
        if stage == "conv":
            return {**state, "conv": shift_in(state["conv"], summary["conv"], int(summary["length"]))}
        h = state["ssm"]
        decay = torch.exp(summary["dt_sum"].to(h.dtype) * -self.A_log.exp().to(h.dtype))  # <= 1
        return {**state, "ssm": decay[..., None, None] * h + summary["ssm"].to(h.dtype)}

    # -- the literal path ------------------------------------------------------------------------
    def _matrix(self, xbc: torch.Tensor, dt_raw: torch.Tensor) -> torch.Tensor:
        """(batch, heads, L, L) with the SSD stage's y[:, :, h] == M[:, h] @ x'[:, :, h]."""
        _, B, C = self._unpack(xbc)
        dt, A = self._dynamics(dt_raw, slice(None))
        B, C = self._head_groups(B, C, slice(None))
        m = ssd_matrix(dt, A, B, C)
        if not self.causal:
            m = m + ssd_matrix(dt.flip(1), A, B.flip(1), C.flip(1)).flip(-1, -2)
        return m + self.D[:, None, None] * torch.eye(xbc.shape[1], dtype=m.dtype, device=m.device)

    def _reference(self, x):
        z, xbc, dt = self._split(self.in_proj(x))
        xbc = F.silu(conv_literal(self.conv1d, xbc))
        y = torch.einsum("bhts,bshp->bthp", self._matrix(xbc, dt), self._unpack(xbc)[0])
        return self.output(y, z)

    def _mixing_matrix(self, x):
        _, xbc, dt = self.ssm_inputs(x)
        return self._matrix(xbc, dt)
