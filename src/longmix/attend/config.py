"""The main job's problem and its defaults, defined once: `longmix attend`'s flags take their
defaults from here, and so does every caller of the job in Python.

Kept free of torch (like :mod:`longmix.vocabulary`), so that building the command's parser stays
fast.
"""
from __future__ import annotations

from dataclasses import dataclass

from longmix.checks import check_int, check_optional_int
from longmix.vocabulary import DTYPE_NAMES, LAYOUTS, STRATEGIES

#: Local ranks spawned when neither ``procs`` nor torchrun gives a world size.
DEFAULT_PROCS = 2
#: Where the job runs: CPU ranks (gloo), or one NVIDIA GPU.
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class AttendConfig:
    """One `longmix attend` problem. Shapes follow longmix.parallel.attention: (batch, L, heads, d).

    The default: a million tokens, causal, exact. Heads x head_dim = 1 x 32 is the smallest width
    at which the time per score still falls with d (below d = 32 the softmax, not the matmul,
    dominates), so the fewest flops per score of work.

    ``dtype="auto"``: measured, not assumed (bf16 is about 2x fp32 with AMX, slower without it);
    :func:`longmix.attend.run_job` resolves it from the calibration before any rank computes.
    ``kv_heads=None`` means ``heads``; ``layout=None`` means zigzag when causal (it balances causal
    work across ranks), contiguous otherwise. ``check_rows`` is the number of *random* rows
    verified on top of the structural ones (shard boundaries, layout chunk edges, first and last
    row); 0 verifies nothing.
    """

    seq_len: int = 2**20
    heads: int = 1
    kv_heads: int | None = None
    head_dim: int = 32
    causal: bool = True
    strategy: str = "auto"
    layout: str | None = None
    dtype: str = "auto"
    check_rows: int = 16
    seed: int = 0
    batch: int = 1
    timeout: float = 3600.0
    hybrid_size: int | None = None
    device: str = "cpu"  # "cuda": one process on one GPU (attend/cuda.py)

    def __post_init__(self):
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.layout is None:
            object.__setattr__(self, "layout", "zigzag" if self.causal else "contiguous")
        for name in ("seq_len", "heads", "kv_heads", "head_dim", "batch"):
            check_int(name, getattr(self, name))
        check_int("check_rows", self.check_rows, 0)
        check_optional_int("hybrid_size", self.hybrid_size)
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} must be divisible by kv_heads={self.kv_heads}")
        if self.dtype not in (*DTYPE_NAMES, "auto"):
            raise ValueError(f"dtype must be 'auto' or one of {DTYPE_NAMES}, got {self.dtype!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.hybrid_size is not None and self.strategy != "hybrid":
            raise ValueError(f"hybrid_size applies to strategy='hybrid' only, got {self.strategy!r}")

    @property
    def torch_dtype(self):
        """The torch dtype of a resolved ``dtype`` (ValueError while it is still "auto")."""
        if self.dtype == "auto":
            raise ValueError("dtype 'auto' is resolved by calibration first (longmix.attend.run_job)")
        from longmix.dtypes import DTYPES

        return DTYPES[self.dtype]

    def heads_of(self, name: str) -> int:
        return self.heads if name == "q" else self.kv_heads
