"""One training run: build task and model, train with checkpoints, evaluate, record the result.

The run directory (``cfg.out``) holds:

* ``checkpoint.pt``: the latest checkpoint (model, optimizer, scheduler, RNG states, step,
  evaluation history, the run's identity), replaced atomically every ``checkpoint_every`` steps
  and at the end;
* ``results.jsonl``: one strict-JSON line per finished (or diverged) run, append-only;
* ``.lock``: held by the run in progress, so that a second run into the folder is refused.

Rerunning the same configuration resumes from the checkpoint; a finished run (its line is in
``results.jsonl``) is not trained again and its line is not duplicated. Task batches are
indexed by step, so the step counter is also the data position: a resumed run trains on
exactly the batches, in the same order, as an uninterrupted one.

On P ranks (``--procs`` or torchrun) every rank reads the same batch and keeps its shard of each
sequence; the model runs sequence-parallel (:func:`longmix.parallel.forms.parallelize`); the loss is the
global mean over every rank's scored positions and gradients are summed over the ranks, so the
run is the one-process run up to float rounding. Rank 0 alone writes the run folder.

With ``cfg.pack`` a step trains on the task's documents packed into sequences of ``context``
tokens with their cu_seqlens (:mod:`.packing`), each run alone, batch 1 (:mod:`.packed_step`).

With ``hf_model`` (a transformers causal LM in a local folder, :mod:`.hf_model`) the same loop
trains that model on the task as next-token prediction (:mod:`.next_token`); on P ranks it runs
through :func:`longmix.hf.parallelize`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .. import machine, mixers, tasks
from ..checks import check_int
from ..parallel.launch import run_local
from ..parallel.forms.calibration import calibrate_timing
from ..parallel.forms.parallelize import parallelize
from ..fileio import DiskFull, append_record, folder_lock, record_line, remove_stale_temps
from ..models import ModelConfig, SequenceModel
from ..provenance import provenance, utc_now
from . import checkpoint, hf_model, results
from .config import TrainConfig, identity_diff
from .errors import TrainingDiverged
from .loss import correct, loss_sum, scored_targets, training_loss_sum
from .next_token import as_next_token
from .optim import param_groups
from .packed_step import packed_eval_sums, packed_step
from .packing import check_mixers_pack, check_packable, packed_batch
from .ranks import Ranks, rebuild_error
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
    check_int("mixer option max_len", max_len)
    if cfg.context > max_len:
        raise ValueError(f"--context {cfg.context} exceeds max_len={max_len} of mixer {cfg.mixer!r}; "
                         f"use --context <= {max_len} or a larger max_len")
    head = "lm" if task.kind == "lm" else "classify"
    return ModelConfig(vocab_size=task.vocab_size, mixer=cfg.mixer, head=head,
                       num_classes=task.num_classes or 2, dim=cfg.dim, depth=cfg.depth,
                       heads=cfg.heads, max_len=max_len, positional=cfg.positional, pool=cfg.pool,
                       causal=cfg.causal, pad_id=task.pad_id, mixer_options=options)


def task_and_model(cfg: TrainConfig):
    """The run's task and what its model is built from: a :class:`ModelConfig`, or for an HF
    model (``cfg.hf_model``) the folder's :class:`~.hf_model.HFModelSpec`, with the task as
    next-token prediction (:func:`as_next_token`) and checked to fit the model's vocabulary."""
    task = tasks.build(cfg.task, seed=cfg.seed, **cfg.task_params)
    if cfg.hf_model is None:
        return task, model_config(cfg, task)
    task = as_next_token(task)
    spec = hf_model.inspect_folder(cfg.hf_model)
    hf_model.check_vocabulary(spec, task)
    return task, spec


def build_model(cfg: TrainConfig, spec, device: torch.device) -> torch.nn.Module:
    """The model of ``spec`` (from :func:`task_and_model`) on ``device``; random weights come from
    torch's global generator."""
    if isinstance(spec, hf_model.HFModelSpec):
        return hf_model.build(spec, device)
    return SequenceModel(spec, checkpoint_activations=cfg.checkpoint_activations).to(device)


def metric_name(task) -> str:
    """The headline metric the task declares: accuracy, bits per byte or bits per token."""
    return task.metric


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


