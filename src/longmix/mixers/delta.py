"""kernel family: Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024), the gated delta rule.

Why the kernel family and not a new one: a kernel mixer is attention whose weights factor
through a fixed-size state S = sum_s k_s v_s^T read out by q_t (linear attention). Gated DeltaNet
keeps exactly that state and read-out, o_t = S_t^T q_t; what changes is the transition between
positions: S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T instead of
S_t = S_{t-1} + k_t v_t^T. Its mixing matrix (:mod:`longmix.ops.delta_rule`) is the masked
Q K^T of linear attention times the inverse of a unit lower-triangular matrix built from K K^T:
still built from query-key products through a K x V state, so the unified view needs no new
family, only a transition (Mamba-2's SSD, in the ssm family, is the other side of that bridge:
a scalar transition, the same masked Q K^T).

The layer is Qwen3-Next's (transformers' ``Qwen3NextGatedDeltaNet``, fla's ``GatedDeltaNet``):
the projections keep Qwen3-Next's layout (or Qwen3.5's, ``projections="separate"``) so that
``longmix.hf`` maps those modules onto it with their parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int
from ..ops.delta_rule import default_chunk_size, gated_delta_rule, gated_delta_rule_matrix
from .base import Taxonomy, TokenMixer, last_rows, shift_in
from .conv_stage import conv_literal, conv_pieces, conv_window
from .forms import ShuffleHooks, StateHooks, WholeSequence
from .registry import register
from .ssd import check_dt_init, init_dt_bias

#: Layouts of the input projections (see GatedDeltaNet's ``projections``).
PROJECTIONS = ("grouped", "separate")


def l2_normalize(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """t / sqrt(|t|^2 + eps) over the last dim (fla's and transformers' ``l2norm``)."""
    return t * torch.rsqrt(t.square().sum(-1, keepdim=True) + eps)


class NormThenGate(nn.Module):
    """Gated DeltaNet's output norm per head: RMSNorm(o) * weight * silu(z) (transformers'
    ``Qwen3NextRMSNormGated``; Mamba-2's norm gates first)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, o: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        normed = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + self.eps)
        return self.weight * normed * F.silu(z)


