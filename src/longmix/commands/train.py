"""`longmix train`: train one model on one task, with checkpoints and resume.

    longmix train --task passkey --mixer softmax --context 256 --out runs/pk
    longmix train ... --procs 2                       # every sequence split over 2 local ranks
    torchrun --nproc-per-node 2 -m longmix.cli train ...   # joins torchrun's group instead
    longmix train ... --context 4096 --init-from runs/pk   # continue a curriculum at a longer context
    longmix train --task text --task-param length=512 --mixer mamba --context 2048 --pack
    longmix train --task passkey --hf-model my_llama/ --context 8192 --procs 2   # a transformers model

Rerun the same command to resume after an interruption; a finished run is not trained twice.
Exit status: 0 done, 2 bad arguments or an unusable run folder (busy, damaged checkpoint),
3 the loss diverged (recorded in results.jsonl), 1 a rank failed (its traceback is printed).
"""
from __future__ import annotations

import os
import sys

from ..vocabulary import FORMS, LAYOUTS, PLANS

EXIT_RANK_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 1, 2, 3


def add_arguments(parser):
    a = parser.add_argument
    a("--task", required=True, help="task name (see longmix.tasks.available())")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--mixer", help="mixer name (see `longmix mixers`) of a longmix model")
    model.add_argument("--hf-model", metavar="DIR",
                       help="train a Hugging Face causal LM instead: a local folder written by "
                            "save_pretrained (config.json; its weights, or none: initialised from "
                            "the config with --seed). Nothing downloads. The task is next-token "
                            "prediction (a class is an answer token after the task's vocabulary); "
                            "--procs splits it through longmix.hf.parallelize")
    a("--context", type=int, required=True, help="tokens the model sees (the last C of each example)")
    a("--steps", type=int, default=500, help="optimizer steps (default 500)")
    a("--batch-size", type=int, default=32, help="examples per step (default 32)")
    a("--dim", type=int, default=64, help="model width (default 64)")
    a("--depth", type=int, default=2, help="number of blocks (default 2)")
    a("--heads", type=int, default=1, help="mixer heads (default 1)")
    a("--lr", type=float, default=1e-3, help="peak learning rate of AdamW (default 1e-3)")
    a("--weight-decay", type=float, default=0.01, help="AdamW weight decay on matrices (default 0.01)")
    a("--warmup", type=int, default=None, help="linear warmup steps (default: 10%% of --steps)")
    a("--grad-clip", type=float, default=1.0, help="max gradient norm (default 1.0)")
    a("--seed", type=int, default=0, help="seed of the task, the model and every RNG (default 0)")
    a("--eval-every", type=int, default=100, help="evaluate on the valid split every N steps (default 100)")
    a("--eval-batches", type=int, default=8, help="batches per evaluation (default 8)")
    a("--eval-last", type=int, default=32,
      help="lm tasks: score the last N positions at evaluation, the same for every context (default 32)")
    a("--checkpoint-every", type=int, default=50, help="checkpoint every N steps (default 50)")
    a("--positional", default="auto", choices=["auto", "sinusoidal", "learned", "none"],
      help="positional information (default: by mixer family, see longmix.models.positional)")
    a("--pool", default="auto", choices=["auto", "mean", "last"],
      help="classification pooling (default: mean over non-pad tokens; last for causal models)")
    a("--causal", action="store_true",
      help="causal mixers for classification too (the lm head is always causal); with --pool last "
           "the last token then reads the whole sequence, as a recurrent model does")
    a("--init-from", default=None, metavar="RUN_DIR",
      help="start from the weights of the finished run in RUN_DIR (same mixer and sizes; the "
           "context, task and learning rate may differ): a curriculum of growing contexts")
    a("--task-param", action="append", default=[], metavar="K=V", help="task parameter (repeatable)")
    a("--mixer-option", action="append", default=[], metavar="K=V",
      help="mixer constructor option (repeatable); max_len=N caps the context")
    a("--out", default="runs/train", help="run directory: checkpoint.pt and results.jsonl (default runs/train)")
    a("--device", default="cpu", help="cpu, cuda[:N] or auto (default cpu)")
    a("--threads", type=int, default=None,
      help="torch CPU threads (per rank with --procs; default: torch's choice, or cores / procs)")
    a("--procs", type=int, default=None,
      help="local ranks (gloo) to split every sequence over (default 1); under torchrun its "
           "WORLD_SIZE is used and --procs may be left out")
    a("--layout", default="contiguous", choices=LAYOUTS,
      help="how a sequence is split over the ranks (zigzag balances causal work; default contiguous)")
    a("--seq-parallel", type=int, default=None, metavar="S",
      help="ranks splitting each sequence (default: all); the --procs / S rows of the data x seq "
           "grid read different parts of each batch")
    a("--form", default=None, choices=FORMS,
      help="the parallel form of every mixer layer on several ranks "
           "(default: planned per layer, see --plan)")
    a("--plan", default="bytes", choices=PLANS,
      help="without --form, each mixer layer's form on several ranks: the one sending the fewest "
           "bytes (default), or the fastest, each form's training step timed on the run's ranks "
           "at --context before training (a few steps per form and mixer)")
    a("--checkpoint-activations", action="store_true",
      help="keep only each block's input (with --hf-model: each decoder layer's) for backward and "
           "recompute the block there: less memory per token (a longer context fits), about one "
           "more forward of compute; exact")
    a("--pack", action="store_true",
      help="lm tasks: pack whole documents (the task's examples; text: its files, cut into pieces "
           "of --task-param length) into sequences of --context tokens with their cu_seqlens, "
           "batch 1 each, --batch-size sequences a step: no compute on padding between documents, "
           "no token reads across a document boundary, each document scores its own targets")
    a("--return-freed-memory", action="store_true",
      help="fix glibc's mmap threshold so that freed large tensors leave the resident set: memory "
           "per token then divides by the ranks; costs a page fault per new large block (docs/memory.md)")
    a("--quiet", action="store_true", help="no progress bar or log lines")


