"""Scaling of every token mixer: forward time and peak memory versus sequence length.

    cfg = SweepConfig(mixers=("s4d", "mamba"), min_log2_len=10, max_log2_len=14)
    store = run_sweep(cfg)            # measures, prints the table, writes the files below
    benchmarks/mixers_scaling.py      # the command-line front end

For each mixer and L = 2^min .. 2^max: a forward pass on x (batch, L, dim) under
``torch.no_grad``. Outputs in ``out_dir``:

* ``mixers_scaling.csv``: one row per measured point (or failed point), rewritten after every
  point, so an interrupted sweep keeps what it measured and a rerun skips those points (a
  failed point is not retried either, nor are longer ones, until ``force``);
* ``mixers_scaling.json``: the rows plus the configuration, machine, command and date of every
  run that contributed to them, and the points the last run skipped;
* ``mixers_scaling.md``: the table for the README, with machine, command and date;
* ``mixers_scaling.png``: log-log time vs L and memory vs L, one line per mixer.

How memory is measured. Each point runs in a fresh Python process. Within one process the
resident-memory high-water mark only grows and the allocator keeps freed pages, so points would
contaminate each other; and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the maximum over all
children ever waited for, not per child. So the child builds the mixer and its input, resets its
own high-water mark (``/proc/self/clear_refs``, Linux >= 4.0), runs the forward passes and
reports ``forward MB = VmHWM - VmRSS before the forward``: the peak extra resident memory of the
forward (activations, workspace, output), without the interpreter, torch, the weights or the
input. Where the reset is unavailable the mark includes the set-up (``hwm_reset`` is False in the
row). The process's total peak is recorded too (``peak_mb``).

How time is measured. The first call warms up; if it took under ``quick_s`` the forward runs
``repeats`` more times and the median is reported, otherwise the first call's time is.

Skipping. Before each point the time is predicted from the mixer's previous points: the last
time scaled by the larger of the growth its complexity (``taxonomy.time``) predicts and the
growth observed between its last two points. A point predicted over ``budget_s`` is not run
("skipped: predicted N s > budget"), nor are longer ones; a child that still runs past
1.5 budget_s + 60 s is killed and recorded as a timeout.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from longmix.checks import check_int
from longmix.dtypes import ALIASES, NAMES as DTYPES, dtype_name
from longmix.fileio import atomic_write_text
from longmix.plotting import pyplot
from longmix.provenance import utc_now

STEM = "mixers_scaling"
COLUMNS = ["mixer", "family", "length", "log2_length", "dim", "heads", "batch", "dtype", "causal",
           "status", "time_s", "repeats", "forward_mb", "peak_mb", "hwm_reset", "threads", "run", "note"]
KEY = ("mixer", "length", "dim", "batch", "dtype", "causal")


@dataclass(frozen=True)
class SweepConfig:
    """One sweep. ``mixers`` empty means every registered mixer."""

    mixers: tuple[str, ...] = ()
    min_log2_len: int = 10
    max_log2_len: int = 20
    dim: int = 64
    heads: int = 4  # 1 for mixers that do not use heads (class attribute ``uses_heads = False``)
    batch: int = 1
    dtype: str = "fp32"
    causal: bool = False
    budget_s: float = 600.0
    repeats: int = 3
    quick_s: float = 2.0
    out_dir: str = "benchmarks/results"
    force: bool = False
    command: str = ""  # recorded with the results; defaults to this process's argv

    def __post_init__(self):
        for name in ("min_log2_len", "max_log2_len", "repeats", "dim", "heads", "batch"):
            low = 0 if name in ("min_log2_len", "max_log2_len", "repeats") else 1
            check_int(name, getattr(self, name), low)
        if self.min_log2_len > self.max_log2_len:
            raise ValueError(f"min_log2_len ({self.min_log2_len}) must be <= max_log2_len ({self.max_log2_len})")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s!r}")

    @property
    def lengths(self) -> list[int]:
        return [2 ** k for k in range(self.min_log2_len, self.max_log2_len + 1)]


# -- one point, in the child process --------------------------------------------------------
def measure_point(mixer: str, length: int, dim: int = 64, heads: int = 4, batch: int = 1,
                  dtype: str = "fp32", causal: bool = False, repeats: int = 3,
                  quick_s: float = 2.0, seed: int = 0) -> dict:
    """Time and memory of one forward pass, in this process (the sweep calls it in a fresh one)."""
    import torch

    from longmix import mixers
    from longmix.machine import current_rss_bytes, peak_rss_bytes, reset_peak_rss

    torch.manual_seed(seed)
    cls = mixers.get_class(mixer)
    heads = heads if cls.uses_heads else 1
    from longmix.dtypes import DTYPES as TORCH_DTYPES

    dt = TORCH_DTYPES[dtype_name(dtype)]
    model = mixers.build(mixer, dim, heads=heads, causal=causal, max_len=length).to(dt).eval()
    x = torch.randn(batch, length, dim, dtype=dt)
    rss_before = current_rss_bytes()
    reset = reset_peak_rss()
    times = []
    with torch.no_grad():
        for i in range(1 + repeats):
            start = time.perf_counter()
            y = model(x)
            times.append(time.perf_counter() - start)
            del y
            if times[0] >= quick_s:
                break
    peak = peak_rss_bytes()
    measured = times[1:] or times
    return {"mixer": mixer, "family": cls.taxonomy.family, "heads": heads,
            "time_s": statistics.median(measured), "repeats": len(measured),
            "forward_mb": (peak - rss_before) / 2 ** 20, "peak_mb": peak / 2 ** 20,
            "hwm_reset": reset, "threads": torch.get_num_threads()}


def _child_main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    try:
        result = measure_point(**spec)
    except Exception as e:  # reported to the parent as a failed point
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
    return 0


# -- prediction -----------------------------------------------------------------------------
def growth(complexity: str):
    """f(L) from a complexity string such as "O(L^2)", "O(L log L)", "O(L sqrt L)", "O(L k)"."""
    s = complexity.replace(" ", "")
    power = re.search(r"L\^\(?([0-9.]+)", s)
    if power:
        p = float(power.group(1))
    elif "L²" in s:
        p = 2.0
    elif "L" in s:
        p = 1.0
    else:
        p = 2.0  # unknown: assume the worst common case
    if re.search(r"sqrt\(?L|√L", s):
        p += 0.5
    has_log = bool(re.search(r"log\(?L", s))
    return lambda n: n ** p * (math.log2(n) if has_log and n > 1 else 1.0)


def predict_time(points: list[tuple[int, float]], length: int, complexity: str) -> float | None:
    """Predicted time at ``length`` from earlier (length, time) points; None without any."""
    points = sorted(p for p in points if p[0] < length)
    if not points:
        return None
    f = growth(complexity)
    l1, t1 = points[-1]
    ratio = f(length) / f(l1)
    if len(points) >= 2:
        l0, t0 = points[-2]
        if t0 > 0 and t1 > 0:
            ratio = max(ratio, (t1 / t0) ** (math.log(length / l1) / math.log(l1 / l0)))
    return t1 * ratio


# -- the result files -----------------------------------------------------------------------
class ResultStore:
    """The CSV of measured points, keyed by (mixer, length, dim, batch, dtype, causal).

    ``put`` replaces a point and rewrites the file atomically (temporary file + rename), so a
    killed sweep never leaves a half-written row and ``--force`` never duplicates a point.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: dict[tuple, dict] = {}
        if self.path.exists():
            with open(self.path, newline="") as f:
                for row in csv.DictReader(f):
                    row = _parse_row(row)
                    self.rows[_key(row)] = row

    def __contains__(self, key) -> bool:
        return key in self.rows

    def put(self, row: dict) -> None:
        self.rows[_key(row)] = row
        atomic_write_text(self.path, _csv_text(self.sorted_rows()))

    def sorted_rows(self) -> list[dict]:
        return sorted(self.rows.values(), key=lambda r: (r["mixer"], r["causal"], r["dtype"], r["dim"],
                                                         r["batch"], r["length"]))

    def times(self, mixer: str, cfg: SweepConfig) -> list[tuple[int, float]]:
        return [(r["length"], r["time_s"]) for r in self.rows.values()
                if r["status"] == "ok" and _same_setting(r, cfg) and r["mixer"] == mixer]


