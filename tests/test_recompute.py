"""longmix.recompute: the first checkpointed call of a process leaves no tensor of its caller alive."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# A fresh interpreter, garbage collection off (as when no collection happens to run during a
# step): does a tensor local to the caller of the process's first recomputed() outlive the step?
_FIRST_CALL = """
import gc, sys, weakref
import torch
from longmix.recompute import recomputed
if "torch._dynamo" in sys.modules:
    print("already imported")
    sys.exit()
gc.disable()
refs = []
def step(x):
    doubled = x * 2
    refs.append(weakref.ref(doubled))
    return recomputed(torch.sin, doubled).sum()
x = torch.randn(64, dtype=torch.float64, requires_grad=True)
step(x).backward()
assert torch.allclose(x.grad, 2 * torch.cos(2 * x.detach()))
print("freed" if refs[0]() is None else "alive")
"""


def test_the_first_recomputed_call_leaves_no_cycle_holding_the_callers_tensors():
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip()
    if out == "already imported":
        pytest.skip("this torch imports torch._dynamo up front: no first call imports it")
    assert out == "freed"
