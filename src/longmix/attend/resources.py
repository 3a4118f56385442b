"""Will the job fit? Memory per rank predicted from the shard sizes, against what the machine has.

A request like ``--seq-len 17179869184`` must be refused before any rank allocates, with the
numbers, not discovered by the OOM killer minutes later.
"""
from __future__ import annotations

from longmix.dtypes import DTYPES

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


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes() -> tuple[int | None, str]:
    """Memory this process may still use, and where the figure came from.

    The smaller of /proc/meminfo's MemAvailable and the cgroup's remaining limit (v2 memory.max
    minus memory.current, or v1's limit minus usage); (None, reason) where neither is readable.
    """
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            found.append((max(limit - usage, 0), f"cgroup limit ({limit_file})"))
    if not found:
        return None, "unknown (no /proc/meminfo or cgroup limit readable)"
    return min(found)


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