def _key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY)


def _same_setting(row: dict, cfg: SweepConfig) -> bool:
    return (row["dim"], row["batch"], row["dtype"], row["causal"]) == (cfg.dim, cfg.batch, cfg.dtype, cfg.causal)


def _parse_row(row: dict) -> dict:
    out = dict(row)
    for k in ("length", "log2_length", "dim", "heads", "batch", "repeats", "threads"):
        out[k] = int(row[k]) if row.get(k) not in (None, "") else None
    for k in ("time_s", "forward_mb", "peak_mb"):
        out[k] = float(row[k]) if row.get(k) not in (None, "") else None
    for k in ("causal", "hwm_reset"):
        out[k] = row.get(k) == "True"
    out["dtype"] = ALIASES.get(row.get("dtype"), row.get("dtype"))  # rows written before fp32/bf16
    return out


def _csv_text(rows: list[dict]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    return buf.getvalue()


# -- the sweep ------------------------------------------------------------------------------
@dataclass
class SweepLog:
    """What one run did besides measuring: skipped points with their reason."""

    skipped: list[dict] = field(default_factory=list)


def run_point(cfg: SweepConfig, mixer: str, length: int, timeout_s: float) -> dict:
    """Measure one point in a fresh process; returns a CSV row (status ok / error / timeout)."""
    spec = dict(mixer=mixer, length=length, dim=cfg.dim, heads=cfg.heads, batch=cfg.batch,
                dtype=cfg.dtype, causal=cfg.causal, repeats=cfg.repeats, quick_s=cfg.quick_s)
    row = dict(mixer=mixer, family=_family(mixer), length=length, log2_length=int(math.log2(length)), dim=cfg.dim,
               heads=None, batch=cfg.batch, dtype=cfg.dtype, causal=cfg.causal)
    try:
        proc = subprocess.run([sys.executable, "-m", "longmix.bench.mixers", "--point", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**row, "status": "timeout", "note": f"killed after {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    result = None
    if proc.returncode == 0 and lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if result is None:
        last_err = (proc.stderr.strip().splitlines() or [""])[-1]
        why = (f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0
               else f"exit {proc.returncode}: {last_err}")
        return {**row, "status": "error", "note": why}
    if "error" in result:
        return {**row, "status": "error", "note": result["error"]}
    return {**row, **result, "status": "ok", "note": ""}


def _family(mixer: str) -> str:
    from longmix import mixers

    return mixers.get_class(mixer).taxonomy.family


def run_sweep(cfg: SweepConfig, progress: bool = True, echo=print) -> ResultStore:
    """Measure every (mixer, L) point of ``cfg`` not measured yet, then write the reports."""
    from tqdm import tqdm

    from longmix import mixers
    from longmix.machine import describe

    names = list(cfg.mixers) or mixers.available()
    for name in names:
        mixers.get_class(name)  # ValueError listing the valid names
    if cfg.causal:
        dropped = [n for n in names if not mixers.get_class(n).taxonomy.causal]
        if dropped:
            echo(f"not causal, left out of a --causal sweep: {', '.join(dropped)}")
        names = [n for n in names if n not in dropped]
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / f"{STEM}.csv")
    machine = describe()
    run_id = utc_now()
    command = cfg.command or shlex.join([Path(sys.executable).name] + sys.argv)
    runs = _load_runs(out / f"{STEM}.json")
    runs[run_id] = {"machine": machine, "command": command, "config": asdict(cfg)}
    log = SweepLog()
    timeout_s = 1.5 * cfg.budget_s + 60
    bar = tqdm(total=len(names) * len(cfg.lengths), desc="mixers", unit="point", disable=not progress)
    try:
        for name in names:
            complexity = mixers.get_class(name).taxonomy.time
            stop = None  # once a point fails or is skipped, longer ones are skipped too
            for length in cfg.lengths:
                bar.set_postfix_str(f"{name} L=2^{int(math.log2(length))}")
                key = (name, length, cfg.dim, cfg.batch, cfg.dtype, cfg.causal)
                if key in store and not cfg.force:
                    if store.rows[key]["status"] != "ok":
                        stop = store.rows[key]["status"]
                    bar.update()
                    continue
                predicted = predict_time(store.times(name, cfg), length, complexity)
                if stop is None and predicted is not None and predicted > cfg.budget_s:
                    stop = "over budget"
                if stop is not None:
                    reason = (f"predicted {predicted:.0f} s > budget {cfg.budget_s:.0f} s"
                              if stop == "over budget" and predicted is not None else f"a shorter point: {stop}")
                    log.skipped.append({"mixer": name, "length": length, "reason": reason})
                    bar.write(f"{name:>12} L=2^{int(math.log2(length)):<2} skipped: {reason}")
                    bar.update()
                    continue
                row = {**run_point(cfg, name, length, timeout_s), "run": run_id}
                store.put(row)
                bar.write(_describe_row(row))
                if row["status"] != "ok":
                    stop = row["status"]
                bar.update()
    finally:
        bar.close()
        write_reports(store, cfg, runs, log, out)
    echo(format_table(store, cfg, names))
    return store


def _describe_row(row: dict) -> str:
    head = f"{row['mixer']:>12} L=2^{row['log2_length']:<2}"
    if row["status"] != "ok":
        return f"{head} {row['status']}: {row.get('note', '')}"
    return f"{head} {row['time_s']:9.4f} s  {row['forward_mb']:9.1f} MB (x{row['repeats']})"


def _load_runs(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text()).get("runs", {})
    except (json.JSONDecodeError, AttributeError):
        return {}


# -- reports --------------------------------------------------------------------------------
def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["status"] != "ok":
        return row["status"]
    t = row["time_s"]
    t_text = f"{t:.3g} s" if t >= 1e-3 else f"{t * 1e3:.2g} ms"
    return f"{t_text}, {row['forward_mb']:.0f} MB"


def _grid(store: ResultStore, cfg: SweepConfig, names: list[str]):
    rows = {(r["mixer"], r["length"]): r for r in store.rows.values() if _same_setting(r, cfg)}
    family = {r["mixer"]: r["family"] for r in rows.values() if r.get("family")}
    lengths = sorted(set(cfg.lengths) | {n for m, n in rows if m in names})  # earlier runs' too
    header = ["mixer", "family"] + [f"2^{int(math.log2(n))}" for n in lengths]
    body = [[name, family.get(name, "?")] + [_cell(rows.get((name, n))) for n in lengths] for name in names]
    return header, body


def format_table(store: ResultStore, cfg: SweepConfig, names: list[str]) -> str:
    """Plain-text table: mixer x L, each cell 'time, forward MB'."""
    header, body = _grid(store, cfg, names)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + body]
    return "\n".join(lines)


def markdown_table(store: ResultStore, cfg: SweepConfig, names: list[str], runs: dict) -> str:
    """The README table, captioned with the machine, command and date of the runs behind it."""
    from longmix.machine import markdown

    header, body = _grid(store, cfg, names)
    used = sorted({r["run"] for r in store.rows.values() if _same_setting(r, cfg) and r["mixer"] in names})
    lines = [f"Forward pass of each token mixer under `torch.no_grad`: batch {cfg.batch}, dim {cfg.dim}, "
             f"{cfg.dtype}{', causal' if cfg.causal else ''}. Each cell: wall time (median of "
             f"{cfg.repeats} after a warm-up when quick), peak extra resident memory of the forward "
             f"(fresh process per point). A `-` is a point not run (predicted over the "
             f"{cfg.budget_s:.0f} s budget, or beyond a failed one).", ""]
    for run_id in used:
        run = runs.get(run_id, {})
        machine = markdown(run["machine"]) if "machine" in run else "unknown machine"
        lines.append(f"- {run_id}: {machine}; command: `{run.get('command', '?')}`")
    lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def plot(store: ResultStore, cfg: SweepConfig, names: list[str], path: Path) -> None:
    """Log-log time vs L and forward memory vs L, one line per mixer."""
    plt = pyplot()

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.5))
    plotted = False
    for i, name in enumerate(names):
        style = dict(marker="o", label=name, linestyle=("-", "--", "-.", ":")[i // 10 % 4])  # 10 colours
        pts = sorted((r["length"], r["time_s"], r["forward_mb"]) for r in store.rows.values()
                     if r["mixer"] == name and r["status"] == "ok" and _same_setting(r, cfg))
        if not pts:
            continue
        lengths, times, mems = zip(*pts)
        ax_t.plot(lengths, times, **style)
        ax_m.plot(lengths, [max(m, 1e-2) for m in mems], **style)
        plotted = True
    for ax, label in ((ax_t, "forward time (s)"), (ax_m, "peak extra memory of the forward (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    if plotted:
        ax_t.legend(fontsize=8, ncol=2)
    fig.suptitle(f"token mixers: batch {cfg.batch}, dim {cfg.dim}, {cfg.dtype}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(store: ResultStore, cfg: SweepConfig, runs: dict, log: SweepLog, out: Path) -> None:
    """JSON (rows, runs, skipped), markdown table and PNG, from everything in the store."""
    names = sorted({r["mixer"] for r in store.rows.values() if _same_setting(r, cfg)}
                   | ({s["mixer"] for s in log.skipped}))
    last_run = max(runs) if runs else None
    summary = {"last_run": last_run, "date": last_run, "command": runs.get(last_run, {}).get("command"),
               "machine": runs.get(last_run, {}).get("machine"), "config": asdict(cfg),
               "runs": runs, "skipped_in_last_run": log.skipped, "points": store.sorted_rows()}
    atomic_write_text(out / f"{STEM}.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / f"{STEM}.md", markdown_table(store, cfg, names, runs))
    if names:
        plot(store, cfg, names, out / f"{STEM}.png")


# -- command line ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SweepConfig()
    parser.add_argument("--mixers", nargs="+", default=[],
                        help="mixer names (space- or comma-separated); default: every registered mixer")
    parser.add_argument("--min-log2-len", type=int, default=d.min_log2_len)
    parser.add_argument("--max-log2-len", type=int, default=d.max_log2_len)
    parser.add_argument("--dim", type=int, default=d.dim)
    parser.add_argument("--heads", type=int, default=d.heads, help="(1 for mixers without heads)")
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--dtype", type=dtype_name, default=d.dtype,
                        help=f"one of {', '.join(DTYPES)} (or {', '.join(ALIASES)})")
    parser.add_argument("--causal", action="store_true", help="causal mode (only causal-capable mixers)")
    parser.add_argument("--budget-s", type=float, default=d.budget_s,
                        help="skip points predicted to take longer than this (seconds per forward)")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed repeats after the warm-up")
    parser.add_argument("--out-dir", default=d.out_dir)
    parser.add_argument("--force", action="store_true", help="re-measure points already in the CSV")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def config_from_args(args: argparse.Namespace, command: str = "") -> SweepConfig:
    names = tuple(n for item in args.mixers for n in item.split(",") if n)
    return SweepConfig(mixers=names, min_log2_len=args.min_log2_len, max_log2_len=args.max_log2_len,
                       dim=args.dim, heads=args.heads, batch=args.batch, dtype=args.dtype,
                       causal=args.causal, budget_s=args.budget_s, repeats=args.repeats,
                       out_dir=args.out_dir, force=args.force, command=command)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--point":
        sys.exit(_child_main(sys.argv[2:]))
    sys.exit("usage: python -m longmix.bench.mixers --point JSON (internal); "
             "run benchmarks/mixers_scaling.py for the sweep")
