"""sparse family: softmax attention restricted to a fixed block pattern.

The sequence is cut into blocks of ``block_size`` positions (the last one padded and masked); a
query block attends only to the key blocks its pattern lists, so the mixing matrix is block
sparse. The fast path (:func:`longmix.ops.block_sparse.block_sparse_attention`) gathers those
blocks: O(L * pattern size) time and memory. The literal path builds the dense L x L mask from the
same pattern and applies a masked softmax.

* ``local``: each query block reads its own block and the previous one, plus the next one when
  not causal (the look-backward/look-forward convention of local attention).
* ``bigbird``: window + global + random blocks (Zaheer et al. 2020, "ITC" variant). Not causal:
  global queries read the whole sequence, which is what makes it a universal approximator.
"""
from __future__ import annotations

import math

import torch

from ..ops.block_sparse import (bigbird_block_mask, bigbird_block_pattern, block_mask,
                                block_sparse_attention, local_block_pattern)
from ..checks import check_int
from .base import Taxonomy, last_rows, shift_in
from .forms import StateHooks
from .qkv import QKVMixer, masked_softmax_matrix
from .registry import register


def token_mask(block_level: torch.Tensor, block_size: int, length: int) -> torch.Tensor:
    """Expand an (n, n) block mask to the (L, L) token mask (cropped to the real length)."""
    dense = block_level.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    return dense[:length, :length]


