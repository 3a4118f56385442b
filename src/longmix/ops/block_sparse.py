"""Block-sparse softmax attention: each query block attends to a short list of key blocks.

The sequence of length L is cut into n = ceil(L / block_size) blocks (the last one padded and
masked). A *pattern* lists, for every query block, K key-block indices and whether each entry is
used: ``blocks`` (n, K) long and ``valid`` (n, K) bool. Attention gathers those K blocks per query
block, so time and memory are O(L * K * block_size) instead of O(L^2).

Patterns here: :func:`local_block_pattern` (own block and its neighbours) and
:func:`bigbird_block_pattern` (window + global + random blocks, Zaheer et al. 2020).
:func:`block_mask` turns a pattern into the dense (n, n) block mask, for references and plots.

Layouts: q, k, v and the output are (batch, length, heads, head_dim).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from .masked import masked_weighted_sum

#: Elements of the temporaries (gathered keys and values, scores) per step: query blocks are
#: processed in groups below this size, so temporaries stay small at L = 2^20.
_ELEMENTS_PER_STEP = 2 ** 23


def local_block_pattern(n_blocks: int, causal: bool = False, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Query block i reads key blocks i-1, i and (if not causal) i+1. Returns (blocks, valid), (n, K)."""
    offsets = torch.tensor([-1, 0] if causal else [-1, 0, 1], device=device)
    blocks = torch.arange(n_blocks, device=device)[:, None] + offsets
    valid = (blocks >= 0) & (blocks < n_blocks)
    return blocks.clamp(0, max(n_blocks - 1, 0)), valid


