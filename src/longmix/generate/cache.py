"""What decoding keeps per mixer layer after a sharded prefill, and how one new token goes through it.

Two kinds of layers (:func:`decode_kind`):

* ``"kv"``, softmax attention: the cache grows with the sequence, so it stays sharded. Each rank
  keeps the keys and values of its own prefill rows, with their global positions, never the
  whole cache. A new token's query is scored against every rank's shard (``attention_with_lse``
  locally; every cached key precedes the query, so no mask), and the ranks' partial results are
  merged on the log-sum-exp (one all-gather of (out, lse) per layer and token). New keys go to
  the rank holding the fewest rows (:func:`decode_owners`), so the shards stay balanced. With a
  window only the keys a later query can read are kept: positions > t - window.
* ``"state"``, mixers with a fixed-size state (linear, performer, s4d, mamba, local): the state
  after the whole prompt, *replicated* on every rank. State passing's all-gather already gives
  every rank every chunk's summary, so each rank folds them all at no extra communication; the
  state is a few KB whatever L, and with it on every rank the decode step of these layers needs
  no communication at all (every rank runs the new token's row anyway).

* ``"history"``, longconv: a long filter has no fixed-size state; a new output is
  sum_s h(t - s) u_s over every input so far. The inputs stay sharded like softmax's keys (each
  rank its own prompt rows, new rows to the emptiest rank), with the filter evaluated only at
  the lags those rows will need (``ImplicitFilter.at``): each rank sums its rows' terms and one
  all-gather of the (batch, dim) partial sums per layer and token adds them up, in rank order.

Hyena puts the long convolution behind a short one and gates: its history rows are x1 * v,
which each rank computes for its own rows from the short convolution's halo (the ``taps``
in_proj rows before each piece, from the ranks holding them), and the short convolution's last
inputs at the prompt's end travel from the last rank to every rank (a broadcast).
"""
from __future__ import annotations


import torch

from ..mixers.attention import SoftmaxAttention
from ..mixers.conv import Hyena, LongConv
from ..ops.attention import attention_with_lse, merge_partials
from ..parallel.forms.collectives import all_gather_tensors
from ..parallel.layout import resolve_group

KINDS = ("kv", "state", "history")


def decode_kind(mixer) -> str:
    """``"kv"``, ``"state"`` or ``"history"``; ValueError naming the mixer and the reason when
    it cannot be decoded after a sharded prefill."""
    name = getattr(mixer, "name", type(mixer).__name__)
    if not getattr(mixer, "causal", False):
        raise ValueError(f"generate: mixer {name!r} is not causal: it cannot generate")
    if isinstance(mixer, SoftmaxAttention):
        return "kv"
    if "state" in mixer.parallel_forms:
        return "state"
    if isinstance(mixer, (LongConv, Hyena)):
        return "history"
    raise ValueError(f"generate: mixer {name!r} is not supported: it has no fixed-size state and "
                     "no sharded cache form here. Supported: softmax, longconv, hyena and the "
                     "fixed-state mixers (linear, performer, s4d, mamba, local)")


def decode_owners(lengths: list[int], steps: int) -> list[int]:
    """The rank that keeps the key of each of ``steps`` decoded tokens: the one holding the
    fewest rows so far (the lowest on ties), starting from the prefill's ``lengths`` per rank.
    Every rank computes the same list, so no rank has to announce where a key went."""
    counts = list(lengths)
    owners = []
    for _ in range(steps):
        owner = min(range(len(counts)), key=lambda r: (counts[r], r))
        counts[owner] += 1
        owners.append(owner)
    return owners


def kept_positions(positions: torch.Tensor, prompt_len: int, window: int | None) -> torch.Tensor:
    """Mask of the prefill rows (by global position) a decode query can still read: every row
    without a window, the last ``window - 1`` positions of the prompt with one."""
    if window is None:
        return torch.ones_like(positions, dtype=torch.bool)
    return positions > prompt_len - window


def kv_capacity(kept: int, appended: int, window: int | None) -> int:
    """Rows a rank's KV buffer holds: its kept prefill rows and every key it will be given, or
    with a window at most ``window`` of the new ones (older ones are evicted, then compacted)."""
    return kept + (appended if window is None else min(appended, window))


