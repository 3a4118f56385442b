"""The main job on one NVIDIA GPU (``longmix attend --device cuda``): exact attention over the whole
sequence in one process, timed, verified against float64, and compared with the GPU's bf16 dense
peak.

Two ranks cannot share one GPU under NCCL, and gloo moves CPU tensors only, so the multi-rank
paths need several GPUs; on one GPU the job is longmix's attention op (``attention_with_lse``,
which dispatches to PyTorch's flash kernel) over the whole sequence. The rows checked, the float64
reference and the tolerance are the CPU job's (``verify``), so both devices answer the same
question. The data is drawn on the GPU by its own seeded generator, and the float64 reference sums
run there too, over the same rounded tensors the kernel read: regenerating 2^20 rows of 32 x 128
on the CPU, as the CPU job does, would take minutes of a short GPU lease.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from .config import AttendConfig
from .workload import seed_of

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
    sampled rows against float64 sums on the same device. ``cfg.dtype`` "auto" means bf16 (tensor cores)."""
    from longmix.machine import describe
    from longmix.ops.attention import attention_flops, attention_with_lse
    from longmix.provenance import provenance, utc_now

    from .verify import reference_rows, row_errors, sample_rows, verdict

    reason = "bf16 on CUDA: the tensor cores' dtype, and the peak this run is compared with"
    if cfg.dtype == "auto":
        cfg = dataclasses.replace(cfg, dtype="bf16")
    else:
        reason = "requested"
    device = gpu_device()
    say = print if progress else (lambda *_: None)
    t0 = time.perf_counter()
    tensors = {name: _random_on(cfg, name, device) for name in ("q", "k", "v")}
    torch.cuda.synchronize()
    generate_s = time.perf_counter() - t0
    say(f"longmix attend --device cuda: generated q, k, v in {generate_s:.1f} s")
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    attention_with_lse(q[:, :256], k[:, :256], v[:, :256], causal=cfg.causal)  # kernel warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out, _ = attention_with_lse(q, k, v, causal=cfg.causal)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak_bytes = torch.cuda.max_memory_allocated()
    sdpa_s = time_sdpa(q, k, v, cfg.causal)
    say(f"longmix attend --device cuda: attention in {elapsed:.2f} s (torch SDPA {sdpa_s:.2f} s); "
        "verifying in float64")
    t0 = time.perf_counter()
    rows = sample_rows(cfg, 1)
    reference = reference_rows(cfg, rows, lambda name, a, b: tensors[name][:, a:b].double())
    errors = row_errors(out[:, rows], reference).cpu() if rows else torch.zeros(0)
    check = {"rows_checked": rows, "row_errors": errors.tolist(),
             "max_rel_err": float(errors.max()) if rows else 0.0}
    verify_s = time.perf_counter() - t0
    tensors.clear()  # the GPU memory goes back before the matmul yardstick
    del q, k, v, out
    matmul_tflops = measured_matmul_tflops(device, cfg.torch_dtype)
    flops = attention_flops(cfg.batch, cfg.heads, cfg.seq_len, cfg.head_dim, cfg.causal)
    name = torch.cuda.get_device_name(device)
    peak = bf16_peak(name)
    rank = {"rank": 0, "local_len": cfg.seq_len, "generate_s": generate_s, "attend_s": elapsed,
            "verify_s": verify_s, "peak_gpu_bytes": peak_bytes, **check}
    result = verdict(cfg, 1, [rank])
    return {
        "device": "cuda", "gpu": name, "config": dataclasses.asdict(cfg), "world_size": 1,
        "dtype_reason": reason, "elapsed_s": elapsed, "flops": flops,
        "tflops_per_s": flops / elapsed / 1e12, "sdpa_s": sdpa_s,
        "bf16_dense_peak": ({"entry": peak[0], "tflops": peak[1]} if peak else None),
        "measured_matmul_tflops": matmul_tflops,
        "peak_gpu_bytes": peak_bytes, "predicted_gpu_bytes": _bytes_needed(cfg),
        "ranks": [rank], "verification": result, "passed": result["passed"],
        "launch": "1 process, 1 GPU", "machine": describe("cuda"), "date": utc_now(),
        **provenance(),
    }


