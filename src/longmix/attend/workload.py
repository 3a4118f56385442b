"""The job's problem and its data: a random q, k, v that any rank can regenerate, row by row.

The sequence is cut into fixed chunks of :data:`CHUNK` rows and chunk ``i`` of tensor ``name`` is
drawn from a generator seeded by ``(seed, name, i)``. So every rank builds only its own shard, and
the verification can regenerate any row. Values are drawn in float32, then rounded to the run's
dtype: the float64 reference widens the same rounded values, so it sees what the kernel saw.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from longmix.checks import check_int
from longmix.dtypes import DTYPES

CHUNK = 4096  # rows per independently seeded chunk of q/k/v (and per streamed reference block)


@dataclass(frozen=True)
class AttendConfig:
    """One `longmix attend` problem. Shapes follow longmix.parallel.attention: (batch, L, heads, d).

    ``check_rows`` is the number of *random* rows verified on top of the structural ones (shard
    boundaries, layout chunk edges, first and last row); 0 verifies nothing.
    """

    seq_len: int = 2**20
    heads: int = 1
    kv_heads: int = 1
    head_dim: int = 32
    causal: bool = True
    strategy: str = "auto"
    layout: str = "zigzag"
    dtype: str = "fp32"
    check_rows: int = 16
    seed: int = 0
    batch: int = 1
    timeout: float = 3600.0
    hybrid_size: int | None = None

    def __post_init__(self):
        for name in ("seq_len", "heads", "kv_heads", "head_dim", "batch"):
            check_int(name, getattr(self, name))
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} must be divisible by kv_heads={self.kv_heads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.check_rows < 0:
            raise ValueError(f"check_rows must be >= 0, got {self.check_rows!r}")
        if self.hybrid_size is not None and self.strategy != "hybrid":
            raise ValueError(f"hybrid_size applies to strategy='hybrid' only, got {self.strategy!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def heads_of(self, name: str) -> int:
        return self.heads if name == "q" else self.kv_heads


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
