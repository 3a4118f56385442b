"""The literal paths refuse what cannot fit, and the estimate behind the refusal is an upper bound.

The bound is checked against the peak resident memory measured by benchmarks/reference_memory.py
(in a child process) for every registered mixer, causal and not, reference and mixing_matrix,
with autograd recording and without.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from longmix import machine, mixers
from longmix.mixers import memory_guard
from longmix.mixers.memory_guard import LiteralPathTooLarge, literal_path_bytes

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_memory.py"


def measured(*args: str) -> list[dict]:
    out = subprocess.run([sys.executable, str(BENCH), "--json", "--dim", "8", *args],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_estimate_bounds_the_measured_peak_of_every_mixer():
    others = ",".join(n for n in mixers.available() if n != "mamba")
    # Mamba keeps d_state x L x L per channel: its quadratic term already dominates at L = 128.
    records = measured("--lengths", "128,256", "--names", others) + measured("--lengths", "64,128", "--names", "mamba")
    assert {r["name"] for r in records} == set(mixers.available())
    under = [r for r in records if r["estimate_bytes"] < r["peak_bytes"]]
    assert not under, under
    # Where the L x L matrices dominate, the bound holds without the fixed slack too.
    big = [r for r in records if r["peak_bytes"] > 2 * memory_guard.SLACK_BYTES]
    assert big, "no call large enough to test the quadratic term"
    assert all(r["estimate_bytes"] - memory_guard.SLACK_BYTES >= r["peak_bytes"] for r in big), big


@pytest.mark.parametrize("method", ["reference", "mixing_matrix"])
@pytest.mark.parametrize("name", ["softmax", "s4d", "mamba"])
def test_huge_length_is_refused_fast_with_the_numbers(name, method):
    mixer = mixers.build(name, 8, heads=2, causal=True)
    length = 2**18  # x is 8 MiB; its L x L matrices would need terabytes
    x = torch.zeros(1, length, 8)
    start = time.perf_counter()
    with pytest.raises(LiteralPathTooLarge) as info:
        getattr(mixer, method)(x)
    assert time.perf_counter() - start < 5
    text = str(info.value)
    assert f"L = {length}" in text and "GiB" in text and "available" in text and method in text
    assert isinstance(info.value, MemoryError)


def test_refusal_compares_with_what_is_available(monkeypatch):
    mixer = mixers.build("softmax", 8, heads=2).double()
    x = torch.zeros(2, 64, 8, dtype=torch.float64)
    need = literal_path_bytes(mixer, x)
    monkeypatch.setattr(machine, "available_bytes", lambda: (need - 1, "MemAvailable"))
    with pytest.raises(LiteralPathTooLarge, match=r"only .* GiB is available \(MemAvailable\)"):
        mixer.reference(x)
    monkeypatch.setattr(machine, "available_bytes", lambda: (need, "MemAvailable"))
    assert mixer.reference(x).shape == x.shape
    monkeypatch.setattr(machine, "available_bytes", lambda: (None, "unknown"))
    assert mixer.mixing_matrix(x).shape == (2, 2, 64, 64)


def test_estimate_grows_as_length_squared():
    mixer = mixers.build("s4d", 8, causal=True)
    small, large = (literal_path_bytes(mixer, torch.zeros(1, n, 8)) - memory_guard.SLACK_BYTES
                    for n in (1024, 4096))
    assert 15 < large / small <= 16
