"""Which transformers causal LMs ``longmix.hf.parallelize`` covers, and why the others are refused.

    python benchmarks/coverage_hf.py                    # every model type of the CausalLM auto map
    python benchmarks/coverage_hf.py --only llama mamba

For each model type in transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, builds the model from
its default config on the meta device (full size, no memory, no weights) and runs
``longmix.hf.plan_hf`` on it: the planning ``parallelize`` does before copying anything. Nothing
runs and nothing downloads. A model whose construction fails on this machine (a missing optional
package, a config that needs arguments) is listed as "not built" with the error.

Writes ``hf_coverage.{json,md}`` to ``--out-dir`` with the machine, command, date, commit and the
transformers version. Whether SSM layers are mapped depends on ``longmix.hf.mixers`` being
present (recorded as ``mixers_mapped``).
"""
from __future__ import annotations

import argparse
import collections
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.provenance import provenance, utc_now


def classify(model_type: str) -> dict:
    """One row: the model type, its class, and "covered" (with its layers) / "refused" / "not built"."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    import longmix.hf as lh

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    row = {"model_type": model_type, "class": name if isinstance(name, str) else "/".join(name)}
    start = time.perf_counter()
    try:
        config = AutoConfig.for_model(model_type)
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformers.logging.set_verbosity_error()
            model = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # noqa: BLE001 - a row per failure, whatever it is
        row.update(status="not built", reason=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
        return row
    try:
        layers = lh.plan_hf(model)
    except ValueError as err:
        row.update(status="refused", reason=str(err).removeprefix("longmix.hf.parallelize: "))
    except Exception as err:  # noqa: BLE001 - a planning bug is a row to fix, not a crash
        row.update(status="plan error", reason=f"{type(err).__name__}: {err}")
    else:
        kinds = collections.Counter(
            p.kind + (f" (window {p.window})" if p.window else "") for p in layers)
        row.update(status="covered", reason=", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def main(argv=None) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model types to classify (default: all)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    import transformers

    import longmix.hf.plan as plan

    types = args.only or list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    rows = []
    for model_type in types:
        rows.append(classify(model_type))
        print(f"{rows[-1]['status']:>9}  {model_type}: {rows[-1]['reason']}", flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(),
              "transformers": transformers.__version__,
              "mixers_mapped": sorted(plan.HF_MIXER_CLASSES), "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "hf_coverage.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / "hf_coverage.md", _markdown(record))


def _markdown(record: dict) -> str:
    counts = collections.Counter(r["status"] for r in record["rows"])
    lines = [f"# longmix.hf coverage of transformers {record['transformers']} causal LMs", "",
             f"`{record['command']}` on {record['date']}, commit {record['git_describe']}. "
             f"Each model built from its default config on the meta device and planned by "
             f"`longmix.hf.plan_hf` (nothing run). SSM mixers mapped: "
             f"{', '.join(record['mixers_mapped']) or 'none (longmix.hf.mixers absent)'}.", "",
             f"**{counts['covered']} covered, {counts['refused']} refused, "
             f"{counts['not built']} not built, {counts['plan error']} planning errors** of "
             f"{len(record['rows'])}. Covered means planned; exactness is tested for Llama, "
             f"Qwen3, Mistral, Gemma3, Mamba, Jamba, Mamba-2, Bamba, Nemotron-H, Zamba2, "
             f"Granite-MoE-Hybrid, Qwen3-Next and Mixtral, the last four and Jamba with their "
             f"router loss (tests/hf).", "",
             "| model type | class | status | layers or reason |", "|---|---|---|---|"]
    for r in record["rows"]:
        reason = r["reason"].replace("|", "\\|")
        lines.append(f"| {r['model_type']} | {r['class']} | {r['status']} | {reason} |")
    return "\n".join(lines) + "\n\n" + markdown(record["machine"]) + "\n"


if __name__ == "__main__":
    main()
