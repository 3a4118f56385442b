"""`longmix train` end to end on tiny configs: learning, resume after SIGKILL, append-only
results, and a clear error (with earlier results kept) for every kind of bad input."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longmix.cli import main
from longmix.train import TrainConfig, load_checkpoint, parse_pairs, train
from resume_checks import assert_resumed_equals_uninterrupted, sigkill_after_first_checkpoint

pytestmark = pytest.mark.usefixtures("toy_registry")
TOYS = Path(__file__).with_name("toys.py")

TINY = dict(task="passkey", mixer="toy_attention", context=24, steps=6, batch_size=8, dim=8,
            depth=1, eval_every=3, eval_batches=2, checkpoint_every=2, progress=False,
            task_params={"length": 24}, threads=1)  # one thread: fast and reproducible on shared CPUs


def tiny(out, **kw):
    return TrainConfig(**{**TINY, "out": str(out), **kw})


def cli(*argv):
    """Run the CLI in-process; return (exit code, stderr text)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def argv_of(out, **kw):
    cfg = {**TINY, **kw}
    args = ["train", "--task", cfg["task"], "--mixer", cfg["mixer"], "--context", str(cfg["context"]),
            "--steps", str(cfg["steps"]), "--batch-size", str(cfg["batch_size"]), "--dim", str(cfg["dim"]),
            "--depth", str(cfg["depth"]), "--eval-every", str(cfg["eval_every"]),
            "--eval-batches", str(cfg["eval_batches"]), "--checkpoint-every", str(cfg["checkpoint_every"]),
            "--out", str(out), "--quiet", "--threads", "1"]
    for k, v in cfg["task_params"].items():
        args += ["--task-param", f"{k}={v}"]
    for k, v in cfg.get("mixer_options", {}).items():
        args += ["--mixer-option", f"{k}={v}"]
    return args


def lines(path):
    return Path(path).read_text().splitlines() if Path(path).exists() else []


# -- learning and records -------------------------------------------------------------------
def test_a_run_learns_and_records_everything(tmp_path):
    # The key sits in the last quarter, well inside the context: attention should find it.
    cfg = tiny(tmp_path, steps=80, dim=32, batch_size=32, lr=3e-3, eval_every=40, eval_batches=4,
               checkpoint_every=40, task_params={"length": 24, "depth": [0.5, 0.9]}, pool="last")
    record = train(cfg)
    assert record["test"]["accuracy"] > 0.5  # chance is 0.1
    assert record["steps"] == 80 and record["tokens_seen"] == 80 * 32 * 24
    assert [h["step"] for h in record["history"]] == [40, 80]
    for key in ("machine", "date", "wall_s", "seed", "config", "git_commit", "task_info", "run_id"):
        assert key in record
    assert json.loads(lines(tmp_path / "results.jsonl")[0]) == record


def test_lm_task_reports_bits_on_the_last_positions(tmp_path):
    cfg = tiny(tmp_path, task="toy_copy", task_params={"length": 32, "lag": 4}, context=32, steps=40,
               dim=16, batch_size=16, lr=3e-3, eval_last=8)
    record = train(cfg)
    test = record["test"]
    assert record["metric"] == "bits_per_token"
    assert test["scored"] == cfg.eval_batches * cfg.batch_size * 8
    assert math.isclose(test["bits_per_token"], test["loss"] / math.log(2), rel_tol=1e-12)
    assert test["bits_per_token"] < math.log2(7)  # better than uniform over the 7 real tokens


# -- resume ---------------------------------------------------------------------------------
def spawn(out, steps):
    args = argv_of(out, steps=steps, context=64, batch_size=16, dim=32, depth=2, eval_every=25,
                   checkpoint_every=5, task_params={"length": 64})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(TOYS), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc, timeout=120):
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path):
    steps = 100
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = spawn(killed, steps)
    try:
        sigkill_after_first_checkpoint(proc, killed, timeout=60, poll_s=0.005, settle_s=0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    interrupted_at = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 0 < interrupted_at < steps, "the kill must land mid-run for this test to mean anything"
    assert not (killed / "results.jsonl").exists()

    finish(spawn(killed, steps))  # resume
    finish(spawn(clean, steps))  # uninterrupted, same seed
    a, b = assert_resumed_equals_uninterrupted(killed, clean)
    assert a["sessions"] == 2 and b["sessions"] == 1 and b["steps"] == steps
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]]


