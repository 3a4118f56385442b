"""The job's data: a random q, k, v that any rank can regenerate, row by row.

The sequence is cut into fixed chunks of :data:`CHUNK` rows and chunk ``i`` of tensor ``name`` is
drawn from a generator seeded by ``(seed, name, i)``. So every rank builds only its own shard, and
the verification can regenerate any row. Values are drawn in float32, then rounded to the run's
dtype: the float64 reference widens the same rounded values, so it sees what the kernel saw.
"""
from __future__ import annotations

import hashlib

import torch

from .config import AttendConfig

CHUNK = 4096  # rows per independently seeded chunk of q/k/v (and per streamed reference block)


def seed_of(seed: int, name: str, index: int) -> int:
    """A 63-bit generator seed for chunk ``index`` of ``name`` (stable across runs and machines)."""
    digest = hashlib.blake2b(f"{seed}:{name}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def chunk(cfg: AttendConfig, name: str, index: int) -> torch.Tensor:
    """Chunk ``index`` of tensor ``name`` in ``cfg.dtype``: (batch, <= CHUNK, heads, head_dim).

    Drawn in float32 (twice as fast as float64; exactly representable in fp32 and fp64 runs).
    """
    rows = min(CHUNK, cfg.seq_len - index * CHUNK)
    gen = torch.Generator().manual_seed(seed_of(cfg.seed, name, index))
    x = torch.randn(cfg.batch, rows, cfg.heads_of(name), cfg.head_dim, generator=gen,
                    dtype=torch.float32)
    return x.to(cfg.torch_dtype)


def rows_of(cfg: AttendConfig, name: str, start: int, stop: int, dtype=None) -> torch.Tensor:
    """Global rows [start, stop) of ``name`` (batch, stop-start, heads, d) in ``dtype``."""
    dtype = dtype or cfg.torch_dtype
    parts = []
    for index in range(start // CHUNK, -(-stop // CHUNK) if stop > start else 0):
        lo = index * CHUNK
        parts.append(chunk(cfg, name, index)[:, max(start - lo, 0):stop - lo].to(dtype))
    if not parts:
        return torch.empty(cfg.batch, 0, cfg.heads_of(name), cfg.head_dim, dtype=dtype)
    return torch.cat(parts, dim=1)


def build_shard(cfg: AttendConfig, name: str, segments) -> torch.Tensor:
    """This rank's shard of ``name``: its ``[(start, length)]`` segments concatenated along dim 1."""
    parts = [rows_of(cfg, name, s, s + n) for s, n in segments]
    if not parts:
        return torch.empty(cfg.batch, 0, cfg.heads_of(name), cfg.head_dim, dtype=cfg.torch_dtype)
    return torch.cat(parts, dim=1).contiguous()
