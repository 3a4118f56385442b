"""Will the job fit? Memory per rank predicted from the shard sizes, against what the machine has.

A request like ``--seq-len 17179869184`` must be refused before any rank allocates, with the
numbers, not discovered by the OOM killer minutes later.
"""
from __future__ import annotations

from longmix.dtypes import DTYPES
from longmix.machine import available_bytes  # noqa: F401  (read here, so tests can patch it)

#: The torch runtime and the job's code, resident before any tensor (measured ~160 MiB per rank).
RUNTIME_BYTES = 256 * 2**20
#: Live copies of the shard-sized tensors at the peak, relative to one set of q, k, v, out in the
#: run's dtype plus one float32 merge accumulator: in-flight ring / all-to-all buffers, kernel
#: partial outputs, generation. The million-token run (bf16, 2 heads x d 32, 2 ranks) peaked at
#: 2.3x this set above the runtime; 2.5 keeps the prediction an upper estimate.
WORKING_SET_FACTOR = 2.5


def predicted_bytes_per_rank(*, seq_len: int, world: int, heads: int, kv_heads: int,
                             head_dim: int, dtype: str, batch: int = 1) -> int:
    """Peak resident bytes of one rank of the job (an upper estimate)."""
    import torch

    elem = torch.empty((), dtype=DTYPES[dtype]).element_size()
    rows = -(-seq_len // world)  # the largest shard
    tensors = rows * batch * head_dim * ((2 * heads + 2 * kv_heads) * elem + heads * 4)
    return int(RUNTIME_BYTES + WORKING_SET_FACTOR * tensors)


def memory_error(*, seq_len: int, world: int, local_ranks: int, heads: int, kv_heads: int,
                 head_dim: int, dtype: str, batch: int = 1) -> str | None:
    """Why the job cannot fit in this machine's memory (None when it can, or when unknown)."""
    per_rank = predicted_bytes_per_rank(seq_len=seq_len, world=world, heads=heads,
                                        kv_heads=kv_heads, head_dim=head_dim, dtype=dtype,
                                        batch=batch)
    need = per_rank * local_ranks
    have, source = available_bytes()
    if have is None or need <= have:
        return None
    return (f"needs about {per_rank / 2**30:.3g} GiB per rank x {local_ranks} rank(s) on this "
            f"machine = {need / 2**30:.3g} GiB, but only {have / 2**30:.3g} GiB is available "
            f"({source}); use a smaller --seq-len, more ranks on more machines, or bf16")