# -- evaluation -----------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: torch.nn.Module, task, cfg: TrainConfig, split: str, device: torch.device,
             ranks: Ranks | None = None) -> dict:
    """Metrics on ``cfg.eval_batches`` fixed batches of ``split``: loss (nats) and the headline
    metric (accuracy, or bits per byte/token over the last ``cfg.eval_last`` positions; with
    ``cfg.pack``, over every target of the packed batches' documents).

    With ``ranks``, ``model`` is the sequence-parallel model: every rank scores its shard and
    the sums are reduced, so every rank returns the single-process metrics."""
    ranks = ranks or Ranks.single()
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, scored, correct
    last = min(cfg.eval_last, cfg.context)
    for index in range(cfg.eval_batches):
        if cfg.pack:  # every target of every document (eval_last does not apply)
            batch = packed_batch(task, split, index, cfg.batch_size, cfg.context)
            totals += packed_eval_sums(model, batch, task.pad_id, ranks, device)
            continue
        x, y = task.batch(split, index, cfg.batch_size, cfg.context)
        x, y = ranks.batch_part(x), ranks.batch_part(y)
        target = scored_targets(y, task.kind, task.pad_id, last=last)
        target = (ranks.shard(target) if task.kind == "lm" else target).to(device)
        logits = model(ranks.shard(x).to(device))
        total, n = loss_sum(logits, target, task.kind)
        totals += torch.tensor([total.item(), n, correct(logits, target, task.kind)], dtype=torch.float64)
    model.train(was_training)
    # each rank scored its own positions; a classifier's logits are whole within a row
    totals = ranks.sum(totals) if task.kind == "lm" else ranks.sum_over_batch_parts(totals)
    total_loss, total_n, right = totals.tolist()
    total_n = int(total_n)
    nats = total_loss / max(total_n, 1)
    metrics = {"loss": nats, "scored": total_n}
    name = metric_name(task)
    metrics[name] = right / max(total_n, 1) if name == "accuracy" else nats / math.log(2)
    return metrics


def sequence_parallel(model: torch.nn.Module, cfg: TrainConfig, ranks: Ranks) -> torch.nn.Module:
    """``model`` itself on one process; on P ranks, the sequence-parallel model that shares its
    parameters (each layer in ``cfg.form``, or the planned one). An HF model is wrapped to return
    its logits, and runs through :func:`longmix.hf.parallelize` on P ranks."""
    if cfg.hf_model is not None:
        return hf_model.runner(model, ranks.seq_group, ranks.seq_world, ranks.layout,
                               cfg.checkpoint_activations)
    if ranks.seq_world == 1:
        return model
    # packed: every sequence runs alone, batch 1, with its cu_seqlens
    batch = 1 if cfg.pack else cfg.batch_size // ranks.data_world
    timing = None
    if cfg.plan == "time":  # each form's step timed on these ranks, at this context
        timing = calibrate_timing(model, ranks.seq_group, [cfg.context], batch=batch, layout=ranks.layout)
    return parallelize(model, group=ranks.seq_group, layout=ranks.layout, forms=cfg.form,
                       seq_len=cfg.context, batch=batch, packed=cfg.pack, timing=timing)


def load_weights(model: torch.nn.Module, weights: dict, source: str) -> None:
    """``model.load_state_dict(weights)``, with a ValueError naming ``source`` when they do not fit
    (another task's vocabulary or number of classes, another width)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise ValueError(f"{source}: its weights do not fit this model ({first_line})") from err


def evaluate_checkpoint(cfg: TrainConfig, path: str | os.PathLike, split: str = "test", group=None) -> dict:
    """:func:`evaluate` the model saved in checkpoint ``path`` on ``cfg``'s task and context, which
    may differ from those it was trained on (e.g. a longer context: length generalization).

    With ``group`` (every rank calls this with the same arguments) the model runs sequence-parallel
    over it. ValueError when the checkpoint does not fit ``cfg``'s model."""
    task, spec = task_and_model(cfg)
    device = resolve_device(cfg.device)
    model = build_model(cfg, spec, device)
    load_weights(model, checkpoint.load(path)["model"], f"checkpoint {path}")
    ranks = Ranks.of(group, cfg.layout, cfg.seq_parallel)
    runner = sequence_parallel(model, cfg, ranks)
    return evaluate(runner, task, cfg, split, device, ranks)