class ShardedKVCache:
    """This rank's shard of one softmax layer's KV cache. Rows [start, end) of the buffers are
    live, in increasing global position (prefill rows in local order, then decoded ones).

    The cache holds projected keys and values (batch, rows, kv_heads, head_dim) and attends a
    projected query (:meth:`attend`); a longmix softmax layer projects and merges heads around it
    (:meth:`step`, ``mixer`` set), a transformers attention layer hands it its own rotated q, k, v
    (``longmix.generate.hf``)."""

    kind = "kv"

    def __init__(self, k, v, positions, owners: list[int], group, window: int | None,
                 scale: float | None, mixer=None):
        self.mixer, self.group, self.window, self.scale = mixer, group, window, scale
        _, self.world, self.rank = resolve_group(group)
        self.owners = owners  # owners[i]: the rank keeping the key of decoded token i
        appended = sum(1 for r in owners if r == self.rank)
        capacity = kv_capacity(k.shape[1], appended, window)
        batch, _, heads, head_dim = k.shape
        self.k = k.new_empty(batch, capacity, heads, head_dim)
        self.v = v.new_empty(batch, capacity, heads, v.shape[-1])
        self.positions = torch.empty(capacity, dtype=torch.long, device=k.device)
        n = k.shape[1]
        self.k[:, :n], self.v[:, :n], self.positions[:n] = k, v, positions
        self.start, self.end, self.steps = 0, n, 0

    @classmethod
    def from_rows(cls, k, v, positions, prompt_len, lengths, steps, group, window, scale,
                  mixer=None):
        """The cache of this rank's prefill keys and values k, v (batch, local_len, kv_heads,
        head_dim) at global ``positions``, keeping only the rows a later query can read;
        ``lengths``: every rank's row count; ``steps``: the tokens decoding will feed back."""
        positions = positions.to(k.device)
        if window is not None:  # a boolean index copies: only where rows are dropped
            keep = kept_positions(positions, prompt_len, window)
            k, v, positions = k[:, keep], v[:, keep], positions[keep]
        return cls(k, v, positions, decode_owners(lengths, steps), group, window, scale, mixer)

    @classmethod
    def from_prefill(cls, mixer, x_local, positions, prompt_len, lengths, steps, group):
        """The cache of the rows x_local (batch, local_len, dim), the normalized mixer input of
        this rank's prefill rows at global ``positions``; ``lengths``: every rank's row count."""
        # per row: recomputing them costs no communication; without q, which would be L/P x dim
        # more at the prefill's peak
        k, v = mixer._kv(x_local)
        return cls.from_rows(k, v, positions, prompt_len, lengths, steps, group, mixer.window,
                             mixer.scale, mixer)

    def _append(self, k, v, position: int) -> None:
        if self.end == self.k.shape[1]:  # full: move the live rows to the front (window only)
            live = self.end - self.start
            for buf in (self.k, self.v):
                buf[:, :live] = buf[:, self.start:self.end].clone()
            self.positions[:live] = self.positions[self.start:self.end].clone()
            self.start, self.end = 0, live
        self.k[:, self.end], self.v[:, self.end] = k[:, 0], v[:, 0]
        self.positions[self.end] = position
        self.end += 1

    def attend(self, q, k, v, position: int) -> torch.Tensor:
        """q (batch, 1, heads, head_dim), k, v (batch, 1, kv_heads, head_dim): the new token's
        projections at global ``position`` -> attention over every rank's cache (batch, 1, heads,
        head_dim), the same on every rank: the local shard's (out, lse), all-gathered and merged
        on the log-sum-exp (every cached key precedes the query, so no mask)."""
        if self.owners[self.steps] == self.rank:
            self._append(k, v, position)
        self.steps += 1
        if self.window is not None:  # keys the query at `position` no longer reads never return
            first = position - self.window + 1
            self.start += int((self.positions[self.start:self.end] < first).sum())
        keys, values = self.k[:, self.start:self.end], self.v[:, self.start:self.end]
        out, lse = attention_with_lse(q, keys, values, causal=False, scale=self.scale)
        if self.world > 1:
            parts = all_gather_tensors([out, lse], self.group)
            out, lse = merge_partials([p[0] for p in parts], [p[1] for p in parts])
        return out

    def step(self, x_t: torch.Tensor, position: int) -> torch.Tensor:
        """x_t (batch, 1, dim): the new token's normalized input at global ``position`` ->
        the longmix layer's output (batch, 1, dim), the same on every rank."""
        q, k, v = self.mixer._qkv(x_t)
        return self.mixer._merge(self.attend(q, k, v, position))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.positions))


