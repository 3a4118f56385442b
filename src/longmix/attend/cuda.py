"""The main job on one NVIDIA GPU (``longmix attend --device cuda``): exact attention over the whole
sequence in one process, timed, verified against float64, and compared with the GPU's bf16 dense
peak.

Two ranks cannot share one GPU under NCCL, and gloo moves CPU tensors only, so the multi-rank
paths need several GPUs; on one GPU the job is longmix's attention op (``attention_with_lse``,
which dispatches to PyTorch's flash kernel) over the whole sequence. The data and the float64
check are the CPU job's (``workload``, ``verify``), so both devices answer the same question.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from .config import AttendConfig

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets (SXM parts).
#: The report names the entry it used; an unknown GPU gets no percentage.
BF16_DENSE_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1}


def bf16_peak(name: str) -> tuple[str, float] | None:
    """(the data-sheet entry, its bf16 dense TFLOP/s) for a device name, None if unknown."""
    for key, peak in BF16_DENSE_PEAK_TFLOPS.items():
        if key in name:
            return key, peak
    return None


def cuda_refusal(cfg: AttendConfig, procs: int | None) -> tuple[str, str] | None:
    """(argument, reason) when the CUDA job cannot run here, else None: checked before any work."""
    if not torch.cuda.is_available():
        return "--device", (f"cuda was asked for, but this torch ({torch.__version__}) sees no CUDA "
                            "device (torch.cuda.is_available() is False)")
    if procs not in (None, 1):
        return "--procs", (f"--device cuda runs one process on one GPU (two ranks cannot share a "
                           f"GPU under NCCL); got --procs {procs}")
    if cfg.strategy not in ("auto",):
        return "--strategy", "one process on one GPU has no distribution strategy; leave it 'auto'"
    need = _bytes_needed(cfg)
    free, _ = torch.cuda.mem_get_info()
    if need > free:
        return "--seq-len", (f"L={cfg.seq_len:,} in {cfg.dtype} needs about {need / 2**30:.1f} GiB "
                             f"on the GPU (q, k, v, out, lse), {free / 2**30:.1f} GiB are free")
    return None


def _bytes_needed(cfg: AttendConfig) -> int:
    item = torch.empty(0, dtype=cfg.torch_dtype).element_size()
    rows = cfg.batch * cfg.seq_len
    tensors = rows * cfg.head_dim * item * (2 * cfg.heads + 2 * cfg.kv_heads)  # q, out, k, v
    return tensors + rows * cfg.heads * 4  # the float32 log-sum-exp


def run_cuda_job(cfg: AttendConfig, progress: bool = True) -> dict:
    """Generate q, k, v on the GPU, run the attention (after one small warm-up call), verify
    sampled rows against float64 on the CPU. ``cfg.dtype`` "auto" means bf16 (tensor cores)."""
    from longmix.machine import describe
    from longmix.ops.attention import attention_flops, attention_with_lse
    from longmix.provenance import provenance, utc_now

    from .verify import verdict, verify_local_rows
    from .workload import rows_of

    reason = "bf16 on CUDA: the tensor cores' dtype, and the peak this run is compared with"
    if cfg.dtype == "auto":
        cfg = dataclasses.replace(cfg, dtype="bf16")
    else:
        reason = "requested"
    device = gpu_device()
    say = print if progress else (lambda *_: None)
    t0 = time.perf_counter()
    q, k, v = (_on_gpu(cfg, name, device, rows_of) for name in ("q", "k", "v"))
    generate_s = time.perf_counter() - t0
    say(f"longmix attend --device cuda: generated q, k, v in {generate_s:.1f} s")
    attention_with_lse(q[:, :256], k[:, :256], v[:, :256], causal=cfg.causal)  # kernel warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out, _ = attention_with_lse(q, k, v, causal=cfg.causal)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak_bytes = torch.cuda.max_memory_allocated()
    del q, k, v
    say(f"longmix attend --device cuda: attention in {elapsed:.2f} s; verifying")
    t0 = time.perf_counter()
    check = verify_local_rows(cfg, 1, [(0, cfg.seq_len)], out.cpu())
    verify_s = time.perf_counter() - t0
    flops = attention_flops(cfg.batch, cfg.heads, cfg.seq_len, cfg.head_dim, cfg.causal)
    name = torch.cuda.get_device_name(device)
    peak = bf16_peak(name)
    rank = {"rank": 0, "local_len": cfg.seq_len, "generate_s": generate_s, "attend_s": elapsed,
            "verify_s": verify_s, "peak_gpu_bytes": peak_bytes, **check}
    result = verdict(cfg, 1, [rank])
    return {
        "device": "cuda", "gpu": name, "config": dataclasses.asdict(cfg), "world_size": 1,
        "dtype_reason": reason, "elapsed_s": elapsed, "flops": flops,
        "tflops_per_s": flops / elapsed / 1e12,
        "bf16_dense_peak": ({"entry": peak[0], "tflops": peak[1]} if peak else None),
        "peak_gpu_bytes": peak_bytes, "predicted_gpu_bytes": _bytes_needed(cfg),
        "ranks": [rank], "verification": result, "passed": result["passed"],
        "launch": "1 process, 1 GPU", "machine": describe("cuda"), "date": utc_now(),
        **provenance(),
    }


def gpu_device() -> torch.device:
    """The GPU the job runs on (a function, so that a CPU test can run the job's logic)."""
    return torch.device("cuda")


def _on_gpu(cfg: AttendConfig, name: str, device, rows_of) -> torch.Tensor:
    """The whole tensor ``name`` on the GPU, generated on the CPU a block at a time (the CPU job's
    values exactly, so the float64 check regenerates the same rows)."""
    out = torch.empty(cfg.batch, cfg.seq_len, cfg.heads_of(name), cfg.head_dim,
                      dtype=cfg.torch_dtype, device=device)
    block = 1 << 16
    for start in range(0, cfg.seq_len, block):
        stop = min(cfg.seq_len, start + block)
        out[:, start:stop] = rows_of(cfg, name, start, stop).to(device)
    return out


def format_cuda_report(report: dict) -> str:
    c, v = report["config"], report["verification"]
    peak = report["bf16_dense_peak"]
    share = (f", {100 * report['tflops_per_s'] / peak['tflops']:.0f}% of the {peak['entry']}'s "
             f"bf16 dense peak ({peak['tflops']:g} TFLOP/s, data sheet)" if peak else
             ", no data-sheet peak known for this GPU")
    return "\n".join([
        f"longmix attend --device cuda: L={c['seq_len']:,} {'causal' if c['causal'] else 'non-causal'}, "
        f"batch {c['batch']}, heads {c['heads']} (kv_heads {c['kv_heads']}) x head_dim "
        f"{c['head_dim']}, {c['dtype']} ({report['dtype_reason']})",
        f"device: {report['gpu']}, torch {report['machine'].get('torch')}",
        f"elapsed: attention {report['elapsed_s']:.2f} s",
        f"throughput: {report['tflops_per_s']:.1f} TFLOP/s useful ({report['flops']:.3g} flop"
        f"{', causal counted as half' if c['causal'] else ''}){share}",
        f"GPU memory: peak {report['peak_gpu_bytes'] / 2**30:.2f} GiB allocated, "
        f"{report['predicted_gpu_bytes'] / 2**30:.2f} GiB predicted for the tensors",
        f"verification: {v['rows_checked']} of {v['rows_wanted']} rows vs float64: max rel err "
        f"{v['max_rel_err']:.3g}; tolerance {v['tolerance']:.3g} {v['verdict']}",
    ])
