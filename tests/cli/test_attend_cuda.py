"""`longmix attend --device cuda`: refused clearly without a GPU; the job's own logic (generation,
timing, float64 verification, report) run on the CPU in place of the GPU. The CUDA kernels
themselves are checked on a GPU by tests/cuda."""
import subprocess
import sys

import pytest
import torch

from longmix.attend import cuda
from longmix.attend.config import AttendConfig
from longmix.attend.report import format_report


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is visible")
def test_without_a_gpu_the_cuda_job_is_refused_naming_the_flag():
    done = subprocess.run([sys.executable, "-m", "longmix.cli", "attend", "--device", "cuda",
                           "--seq-len", "1024"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "argument --device: cuda was asked for" in done.stderr


def _cuda_on_the_cpu(monkeypatch):
    for name, value in (("synchronize", lambda *a: None), ("reset_peak_memory_stats", lambda *a: None),
                        ("max_memory_allocated", lambda *a: 123 * 2**20),
                        ("get_device_name", lambda *a: "NVIDIA H200")):
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(cuda, "gpu_device", lambda: torch.device("cpu"))


SMALL = AttendConfig(seq_len=5000, heads=2, kv_heads=1, head_dim=16, check_rows=4, device="cuda",
                     dtype="fp32")


def test_the_cuda_job_logic_verifies_and_reports(monkeypatch):
    _cuda_on_the_cpu(monkeypatch)
    cfg = SMALL
    report = cuda.run_cuda_job(cfg, progress=False)
    assert report["passed"] and report["verification"]["rows_checked"] >= 4
    assert report["bf16_dense_peak"] == {"entry": "H200", "tflops": 989.4}
    text = format_report(report)
    assert "PASS" in text and "of the H200's bf16 dense peak" in text


@pytest.mark.parametrize("fault", ["scale_1pct", "dropped_block"])
def test_the_cuda_jobs_float64_check_fails_a_wrong_kernel(monkeypatch, fault):
    """The check on the device's own tensors sees both faults the CPU job's check must catch."""
    from longmix.ops import attention as ops_attention

    _cuda_on_the_cpu(monkeypatch)
    right = ops_attention.attention_with_lse

    def wrong(q, k, v, causal):
        if fault == "scale_1pct":
            out, lse = right(q, k, v, causal=causal)
            return out * 1.01, lse
        k, v = k.clone(), v.clone()
        k[:, 256:512], v[:, 256:512] = 0, 0   # a lost tile: keys that no longer match the data
        return right(q, k, v, causal=causal)

    monkeypatch.setattr(ops_attention, "attention_with_lse", wrong)
    report = cuda.run_cuda_job(SMALL, progress=False)
    assert report["verification"]["verdict"] == "FAIL"


def test_dtype_auto_means_bf16_on_the_gpu_and_memory_is_checked_first(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (2**30, 2**30))
    big = AttendConfig(seq_len=2**20, heads=32, head_dim=128, device="cuda", dtype="bf16")
    argument, reason = cuda.cuda_refusal(big, None)
    assert argument == "--seq-len" and "GiB are free" in reason
    assert cuda.cuda_refusal(AttendConfig(seq_len=1024, device="cuda", dtype="bf16"), 2)[0] == "--procs"
