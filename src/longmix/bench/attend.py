"""The `longmix attend` job: exact distributed attention on a random sequence, verified.

Every rank builds *its own shard* of a random q, k, v (batch, L, heads, head_dim) without any rank
ever holding the whole sequence: the sequence is cut into fixed chunks of :data:`CHUNK` rows and
chunk ``i`` of tensor ``name`` is drawn from a generator seeded by ``(seed, name, i)``. So any
rank can regenerate any position, which is what the verification does: it samples output rows
and recomputes them in float64, row by row, streaming over the K/V chunks (for a causal row t,
only keys <= t). The reference sees exactly the values the kernel saw: they are drawn in float32,
rounded to the run's dtype, then widened back to float64.

    cfg = AttendConfig(seq_len=2**14, heads=2, kv_heads=2, head_dim=32, dtype="fp32")
    report = run_local_job(cfg, procs=2)          # spawn 2 gloo ranks on this machine
    print(format_report(report)); report["passed"]

Under ``torchrun`` use :func:`run_torchrun_job`, which joins the launcher's process group.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from longmix.bench.machine import current_rss_bytes, describe, peak_rss_bytes

CHUNK = 4096  # rows per independently seeded chunk of q/k/v (and per streamed reference block)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}

# Row-wise relative L2 error allowed against the float64 reference. bf16 rounds the output (and
# the kernel's probabilities) to 8 mantissa bits, ~2e-3 relative, so 2e-2 leaves headroom
# while still catching a wrong row (which is off by O(1)); fp32 and fp64 follow issue 3's bounds.
TOLERANCE = {"bf16": 2e-2, "fp32": 1e-4, "fp64": 1e-10}


@dataclass(frozen=True)
class AttendConfig:
    """One `longmix attend` problem. Shapes follow longmix.dist.attention: (batch, L, heads, d)."""

    seq_len: int = 2**20
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 32
    causal: bool = True
    strategy: str = "auto"
    layout: str = "zigzag"
    dtype: str = "bf16"
    check_rows: int = 16
    seed: int = 0
    batch: int = 1
    timeout: float = 3600.0

    def __post_init__(self):
        for name in ("seq_len", "heads", "kv_heads", "head_dim", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} must be divisible by kv_heads={self.kv_heads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.check_rows < 0:
            raise ValueError(f"check_rows must be >= 0, got {self.check_rows!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def heads_of(self, name: str) -> int:
        return self.heads if name == "q" else self.kv_heads


# ---------------------------------------------------------------------------------------------
# Deterministic data: any rank can regenerate any rows.

def _chunk_seed(seed: int, name: str, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{name}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _chunk(cfg: AttendConfig, name: str, index: int) -> torch.Tensor:
    """Chunk ``index`` of tensor ``name`` in ``cfg.dtype``: (batch, <= CHUNK, heads, head_dim).

    Drawn in float32 (twice as fast as float64; exactly representable in fp32 and fp64 runs),
    then rounded to the run's dtype.
    """
    rows = min(CHUNK, cfg.seq_len - index * CHUNK)
    gen = torch.Generator().manual_seed(_chunk_seed(cfg.seed, name, index))
    x = torch.randn(cfg.batch, rows, cfg.heads_of(name), cfg.head_dim, generator=gen,
                    dtype=torch.float32)
    return x.to(cfg.torch_dtype)


def rows_of(cfg: AttendConfig, name: str, start: int, stop: int, dtype=None) -> torch.Tensor:
    """Global rows [start, stop) of ``name`` (batch, stop-start, heads, d) in ``dtype``."""
    dtype = dtype or cfg.torch_dtype
    parts = []
    for index in range(start // CHUNK, -(-stop // CHUNK) if stop > start else 0):
        lo = index * CHUNK
        parts.append(_chunk(cfg, name, index)[:, max(start - lo, 0):stop - lo].to(dtype))
    if not parts:
        return torch.empty(cfg.batch, 0, cfg.heads_of(name), cfg.head_dim, dtype=dtype)
    return torch.cat(parts, dim=1)


def build_shard(cfg: AttendConfig, name: str, segments) -> torch.Tensor:
    """This rank's shard of ``name``: its ``[(start, length)]`` segments concatenated along dim 1."""
    parts = [rows_of(cfg, name, s, s + n) for s, n in segments]
    if not parts:
        return torch.empty(cfg.batch, 0, cfg.heads_of(name), cfg.head_dim, dtype=cfg.torch_dtype)
    return torch.cat(parts, dim=1).contiguous()