# -- the run --------------------------------------------------------------------------------
def train(cfg: TrainConfig, group=None) -> dict:
    """Run (or resume, or skip if finished) the run ``cfg``; return its results record.

    ``cfg.procs > 1`` (and no ``group``): spawn that many local ranks (gloo) and split every
    sequence over them. ``group``: this process is one rank of an initialized process group
    (e.g. under torchrun), and every rank of the group must call ``train`` with the same config.
    Either way the run and its record are those of one process, up to float rounding.

    Raises ValueError (with a message naming the bad argument or file) for an unknown task or
    mixer, a context above the mixer's max_len, an unwritable or busy ``out``
    (:class:`~longmix.fileio.FolderBusy`), a corrupt checkpoint, or a checkpoint in ``out`` that
    belongs to a different configuration; :class:`TrainingDiverged` (a ValueError too) when the
    loss becomes non-finite. On P ranks, every rank raises the same error.
    """
    # Validate everything cheap before touching the run directory.
    task, mcfg = task_and_model(cfg)
    if cfg.pack:
        check_packable(task, cfg.context)
    device = resolve_device(cfg.device)
    if group is None and cfg.procs > 1 and not (dist.is_available() and dist.is_initialized()):
        return _train_on_local_ranks(cfg, device)
    return _train_as_rank(cfg, task, mcfg, device, Ranks.of(group, cfg.layout, cfg.seq_parallel))


def _train_on_local_ranks(cfg: TrainConfig, device: torch.device) -> dict:
    """Train on ``cfg.procs`` spawned ranks; return rank 0's record or raise its error here.

    Rank 0, the process that writes the run folder, holds its lock: were the launcher to hold
    it, ranks outliving a killed launcher could still write while a new run took the folder.
    The launcher only checks the lock first, so that a busy folder is refused before spawning.
    """
    if device.type != "cpu":
        raise ValueError(f"--procs {cfg.procs} spawns CPU (gloo) ranks; for --device {cfg.device!r} "
                         f"start one process per GPU with torchrun")
    with folder_lock(prepare_out(cfg.out), "training run"):
        pass
    outcomes = run_local(_rank_main, cfg.procs, args=(cfg,), timeout=math.inf,
                         collective_timeout=COLLECTIVE_TIMEOUT_S, threads_per_rank=cfg.threads)
    status, payload = outcomes[0]
    if status != "ok":
        raise rebuild_error(status, payload)
    return payload


#: Seconds a rank waits in one collective: long enough for rank 0 to write a checkpoint or
#: evaluate while the others wait, short enough that a stuck peer ends the run the same day.
COLLECTIVE_TIMEOUT_S = 1800.0


def _rank_main(group, cfg: TrainConfig):
    """One spawned rank: ("ok", record) or (error type name, message), the same on every rank."""
    try:
        task, spec = task_and_model(cfg)
        record = _train_as_rank(cfg, task, spec, resolve_device(cfg.device),
                                Ranks.of(group, cfg.layout, cfg.seq_parallel))
        return "ok", record
    except ValueError as err:
        return type(err).__name__, str(err)


def _train_as_rank(cfg, task, mcfg, device, ranks: Ranks) -> dict:
    """The run, as rank ``ranks.rank`` (rank 0 alone touches the run folder, and holds its lock)."""
    if ranks.world > 1 and device.type != "cpu":
        raise ValueError(f"training on {ranks.world} ranks runs on the CPU (gloo); got --device {cfg.device!r}")
    out, run_id = Path(cfg.out), cfg.run_id()
    if cfg.return_freed_memory:  # a rank's memory then grows with what its step keeps, not
        machine.return_freed_memory()  # with the transients malloc's heap still holds once freed
    say = tqdm.write if cfg.progress and ranks.is_main else (lambda *_: None)
    with contextlib.ExitStack() as held:
        def open_folder():
            prepare_out(out)
            if (out / RESULTS).is_symlink():  # records are appended only to a file of the folder's own
                raise ValueError(f"{out / RESULTS} is a symlink; refusing to append results through it")
            # One run per folder: a second one would interleave checkpoints and records.
            held.enter_context(folder_lock(out, "training run"))
            done = results.find(out / RESULTS, run_id)
            if done is not None and done.get("status") == results.DIVERGED:
                raise TrainingDiverged(f"run {run_id} in {out} diverged earlier ({done['reason']}); it "
                                       f"would diverge again: change its configuration (e.g. a lower --lr)")
            if done is None:
                remove_stale_temps(out / CHECKPOINT)  # left by a hard kill mid-save; no writer runs now
            return done

        done = ranks.on_main(open_folder)
        if done is not None:
            say(f"run {run_id} in {out} is already finished; not training it again")
            return done
        return _with_torch_settings(cfg, task, mcfg, device, out, run_id, say, ranks)