def time_sdpa(q, k, v, causal: bool) -> float:
    """Seconds of torch's ``scaled_dot_product_attention`` on the same tensors, called as a user
    calls it ((batch, heads, L, d) views, GQA by ``enable_gqa``): what a user would pick instead."""
    import torch.nn.functional as F

    views = [t.transpose(1, 2) for t in (q, k, v)]
    gqa = {"enable_gqa": True} if k.shape[2] != q.shape[2] else {}
    F.scaled_dot_product_attention(*(t[:, :, :256] for t in views), is_causal=causal, **gqa)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = F.scaled_dot_product_attention(*views, is_causal=causal, **gqa)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    del out
    return seconds


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192,
                           repeats: int = 10) -> float | None:
    """The rate of a square ``size`` matmul in ``dtype`` on ``device`` (the mean of ``repeats``
    after three warm-ups): the ceiling this GPU reaches in practice, beside the data sheet's.
    None off a GPU (the CPU test of the job's logic), where the CPU benchmarks measure peaks."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=torch.float32).to(dtype)
    b = torch.randn(size, size, device=device, dtype=torch.float32).to(dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e12


def gpu_device() -> torch.device:
    """The GPU the job runs on (a function, so that a CPU test can run the job's logic)."""
    return torch.device("cuda")


def _random_on(cfg: AttendConfig, name: str, device: torch.device) -> torch.Tensor:
    """Tensor ``name`` drawn on ``device`` from a generator seeded by (seed, name): float32 normals
    rounded to the run's dtype, a block of rows at a time (no full float32 copy)."""
    out = torch.empty(cfg.batch, cfg.seq_len, cfg.heads_of(name), cfg.head_dim,
                      dtype=cfg.torch_dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(seed_of(cfg.seed, name, 0))
    block = 1 << 16
    for start in range(0, cfg.seq_len, block):
        stop = min(cfg.seq_len, start + block)
        out[:, start:stop] = torch.randn(cfg.batch, stop - start, cfg.heads_of(name), cfg.head_dim,
                                         generator=gen, device=device, dtype=torch.float32)
    return out


def format_cuda_report(report: dict) -> str:
    c, v = report["config"], report["verification"]
    peak = report["bf16_dense_peak"]
    share = (f", {100 * report['tflops_per_s'] / peak['tflops']:.0f}% of the {peak['entry']}'s "
             f"bf16 dense peak ({peak['tflops']:g} TFLOP/s, data sheet)" if peak else
             ", no data-sheet peak known for this GPU")
    measured = report.get("measured_matmul_tflops")
    if measured:
        share += (f"; {100 * report['tflops_per_s'] / measured:.0f}% of a {c['dtype']} 8192^3 "
                  f"matmul measured in the same run ({measured:.0f} TFLOP/s)")
    return "\n".join([
        f"longmix attend --device cuda: L={c['seq_len']:,} {'causal' if c['causal'] else 'non-causal'}, "
        f"batch {c['batch']}, heads {c['heads']} (kv_heads {c['kv_heads']}) x head_dim "
        f"{c['head_dim']}, {c['dtype']} ({report['dtype_reason']})",
        f"device: {report['gpu']}, torch {report['machine'].get('torch')}",
        f"elapsed: attention {report['elapsed_s']:.2f} s; torch scaled_dot_product_attention on "
        f"the same tensors {report['sdpa_s']:.2f} s (longmix's op at "
        f"{report['sdpa_s'] / report['elapsed_s']:.2f}x its speed)",
        f"throughput: {report['tflops_per_s']:.1f} TFLOP/s useful ({report['flops']:.3g} flop"
        f"{', causal counted as half' if c['causal'] else ''}){share}",
        f"GPU memory: peak {report['peak_gpu_bytes'] / 2**30:.2f} GiB allocated, "
        f"{report['predicted_gpu_bytes'] / 2**30:.2f} GiB predicted for the tensors",
        f"verification: {v['rows_checked']} of {v['rows_wanted']} rows vs float64: max rel err "
        f"{v['max_rel_err']:.3g}; tolerance {v['tolerance']:.3g} {v['verdict']}",
    ])