class StateCache:
    """A fixed-size state after the prompt, the same on every rank; decoding steps it locally."""

    kind = "state"

    def __init__(self, mixer, state: dict):
        self.mixer, self.state = mixer, state

    def step(self, x_t: torch.Tensor, position: int) -> torch.Tensor:
        y, self.state = self.mixer.forward_with_state(x_t, self.state)
        return y

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


def expected_cache_bytes(model, prompt_len: int, max_new_tokens: int, world: int, rank: int,
                         layout: str = "contiguous", batch: int = 1,
                         dtype: torch.dtype | None = None) -> int:
    """The bytes one rank's caches hold after the prefill of a ``prompt_len`` prompt, from the
    layout alone: the formula :func:`longmix.generate.generate` is tested against.

    Softmax layer: rows x (batch x 2 x heads x head_dim x itemsize + 8) (keys, values, int64
    position),
    rows = this rank's prefill rows (or, with a window, those after position L - window) + the
    decoded keys it will keep (:func:`decode_owners`; at most ``window`` with a window): about
    (L + N) / P. State layer: its fixed state, whatever L. ``model``: a longmix
    ``SequenceModel`` or a transformers causal LM (its attention layers: kv heads x head_dim)."""
    from ..parallel.layout import all_segments

    dtype = next(model.parameters()).dtype if dtype is None else dtype
    segments = all_segments(prompt_len, world, layout)
    lengths = [sum(n for _, n in s) for s in segments]
    mine = torch.cat([torch.arange(s, s + n) for s, n in segments[rank]]) if segments[rank] \
        else torch.zeros(0, dtype=torch.long)
    appended = decode_owners(lengths, max(0, max_new_tokens - 1)).count(rank)
    itemsize = torch.tensor([], dtype=dtype).element_size()
    total = 0
    for kind, mixer, kv_width, window in cache_layers(model):
        if kind == "kv":
            kept = int(kept_positions(mine, prompt_len, window).sum())
            rows = kv_capacity(kept, appended, window)
            total += rows * (batch * 2 * kv_width * itemsize + 8)
        elif kind == "history":
            steps = max(0, max_new_tokens - 1)
            lags = sum(max(0, _segment_lags(start, n, prompt_len, steps)[1])
                       - max(0, _segment_lags(start, n, prompt_len, steps)[0]) for start, n in segments[rank])
            rows = len(mine) + appended
            total += (rows * batch + lags + steps) * mixer.dim * itemsize + appended * 8
            if isinstance(mixer, Hyena):  # the short convolution's last inputs
                total += batch * (mixer.short.kernel_size[0] - 1) * 3 * mixer.dim * itemsize
        else:
            state = mixer.init_state(batch, device="meta", dtype=dtype)
            total += sum(t.numel() * t.element_size() for t in state.values())
    return total


def cache_layers(model) -> list[tuple]:
    """Per token-mixing layer: (decode kind, the longmix mixer, the width of one cached key
    (heads x head_dim; 0 unless "kv"), the window or None)."""
    from .validate import is_hf_model

    if is_hf_model(model):
        from .hf import hf_cache_layers
        return hf_cache_layers(model)
    out = []
    for block in model.blocks:
        mixer, kind = block.mixer, decode_kind(block.mixer)
        kv = (mixer.heads * mixer.head_dim, mixer.window) if kind == "kv" else (0, None)
        out.append((kind, mixer, *kv))
    return out


def _segment_lags(start: int, rows: int, prompt_len: int, steps: int) -> tuple[int, int]:
    """[first, last) lags the prompt rows start .. start + rows - 1 meet at decode positions
    prompt_len .. prompt_len + steps - 1."""
    return prompt_len - (start + rows - 1), prompt_len + steps - start


