"""Training over P ranks is the one-process run: the same losses, metrics and weights (float64,
~1e-10), the same errors on every rank, resume after SIGKILL of the launcher, and the same run
when torchrun starts the ranks."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import toys
from resume_checks import assert_resumed_equals_uninterrupted, sigkill_after_first_checkpoint
from longmix.parallel.launch import run_local
from longmix.fileio import FolderBusy, folder_lock
from longmix.train import TrainConfig, TrainingDiverged, load_checkpoint, train
from longmix.train.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("toy_registry")

# Small, but each one exercises a different parallel form, layout and head.
CASES = {
    "lm-softmax-zigzag-uneven": dict(task="toy_copy", task_params={"length": 23, "lag": 3}, context=23,
                                     mixer="softmax", heads=2, layout="zigzag", train_last=15, eval_last=9,
                                     form="ring"),
    "lm-linear-contiguous": dict(task="toy_copy", task_params={"length": 20, "lag": 2}, context=20,
                                 mixer="linear", heads=1, layout="contiguous", form="state"),
    "classify-fnet-mean-pool": dict(task="passkey", task_params={"length": 21}, context=21, mixer="fnet",
                                   heads=2, layout="contiguous"),
}
COMMON = dict(steps=4, batch_size=3, dim=8, depth=2, eval_every=2, eval_batches=2, checkpoint_every=2,
              progress=False, threads=1, lr=3e-3)


def config(out, name, **kw):
    return TrainConfig(**{**COMMON, **CASES[name], "out": str(out), **kw})


def outcome(cfg, group=None):
    """(record, final weights) or (error type, message): comparable across processes."""
    try:
        record = train(cfg, group=group)
    except ValueError as err:
        return type(err).__name__, str(err)
    return record, load_checkpoint(os.path.join(cfg.out, "checkpoint.pt"))["model"]


def as_ranks(group, cfgs):
    """Rank body: the test-only toys exist only where registered, so register them here."""
    toys.register_toys()
    torch.set_default_dtype(torch.float64)  # the comparison is exact up to float64 rounding
    return [outcome(cfg, group) for cfg in cfgs]


def in_float64(cfg):
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return outcome(cfg)
    finally:
        torch.set_default_dtype(before)


def assert_close(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_two_ranks_train_exactly_like_one_and_agree_on_errors(tmp_path):
    names = list(CASES)
    two = [config(tmp_path / f"p2-{n}", n) for n in names]
    # One process, no group: the plain model, the reference.
    one = [in_float64(config(tmp_path / f"p1-{n}", n)) for n in names]
    # The same runs on two ranks, plus a diverging run and a damaged checkpoint, in one launch.
    diverging = config(tmp_path / "p2-diverge", names[0], lr=float("inf"), steps=6)
    damaged = config(tmp_path / "p2-damaged", names[1])
    os.makedirs(damaged.out)
    (tmp_path / "p2-damaged" / "checkpoint.pt").write_bytes(b"torn")
    got = run_local(as_ranks, 2, args=(two + [diverging, damaged],), timeout=240)
    for i in range(len(names)):  # every rank returns the one record rank 0 wrote
        assert got[0][i][0] == got[1][i][0]
    for r in range(2):
        for i, name in enumerate(names):
            (rec2, w2), (rec1, w1) = got[r][i], one[i]
            assert rec2["world_size"] == 2 and rec1["world_size"] == 1
            form = CASES[name].get("form")
            assert rec2["forms"] == [form] * COMMON["depth"] if form else len(rec2["forms"]) == COMMON["depth"]
            assert rec2["layout"] == CASES[name]["layout"]
            for key in ("history", "test", "valid", "steps", "tokens_seen", "run_id", "parameters"):
                assert_close(rec2[key], rec1[key], f"{name}: {key}")
            for k in w1:
                # atol 1e-10: AdamW divides by sqrt(v), so a parameter whose gradient is ~0 (a
                # norm's bias under mean pooling) turns float64 rounding of the summed gradient
                # into ~1e-11 absolute steps (measured 1.3e-11 on an AVX-512 machine)
                torch.testing.assert_close(w2[k], w1[k], rtol=1e-9, atol=1e-10, msg=f"{name}: {k}")
        # The same error on every rank, of the same type.
        kind, message = got[r][len(names)]
        assert kind == "TrainingDiverged" and "training diverged: " in message
        kind, message = got[r][len(names) + 1]
        assert kind == "CheckpointError" and "is corrupt or unreadable" in message
    lines = (tmp_path / "p2-diverge" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "diverged"  # written once, by rank 0
    for i, name in enumerate(names):  # one record per run, written by rank 0 only
        assert len((tmp_path / f"p2-{name}" / "results.jsonl").read_text().splitlines()) == 1


def test_procs_refuses_a_busy_folder_before_spawning(tmp_path):
    with folder_lock(tmp_path, "training run"):
        with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):
            train(config(tmp_path, "classify-fnet-mean-pool", procs=2))


# -- the command line: --procs, SIGKILL of the launcher, resume -----------------------------
ARGS = ["train", "--task", "passkey", "--task-param", "length=48", "--mixer", "softmax", "--heads", "2",
        "--context", "48", "--steps", "60", "--batch-size", "4", "--dim", "16", "--depth", "2",
        "--eval-every", "30", "--eval-batches", "2", "--checkpoint-every", "4", "--threads", "1",
        "--quiet"]


def launch(out, torchrun=False):
    """``longmix train --procs 2``, or the same run as two ranks started by torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if torchrun:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "longmix.cli", *ARGS, "--out", str(out)]
    else:
        args = ["-m", "longmix.cli", *ARGS, "--procs", "2", "--out", str(out)]
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def finish(proc, timeout=180):
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err.decode()[-3000:]


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_until_free(folder, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with folder_lock(folder):
                return
        except FolderBusy:
            assert time.monotonic() < deadline, "the ranks outlived their killed launcher"
            time.sleep(0.05)


def test_sigkill_of_a_two_rank_run_then_rerun_matches_an_uninterrupted_torchrun_one(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = launch(killed)
    try:
        # the launcher only: its ranks must die with it
        sigkill_after_first_checkpoint(proc, killed, timeout=120, poll_s=0.01, settle_s=0.05)
        wait_until_free(killed)  # rank 0 held the lock; it is released when rank 0 dies
    finally:
        kill_group(proc)
    interrupted_at = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 0 < interrupted_at < 60, "the kill must land mid-run for this test to mean anything"
    assert not (killed / "results.jsonl").exists()

    finish(launch(killed))  # resume: the dead launcher's lock is gone with it
    finish(launch(clean, torchrun=True))  # the same two ranks, in torchrun's group
    for d in (killed, clean):  # one record each: the resume did not write a second line
        assert len((d / "results.jsonl").read_text().splitlines()) == 1
    a, b = assert_resumed_equals_uninterrupted(killed, clean)
    assert a["sessions"] == 2 and b["sessions"] == 1 and a["world_size"] == b["world_size"] == 2
    assert b["steps"] == 60


def evaluate_as_rank(group, cfg, path):
    toys.register_toys()
    torch.set_default_dtype(torch.float64)
    from longmix.train import evaluate_checkpoint
    return evaluate_checkpoint(cfg, path, group=group)


def test_a_checkpoint_scores_the_same_on_two_ranks_at_a_longer_context(tmp_path):
    name = "lm-linear-contiguous"
    cfg = config(tmp_path / "run", name)
    record, _ = in_float64(cfg)
    longer = config(tmp_path / "run", name, context=40, task_params={"length": 40, "lag": 2})
    path = tmp_path / "run" / "checkpoint.pt"
    one = evaluate_as_rank(None, longer, path)
    got = run_local(evaluate_as_rank, 2, args=(longer, path), timeout=120)
    assert got[0] == got[1]
    assert_close(got[0], one, "2 ranks vs 1")
    assert one != record["test"]  # another context: another score