class BlockSparseAttention(StateHooks, QKVMixer):
    """Shared by the sparse mixers: a block size and softmax attention over a block pattern.

    A NaN or inf reaches only the queries whose pattern reads its position (in particular, when
    causal, no earlier one): masked keys never multiply a value by zero (:mod:`longmix.ops.masked`).
    """

    nonfinite_causal = True

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 block_size: int = 16, bias: bool = True):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len, bias=bias)
        self.block_size = check_int("block_size", block_size, owner=type(self).__name__)
        self.scale = self.head_dim ** -0.5

    def n_blocks(self, length: int) -> int:
        return math.ceil(length / self.block_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", block_size={self.block_size}"


@register("local")
class LocalAttention(BlockSparseAttention):
    """Block-local attention: block i reads blocks i-1, i (and i+1 when not causal).

    A query thus sees between ``block_size`` and ``2 * block_size`` keys back (causal) or a
    window of ``3 * block_size`` keys around its block (not causal).

    Args:
        block_size: positions per block.
    """

    taxonomy = Taxonomy(family="sparse", learned=True, input_dependent=True, causal=True,
                        time="O(L)", memory="O(L)")

    def _attend(self, q, k, v):
        blocks, valid = local_block_pattern(self.n_blocks(q.shape[1]), self.causal, q.device)
        return block_sparse_attention(q, k, v, blocks, valid, self.block_size, causal=self.causal,
                                      scale=self.scale)

    # -- step mode and state passing: a rolling buffer of the keys a later query can still read --
    # A causal query at t reads keys from the start of the block before its own, at most
    # 2 * block_size - 1 positions back; the buffer holds that many keys and values, and the
    # position fixes where block boundaries fall. Its size does not depend on L, so the state
    # passing form is a halo exchange: a chunk's summary is its last keys and values.
    @property
    def halo(self) -> int:
        """Keys and values a causal query can read from before its position."""
        return 2 * self.block_size - 1

    def _init_state(self, batch_size, device, dtype):
        buffer = torch.zeros(batch_size, self.halo, self.heads, self.head_dim, device=device, dtype=dtype)
        return {"k": buffer, "v": buffer.clone(), "position": torch.zeros((), dtype=torch.int64, device=device)}

    def _forward_with_state(self, x, state):
        q, k, v = self._qkv(x)
        position = int(state["position"])
        # Restart the block pattern at the block before the chunk's first block: block
        # boundaries stay where they are in the whole sequence, and the first query's keys are
        # all inside the (halo + chunk) window. The halo's own queries are dummies.
        start = max(0, (position // self.block_size - 1) * self.block_size)
        seen = position - start
        keys = torch.cat([state["k"][:, self.halo - seen:].to(k.dtype), k], 1)
        values = torch.cat([state["v"][:, self.halo - seen:].to(v.dtype), v], 1)
        queries = torch.cat([q.new_zeros(q.shape[0], seen, *q.shape[2:]), q], 1)
        out = self._attend(queries, keys, values)[:, seen:]
        summary = self._halo_summary(k, v, x.shape[1], state["k"].dtype)
        return self._merge(out), self._chain_state(state, summary, "state")

    def _halo_summary(self, k, v, length, dtype):
        """A chunk of ``length`` positions whose last keys and values are k, v."""
        return {"k": last_rows(k, self.halo).to(dtype), "v": last_rows(v, self.halo).to(dtype),
                "length": torch.tensor(length, dtype=torch.int64, device=k.device)}

    def _state_summary(self, x, state, stage):
        # The projections are per position: only the rows the next chunk can read are needed.
        k, v = self._kv(x[:, max(0, x.shape[1] - self.halo):])
        return self._halo_summary(k, v, x.shape[1], self.state_dtype(x.dtype))

    def _chain_state(self, state, summary, stage):
        length = int(summary["length"])
        return {"k": shift_in(state["k"], summary["k"], length), "v": shift_in(state["v"], summary["v"], length),
                "position": state["position"] + length}

    def _attention_matrix(self, q, k):
        length = q.shape[1]
        n = self.n_blocks(length)
        mask = token_mask(block_mask(*local_block_pattern(n, self.causal, q.device), n), self.block_size, length)
        if self.causal:
            mask = mask.tril()
        return masked_softmax_matrix(q, k, mask, self.scale)


@register("bigbird")
class BigBirdAttention(BlockSparseAttention):
    """BigBird block-sparse attention: sliding window + global + random blocks (Zaheer et al. 2020).

    Query block i reads the ``window`` blocks centred on it, the first ``global_blocks`` blocks
    and ``random_blocks`` random other blocks; the global blocks' queries read everything. See
    :func:`longmix.ops.block_sparse.bigbird_block_pattern` for how random blocks are drawn.

    Args:
        block_size: positions per block. The default 8 keeps the pattern sparse at the short
            lengths of tests and ``longmix show`` (at L = 64: 6 of 8 key blocks per query block);
            at long L, larger blocks (BigBird used 64) run faster.
        window: odd number of window blocks centred on the query block.
        global_blocks: number of leading blocks that are global (read and read by all).
        random_blocks: random key blocks per query block.
        seed: seed of the random blocks; None draws one from torch's global RNG at construction.
            It is stored as a buffer (saved with the state dict), and the pattern for any length
            is a deterministic function of it.
    """

    taxonomy = Taxonomy(family="sparse", learned=True, input_dependent=True, causal=False,
                        time="O(L)", memory="O(L)")

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 block_size: int = 8, window: int = 3, global_blocks: int = 1, random_blocks: int = 2,
                 seed: int | None = None, bias: bool = True):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len, block_size=block_size, bias=bias)
        name = type(self).__name__
        self.window = check_int("window", window, owner=name)
        if window % 2 == 0:
            raise ValueError(f"{name}: window must be odd (blocks centred on the query block), got {window}")
        self.global_blocks = check_int("global_blocks", global_blocks, low=0, owner=name)
        self.random_blocks = check_int("random_blocks", random_blocks, low=0, owner=name)
        if seed is None:
            seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())
        self.register_buffer("seed", torch.tensor(check_int("seed", seed, low=0, owner=name)))

    def _pattern_args(self, length: int) -> dict:
        return dict(n_blocks=self.n_blocks(length), window=self.window, global_blocks=self.global_blocks,
                    random_blocks=self.random_blocks, seed=int(self.seed))

    def _attend(self, q, k, v):
        length = q.shape[1]
        blocks, valid = bigbird_block_pattern(**self._pattern_args(length), device=q.device)
        out = block_sparse_attention(q, k, v, blocks, valid, self.block_size, scale=self.scale)
        # Global queries read every key: dense attention for those few rows (O(L) each).
        n_global = min(self.global_blocks * self.block_size, length)
        if n_global:
            everything = torch.ones(n_global, length, dtype=torch.bool, device=q.device)
            weights = masked_softmax_matrix(q[:, :n_global], k, everything, self.scale)
            out = torch.cat([torch.einsum("bhts,bshd->bthd", weights, v), out[:, n_global:]], 1)
        return out

    def _attention_matrix(self, q, k):
        length = q.shape[1]
        mask = token_mask(bigbird_block_mask(**self._pattern_args(length), device=q.device), self.block_size, length)
        return masked_softmax_matrix(q, k, mask, self.scale)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", window={self.window}, global_blocks={self.global_blocks}, "
                f"random_blocks={self.random_blocks}")