@register("gated_deltanet")
class GatedDeltaNet(ShuffleHooks, StateHooks, TokenMixer):
    """Gated DeltaNet's layer, x (batch, L, dim) -> (batch, L, dim):

        q, k, v, z = in_proj_qkvz(x);  b, a = in_proj_ba(x);  q, k, v = silu(causal conv(q, k, v))
        q, k = l2_normalize(q), l2_normalize(k);  beta = sigmoid(b);  g = -exp(A_log) softplus(a + dt_bias)
        o = gated delta rule(q, k, v, g, beta) per head;  out = out_proj(RMSNorm(o) * silu(z))

    ``heads`` value heads of ``head_v_dim``; ``key_heads`` query/key heads of ``head_k_dim``, each
    serving heads / key_heads consecutive value heads (Qwen3-Next's grouped value heads). The fast
    path is the chunked WY/UT form (:func:`~longmix.ops.delta_rule.gated_delta_rule`); the literal
    path materializes the conv's Toeplitz matrices and each head's (L, L) operator by solving
    its unit triangular system.

    ``mixing_matrix(x)`` is (batch, heads, L, L), the operator each value head applies to its
    values: o = M v (q, k, beta, g fixed by x); the projections, conv and norm are not in it.

    ``causal=False`` is bidirectional: a second pass of the same recurrence over the reversed
    sequence, with the same q, k, v, beta and g, added to the first (the diagonal is read by
    both, as longmix's bidirectional ``mamba`` and ``mamba2``). The conv stays causal.

    Args:
        key_heads: query/key heads; divides heads (default heads).
        head_k_dim, head_v_dim: per-head dims (default dim // heads).
        d_conv: width of the causal depthwise conv over (q, k, v).
        chunk_size: positions per chunk of the delta rule (default by head_k_dim:
            :func:`~longmix.ops.delta_rule.default_chunk_size`, measured); the output does not depend on it.
        dt_min, dt_max, dt_floor, A_init_range: initial step sizes and decay rates, as Mamba-2.
        norm_eps: epsilon of the output RMSNorm.
        projections: the input projections' layout, "grouped" (Qwen3-Next: in_proj_qkvz and
            in_proj_ba, grouped per key head) or "separate" (Qwen3.5: in_proj_qkv, in_proj_z,
            in_proj_b, in_proj_a); the same operator, two parameter layouts, so that either
            model's layers map with their parameters shared.
    """

    taxonomy = Taxonomy(family="kernel", learned=True, input_dependent=True, causal=True,
                        time="O(L)", memory="O(L)")
    uses_heads = True
    nonfinite_causal = True  # the conv and the delta rule carry position s only to later positions
    no_decay_patterns = ("A_log", "dt_bias", "norm.weight")  # fla's GatedDeltaNet: A_log, dt_bias

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 key_heads: int | None = None, head_k_dim: int | None = None, head_v_dim: int | None = None,
                 d_conv: int = 4, chunk_size: int | None = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_floor: float = 1e-4, A_init_range: tuple[float, float] = (0.01, 16), norm_eps: float = 1e-6,
                 projections: str = "grouped"):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len)
        key_heads = heads if key_heads is None else key_heads
        head_k_dim = dim // heads if head_k_dim is None else head_k_dim
        head_v_dim = dim // heads if head_v_dim is None else head_v_dim
        for label, value in (("key_heads", key_heads), ("head_k_dim", head_k_dim), ("head_v_dim", head_v_dim),
                             ("d_conv", d_conv)):
            check_int(label, value, owner="GatedDeltaNet")
        chunk_size = default_chunk_size(head_k_dim) if chunk_size is None else chunk_size
        check_int("chunk_size", chunk_size, owner="GatedDeltaNet")
        if heads % key_heads:
            raise ValueError(f"GatedDeltaNet: key_heads ({key_heads}) must divide heads ({heads})")
        check_dt_init("GatedDeltaNet", dt_min, dt_max, A_init_range)
        self.key_heads, self.dk, self.dv = key_heads, head_k_dim, head_v_dim
        self.per_key = heads // key_heads  # value heads per query/key head
        self.key_dim, self.value_dim = key_heads * head_k_dim, heads * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.chunk_size = chunk_size
        if projections not in PROJECTIONS:
            raise ValueError(f"GatedDeltaNet: projections must be one of {PROJECTIONS}, got {projections!r}")
        self.projections = projections
        if projections == "grouped":
            self.in_proj_qkvz = nn.Linear(dim, 2 * self.key_dim + 2 * self.value_dim, bias=False)
            self.in_proj_ba = nn.Linear(dim, 2 * heads, bias=False)
        else:
            self.in_proj_qkv = nn.Linear(dim, self.conv_dim, bias=False)
            self.in_proj_z = nn.Linear(dim, self.value_dim, bias=False)
            self.in_proj_b = nn.Linear(dim, heads, bias=False)
            self.in_proj_a = nn.Linear(dim, heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=False)
        self.dt_bias = nn.Parameter(init_dt_bias(heads, dt_min, dt_max, dt_floor))
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(*A_init_range).log())
        self.norm = NormThenGate(head_v_dim, norm_eps)
        self.out_proj = nn.Linear(self.value_dim, dim, bias=False)

    # -- the stages --------------------------------------------------------------------------------
    def _projections(self, x: torch.Tensor):
        """x -> (raw conv inputs [q, k, v] (batch, L, conv_dim), z (batch, L, heads, dv), b, a
        (batch, L, heads)). "grouped": Qwen3-Next's layout, per query/key head [q, k, its v's,
        its z's] and [its b's, its a's]; "separate": Qwen3.5's, one projection each."""
        if self.projections == "separate":
            z = self.in_proj_z(x).unflatten(-1, (self.heads, self.dv))
            return self.in_proj_qkv(x), z, self.in_proj_b(x), self.in_proj_a(x)
        r = self.per_key
        qkvz = self.in_proj_qkvz(x).unflatten(-1, (self.key_heads, -1))
        q, k, v, z = qkvz.split([self.dk, self.dk, r * self.dv, r * self.dv], dim=-1)
        b, a = self.in_proj_ba(x).unflatten(-1, (self.key_heads, 2 * r)).split([r, r], dim=-1)
        raw = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], -1)
        return raw, z.reshape(*z.shape[:2], self.heads, self.dv), b.flatten(2), a.flatten(2)

    def _streams(self, conv_out: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """After the conv: per query/key head [q (dk), k (dk), v (r dv), b (r), a (r)],
        (batch, L, key_heads, F): what one shuffle group reads."""
        q, k, v = F.silu(conv_out).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        parts = (q, k, v, b, a)
        return torch.cat([t.unflatten(-1, (self.key_heads, -1)) for t in parts], -1)

    def _unpack(self, streams: torch.Tensor, groups: slice):
        """Streams of the query/key heads ``groups`` -> q, k, v (batch, L, h, .) per value head, g, beta."""
        r = self.per_key
        q, k, v, b, a = streams.split([self.dk, self.dk, r * self.dv, r, r], dim=-1)
        heads = torch.arange(self.heads, device=streams.device).view(self.key_heads, r)[groups].flatten()
        q, k = (l2_normalize(t).repeat_interleave(r, dim=2) for t in (q, k))
        g = -self.A_log[heads].exp() * F.softplus(a.flatten(2) + self.dt_bias[heads])
        return q, k, v.unflatten(-1, (r, self.dv)).flatten(2, 3), g, b.flatten(2).sigmoid()

    def _delta_rule(self, streams, groups: slice, initial_state=None):
        """The token mixing of ``groups``: -> (o (batch, L, h, dv), final state)."""
        q, k, v, g, beta = self._unpack(streams, groups)
        o, state = gated_delta_rule(q, k, v, g, beta, chunk_size=self.chunk_size, initial_state=initial_state,
                                    return_final_state=True)
        if not self.causal:  # the reversed pass of the bidirectional mode
            o = o + gated_delta_rule(*(t.flip(1) for t in (q, k, v, g, beta)), chunk_size=self.chunk_size).flip(1)
        return o, state

    def output(self, o: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """o, z (batch, L, heads, dv) -> out_proj(RMSNorm(o) * silu(z))."""
        return self.out_proj(self.norm(o, z).flatten(2))

    # -- shuffle hooks: query/key heads (with their value heads) are the groups -----------------

    def shuffle_groups(self) -> int:
        return self.key_heads

    def _shuffle_prepare(self, x, pieces):
        raw, z, b, a = self._projections(x)
        return self._streams(conv_pieces(self.conv1d, raw, pieces), b, a), None, z

    def _shuffle_mix(self, streams, shared, groups):
        o = self._delta_rule(streams, groups)[0]
        return o.unflatten(2, (-1, self.per_key)).flatten(3)  # (batch, L, key heads, r dv)

    def _shuffle_finish(self, mixed, ctx):
        return self.output(mixed.reshape(*mixed.shape[:2], self.heads, self.dv), ctx)

    def _forward(self, x):
        return self._forward_by_groups(x)

    # -- step mode and state passing ---------------------------------------------------------------
    # The state: "recurrent" S (batch, heads, dk, dv) and "conv", the last d_conv - 1 conv inputs
    # (batch, d_conv - 1, conv_dim), pre-activation; two stages, as for mamba. A chunk moves the
    # state to T S + S0, with S0 its final state from zero and T (dk, dk) per head the product of
    # its transitions exp(g_t) (I - beta_t k_t k_t^T): fixed in size, input dependent. Both come
    # from one pass of the delta rule with the values extended by zeros and the initial state
    # [0 | I] (the state is linear in its initial value).
    @property
    def state_stages(self) -> dict[str, tuple[str, ...]]:
        return {"conv": ("conv",), "recurrent": ("recurrent",)}

    def _init_state(self, batch_size, device, dtype):
        return {"recurrent": torch.zeros(batch_size, self.heads, self.dk, self.dv, device=device, dtype=dtype),
                "conv": torch.zeros(batch_size, self.conv1d.kernel_size[0] - 1, self.conv_dim,
                                    device=device, dtype=dtype)}

    def _continued(self, x: torch.Tensor, conv_state: torch.Tensor):
        """The streams of a chunk that follows the conv inputs in ``conv_state``, z and its raw conv inputs."""
        raw, z, b, a = self._projections(x)
        window = torch.cat([conv_state.to(raw.dtype), raw], 1)
        return self._streams(conv_window(self.conv1d, window), b, a), z, raw

    def _forward_with_state(self, x, state):
        streams, z, raw = self._continued(x, state["conv"])
        o, s = self._delta_rule(streams, slice(None), initial_state=state["recurrent"].to(x.dtype))
        conv = shift_in(state["conv"], last_rows(raw, state["conv"].shape[1]), x.shape[1])
        return self.output(o, z), {"recurrent": s.to(state["recurrent"].dtype), "conv": conv}

    def _state_summary(self, x, state, stage):
        dtype, length, batch = self.state_dtype(x.dtype), x.shape[1], x.shape[0]
        if stage == "conv":  # the projections are per position: only the rows the next chunk reads
            rows = self.conv1d.kernel_size[0] - 1
            raw = self._projections(x[:, max(0, length - rows):])[0]
            return {"conv": last_rows(raw, rows).to(dtype),
                    "length": torch.tensor(length, dtype=torch.int64, device=x.device)}
        eye = torch.eye(self.dk, dtype=dtype, device=x.device).expand(batch, self.heads, -1, -1)
        if length == 0:
            return {"recurrent": x.new_zeros(batch, self.heads, self.dk, self.dv, dtype=dtype),
                    "transition": eye.clone()}
        if state is None or "conv" not in state:
            raise ValueError("GatedDeltaNet.state_summary: stage 'recurrent' needs the incoming state's "
                             "'conv' part (resolve stage 'conv' first)")
        q, k, v, g, beta = self._unpack(self._continued(x, state["conv"])[0], slice(None))
        extended = torch.cat([v, v.new_zeros(*v.shape[:3], self.dk)], -1)
        start = torch.cat([torch.zeros_like(eye[..., :1, :]).expand(-1, -1, self.dk, self.dv), eye], -1)
        final = gated_delta_rule(q, k, extended, g, beta, chunk_size=self.chunk_size,
                                 initial_state=start.to(x.dtype), return_final_state=True)[1]
        return {"recurrent": final[..., :self.dv].to(dtype), "transition": final[..., self.dv:].to(dtype)}

    def _chain_state(self, state, summary, stage):
        if stage == "conv":
            return {**state, "conv": shift_in(state["conv"], summary["conv"], int(summary["length"]))}
        s = state["recurrent"]
        return {**state, "recurrent": summary["transition"].to(s.dtype) @ s + summary["recurrent"].to(s.dtype)}

    # -- the literal path ------------------------------------------------------------------------
    def _matrix(self, streams: torch.Tensor) -> torch.Tensor:
        """(batch, heads, L, L) with the delta rule's o[:, :, h] == M[:, h] @ v[:, :, h]."""
        q, k, _, g, beta = self._unpack(streams, slice(None))
        m = gated_delta_rule_matrix(q, k, g, beta)
        if not self.causal:
            m = m + gated_delta_rule_matrix(*(t.flip(1) for t in (q, k, g, beta))).flip(-1, -2)
        return m

    def _reference(self, x):
        raw, z, b, a = self._projections(x)
        streams = self._streams(conv_literal(self.conv1d, raw), b, a)
        v = self._unpack(streams, slice(None))[2]
        return self.output(torch.einsum("bhts,bshv->bthv", self._matrix(streams), v), z)

    def _mixing_matrix(self, x):
        raw, _, b, a = self._projections(x)
        return self._matrix(self._streams(conv_pieces(self.conv1d, raw, WholeSequence), b, a))