def config_from_args(args, procs: int | None = None):
    from ..train.config import TrainConfig, parse_pairs

    procs = procs or args.procs or 1
    return TrainConfig(
        task=args.task, mixer=args.mixer, context=args.context, steps=args.steps,
        batch_size=args.batch_size, dim=args.dim, depth=args.depth, heads=args.heads, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, grad_clip=args.grad_clip, seed=args.seed,
        eval_batches=args.eval_batches, eval_last=args.eval_last, positional=args.positional,
        pool=args.pool, causal=True if args.causal else None, init_from=args.init_from,
        hf_model=args.hf_model, task_params=parse_pairs(args.task_param, "--task-param"),
        mixer_options=parse_pairs(args.mixer_option, "--mixer-option"), out=args.out,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, device=args.device,
        threads=args.threads, progress=not args.quiet, procs=procs, layout=args.layout, form=args.form,
        plan=args.plan, seq_parallel=args.seq_parallel,
        checkpoint_activations=args.checkpoint_activations, pack=args.pack,
        return_freed_memory=args.return_freed_memory)


def run(args) -> int:
    import json

    from ..parallel.launch import RankFailure, torchrun_world_size
    from ..train import TrainingDiverged, train

    def fail(code: int, message) -> int:
        print(f"longmix train: error: {message}", file=sys.stderr)
        return code

    try:
        world = torchrun_world_size(args.procs)
    except ValueError as err:
        return fail(EXIT_BAD_INPUT, err)
    torchrun = world is not None
    try:
        cfg = config_from_args(args, procs=world)
        record = _train_in_torchrun_group(cfg) if torchrun else train(cfg)
    except TrainingDiverged as err:
        return fail(EXIT_DIVERGED, err)
    except ValueError as err:
        return fail(EXIT_BAD_INPUT, err)
    except RankFailure as err:
        return fail(EXIT_RANK_FAILED, err)
    if torchrun and int(os.environ["RANK"]) != 0:
        return 0  # rank 0 prints the one summary
    summary = {k: record[k] for k in ("run_id", "task", "mixer", "context", "seed", "steps", "metric", "wall_s")}
    summary["test"] = record["test"][record["metric"]]
    summary["world_size"] = record.get("world_size", 1)
    summary["packed"] = record.get("packed", False)
    if "hf_model" in record:
        summary["hf_model"] = record["hf_model"]["class"]
    print(json.dumps(summary))
    return 0


def _train_in_torchrun_group(cfg):
    """Join the group torchrun set up (env://) and train as one of its ranks."""
    from ..parallel.launch import torchrun_group
    from ..train import train
    from ..train.loop import COLLECTIVE_TIMEOUT_S

    with torchrun_group(COLLECTIVE_TIMEOUT_S) as group:
        return train(cfg, group=group)