def sample_rows(cfg: AttendConfig) -> list[int]:
    """Up to ``check_rows`` distinct global rows: the first, the last (the longest causal row) and
    a seeded uniform sample of the rest."""
    n = min(cfg.check_rows, cfg.seq_len)
    if n == 0:
        return []
    chosen = {0, cfg.seq_len - 1} if n > 1 else {cfg.seq_len - 1}
    gen = torch.Generator().manual_seed(_chunk_seed(cfg.seed, "rows", 0))
    while len(chosen) < n:
        chosen.add(int(torch.randint(cfg.seq_len, (1,), generator=gen)))
    return sorted(chosen)


def reference_rows(cfg: AttendConfig, rows: list[int]) -> torch.Tensor:
    """Exact float64 attention output at global ``rows``: (batch, len(rows), heads, head_dim).

    Streams over K/V chunks with an online softmax, so memory is O(CHUNK), never O(L). Query head
    h reads K/V head h // (heads // kv_heads) (grouped-query attention, as in torch SDPA).
    """
    if not rows:
        return torch.empty(cfg.batch, 0, cfg.heads, cfg.head_dim, dtype=torch.float64)
    q = torch.cat([rows_of(cfg, "q", t, t + 1, torch.float64) for t in rows], dim=1)
    q = q * cfg.head_dim ** -0.5
    t_rows = torch.tensor(rows)
    last_key = max(rows) if cfg.causal else cfg.seq_len - 1
    group = cfg.heads // cfg.kv_heads
    shape = (cfg.batch, cfg.heads, len(rows))
    running_max = torch.full(shape, -math.inf, dtype=torch.float64)
    denom = torch.zeros(shape, dtype=torch.float64)
    acc = torch.zeros(*shape, cfg.head_dim, dtype=torch.float64)
    for index in range(last_key // CHUNK + 1):
        lo = index * CHUNK
        k = _chunk(cfg, "k", index).double().repeat_interleave(group, dim=2)
        v = _chunk(cfg, "v", index).double().repeat_interleave(group, dim=2)
        scores = torch.einsum("bihd,bjhd->bhij", q, k)
        if cfg.causal:
            keys = torch.arange(lo, lo + k.shape[1])
            scores = scores.masked_fill(keys[None, :] > t_rows[:, None], -math.inf)
        new_max = torch.maximum(running_max, scores.amax(dim=-1))
        # rows with every key masked so far keep max -inf; shift by 0 there to avoid inf - inf
        shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        p = torch.exp(scores - shift[..., None])
        correction = torch.exp(running_max - shift)
        denom = denom * correction + p.sum(dim=-1)
        acc = acc * correction[..., None] + torch.einsum("bhij,bjhd->bhid", p, v)
        running_max = new_max
    return (acc / denom[..., None]).permute(0, 2, 1, 3)


# ---------------------------------------------------------------------------------------------
# Accounting: flops and the communication volume each strategy should need.

def attention_flops(cfg: AttendConfig) -> float:
    """Multiply-adds x 2 of QK^T and PV: 4·B·H·L²·d; a causal mask halves it (the benchmark's count)."""
    from longmix.bench.attention import attention_flops as flops

    return flops(cfg.batch, cfg.heads, cfg.seq_len, cfg.head_dim, cfg.causal)


def theoretical_bytes_sent(strategy: str, cfg: AttendConfig, world: int,
                           hybrid_size: int | None = None) -> int | None:
    """Bytes one rank should send in one forward call, assuming equal shards.

    * shuffle: all-to-all of q, k, v to head shards and of the output back; each rank keeps 1/P
      of what it holds: 2·(P-1)·(L/P)·d·(H/P + max(HK/P, 1)) elements (= 4·L·H·d/P·(P-1)/P when
      HK = H). Under GQA with HK < P each rank still needs one whole K/V head.
    * ring: the K/V shard travels P-1 hops: (P-1)·(L/P)·2·HK·d elements (about 2·L·HK·d).
    * hybrid with shuffle groups of u: the shuffle formula over u ranks, then a ring over P/u
      groups carrying (u·L/P) rows of max(HK/u, 1) K/V heads.
    """
    B, L, H, HK, d, P = cfg.batch, cfg.seq_len, cfg.heads, cfg.kv_heads, cfg.head_dim, world
    item = torch.empty((), dtype=cfg.torch_dtype).element_size()
    if P == 1:
        return 0

    def shuffle(parts: int, rows: float) -> float:
        return 2 * (parts - 1) * rows * d * (H / parts + max(HK / parts, 1))

    if strategy == "shuffle":
        elements = shuffle(P, L / P)
    elif strategy == "ring":
        elements = (P - 1) * (L / P) * 2 * HK * d
    elif strategy == "hybrid" and hybrid_size:
        u, g = hybrid_size, P // hybrid_size
        elements = shuffle(u, L / P) + (g - 1) * (u * L / P) * 2 * max(HK / u, 1) * d
    else:
        return None
    return int(B * elements * item)


# ---------------------------------------------------------------------------------------------
# Progress on rank 0: a bar over the phases plus a heartbeat during the long calls.

class _Phases:
    def __init__(self, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=3, desc="longmix attend", file=sys.stderr, disable=not enabled,
                        bar_format="{desc} [{n}/{total} phases] |{bar}|")
        self.interval = 1.0 if sys.stderr.isatty() else 15.0

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        stop = threading.Event()

        def heartbeat():
            while not stop.wait(self.interval):
                self.bar.set_description_str(
                    f"longmix attend: {name}, {time.perf_counter() - start:.0f}s elapsed")

        self.bar.set_description_str(f"longmix attend: {name} ...")
        thread = threading.Thread(target=heartbeat, daemon=True)
        if not self.bar.disable:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()
            self.bar.set_description_str(
                f"longmix attend: {name} done in {time.perf_counter() - start:.1f}s")
            self.bar.update(1)

    def close(self):
        self.bar.close()


# ---------------------------------------------------------------------------------------------
# The job on one rank.

def _plan(cfg: AttendConfig, world: int):
    from longmix.dist import plan

    return plan(seq_len=cfg.seq_len, heads=cfg.heads, kv_heads=cfg.kv_heads,
                head_dim=cfg.head_dim, world_size=world, dtype=cfg.torch_dtype,
                causal=cfg.causal, layout=cfg.layout, batch=cfg.batch)


def strategy_error(cfg: AttendConfig, world: int) -> str | None:
    """Why ``cfg.strategy`` cannot run on ``world`` ranks (None when it can), before spawning any."""
    if world == 1 or cfg.strategy == "auto":
        return None
    option = _plan(cfg, world).option(cfg.strategy)
    if option.feasible:
        return None
    return (f"{cfg.strategy} cannot run heads={cfg.heads}, kv_heads={cfg.kv_heads} on {world} "
            f"ranks: {option.note.removeprefix('infeasible: ')}")


def attend_rank(group, cfg: AttendConfig, progress: bool = True) -> dict:
    """Generate this rank's shard, run longmix.dist.attention, verify sampled rows.

    Collective: every rank of ``group`` must call it. Returns the same full report on every rank
    (per-rank figures are all-gathered), so rank 0 of a torchrun job can print it.
    """
    from longmix.dist import attention
    from longmix.dist.layout import segments
    from longmix.dist.stats import CommStats

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    baseline_rss = current_rss_bytes()
    phases = _Phases(progress and rank == 0)
    segs = segments(cfg.seq_len, world, rank, cfg.layout)
    timings = {}
    try:
        with phases.phase("generate"):
            t0 = time.perf_counter()
            q, k, v = (build_shard(cfg, name, segs) for name in ("q", "k", "v"))
            timings["generate_s"] = time.perf_counter() - t0

        stats = CommStats()
        dist.barrier(group)
        with phases.phase("attend"):
            t0 = time.perf_counter()
            out = attention(q, k, v, causal=cfg.causal, group=group, strategy=cfg.strategy,
                            layout=cfg.layout, stats=stats)
            own_s = time.perf_counter() - t0
            dist.barrier(group)  # elapsed = until the slowest rank is done
            timings["attend_s"] = time.perf_counter() - t0
            timings["attend_own_s"] = own_s
        del q, k, v

        with phases.phase("verify"):
            t0 = time.perf_counter()
            check = _verify_local_rows(cfg, segs, out)
            timings["verify_s"] = time.perf_counter() - t0
    finally:
        phases.close()

    mine = {"rank": rank, "local_len": sum(n for _, n in segs), "segments": segs,
            "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received,
            "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline_rss,
            "threads": torch.get_num_threads(), **timings, **check}
    per_rank = [None] * world
    dist.all_gather_object(per_rank, mine, group=group)
    return _summarize(cfg, world, per_rank)


def _verify_local_rows(cfg: AttendConfig, segs, out: torch.Tensor) -> dict:
    """Compare this rank's sampled output rows with the float64 reference."""
    local_index, offset = {}, 0
    for start, length in segs:
        for t in sample_rows(cfg):
            if start <= t < start + length:
                local_index[t] = offset + t - start
        offset += length
    rows = sorted(local_index)
    if not rows:
        return {"rows_checked": [], "max_abs_err": 0.0, "max_rel_err": 0.0}
    got = out[:, [local_index[t] for t in rows]].double()
    ref = reference_rows(cfg, rows)
    diff = (got - ref).flatten(2)
    rel = diff.norm(dim=-1) / ref.flatten(2).norm(dim=-1).clamp_min(1e-300)
    finite = bool(torch.isfinite(got).all())
    return {"rows_checked": rows,
            "max_abs_err": float(diff.abs().max()) if finite else math.inf,
            "max_rel_err": float(rel.max()) if finite else math.inf}


def _summarize(cfg: AttendConfig, world: int, per_rank: list[dict]) -> dict:
    plan = _plan(cfg, world)
    # the strategy longmix.dist.attention runs: auto follows the plan, hybrid takes the plan's
    # group size, and one process always runs the local op
    strategy = plan.strategy if cfg.strategy == "auto" else cfg.strategy
    hybrid_size = plan.option("hybrid").hybrid_size if strategy == "hybrid" else None
    if world == 1:
        strategy, hybrid_size = "local", None
    elapsed = max(r["attend_s"] for r in per_rank)
    max_abs = max(r["max_abs_err"] for r in per_rank)
    max_rel = max(r["max_rel_err"] for r in per_rank)
    tol = TOLERANCE[cfg.dtype]
    checked = sum(len(r["rows_checked"]) for r in per_rank)
    return {
        "config": asdict(cfg),
        "world_size": world,
        "strategy": strategy,
        "hybrid_size": hybrid_size,
        "plan": {"strategy": plan.strategy, "reason": plan.reason,
                 "predicted_time_s": (plan.option(strategy).predicted_time_s
                                      if strategy in ("shuffle", "ring", "hybrid")
                                      else plan.predicted_time_s),
                 "bytes_per_rank": (plan.option(strategy).bytes_per_rank
                                    if strategy in ("shuffle", "ring", "hybrid") else 0)},
        "elapsed_s": elapsed,
        "flops": attention_flops(cfg),
        "gflops_per_s": attention_flops(cfg) / elapsed / 1e9 if elapsed > 0 else None,
        "theory_bytes_sent_per_rank": theoretical_bytes_sent(strategy, cfg, world, hybrid_size),
        "ranks": per_rank,
        "rows_checked": checked,
        "max_abs_err": max_abs,
        "max_rel_err": max_rel,
        "tolerance": tol,
        # every sampled row lives on exactly one rank, so all of them must have been checked
        "passed": checked == len(sample_rows(cfg)) and max_rel <= tol,
        "machine": describe(),
    }


# ---------------------------------------------------------------------------------------------
# Launch: spawn local ranks, or join torchrun's group.

def launched_by_torchrun() -> bool:
    """True when torchrun (or any env:// launcher) started this process as one rank of a group."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def run_local_job(cfg: AttendConfig, procs: int, progress: bool = True) -> dict:
    """Run the job on ``procs`` spawned gloo ranks on this machine; return rank 0's report."""
    from longmix.dist.launch import run_local

    reports = run_local(attend_rank, procs, args=(cfg, progress), timeout=cfg.timeout,
                        collective_timeout=cfg.timeout)
    report = reports[0]
    report["launch"] = f"{procs} local process(es), gloo"
    return report


def run_torchrun_job(cfg: AttendConfig, progress: bool = True) -> dict:
    """Join the process group torchrun set up (env://) and run the job; every rank gets the report."""
    backend = "gloo"  # the job's tensors live on the CPU
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.timeout))
    try:
        report = attend_rank(dist.group.WORLD, cfg, progress)
    finally:
        dist.destroy_process_group()
    report["launch"] = (f"torchrun, {report['world_size']} rank(s) "
                        f"({os.environ.get('LOCAL_WORLD_SIZE', '?')} on this node), gloo")
    return report


