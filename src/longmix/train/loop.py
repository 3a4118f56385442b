"""One training run: build task and model, train with checkpoints, evaluate, record the result.

The run directory (``cfg.out``) holds:

* ``checkpoint.pt``: the latest checkpoint (model, optimizer, scheduler, RNG states, step,
  evaluation history, the run's identity), replaced atomically every ``checkpoint_every`` steps
  and at the end;
* ``results.jsonl``: one JSON line per finished run, append-only.

Rerunning the same configuration resumes from the checkpoint; a finished run (its line is in
``results.jsonl``) is not trained again and its line is not duplicated. Task batches are
indexed by step, so the step counter is also the data position: a resumed run trains on
exactly the batches, in the same order, as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from .. import mixers, tasks
from ..models import ModelConfig, SequenceModel
from . import checkpoint, results
from .config import TrainConfig, identity_diff
from .schedule import build_scheduler

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.jsonl"


# -- set-up ---------------------------------------------------------------------------------
def prepare_out(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and check that files can be created in it."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"--out {str(out)!r} is not a writable directory ({err.strerror or err})") from err
    return path


def model_config(cfg: TrainConfig, task) -> ModelConfig:
    """The model for ``task``: its vocabulary and head, with ``cfg``'s mixer and sizes.

    ``max_len`` defaults to the context; a ``max_len`` mixer option sets it explicitly and must
    be at least the context.
    """
    mixers.get_class(cfg.mixer)  # unknown mixer: ValueError listing the valid names
    options = dict(cfg.mixer_options)
    max_len = options.pop("max_len", cfg.context)
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"mixer option max_len must be a positive int, got {max_len!r}")
    if cfg.context > max_len:
        raise ValueError(f"--context {cfg.context} exceeds max_len={max_len} of mixer {cfg.mixer!r}; "
                         f"use --context <= {max_len} or a larger max_len")
    head = "lm" if task.kind == "lm" else "classify"
    return ModelConfig(vocab_size=task.vocab_size, mixer=cfg.mixer, head=head,
                       num_classes=task.num_classes or 2, dim=cfg.dim, depth=cfg.depth,
                       heads=cfg.heads, max_len=max_len, positional=cfg.positional, pool=cfg.pool,
                       pad_id=task.pad_id, mixer_options=options)


def metric_name(task) -> str:
    """The headline metric: accuracy (classify), bits per byte (byte-level text) or per token."""
    if task.kind != "lm":
        return "accuracy"
    byte_level = getattr(task, "byte_level", None)
    if byte_level is None:
        byte_level = task.name == "text"
    return "bits_per_byte" if byte_level else "bits_per_token"


def higher_is_better(metric: str) -> bool:
    return metric == "accuracy"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device must be 'cpu', 'cuda[:N]' or 'auto', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine")
    return dev


# -- loss and evaluation --------------------------------------------------------------------
def loss_fn(logits: torch.Tensor, y: torch.Tensor, kind: str, pad_id: int, last: int | None = None):
    """Mean cross entropy (nats), and the number of scored targets.

    classify: logits (B, C), y (B,). lm: logits (B, L, V), y (B, L); pad targets are not scored,
    and ``last`` restricts scoring to the last ``last`` positions.
    """
    if kind != "lm":
        return F.cross_entropy(logits, y), y.numel()
    if last is not None:
        logits, y = logits[:, -last:], y[:, -last:]
    scored = (y != pad_id) & (y >= 0)
    target = torch.where(scored, y, torch.full_like(y, -100))
    n = int(scored.sum())
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss / max(n, 1), n


@torch.no_grad()
def evaluate(model: SequenceModel, task, cfg: TrainConfig, split: str, device: torch.device) -> dict:
    """Metrics on ``cfg.eval_batches`` fixed batches of ``split``: loss (nats) and the headline
    metric (accuracy, or bits per byte/token over the last ``cfg.eval_last`` positions)."""
    was_training = model.training
    model.eval()
    total_loss, total_n, correct = 0.0, 0, 0
    for index in range(cfg.eval_batches):
        x, y = task.batch(split, index, cfg.batch_size, cfg.context)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss, n = loss_fn(logits, y, task.kind, task.pad_id, last=min(cfg.eval_last, cfg.context))
        total_loss += loss.item() * n
        total_n += n
        if task.kind != "lm":
            correct += int((logits.argmax(-1) == y).sum())
    model.train(was_training)
    nats = total_loss / max(total_n, 1)
    metrics = {"loss": nats, "scored": total_n}
    name = metric_name(task)
    metrics[name] = correct / max(total_n, 1) if name == "accuracy" else nats / math.log(2)
    return metrics


# -- the run --------------------------------------------------------------------------------
def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # nanoGPT's rule: decay matrices (weights, embeddings), not biases, norms or 1-d parameters.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train(cfg: TrainConfig) -> dict:
    """Run (or resume, or skip if finished) the run ``cfg``; return its results record.

    Raises ValueError (with a message naming the bad argument or file) for an unknown task or
    mixer, a context above the mixer's max_len, an unwritable ``out``, a corrupt checkpoint, or
    a checkpoint in ``out`` that belongs to a different configuration.
    """
    # Validate everything cheap before touching the run directory.
    task = tasks.build(cfg.task, seed=cfg.seed, **cfg.task_params)
    mcfg = model_config(cfg, task)
    device = resolve_device(cfg.device)
    out = prepare_out(cfg.out)
    run_id = cfg.run_id()
    results_path = out / RESULTS
    say = tqdm.write if cfg.progress else (lambda *_: None)

    done = results.find(results_path, run_id)
    if done is not None:
        say(f"run {run_id} in {out} is already finished; not training it again")
        return done

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        # Same inputs, same kernels: a resumed run then matches an uninterrupted one.
        torch.use_deterministic_algorithms(True, warn_only=True)
        return _run(cfg, task, mcfg, device, out, run_id, say)
    finally:  # leave the process's torch settings as we found them
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _run(cfg, task, mcfg, device, out, run_id, say) -> dict:
    results_path, ckpt_path = out / RESULTS, out / CHECKPOINT
    checkpoint.seed_everything(cfg.seed)
    model = SequenceModel(mcfg).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
    step, history, wall_s, sessions = 0, [], 0.0, 0

    if ckpt_path.exists():
        state = checkpoint.load(ckpt_path)
        diff = identity_diff(state["identity"], cfg.identity())
        if diff:
            raise ValueError(f"{ckpt_path} belongs to a different run; refusing to mix runs. "
                             f"Differences: {'; '.join(diff)}. Use another --out, or move the "
                             f"checkpoint away to start over")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            checkpoint.set_rng_state(state["rng"])
        except (RuntimeError, KeyError, TypeError, ValueError) as err:  # readable, but not this run's state
            raise checkpoint.CheckpointError(
                f"checkpoint {ckpt_path} does not fit this run's model or optimizer ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); the file was left in place: move it "
                f"away to restart from step 0, or use another --out") from err
        step, history = state["step"], list(state["history"])
        wall_s, sessions = state["wall_s"], state["sessions"]
        say(f"resuming run {run_id} from {ckpt_path} at step {step}/{cfg.steps}")
    sessions += 1

    def save() -> None:
        checkpoint.save_atomic({
            "format": checkpoint.FORMAT, "identity": cfg.identity(), "run_id": run_id, "step": step,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": checkpoint.rng_state(),
            "history": history, "wall_s": wall_s + (time.perf_counter() - t0), "sessions": sessions,
        }, ckpt_path)

    metric = metric_name(task)
    tokens_per_step = cfg.batch_size * cfg.context
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, unit="step",
               desc=f"{cfg.task}/{cfg.mixer}/C={cfg.context}", dynamic_ncols=True)
    first_step = step
    try:  # close the bar even when a step fails (or Ctrl-C), so the terminal is left clean
        while step < cfg.steps:
            x, y = task.batch("train", step, cfg.batch_size, cfg.context)
            x, y = x.to(device), y.to(device)
            loss, _ = loss_fn(model(x), y, task.kind, task.pad_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            rate = (step - first_step) * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                valid = evaluate(model, task, cfg, "valid", device)
                history.append({"step": step, "train_loss": loss.item(), **{f"valid_{k}": v for k, v in valid.items()}})
                say(f"step {step}: train loss {loss.item():.4f}, valid {metric} {valid[metric]:.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save()
    finally:
        bar.close()
    wall_s += time.perf_counter() - t0

    test = evaluate(model, task, cfg, "test", device)
    final_valid = next((h for h in reversed(history) if h["step"] == cfg.steps), None)
    record = {
        "run_id": run_id,
        "config": cfg.identity(),
        "task": cfg.task, "mixer": cfg.mixer, "family": mixers.get_class(cfg.mixer).taxonomy.family,
        "context": cfg.context, "seed": cfg.seed, "steps": step,
        "metric": metric, "higher_is_better": higher_is_better(metric),
        "test": test, "valid": {k[6:]: v for k, v in final_valid.items() if k.startswith("valid_")}
        if final_valid else None,
        "history": history,
        "task_info": task.describe(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "positional": model.positional_kind,
        "tokens_seen": step * tokens_per_step,
        "wall_s": round(wall_s, 3), "sessions": sessions,
        "machine": results.machine(str(device)), "date": results.now(), "git_commit": results.git_commit(),
    }
    record = json.loads(json.dumps(record))  # exactly what a reader of results.jsonl gets back
    results.append(results_path, record)
    say(f"finished run {run_id}: test {metric} {test[metric]:.4f} ({step} steps, {wall_s:.1f} s)")
    return record