def _with_torch_settings(cfg, task, mcfg, device, out, run_id, say, ranks) -> dict:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        # Same inputs, same kernels: a resumed run then matches an uninterrupted one.
        torch.use_deterministic_algorithms(True, warn_only=True)
        return _run(cfg, task, mcfg, device, out, run_id, say, ranks)
    finally:  # leave the process's torch settings as we found them
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _resume(cfg, ckpt_path: Path, model, optimizer, scheduler) -> dict:
    """Load ``ckpt_path`` into the model, optimizer, scheduler and RNGs; return its state."""
    state = checkpoint.load(ckpt_path)
    diff = identity_diff(state["identity"], cfg.identity())
    if diff:
        raise ValueError(f"{ckpt_path} belongs to a different run; refusing to mix runs. "
                         f"Differences: {'; '.join(diff)}. Use another --out, or move the "
                         f"checkpoint away to start over")
    if state["step"] > cfg.steps:
        raise checkpoint.CheckpointError(
            f"checkpoint {ckpt_path} is at step {state['step']}, beyond this run's --steps {cfg.steps}; "
            f"the file was left in place: move it away to restart from step 0, or use another --out")
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
    return state


#: What a run must share with the run whose weights start it (``init_from``). Everything else may
#: change -- context, task length, steps, learning rate -- which is the point of a curriculum.
ARCHITECTURE = ("mixer", "dim", "depth", "heads", "positional", "causal")
#: The same for an HF model: the same folder (its config is the architecture).
HF_ARCHITECTURE = ("mixer", "hf_model")


def _initialize(cfg, model) -> str:
    """Load the weights of the finished run in folder ``cfg.init_from``; return its run id."""
    path = Path(cfg.init_from) / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"init_from {cfg.init_from!r} has no {CHECKPOINT}; expected the folder of a "
                         f"finished training run")
    state = checkpoint.load(path)
    source, mine = state["identity"], cfg.identity()
    if state["step"] != source.get("steps"):
        raise ValueError(f"init_from {cfg.init_from!r}: that run stopped at step {state['step']} of "
                         f"{source.get('steps')}; finish it first (rerun its command)")
    fields = ARCHITECTURE if cfg.hf_model is None else HF_ARCHITECTURE
    differ = [f"{k}: {source.get(k)!r} there, {mine.get(k)!r} here" for k in fields
              if source.get(k) != mine.get(k)]
    options = [{k: v for k, v in (o or {}).items() if k != "max_len"}
               for o in (source.get("mixer_options"), mine.get("mixer_options"))]
    if options[0] != options[1]:
        differ.append(f"mixer_options: {options[0]!r} there, {options[1]!r} here (max_len aside)")
    if differ:
        raise ValueError(f"init_from {cfg.init_from!r} holds another architecture: {'; '.join(differ)}")
    load_weights(model, state["model"], f"init_from {cfg.init_from!r}")
    return state["run_id"]


