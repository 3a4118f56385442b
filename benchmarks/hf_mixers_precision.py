"""How far transformers' float64 Mamba mixers are from float64: the tolerance of tests/hf/test_mixers.py.

    python benchmarks/hf_mixers_precision.py                 # 5 seeds, L in 1 7 33
    python benchmarks/hf_mixers_precision.py --seeds 10 --lengths 1 7 33 128

transformers keeps float32 casts inside a float64 ``MambaMixer`` (A_log, D, the dt bias, B and the
SSM input), ``JambaMambaMixer`` and ``FalconMambaMixer`` (also their dt/B/C RMSNorms). For small
random configs (every parameter perturbed from its init), this measures the relative error (||a - b|| / ||b||) of:

- ``hf64``: longmix's mixer from ``mixer_from_hf`` vs the HF module as it runs in float64, output
  and the worst gradient (input or any parameter): the float32 rounding HF keeps;
- ``exact``: the same vs the HF module with its float32 casts off (``longmix.hf.float64``):
  float64 rounding if the operators are the same;
- ``hf32``: the HF module run in float32 vs its float64-throughout run, for scale.

Writes ``hf_mixers_precision.{json,md}`` to ``--out-dir`` with the machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import FalconMambaConfig, JambaConfig, MambaConfig
from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaMixer
from transformers.models.jamba.modeling_jamba import JambaMambaMixer
from transformers.models.mamba.modeling_mamba import MambaMixer

from longmix.fileio import atomic_write_text
from longmix.hf import mixer_from_hf
from longmix.hf.float64 import float32_casts_off
from longmix.machine import describe, markdown
from longmix.provenance import provenance, utc_now
from longmix.bench.record import command_line

# the configs of tests/hf/test_mixers.py
CONFIGS = {
    "mamba": (MambaMixer, MambaConfig, dict(hidden_size=16, state_size=4, expand=2, conv_kernel=4,
                                            time_step_rank=3)),
    "mamba_biases": (MambaMixer, MambaConfig, dict(hidden_size=24, state_size=8, expand=1, conv_kernel=2,
                                                   time_step_rank="auto", use_conv_bias=False, use_bias=True,
                                                   hidden_act="swish")),
    "mamba_wide": (MambaMixer, MambaConfig, dict(hidden_size=32, state_size=6, expand=3, conv_kernel=1,
                                                 time_step_rank=5)),
    "jamba": (JambaMambaMixer, JambaConfig, dict(hidden_size=16, mamba_d_state=4, mamba_expand=2, mamba_d_conv=4,
                                                 mamba_dt_rank=3)),
    "jamba_biases": (JambaMambaMixer, JambaConfig, dict(hidden_size=24, mamba_d_state=8, mamba_expand=1,
                                                        mamba_d_conv=3, mamba_dt_rank=2, mamba_conv_bias=False,
                                                        mamba_proj_bias=True, rms_norm_eps=1e-3)),
    "falcon": (FalconMambaMixer, FalconMambaConfig, dict(hidden_size=16, state_size=4, expand=2, conv_kernel=3,
                                                         time_step_rank=3, mixer_rms_eps=1e-3, use_bias=True)),
}
BATCH = 2


def _construct(cls, config) -> torch.nn.Module:
    """cls(config, 0) in float64. FalconMambaMixer initializes its weights before it creates the
    norms whose weights that initialization sets (transformers 5.23), so it is initialized after."""
    if cls is FalconMambaMixer:
        module = cls(config, 0, initialize_mixer_weights=False)
        module.init_falcon_mamba_weights()
        return module.double()
    return cls(config, 0).double()


def hf_module(name: str, seed: int) -> torch.nn.Module:
    cls, config_cls, kwargs = CONFIGS[name]
    torch.manual_seed(seed)
    module = _construct(cls, config_cls(num_hidden_layers=1, **kwargs))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def rel_err(a, b) -> float:
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-300)).item()


def run(fn, module, x, dy):
    """(output, [dx, d every parameter]) of <fn(x), dy>."""
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = fn(x)
    y.backward(dy.to(y.dtype))
    grads = [x.grad] + [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return y.detach(), grads


def errors(a, b) -> tuple[float, float]:
    (ya, ga), (yb, gb) = a, b
    return rel_err(ya, yb), max(rel_err(u, v) for u, v in zip(ga, gb))


def measure(name: str, seed: int, length: int) -> dict:
    module = hf_module(name, seed)
    mixer = mixer_from_hf(module)
    g = torch.Generator().manual_seed(seed + 1000)
    x = torch.randn(BATCH, length, module.hidden_size, generator=g, dtype=torch.float64)
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    ours = run(mixer, module, x, dy)
    as_it_runs = run(module, module, x, dy)
    with float32_casts_off():
        exact = run(module, module, x, dy)
    module.float()
    in_float32 = run(module, module, x.float(), dy.float())
    row = {"config": name, "seed": seed, "length": length}
    for label, (a, b) in {"hf64": (ours, as_it_runs), "exact": (ours, exact), "hf32": (in_float32, exact)}.items():
        row[f"{label}_out"], row[f"{label}_grad"] = errors(a, b)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 7, 33])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    command = command_line("hf_mixers_precision.py", argv)
    rows = [measure(name, seed, length) for name in CONFIGS for seed in range(args.seeds) for length in args.lengths]
    keys = [k for k in rows[0] if k.endswith(("_out", "_grad"))]
    worst = {name: {k: max(r[k] for r in rows if r["config"] == name) for k in keys} for name in CONFIGS}
    for name, w in worst.items():
        print(f"{name:>14} " + "  ".join(f"{k} {v:.1e}" for k, v in w.items()), flush=True)
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(),
              "setting": {"seeds": args.seeds, "lengths": args.lengths, "batch": BATCH,
                          "configs": {n: c[2] for n, c in CONFIGS.items()}},
              "worst": worst, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "hf_mixers_precision.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / "hf_mixers_precision.md", _markdown(record, keys))
    return 0


def _markdown(record: dict, keys: list[str]) -> str:
    lines = ["# longmix mixers from HF Mamba mixers: relative error, worst over seeds and lengths", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
             f"Commit: {record['git_describe']} ({record['git_commit']}), "
             f"diff sha256 {record['git_diff_sha256']}  ",
             f"Setting: seeds {record['setting']['seeds']}, lengths {record['setting']['lengths']}, "
             f"batch {record['setting']['batch']}", "",
             "hf64: longmix vs HF as it runs in float64 (HF keeps float32 casts). exact: longmix vs HF with "
             "those casts off. hf32: HF in float32 vs HF in float64 throughout, for scale. _grad: the worst "
             "of the input's and every parameter's gradient.", "",
             "| config | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, w in record["worst"].items():
        lines.append(f"| {name} | " + " | ".join(f"{w[k]:.1e}" for k in keys) + " |")
    return "\n".join(lines) + "\n\n" + markdown(record["machine"]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
