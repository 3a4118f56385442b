"""Useful tokens per second of a training step: the same documents padded to the longest, or
packed into sequences of --context tokens with their cu_seqlens (``longmix train --pack``).

    python benchmarks/packed_vs_padded.py                        # softmax and mamba, C = 1024
    python benchmarks/packed_vs_padded.py --context 2048 --rows 2 --median 128 --repeats 7
    python benchmarks/packed_vs_padded.py --device cuda          # on a GPU

The documents have log-normal lengths (``--median``, ``--sigma``: a skewed mix, most short, a
long tail), clipped to [1, --context], with random byte tokens. They are packed by the trainer's
own packer (:func:`longmix.train.packing.pack`: ``--rows`` sequences of ``--context`` tokens, the
room left at the end of a sequence padded); the padded batch stacks the very same documents,
right-padded to the longest of them (a batch of documents as one would run it without packing).
A step is the forward pass of an LM (``longmix.models``, dim ``--dim``, depth ``--depth``), the
cross entropy over every document's own targets, and the backward pass; both variants compute
the same loss (checked, and reported), so their gradients are the same step. Useful tokens are
the documents' tokens; tokens/s = useful tokens / median seconds per step. The variants are timed
in turns (A B A B ...) so that load on a shared machine lands on both alike.

Writes ``packed_vs_padded.{json,md}`` to ``--out-dir`` with the machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.models import ModelConfig, build_model
from longmix.provenance import provenance, utc_now
from longmix.train.loss import UNSCORED, loss_sum
from longmix.train.packing import pack
from longmix.bench.record import command_line

VOCAB = 256
PAD = 0


def document_mix(rng: np.random.Generator, median: float, sigma: float, context: int):
    """An endless stream of (x, y) documents, log-normal lengths clipped to [1, context]; tokens
    in [1, VOCAB) (0 is padding)."""
    while True:
        n = int(np.clip(round(rng.lognormal(np.log(median), sigma)), 1, context))
        tokens = torch.as_tensor(rng.integers(1, VOCAB, size=n + 1), dtype=torch.long)
        yield tokens[:-1], tokens[1:]


def padded(documents: list[tuple[torch.Tensor, torch.Tensor]]):
    """The documents right-padded to the longest: x (n, longest), target (n, longest)."""
    longest = max(len(x) for x, _ in documents)
    x = torch.full((len(documents), longest), PAD, dtype=torch.long)
    target = torch.full((len(documents), longest), UNSCORED, dtype=torch.long)
    for i, (dx, dy) in enumerate(documents):
        x[i, :len(dx)], target[i, :len(dy)] = dx, dy
    return x, target


class Step:
    """Forward, loss over the documents' targets, backward: padded (one call on the batch) or
    packed (one call per sequence, batch 1 with its cu_seqlens)."""

    def __init__(self, model, batches):
        self.model, self.batches = model, batches  # [(x, target, cu_seqlens or None)]

    def run(self) -> tuple[float, float]:
        """(seconds, the mean loss)."""
        start = time.perf_counter()
        total, scored = 0.0, sum(int((t != UNSCORED).sum()) for _, t, _ in self.batches)
        for x, target, cu in self.batches:
            logits = self.model(x) if cu is None else self.model(x, cu_seqlens=cu)
            loss, _ = loss_sum(logits, target, "lm")
            (loss / scored).backward()
            total += loss.item()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        self.model.zero_grad(set_to_none=True)
        return elapsed, total / scored


def measure(mixer: str, args, device: torch.device) -> dict:
    rng = np.random.default_rng(args.seed)
    batch = pack(document_mix(rng, args.median, args.sigma, args.context), args.rows, args.context, PAD)
    # the documents the packer used, in order: cut the packed rows at their cu_seqlens
    documents = [(batch.x[r, a:b], batch.y[r, a:b]) for r, cu in enumerate(batch.cu_seqlens)
                 for a, b in zip(cu.tolist(), cu.tolist()[1:]) if bool((batch.x[r, a:b] != PAD).any())]
    assert len(documents) == batch.documents
    torch.manual_seed(args.seed)
    model = build_model(ModelConfig(vocab_size=VOCAB, mixer=mixer, head="lm", dim=args.dim,
                                    depth=args.depth, heads=args.heads if mixer == "softmax" else 1,
                                    max_len=args.context)).to(device)
    x, target = padded(documents)
    packed_target = torch.where(batch.y == PAD, UNSCORED, batch.y)
    steps = {
        "padded": Step(model, [(x.to(device), target.to(device), None)]),
        "packed": Step(model, [(batch.x[r:r + 1].to(device), packed_target[r:r + 1].to(device),
                                batch.cu_seqlens[r].to(device)) for r in range(batch.rows)]),
    }
    times, losses = {k: [] for k in steps}, {}
    for i in range(args.warmup + args.repeats):
        for name, step in steps.items():
            seconds, losses[name] = step.run()
            if i >= args.warmup:
                times[name].append(seconds)
    useful = batch.tokens
    row = {"mixer": mixer, "documents": len(documents), "useful_tokens": useful,
           "longest": x.shape[1], "loss_difference": abs(losses["padded"] - losses["packed"])}
    for name, computed in (("padded", x.numel()), ("packed", batch.x.numel())):
        median = statistics.median(times[name])
        row[name] = {"tokens_computed": computed, "padding_fraction": 1 - useful / computed,
                     "median_s": median, "useful_tokens_per_s": useful / median,
                     "times_s": times[name]}
    row["packed_over_padded"] = row["packed"]["useful_tokens_per_s"] / row["padded"]["useful_tokens_per_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixers", nargs="+", default=["softmax", "mamba"])
    parser.add_argument("--context", type=int, default=1024, help="tokens per packed sequence")
    parser.add_argument("--rows", type=int, default=4, help="packed sequences per step")
    parser.add_argument("--median", type=float, default=64, help="median document length")
    parser.add_argument("--sigma", type=float, default=1.2, help="log-normal sigma of the lengths")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2, help="softmax heads")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--stem", default="packed_vs_padded", help="name of the result files")
    parser.add_argument("--machine-shared", action="store_true",
                        help="say in the results that other jobs shared the machine meanwhile")
    args = parser.parse_args(argv)
    command = command_line("packed_vs_padded.py", argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    rows = []
    for mixer in args.mixers:
        rows.append(measure(mixer, args, device))
        r = rows[-1]
        print(f"{mixer:>8}: {r['documents']} documents, {r['useful_tokens']} tokens, longest {r['longest']}; "
              f"padded {r['padded']['useful_tokens_per_s']:.0f} tok/s (padding "
              f"{r['padded']['padding_fraction']:.1%}), packed {r['packed']['useful_tokens_per_s']:.0f} "
              f"tok/s (padding {r['packed']['padding_fraction']:.1%}): x{r['packed_over_padded']:.2f}; "
              f"loss difference {r['loss_difference']:.1e}", flush=True)
    setting = {k: getattr(args, k) for k in ("context", "rows", "median", "sigma", "dim", "depth", "heads",
                                             "warmup", "repeats", "seed", "device")}
    setting["torch_threads"] = torch.get_num_threads()
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(args.device),
              "machine_shared": args.machine_shared, "setting": setting, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / f"{args.stem}.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / f"{args.stem}.md", _markdown(record))
    return 0


def _markdown(record: dict) -> str:
    s = record["setting"]
    lines = ["# Packed vs padded: useful tokens per second of a training step", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
             f"Commit: {record['git_describe']} ({record['git_commit']}), "
             f"diff sha256 {record['git_diff_sha256']}  ",
             f"Setting: {', '.join(f'{k} {v}' for k, v in s.items())}", "",
             f"Documents: log-normal lengths (median {s['median']}, sigma {s['sigma']}) clipped to "
             f"[1, {s['context']}], packed into {s['rows']} sequences of {s['context']} tokens "
             f"(batch 1 each, cu_seqlens) or stacked and right-padded to the longest. Step: forward, "
             f"cross entropy over the documents' own targets, backward. Median of {s['repeats']} "
             f"steps, the two variants timed in turns.", "",
             "| mixer | documents | useful tokens | longest | padded: padding | padded: tok/s | "
             "packed: padding | packed: tok/s | packed / padded | loss difference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['mixer']} | {r['documents']} | {r['useful_tokens']} | {r['longest']} | "
                     f"{r['padded']['padding_fraction']:.1%} | {r['padded']['useful_tokens_per_s']:.0f} | "
                     f"{r['packed']['padding_fraction']:.1%} | {r['packed']['useful_tokens_per_s']:.0f} | "
                     f"{r['packed_over_padded']:.2f} | {r['loss_difference']:.1e} |")
    if record["machine_shared"]:
        lines += ["", "The machine was shared with other jobs while this ran: timings are noisy, and "
                  "the ratio, measured side by side in one run, is the figure to read. Document and "
                  "padding counts are exact."]
    return "\n".join(lines) + "\n\n" + markdown(record["machine"]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