# ---------------------------------------------------------------------------------------------
# Reporting.

def _size(nbytes) -> str:
    if nbytes is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def format_report(report: dict) -> str:
    """The human summary `longmix attend` prints."""
    c = report["config"]
    plan = report["plan"]
    lines = [
        f"longmix attend: L={c['seq_len']:,} {'causal' if c['causal'] else 'non-causal'}, "
        f"batch {c['batch']}, heads {c['heads']} (kv_heads {c['kv_heads']}) x head_dim "
        f"{c['head_dim']}, {c['dtype']}, layout {c['layout']}",
        f"world size: {report['world_size']} ({report.get('launch', '')})",
    ]
    hybrid = f" (shuffle groups of {report['hybrid_size']})" if report.get("hybrid_size") else ""
    if c["strategy"] == "auto":
        lines.append(f"plan: {report['strategy']}{hybrid} -- {plan['reason']}")
    else:
        lines.append(f"plan: {report['strategy']}{hybrid} (requested); auto would pick "
                     f"{plan['strategy']} -- {plan['reason']}")
    ranks = report["ranks"]
    gen = max(r["generate_s"] for r in ranks)
    ver = max(r["verify_s"] for r in ranks)
    lines.append(f"elapsed: attention {report['elapsed_s']:.2f} s (generate {gen:.2f} s, "
                 f"verify {ver:.2f} s)")
    predicted = plan.get("predicted_time_s")
    if predicted:
        lines[-1] += f"; planner predicted {predicted:.3g} s"
    lines.append(f"throughput: {report['gflops_per_s']:.1f} GFLOP/s "
                 f"({report['flops']:.3g} flop{', causal counted as half' if c['causal'] else ''})")
    lines.append(f"communication per rank ({report['strategy']}): theory "
                 f"{_size(report['theory_bytes_sent_per_rank'])} sent, planner's model "
                 f"{_size(plan['bytes_per_rank'])}")
    lines.append("  rank  rows       threads  peak mem (start)      sent         received")
    for r in ranks:
        lines.append(f"  {r['rank']:>4}  {r['local_len']:<9,}  {r['threads']:>7}  "
                     f"{_size(r['peak_rss_bytes']):>9} ({_size(r['baseline_rss_bytes'])})  "
                     f"{_size(r['bytes_sent']):>11}  {_size(r['bytes_received']):>11}")
    verdict = "PASS" if report["passed"] else "FAIL"
    if report["rows_checked"] == 0:
        lines.append("verification: skipped (--check-rows 0)")
        return "\n".join(lines)
    lines.append(f"verification: {report['rows_checked']} sampled rows vs float64 reference: "
                 f"max abs err {report['max_abs_err']:.3g}, max rel err {report['max_rel_err']:.3g} "
                 f"(tolerance {report['tolerance']:g} for {c['dtype']}) {verdict}")
    return "\n".join(lines)
