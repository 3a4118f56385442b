"""The TokenMixer contract: every long-sequence model as X~ = P(X) over X of shape (L, D).

A mixer is an ``nn.Module`` with three views of the same operator:

* ``forward(x)``: the fast path users run, x of shape (batch, length, dim).
* ``reference(x)``: the family's formula transcribed literally, every L x L matrix
  (attention matrix, Toeplitz convolution matrix, DFT/Vandermonde matrices, SSM kernel
  matrix) materialized. In float64 it agrees with ``forward`` to < 1e-8 relative error.
* ``mixing_matrix(x)``: the token-mixing operator, shape (batch, groups, L, L), applied along
  the sequence per head or channel group.

Subclasses set the class attribute ``taxonomy`` and implement ``_forward``, ``_reference`` and
``_mixing_matrix``; the public methods validate the input first, so every mixer raises the same
clear errors. Every mixer also declares (the contract test checks each declaration):

* ``uses_heads``: whether ``heads`` changes what it computes. Per-channel mixers (SSMs, long
  convolutions, FNet, MLP-Mixer) accept ``heads`` and ignore it; reports record 1 for them.
* ``nonfinite_causal`` (mixers that can run causally): whether causality holds for NaN and inf
  too, i.e. a non-finite input at position s leaves every output before s finite and unchanged.
  In IEEE arithmetic 0 * NaN = NaN, so a kernel that multiplies masked-out (future) entries by
  zero, or an FFT that spreads every input over every output, breaks it; the ops guard against
  both where the cost is small.
* ``no_decay_patterns``: the parameters weight decay must not touch (SSM dynamics, implicit
  filters), as the reference implementations exclude them; see ``no_decay_parameter_names``.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import checks
from .forms import ShuffleHooks
from .memory_guard import check_literal_path_fits

FAMILIES = ("attention", "kernel", "sparse", "lowrank", "fourier", "convolution", "ssm", "mlp")


@dataclass(frozen=True)
class Taxonomy:
    """Where a mixer sits in the unified view."""

    family: str
    learned: bool  # are the mixing weights trained (vs. fixed, e.g. the DFT)?
    input_dependent: bool  # does the mixing matrix change with the input?
    causal: bool  # can it run causally (output t sees inputs <= t only)?
    time: str  # forward cost in L, e.g. "O(L log L)"
    memory: str  # activation memory in L, e.g. "O(L)"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")


def last_rows(t: torch.Tensor, count: int) -> torch.Tensor:
    """The last ``count`` rows of t (batch, L, ...) along dim 1, zero-padded in front if L < count:
    the fixed-size halo a chunk leaves for the next one (rows before it are never read)."""
    kept = t[:, max(0, t.shape[1] - count):]
    return torch.cat([kept.new_zeros(t.shape[0], count - kept.shape[1], *t.shape[2:]), kept], 1)


def shift_in(buffer: torch.Tensor, rows: torch.Tensor, length: int) -> torch.Tensor:
    """A rolling buffer (batch, W, ...) after a chunk of ``length`` rows whose ``last_rows(., W)``
    are ``rows``: the newest W rows of the buffer followed by the chunk."""
    width = buffer.shape[1]
    new = min(length, width)
    return torch.cat([buffer, rows[:, width - new:].to(buffer.dtype)], 1)[:, new:]


class TokenMixer(nn.Module):
    """Base class of all mixers. See the module docstring for the contract.

    Args:
        dim: model width D; the last dimension of the input.
        heads: number of heads / channel groups; must divide ``dim``.
        causal: if True, output position t depends only on inputs at positions <= t.
        max_len: the longest sequence accepted (required by mixers with length-sized weights).
    """

    taxonomy: ClassVar[Taxonomy]
    #: Mixers whose weights are sized by the sequence length (Linformer, MLP-Mixer) set this.
    requires_max_len: ClassVar[bool] = False
    #: Does ``heads`` change the computation? No default: every mixer must say.
    uses_heads: ClassVar[bool]
    #: Causal-capable mixers: does a NaN/inf at position s leave outputs before s untouched?
    #: No default: every mixer that can run causally must say.
    nonfinite_causal: ClassVar[bool]
    #: fnmatch patterns over ``named_parameters()`` names of parameters that take no weight decay.
    no_decay_patterns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None):
        super().__init__()
        name = type(self).__name__
        checks.check_int("dim", dim, owner=name)
        checks.check_int("heads", heads, owner=name)
        if dim % heads:
            raise ValueError(f"{name}: dim ({dim}) must be divisible by heads ({heads})")
        if causal and not self.taxonomy.causal:
            raise ValueError(f"{name}: causal=True is not supported: this {self.taxonomy.family} mixer "
                             "mixes every position with every other (use causal=False)")
        if max_len is not None:
            checks.check_int("max_len", max_len, owner=name)
        if self.requires_max_len and max_len is None:
            raise ValueError(f"{name}: max_len is required (its weights are sized by the sequence length)")
        self.dim, self.heads, self.causal, self.max_len = dim, heads, causal, max_len
        self.head_dim = dim // heads

    # -- public API: validate, then dispatch -------------------------------------------------
    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """x (batch, L, dim) -> (batch, L, dim). ``cu_seqlens`` (packed documents, batch 1; see
        :mod:`longmix.ops.documents`): each document is mixed alone, as if run by itself."""
        self.check_input(x)
        if cu_seqlens is not None:
            return self._forward_packed(x, self.check_packed(cu_seqlens, x))
        if x.shape[0] == 0:
            # An empty batch has an empty answer; answered here once because FFT and block
            # kernels reshape or divide by the batch size and fail on zero.
            return x.clone()
        return self._forward(x)

    # -- packed documents ------------------------------------------------------------------------
    def packed_refusal(self) -> str | None:
        """Why this mixer cannot mix packed documents, or None. Weights sized by the sequence
        length (Linformer's projections, MLP-Mixer's token MLP) are one operator for one length:
        a shorter document would get a truncated operator it was never trained as."""
        if self.requires_max_len:
            return (f"its weights are sized by the sequence length (max_len={self.max_len}), so "
                    "it has no operator for a document of another length")
        return None

    def check_packed(self, cu_seqlens, x: torch.Tensor) -> tuple[int, ...]:
        """Validate ``cu_seqlens`` for x and that this mixer can mix packed documents; return
        the document bounds as a tuple."""
        from ..ops.documents import check_cu_seqlens

        name = type(self).__name__
        reason = self.packed_refusal()
        if reason is not None:
            raise ValueError(f"{name}: cu_seqlens (packed documents) is not supported: {reason}")
        return check_cu_seqlens(cu_seqlens, x.shape[1], batch=x.shape[0], owner=name)

    def _forward_packed(self, x: torch.Tensor, bounds: tuple[int, ...]) -> torch.Tensor:
        """The definition, for any mixer: each document through ``_forward`` alone, concatenated.
        It costs what the documents cost apart (less than the packed length for a quadratic or
        FFT mixer), plus one kernel launch per document."""
        from ..ops.documents import by_documents

        return by_documents(self._forward, bounds, x)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The literal formula with every L x L matrix materialized (slow; for tests and teaching).
        Refused (:class:`~longmix.mixers.memory_guard.LiteralPathTooLarge`) if it cannot fit."""
        self.check_input(x)
        check_literal_path_fits(self, x, "reference")
        return self._reference(x)

    def mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """The token-mixing operator (batch, groups, L, L) that this mixer applies to ``x``.
        Refused (:class:`~longmix.mixers.memory_guard.LiteralPathTooLarge`) if it cannot fit."""
        self.check_input(x)
        check_literal_path_fits(self, x, "mixing_matrix")
        return self._mixing_matrix(x)

    def no_decay_parameter_names(self) -> list[str]:
        """Names (as in this mixer's ``named_parameters()``) of the parameters weight decay must
        not touch: the ones matching ``no_decay_patterns``. Decay pulls them toward 0, which for
        log-parameterized dynamics (log dt, log -A) is an arbitrary point (dt = 1, A = -1), not a
        simpler model. Biases, norms and embeddings are the model's rule, not listed here."""
        return [name for name, _ in self.named_parameters()
                if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.no_decay_patterns)]

    def check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            # Integer or bool input would be silently cast (or truncated) by the projections and
            # FFTs; token ids belong to an embedding before any mixer.
            raise ValueError(f"{name}: x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 3:
            raise ValueError(f"{name}: x must have shape (batch, length, dim={self.dim}), "
                             f"got rank {x.dim()} with shape {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"{name}: x's last dim must be dim={self.dim}, got shape {tuple(x.shape)}")
        if x.shape[1] < 1:
            raise ValueError(f"{name}: x must have length >= 1, got shape {tuple(x.shape)}")
        if self.max_len is not None and x.shape[1] > self.max_len:
            raise ValueError(f"{name}: x's length {x.shape[1]} exceeds max_len={self.max_len}")

    # -- parallel forms: which sequence-parallel forms this instance admits ------------------
    # A mixer admits a form by implementing its hooks (a mixin of ``longmix.mixers.forms``);
    # ``_supports_form`` may narrow that by the instance's options.
    @property
    def parallel_forms(self) -> tuple[str, ...]:
        """Names of the exact sequence-parallel forms this instance supports, in preference order:
        "shuffle" (all-to-all to head/channel shards), "state" (state passing; causal mixers with a
        fixed-size state), "ring" (K/V ring)."""
        from .forms import FORM_HOOKS

        return tuple(name for name, hooks in FORM_HOOKS
                     if isinstance(self, hooks) and self._supports_form(name))

    def _supports_form(self, form: str) -> bool:
        """Whether the instance's options allow a form whose hooks its class implements. State
        passing needs the step mode, so a causal instance."""
        return self._has_step_mode() if form == "state" else True

    # -- recurrent step mode and state passing --------------------------------------------------
    # A causal mixer is also a recurrence: a state summarizes the prefix it has read. Three uses
    # of that one state (fla's ``initial_state`` / ``output_final_state`` convention):
    #   * ``step(x_t, state)``: decoding, one token at a time;
    #   * ``forward_with_state(x, state)``: the exact continuation of a sequence from its state;
    #   * state passing: ``state_summary`` (what a chunk does to the state, from the chunk alone)
    #     and ``chain_state`` (apply that to an incoming state) let ranks holding consecutive
    #     chunks find their incoming states from one all-gather of fixed-size summaries.
    # States are dicts of tensors. Recurrent sums are kept in float32 or wider (``state_dtype``):
    # folding many summaries in half precision loses accuracy as the number of chunks grows.

    @staticmethod
    def state_dtype(dtype: torch.dtype) -> torch.dtype:
        """The dtype states are kept in for inputs of ``dtype``: at least float32."""
        return torch.promote_types(dtype, torch.float32)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> dict:
        """The state before any token: a dict of tensors for ``batch_size`` sequences.

        ``device`` and ``dtype`` default to those of the mixer's parameters; the state itself is
        kept in ``state_dtype(dtype)``."""
        self._require_step_mode("init_state")
        checks.check_int("batch_size", batch_size, owner=type(self).__name__)
        reference = next(iter(self.parameters()), None)
        device = (reference.device if reference is not None else torch.device("cpu")) if device is None else device
        dtype = (reference.dtype if reference is not None else torch.get_default_dtype()) if dtype is None else dtype
        return self._init_state(batch_size, torch.device(device), self.state_dtype(dtype))

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token: x_t (batch, dim) -> (y_t (batch, dim), the state after it)."""
        self._require_step_mode("step")
        name = type(self).__name__
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2 or x_t.shape[-1] != self.dim:
            raise ValueError(f"{name}: x_t must have shape (batch, dim={self.dim}), got "
                             f"{tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__}")
        y, state = self.forward_with_state(x_t.unsqueeze(1), state)
        return y.squeeze(1), state

    def forward_with_state(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """Continue the sequence whose state is ``state`` by x (batch, L, dim), L >= 0.

        Returns (y (batch, L, dim), the state after x): the rows ``forward`` would give for x's
        positions on the whole sequence, and the state to continue from."""
        self._require_step_mode("forward_with_state")
        self._check_chunk(x)
        self._check_state(state, x.shape[0])
        if x.shape[1] == 0:
            return x, dict(state)
        return self._forward_with_state(x, state)

    # state passing's entries (the hooks they call are ``forms.StateHooks``) --------------------
    def state_summary(self, x: torch.Tensor, state: dict | None = None, stage: str | None = None) -> dict:
        """What the chunk x (batch, L, dim), L >= 0, does to the state parts of ``stage``.

        Computed from x alone (and, for a later stage, the incoming state's parts of earlier
        stages, passed in ``state``); its size does not depend on L. Default stage: the first."""
        self.check_state_form("state_summary")
        self._check_chunk(x)
        return self._state_summary(x, state, self._stage(stage))

    def chain_state(self, state: dict, summary: dict, stage: str | None = None) -> dict:
        """The state after a chunk, given the state before it and the chunk's ``state_summary``
        (only the parts of ``stage`` change)."""
        self.check_state_form("chain_state")
        return self._chain_state(state, summary, self._stage(stage))

    # checks of the state API -------------------------------------------------------------------
    def _has_step_mode(self) -> bool:
        return self.causal and type(self)._forward_with_state is not TokenMixer._forward_with_state

    def _require_step_mode(self, what: str) -> None:
        if self._has_step_mode():
            return
        name = type(self).__name__
        if not self.causal:
            raise ValueError(f"{name}.{what}: no step mode for causal=False: output t depends on "
                             "later inputs, so no state of the prefix determines it")
        raise ValueError(f"{name}.{what}: this mixer has no recurrent (step) form")

    def check_state_form(self, caller: str) -> None:
        """Raise a ValueError naming this mixer, ``caller`` and the reason, unless the instance
        can run by state passing (``"state" in parallel_forms``)."""
        if "state" in self.parallel_forms:
            return
        if not self.causal:
            reason = "it is not causal (causal=False)"
        elif not self._has_step_mode():
            reason = "it has no recurrent (step) form"
        else:
            reason = "its state grows with the sequence (no fixed-size summary)"
        raise ValueError(f"{type(self).__name__}.{caller}: no state-passing form: {reason}")

    def _check_chunk(self, x: torch.Tensor) -> None:
        """check_input, except that a chunk may be empty (a rank can hold no rows)."""
        if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[1] == 0:
            if x.shape[-1] != self.dim:
                raise ValueError(f"{type(self).__name__}: x's last dim must be dim={self.dim}, "
                                 f"got shape {tuple(x.shape)}")
            return
        self.check_input(x)

    def _check_state(self, state: dict, batch: int) -> None:
        name = type(self).__name__
        if not isinstance(state, dict):
            raise ValueError(f"{name}: state must be a dict from init_state/step/forward_with_state, "
                             f"got {type(state).__name__}")
        expected = set(self._init_state(1, torch.device("meta"), torch.float32))
        if set(state) != expected:
            raise ValueError(f"{name}: state must have keys {sorted(expected)}, got {sorted(state)}")
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name}: state[{key!r}] must be a tensor, got {type(value).__name__}")
            if value.dim() > 0 and value.shape[0] != batch:
                raise ValueError(f"{name}: state[{key!r}] is for batch {value.shape[0]}, x has batch {batch}")

    # -- to implement for step mode (state passing: ``forms.StateHooks``) -------------------------
    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        raise NotImplementedError

    def _forward_with_state(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, causal={self.causal}, max_len={self.max_len}"

    # -- to implement ------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define a mixing matrix")


class ChannelMixer(ShuffleHooks, TokenMixer):
    """Base class of a mixer whose sequence mixing is independent per channel, one value in and
    one out (long convolutions, S4D, the token-mixing MLP): every channel is a shuffle group, so
    the forward and the shuffle form both come from one hook, :meth:`_mix_channels`."""


    def _mix_channels(self, u: torch.Tensor, groups: slice) -> torch.Tensor:
        """The sequence mixing of the channels ``groups`` over the whole length: u (batch, L, g)
        -> (batch, L, g)."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_by_groups(x)

    def shuffle_groups(self) -> int:
        return self.dim

    def _shuffle_prepare(self, x, pieces):
        return x.unsqueeze(-1), None, None

    def _shuffle_mix(self, streams, shared, groups):
        return self._mix_channels(streams[..., 0], groups)[..., None]

    def _shuffle_finish(self, mixed, ctx):
        return mixed[..., 0]