def _run(cfg, task, mcfg, device, out, run_id, say, ranks: Ranks) -> dict:
    results_path, ckpt_path = out / RESULTS, out / CHECKPOINT
    checkpoint.seed_everything(cfg.seed)
    model = build_model(cfg, mcfg, device)
    if cfg.pack:
        check_mixers_pack(model, cfg.mixer)
    # On P ranks the model runs sequence-parallel; ``model`` keeps the (shared) parameters.
    runner = sequence_parallel(model, cfg, ranks)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
    step, history, wall_s, sessions = 0, [], 0.0, 0
    packed = {"documents": 0, "tokens": 0}  # what the packed batches held so far (--pack)

    if ranks.on_main(ckpt_path.exists):  # every rank reads the checkpoint rank 0 found
        state = ranks.everywhere(lambda: _resume(cfg, ckpt_path, model, optimizer, scheduler))
        step, history = state["step"], list(state["history"])
        wall_s, sessions = state["wall_s"], state["sessions"]
        packed = dict(state.get("packed", packed))
        say(f"resuming run {run_id} from {ckpt_path} at step {step}/{cfg.steps}")
    elif cfg.init_from is not None:  # rank 0 loads; the broadcast below gives every rank its weights
        source = ranks.on_main(lambda: _initialize(cfg, model))
        say(f"starting from the weights of run {source} in {cfg.init_from}")
    ranks.broadcast_parameters(model)  # identical weights on every rank, whatever happened above
    sessions += 1

    def save() -> None:  # rank 0 writes; the others wait, and share its error if it fails
        state = {
            "format": checkpoint.FORMAT, "identity": cfg.identity(), "run_id": run_id, "step": step,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": checkpoint.rng_state(),
            "history": history, "wall_s": wall_s + (time.perf_counter() - t0), "sessions": sessions,
            "packed": packed,
        }
        ranks.on_main(lambda: _write_checkpoint(state, ckpt_path))

    metric = metric_name(task)
    train_last = None if cfg.train_last is None else min(cfg.train_last, cfg.context)
    tokens_per_step = cfg.batch_size * cfg.context
    t0 = time.perf_counter()
    model.train()
    runner.train()  # an HF model's parallel copy keeps its own training flag
    name = cfg.mixer or getattr(mcfg, "model_class", None)
    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and ranks.is_main), unit="step",
               desc=f"{cfg.task}/{name}/C={cfg.context}", dynamic_ncols=True)
    first_step = step
    try:  # close the bar even when a step fails (or Ctrl-C), so the terminal is left clean
        while step < cfg.steps:
            optimizer.zero_grad(set_to_none=True)
            if cfg.pack:
                batch = packed_batch(task, "train", step, cfg.batch_size, cfg.context)
                if step == first_step:  # a task must give every rank the same batch
                    ranks.check_same(batch.flat(), f"the packed train batch of step {step}")
                loss_value = packed_step(runner, batch, task.pad_id, ranks, device)
                packed = {"documents": packed["documents"] + batch.documents,
                          "tokens": packed["tokens"] + batch.tokens}
            else:
                loss_value = _padded_step(runner, task, cfg, step, step == first_step, train_last,
                                          ranks, device)
            ranks.sum_gradients(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            # Stop before a non-finite update reaches the weights. Loss and gradients are reduced
            # over the ranks, so every rank stops at the same step.
            for what, value in (("loss", loss_value), ("gradient norm", grad_norm.item())):
                if not math.isfinite(value):
                    _diverged(cfg, run_id, results_path, device, step + 1,
                              f"{what} {value} at step {step + 1}", ranks)
            optimizer.step()
            scheduler.step()
            step += 1
            rate = (step - first_step) * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                valid = evaluate(runner, task, cfg, "valid", device, ranks)
                history.append({"step": step, "train_loss": loss_value,
                                **{f"valid_{k}": v for k, v in valid.items()}})
                say(f"step {step}: train loss {loss_value:.4f}, valid {metric} {valid[metric]:.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save()
    finally:
        bar.close()
    wall_s += time.perf_counter() - t0

    test = evaluate(runner, task, cfg, "test", device, ranks)
    final_valid = next((h for h in reversed(history) if h["step"] == cfg.steps), None)
    record = {
        "run_id": run_id,
        "config": cfg.identity(),
        "task": cfg.task, "mixer": cfg.mixer,
        "family": mixers.get_class(cfg.mixer).taxonomy.family if cfg.hf_model is None else None,
        "context": cfg.context, "seed": cfg.seed, "steps": step,
        "metric": metric, "higher_is_better": higher_is_better(metric),
        "test": test, "valid": {k[6:]: v for k, v in final_valid.items() if k.startswith("valid_")}
        if final_valid else None,
        "history": history,
        "task_info": task.describe(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "positional": getattr(model, "positional_kind", None),
        "tokens_seen": step * tokens_per_step,
        "world_size": ranks.world, "layout": ranks.layout if ranks.world > 1 else None,
        "forms": list(runner.forms) if ranks.seq_world > 1 and cfg.hf_model is None else None,
        "plan": cfg.plan if ranks.seq_world > 1 and cfg.hf_model is None and cfg.form is None else None,
        "mesh": ranks.mesh if ranks.grid is not None else None,  # [data, seq]
        "checkpoint_activations": cfg.checkpoint_activations,
        # --pack: documents packed into sequences of --context tokens; what the train batches held
        "packed": cfg.pack,
        "packing": {"documents": packed["documents"], "document_tokens": packed["tokens"],
                    "padding_fraction": 1.0 - packed["tokens"] / max(step * tokens_per_step, 1)}
        if cfg.pack else None,
        **({"hf_model": hf_model.describe(mcfg, model, runner)} if cfg.hf_model is not None else {}),
        "wall_s": round(wall_s, 3), "sessions": sessions,
        "status": results.FINISHED,
        "machine": machine.describe(str(device)), "date": utc_now(), **provenance(),
    }
    record = json.loads(record_line(record))  # exactly what a reader of results.jsonl gets back

    def write_record():
        append_record(results_path, record)
        return record

    record = ranks.on_main(write_record)  # every rank returns rank 0's record
    say(f"finished run {run_id}: test {metric} {test[metric]:.4f} ({step} steps, {wall_s:.1f} s)")
    return record


def _padded_step(runner, task, cfg, step: int, first: bool, train_last, ranks: Ranks, device) -> float:
    """Forward and backward of train batch ``step`` (padded examples, this rank's share of the
    loss); returns the global mean loss, the same on every rank."""
    x, y = task.batch("train", step, cfg.batch_size, cfg.context)
    if first:  # a task must give every rank the same batch
        ranks.check_same(torch.cat([x.flatten(), y.flatten()]), f"the train batch of step {step}")
    x, y = ranks.batch_part(x), ranks.batch_part(y)
    target = scored_targets(y, task.kind, task.pad_id, last=train_last)
    target = (ranks.shard(target) if task.kind == "lm" else target).to(device)
    local_sum, local_n = training_loss_sum(runner, ranks.shard(x).to(device), target, task.kind)
    if task.kind == "lm":  # the global mean over every rank's scored positions
        total_sum, total_n = ranks.sum(torch.stack([local_sum.detach().double().cpu(),
                                                    torch.tensor(float(local_n), dtype=torch.float64)]))
        share = local_sum / max(total_n.item(), 1)  # this rank's share of the global mean
        loss_value = total_sum.item() / max(total_n.item(), 1)
    else:  # a row's ranks hold its part's logits; the model splits their gradient
        share = local_sum / cfg.batch_size
        loss_value = ranks.sum_over_batch_parts(local_sum).item() / cfg.batch_size
    share.backward()
    return loss_value


def _write_checkpoint(state: dict, path: Path) -> None:
    try:
        checkpoint.save_atomic(state, path)
    except DiskFull:
        raise  # its own message, and its own exit code
    except OSError as err:  # a removed folder, no permission: a clear error on every rank
        raise ValueError(f"could not write checkpoint {path} ({err.strerror or err}); the previous "
                         f"checkpoint, if any, is intact") from err


def _diverged(cfg, run_id, results_path, device, step: int, reason: str, ranks: Ranks):
    """Record the run as diverged (rank 0), then raise :class:`TrainingDiverged` on every rank."""
    ranks.on_main(lambda: append_record(results_path, {
        "run_id": run_id, "status": results.DIVERGED, "step": step, "reason": reason,
        "config": cfg.identity(), "task": cfg.task, "mixer": cfg.mixer, "context": cfg.context,
        "seed": cfg.seed, "world_size": ranks.world, "machine": machine.describe(str(device)),
        "date": utc_now(), **provenance(),
    }))
    raise TrainingDiverged(f"training diverged: {reason} (lr={cfg.lr:g}); the run is recorded as "
                           f"diverged in {results_path}. Try a lower --lr or a smaller --grad-clip")