class ShardedHistoryCache:
    """This rank's rows of a long convolution's input history, with the filter at their lags."""

    kind = "history"

    def __init__(self, mixer, x_local, segments, prompt_len: int, owners: list[int], group):
        self.mixer, self.group = mixer, group
        _, self.world, self.rank = resolve_group(group)
        self.owners, self.steps = owners, 0
        steps = len(owners)
        self.pieces = []  # (rows (batch, n, C), first global position, filter over its lags, first lag)
        offset = 0
        for start, rows in segments:
            first, last = _segment_lags(start, rows, prompt_len, steps)
            lags = torch.arange(max(first, 0), max(last, 0), device=x_local.device)
            self.pieces.append((x_local[:, offset:offset + rows], start, mixer.filter.at(lags), max(first, 0)))
            offset += rows
        appended = sum(1 for r in owners if r == self.rank)
        self.new_rows = x_local.new_zeros(x_local.shape[0], appended, x_local.shape[-1])
        self.new_positions = torch.zeros(appended, dtype=torch.long, device=x_local.device)
        self.new_filter = mixer.filter.at(torch.arange(steps, device=x_local.device))  # lags of new rows
        self.count = 0

    def step(self, x_t: torch.Tensor, position: int) -> torch.Tensor:
        if self.owners[self.steps] == self.rank:
            self.new_rows[:, self.count] = x_t[:, 0]
            self.new_positions[self.count] = position
            self.count += 1
        self.steps += 1
        partial = x_t.new_zeros(x_t.shape[0], x_t.shape[-1])
        for rows, start, table, first_lag in self.pieces:
            lags = position - start - torch.arange(rows.shape[1], device=rows.device)
            partial = partial + (table[lags - first_lag].to(rows.dtype) * rows).sum(1)
        if self.count:
            lags = position - self.new_positions[:self.count]
            partial = partial + (self.new_filter[lags].to(x_t.dtype) * self.new_rows[:, :self.count]).sum(1)
        if self.world > 1:
            partial = sum(p[0] for p in all_gather_tensors([partial], self.group))  # rank order
        return partial[:, None]

    def nbytes(self) -> int:
        tensors = [t for rows, _, table, _ in self.pieces for t in (rows, table)]
        return sum(t.numel() * t.element_size()
                   for t in tensors + [self.new_rows, self.new_positions, self.new_filter])


class HyenaCache:
    """Hyena: the sharded history of its long convolution's input x1 * v, and the short
    convolution's last ``taps`` input rows (in_proj outputs) at the prompt's end, on every rank.

    Each rank's history rows need the ``taps`` in_proj rows before each of its pieces (a halo
    from the ranks holding them), then continue from them with Hyena's own step
    (``forward_with_state``, whose new "history" is the piece's x1 * v)."""

    kind = "history"

    def __init__(self, mixer, x_local, shards, prompt_len: int, owners: list[int], group):
        from ..mixers.forms import WholeSequence
        from ..parallel.halo import HaloPieces

        self.mixer = mixer
        _, world, rank = resolve_group(group)
        taps = mixer.short.kernel_size[0] - 1
        # one process holds the whole sequence as one piece (zigzag's two chunks are adjacent)
        pieces = WholeSequence if world == 1 else HaloPieces(shards.segments, rank, group, None)
        segments = [(0, prompt_len)] if world == 1 else shards.segments[rank]
        contexts = pieces.left_context(mixer.in_proj(x_local), taps)
        inputs, offset, last_proj = [], 0, None
        for (start, rows), context in zip(segments, contexts, strict=True):
            empty = x_local.new_zeros(x_local.shape[0], 0, mixer.dim)
            _, state = mixer.forward_with_state(x_local[:, offset:offset + rows],
                                                {"proj": context[:, :taps], "history": empty})
            inputs.append(state["history"])
            if start + rows == prompt_len:
                last_proj = state["proj"].contiguous()  # a view; a collective sends storage
            offset += rows
        u = torch.cat(inputs, 1) if inputs else x_local.new_zeros(x_local.shape[0], 0, mixer.dim)
        self.history = ShardedHistoryCache(mixer, u, shards.segments[rank], prompt_len, owners, group)
        owner = next(r for r, segs in enumerate(shards.segments) if any(s + n == prompt_len for s, n in segs))
        if last_proj is None:
            last_proj = x_local.new_empty(x_local.shape[0], taps, 3 * mixer.dim)
        if world > 1:
            torch.distributed.broadcast(last_proj, group=group, group_src=owner)
        self.proj = last_proj

    def step(self, x_t: torch.Tensor, position: int) -> torch.Tensor:
        mixer = self.mixer  # the lines of Hyena._forward_with_state, the long conv sharded
        window = torch.cat([self.proj.to(x_t.dtype), mixer.in_proj(x_t)], 1)
        v, x1, x2 = mixer.short(window.mT).mT.chunk(3, dim=-1)
        self.proj = window[:, 1:]
        return mixer.out_proj(x2 * self.history.step(x1 * v, position))

    def nbytes(self) -> int:
        return self.history.nbytes() + self.proj.numel() * self.proj.element_size()


def total_cache_bytes(caches) -> int:
    return sum(c.nbytes() for c in caches)


__all__ = ["decode_kind", "decode_owners", "ShardedKVCache", "StateCache", "ShardedHistoryCache",
           "HyenaCache",
           "expected_cache_bytes",
           "total_cache_bytes", "KINDS"]
