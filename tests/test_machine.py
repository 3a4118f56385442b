"""The machine description that every record carries."""
import pytest

from longmix import machine


def test_a_run_with_limited_instructions_says_so(monkeypatch):
    for name in machine.ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    plain = machine.describe()
    assert "isa_limits" not in plain and "limited" not in machine.markdown(plain)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX512")
    limited = machine.describe()
    assert limited["isa_limits"] == {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    assert "limited by MKL_ENABLE_INSTRUCTIONS=AVX512 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" in machine.markdown(limited)


def test_the_calibration_of_a_limited_run_is_kept_apart(monkeypatch):
    from longmix.attend.calibrate import cache_path

    shape = dict(procs=2, threads_per_rank=1, heads=1, kv_heads=1, head_dim=32)
    plain = machine.describe()
    plain.pop("isa_limits", None)
    limited = {**plain, "isa_limits": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}}
    assert cache_path(plain, **shape) != cache_path(limited, **shape)


_RETENTION = """
import sys, torch
from longmix.machine import current_rss_bytes, return_freed_memory
if sys.argv[1] == "fixed":
    assert return_freed_memory()
block = 16 << 20
first = torch.ones(block // 4); del first       # glibc raises its mmap threshold past 16 MiB here
kept = torch.ones(block // 4)                   # ... so this block may come from the heap
pin = torch.ones((1 << 20) // 4)                # and a live block after it keeps the heap from trimming
before = current_rss_bytes(); del kept
print((before - current_rss_bytes()) / block)
"""


def test_return_freed_memory_gives_a_freed_large_block_back_to_the_os():
    import ctypes.util
    import os
    import subprocess
    import sys

    if not (sys.platform.startswith("linux") and ctypes.util.find_library("c")):
        pytest.skip("glibc's mallopt is what return_freed_memory sets")
    env = {**os.environ, "PYTHONPATH": "src"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", _RETENTION, "fixed"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert float(out) > 0.9  # the whole 16 MiB left the resident set when freed