def test_rerun_of_a_finished_run_adds_no_line_and_results_are_append_only(tmp_path):
    earlier = '{"run_id": "an-earlier-run", "note": "must survive"}\n'
    (tmp_path / "results.jsonl").write_text(earlier)
    first = train(tiny(tmp_path))
    after_first = (tmp_path / "results.jsonl").read_text()
    assert after_first.startswith(earlier) and len(after_first.splitlines()) == 2
    again = train(tiny(tmp_path))
    assert again == first
    assert (tmp_path / "results.jsonl").read_text() == after_first
    # Non-identity settings (checkpoint/eval cadence) do not make it a different run.
    train(tiny(tmp_path, checkpoint_every=3, eval_every=1))
    assert (tmp_path / "results.jsonl").read_text() == after_first


def test_resume_continues_from_the_checkpoint_step(tmp_path):
    train(tiny(tmp_path, steps=4))  # a finished 4-step run has a step-4 checkpoint
    ckpt = tmp_path / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    assert state["step"] == 4
    # Pretend the record was never written (crash after the last checkpoint): the rerun must not
    # train again, only evaluate and record.
    (tmp_path / "results.jsonl").unlink()
    record = train(tiny(tmp_path, steps=4))
    assert record["sessions"] == 2 and record["steps"] == 4
    assert len(lines(tmp_path / "results.jsonl")) == 1


# -- bad input ------------------------------------------------------------------------------
@pytest.fixture
def finished(tmp_path):
    """A run directory with one finished run; returns (dir, results text)."""
    train(tiny(tmp_path))
    return tmp_path, (tmp_path / "results.jsonl").read_text()


@pytest.mark.parametrize("change,message", [
    (dict(task="nope"), "unknown task name 'nope'; valid names: .*passkey"),
    (dict(mixer="nope"), "unknown mixer name 'nope'; valid names: .*toy_attention"),
    (dict(mixer="toy_lowrank", mixer_options={"max_len": 16}),
     "--context 24 exceeds max_len=16 of mixer 'toy_lowrank'"),
    (dict(task_params={"length": 24, "colour": 3}), "unknown parameters \\['colour'\\]"),
    (dict(seed=1), "belongs to a different run.*seed: checkpoint has 0, this run has 1"),
])
def test_bad_input_is_a_clear_error_and_keeps_results(finished, change, message):
    out, before = finished
    code, err = cli(*argv_of(out, **{k: v for k, v in change.items() if k != "seed"}),
                    *(["--seed", str(change["seed"])] if "seed" in change else []))
    assert code == 2
    assert err.startswith("longmix train: error: ")
    import re
    assert re.search(message, err), err
    assert (out / "results.jsonl").read_text() == before


def test_unwritable_out_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    code, err = cli(*argv_of(blocker / "run"))
    assert code == 2 and f"--out '{blocker / 'run'}' is not a writable directory" in err
    assert blocker.read_text() == "keep me"


def test_corrupt_checkpoint_is_a_clear_error_and_is_kept(finished):
    out, before = finished
    (out / "results.jsonl").write_text("")  # as if the run had not finished
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, err = cli(*argv_of(out))
    assert code == 2 and f"checkpoint {ckpt} is corrupt or unreadable" in err
    assert len(ckpt.read_bytes()) == 1000


def test_checkpoint_that_does_not_fit_the_model_is_a_clear_error_and_is_kept(finished):
    out, _ = finished
    (out / "results.jsonl").write_text("")  # as if the run had not finished
    ckpt = out / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    state["model"] = {"not_a_parameter": torch.zeros(1)}  # readable, right identity, wrong weights
    torch.save(state, ckpt)
    saved = ckpt.read_bytes()
    code, err = cli(*argv_of(out))
    assert code == 2 and f"checkpoint {ckpt} does not fit this run's model" in err
    assert ckpt.read_bytes() == saved


def test_parse_pairs():
    assert parse_pairs(["a=3", "b=0.5", "c=true", "d=[0.1, 0.9]", "e=soft max"], "--x") == \
        {"a": 3, "b": 0.5, "c": True, "d": [0.1, 0.9], "e": "soft max"}
    with pytest.raises(ValueError, match="--x expects key=value, got 'oops'"):
        parse_pairs(["oops"], "--x")


def test_bad_numbers_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="context must be an int >= 1, got 0"):
        tiny(tmp_path, context=0)
    with pytest.raises(ValueError, match="warmup must be"):
        tiny(tmp_path, warmup=100)