def bigbird_block_pattern(n_blocks: int, window: int = 3, global_blocks: int = 1, random_blocks: int = 2,
                          seed: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """BigBird's block pattern for the rows of non-global query blocks (columns: window, global, random).

    Query block i >= global_blocks reads:
      * window: blocks i - window//2 ... i + window//2 (those inside the sequence);
      * global: blocks 0 ... global_blocks-1 (entries already in the window are marked unused, so
        no key is counted twice);
      * random: ``random_blocks`` distinct blocks drawn among the others (neither window nor
        global). The candidates are split into ``random_blocks`` equal strata and one block is
        drawn uniformly from each, which keeps them distinct; rows with fewer candidates take
        every candidate. The draw is a function of (seed, n_blocks) only: deterministic.

    Rows i < global_blocks are global queries that read *every* block; their pattern row here is
    a placeholder (use :func:`bigbird_block_mask` for the complete dense mask).
    Returns (blocks, valid), each (n_blocks, window + global_blocks + random_blocks).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of blocks, got {window}")
    if global_blocks < 0 or random_blocks < 0:
        raise ValueError(f"global_blocks and random_blocks must be >= 0, got {global_blocks}, {random_blocks}")
    n, g, radius = n_blocks, min(global_blocks, n_blocks), window // 2
    rows = torch.arange(n, device=device)[:, None]

    win = rows + torch.arange(-radius, radius + 1, device=device)
    win_valid = (win >= 0) & (win < n)

    glob = torch.arange(global_blocks, device=device).expand(n, global_blocks)
    glob_valid = (glob < n) & ((glob - rows).abs() > radius)

    # Candidates for random blocks: [g, n) minus the window [lo, hi); index m in [0, count) maps to
    # block g + m before the window and hi + (m - before) after it.
    lo = (rows - radius).clamp(g, n)
    hi = (rows + radius + 1).clamp(g, n)
    before, count = lo - g, (n - g) - (hi - lo)
    take = count.clamp(max=random_blocks)
    strata = torch.arange(random_blocks, device=device)
    start = strata * count // take.clamp_min(1)
    end = (strata + 1) * count // take.clamp_min(1)
    generator = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n, random_blocks, generator=generator, dtype=torch.float64).to(device)
    m = start + (u * (end - start)).long().clamp_max((end - start - 1).clamp_min(0))
    rand = torch.where(m < before, g + m, hi + (m - before))
    rand_valid = strata < take

    blocks = torch.cat([win, glob, rand], 1)
    valid = torch.cat([win_valid, glob_valid, rand_valid], 1)
    return blocks.clamp(0, max(n - 1, 0)), valid


def block_mask(blocks: torch.Tensor, valid: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Dense (n_blocks, n_blocks) bool mask: [i, j] is True where query block i reads key block j."""
    mask = torch.zeros(blocks.shape[0], n_blocks, dtype=torch.bool, device=blocks.device)
    rows = torch.arange(blocks.shape[0], device=blocks.device)[:, None].expand_as(blocks)
    mask[rows[valid], blocks[valid]] = True
    return mask


def bigbird_block_mask(n_blocks: int, window: int = 3, global_blocks: int = 1, random_blocks: int = 2,
                       seed: int = 0, device=None) -> torch.Tensor:
    """The complete BigBird block mask (n_blocks, n_blocks), global rows and columns included."""
    pattern = bigbird_block_pattern(n_blocks, window, global_blocks, random_blocks, seed, device)
    mask = block_mask(*pattern, n_blocks)
    mask[:global_blocks] = True
    mask[:, :global_blocks] = True
    return mask


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: torch.Tensor,
                           valid: torch.Tensor, block_size: int, causal: bool = False,
                           scale: float | None = None) -> torch.Tensor:
    """Softmax attention restricted to a block pattern. See the module docstring for layouts.

    Args:
        blocks, valid: (n_blocks, K) pattern with n_blocks = ceil(length / block_size); every
            query must keep at least one key (its own block, in the patterns above). Unused
            entries (valid False) may hold any index.
        causal: additionally mask key positions after the query position.
        scale: score scale, default head_dim ** -0.5.
    """
    batch, length, heads, head_dim = q.shape
    n = math.ceil(length / block_size)
    if blocks.shape != valid.shape or blocks.shape[0] != n:
        raise ValueError(f"blocks and valid must be ({n}, K) for length {length} and block_size {block_size}, "
                         f"got {tuple(blocks.shape)} and {tuple(valid.shape)}")
    scale = head_dim ** -0.5 if scale is None else scale
    blocks = blocks.clamp(0, n - 1)  # unused entries may point anywhere; they are masked below
    pad = n * block_size - length
    if pad:  # (F.pad copies even when there is nothing to pad)
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (rearrange(t, "b (n c) h d -> b h n c d", c=block_size) for t in (q, k, v))

    key_pos = rearrange(blocks[..., None] * block_size + torch.arange(block_size, device=blocks.device),
                        "n k c -> n (k c)")
    key_ok = rearrange(valid[..., None].expand(-1, -1, block_size), "n k c -> n (k c)") & (key_pos < length)
    query_pos = torch.arange(n * block_size, device=blocks.device).view(n, block_size)

    keys_per_block = key_pos.shape[1]
    group = max(1, _ELEMENTS_PER_STEP // (batch * heads * keys_per_block * (block_size + 2 * head_dim)))
    outs = []
    for s in range(0, n, group):
        e = min(s + group, n)
        keys = rearrange(k[:, :, blocks[s:e]], "b h n k c d -> b h n (k c) d")
        values = rearrange(v[:, :, blocks[s:e]], "b h n k c d -> b h n (k c) d")
        mask = key_ok[s:e, None, :]
        if causal:
            mask = mask & (key_pos[s:e, None, :] <= query_pos[s:e, :, None])
        scores = torch.einsum("bhncd,bhnsd->bhncs", q[:, :, s:e], keys) * scale
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        # masked_weighted_sum: a NaN or inf value reaches only the queries the mask lets read it
        outs.append(masked_weighted_sum(weights, values, mask))
    out = rearrange(torch.cat(outs, 2), "b h n c d -> b (n c) h d")
    return out[:, :length]
