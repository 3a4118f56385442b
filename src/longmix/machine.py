"""What machine a measurement ran on: recorded beside every benchmark figure and training run.

    desc = describe()          # {'cpu': ..., 'cores': 2, 'memory_gb': 23.4, 'torch': ..., ...}
    print(markdown(desc))      # one line for a README table caption

Also the per-process peak resident memory that the benchmarks and `longmix attend` report, and
the memory still available (what `longmix attend` and the mixers' literal paths check first).
On the ground floor (imports only the standard library, torch and :mod:`longmix.provenance`),
so benchmarks, training and the attend job all describe a machine the same way.
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


#: Variables that keep the math libraries off some of the CPU's instructions (AMX, say): a run
#: under them is a run on a lesser machine, and its description must say so.
ISA_LIMITS = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def isa_limits() -> dict[str, str]:
    """The :data:`ISA_LIMITS` set in this process's environment."""
    return {k: os.environ[k] for k in ISA_LIMITS if os.environ.get(k)}


def isa_limits_text(desc: dict) -> str:
    """``K=V K=V`` of a description's ``isa_limits``; empty when the run had none."""
    return " ".join(f"{k}={v}" for k, v in (desc.get("isa_limits") or {}).items())


def describe(device: str | None = None) -> dict:
    """A JSON-able description: CPU model and flags, cores, torch threads, memory, torch, GPU (if
    any), date (UTC); with ``device`` (a run's torch device) also that device, and a CUDA device's
    own name as the GPU."""
    import torch

    gpu = None
    if device is not None and device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    elif torch.cuda.is_available():
        gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    mem = _memory_gb()
    desc = {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(mem, 1) if mem else None,
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": utc_now(),
    }
    limits = isa_limits()
    if limits:
        desc["isa_limits"] = limits
    if device is not None:
        desc["device"] = device
    return desc


def markdown(desc: dict) -> str:
    """One human line: ``Intel Xeon (2 cores, amx_bf16), 23.4 GiB, torch 2.13.0, no GPU, 2026-...``.

    Also reads the older training records (``processor``, ``cpu_count``, ``platform``): committed
    result files still hold them and their reports are regenerated."""
    cpu = desc.get("cpu") or desc.get("processor") or "CPU unknown"
    cores = desc.get("cores") or desc.get("cpu_count")
    flags = f", {'/'.join(desc['cpu_flags'])}" if desc.get("cpu_flags") else ""
    threads = f", {desc['torch_threads']} torch threads" if desc.get("torch_threads") else ""
    mem = f"{desc['memory_gb']} GiB RAM" if desc.get("memory_gb") else "RAM unknown"
    gpu = desc.get("gpu") or "no GPU"
    where = desc.get("os") or desc.get("platform") or "OS unknown"
    date = f", {desc['date']}" if desc.get("date") else ""
    limits = isa_limits_text(desc)
    limits = f" with the math libraries limited by {limits}" if limits else ""
    return (f"{cpu} ({cores} cores{flags}{threads}){limits}, {mem}, {where}, torch {desc.get('torch')}, "
            f"{gpu}{date}")


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


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (VmHWM) to its current size; False where the
    kernel offers no reset (no /proc/self/clear_refs), so the peak then covers the whole life."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    """This process's resident set size now (VmRSS), to separate a run's own memory from the baseline."""
    now = _proc_status_bytes("VmRSS")
    return peak_rss_bytes() if now is None else now


#: Blocks at least this large get their own mapping from glibc's malloc (see return_freed_memory).
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h


def return_freed_memory(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make freed tensors of at least ``threshold_bytes`` go back to the OS at once (glibc).

    glibc's malloc maps a large block on its own and unmaps it when freed, but after the first
    such free it raises that threshold to the block's size (up to 32 MiB): from then on a
    training step's large transient tensors (all-to-all buffers, FFT work arrays, gradients)
    come from the heap, and once freed they stay resident, scattered between live blocks. On
    sequence-parallel ranks that retention was up to half of a step's measured peak per token.
    A fixed threshold (``mallopt(M_MMAP_THRESHOLD)``, as the ``MALLOC_MMAP_THRESHOLD_``
    variable sets it) keeps the resident set to what is alive, for a page fault per new large
    block. Left alone when that variable is set (the user's choice). Returns whether the
    threshold is now fixed; False off glibc."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False


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
