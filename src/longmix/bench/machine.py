"""What machine a measurement ran on: recorded beside every benchmark figure.

    desc = describe()          # {'cpu': ..., 'cores': 2, 'memory_gb': 23.4, 'torch': ..., ...}
    print(markdown(desc))      # one line for a README table caption

Also the per-process peak resident memory that the benchmarks and `longmix attend` report.
"""
from __future__ import annotations

import os
import platform
import resource

from longmix.provenance import utc_now


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_flags() -> list[str]:
    """The matrix-unit flags that decide which dtype is fast on this CPU (AMX / AVX-512 bf16)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    except OSError:
        pass
    return []


def describe() -> dict:
    """A JSON-able description: CPU model and flags, cores, memory, torch, GPU (if any), date (UTC)."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    mem = _memory_gb()
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "memory_gb": round(mem, 1) if mem else None,
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": utc_now(),
    }


def markdown(desc: dict) -> str:
    """One human line: ``Intel Xeon (2 cores, amx_bf16), 23.4 GiB, torch 2.13.0, no GPU, 2026-...``."""
    flags = f", {'/'.join(desc['cpu_flags'])}" if desc.get("cpu_flags") else ""
    mem = f"{desc['memory_gb']} GiB RAM" if desc.get("memory_gb") else "RAM unknown"
    gpu = desc.get("gpu") or "no GPU"
    return (f"{desc['cpu']} ({desc['cores']} cores{flags}), {mem}, torch {desc['torch']}, "
            f"{gpu}, {desc['date']}")


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (e.g. ``VmHWM``) in bytes; None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (VmHWM; ru_maxrss where /proc is missing)."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_bytes() -> int:
    """This process's resident set size now (VmRSS), to separate a run's own memory from the baseline."""
    now = _proc_status_bytes("VmRSS")
    return peak_rss_bytes() if now is None else now
