"""One run per folder, symlink-proof writes, a checkpoint beyond --steps, and divergence recorded
as strict JSON: the ways a run folder could be damaged or lie about what happened."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from longmix.cli import main
from longmix.fileio import FolderBusy, folder_lock
from longmix.train import TrainConfig, TrainingDiverged, load_checkpoint, train
from longmix.train.checkpoint import CheckpointError, save_atomic

pytestmark = pytest.mark.usefixtures("toy_registry")

TINY = dict(task="passkey", mixer="toy_attention", context=24, steps=6, batch_size=8, dim=8,
            depth=1, eval_every=3, eval_batches=2, checkpoint_every=2, progress=False,
            task_params={"length": 24}, threads=1)


def tiny(out, **kw):
    return TrainConfig(**{**TINY, "out": str(out), **kw})


def strict_json(line: str):
    """json.loads that refuses NaN/Infinity, as strict readers (jq, JavaScript) do."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(line, parse_constant=refuse)


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_holder(tmp_path):
    # The holder is another process; when it dies (SIGKILL: no cleanup), the lock goes with it.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from longmix.fileio import folder_lock
        with folder_lock({str(tmp_path)!r}, "training run"):
            print("locked", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusy, match=rf"{re.escape(str(tmp_path))} is in use by another training "
                                             rf"run \(pid {holder.pid} on host .+, started \d{{4}}-\d\d-\d\dT[\d:]+Z\)"):
            train(tiny(tmp_path))
        assert not (tmp_path / "results.jsonl").exists() and not (tmp_path / "checkpoint.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    record = train(tiny(tmp_path))  # the dead holder's lock is gone
    assert record["status"] == "finished"


def test_busy_folder_through_the_cli_is_exit_2(tmp_path):
    with folder_lock(tmp_path, "training run"):
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["train", "--task", "passkey", "--mixer", "toy_attention", "--context", "24",
                         "--steps", "2", "--task-param", "length=24", "--out", str(tmp_path), "--quiet"])
    assert code == 2 and f"{tmp_path} is in use by another training run (pid {os.getpid()}" in err.getvalue()


def test_a_planted_symlink_in_the_run_folder_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt.tmp", ".checkpoint.pt.tmp", f"checkpoint.pt.tmp{os.getpid()}"):
        (out / name).symlink_to(victim)
    (out / ".checkpoint.pt.x1y2.tmp").symlink_to(victim)  # looks like a stale temp: removed as a link
    train(tiny(out))
    assert victim.read_text() == "precious"
    assert not (out / "checkpoint.pt").is_symlink() and load_checkpoint(out / "checkpoint.pt")["step"] == 6
    assert not (out / ".checkpoint.pt.x1y2.tmp").exists()


@pytest.mark.parametrize("name", ["results.jsonl", ".lock"])
def test_a_symlinked_results_file_or_lock_is_refused_up_front(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / name).symlink_to(victim)
    with pytest.raises(ValueError, match="symlink|Too many levels of symbolic links"):
        train(tiny(out))
    assert victim.read_text() == "precious" and not (out / "checkpoint.pt").exists()


def test_a_checkpoint_beyond_steps_is_refused_and_kept(tmp_path):
    train(tiny(tmp_path, steps=4))
    (tmp_path / "results.jsonl").unlink()
    ckpt = tmp_path / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    state["step"] = 9  # a hand-edited or foreign-but-same-identity checkpoint
    save_atomic(state, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} is at step 9, beyond this run's --steps 4"):
        train(tiny(tmp_path, steps=4))
    assert ckpt.read_bytes() == before and not (tmp_path / "results.jsonl").exists()


def test_divergence_stops_the_run_and_is_recorded_as_strict_json(tmp_path):
    earlier = '{"run_id": "an-earlier-run"}\n'
    (tmp_path / "results.jsonl").write_text(earlier)
    with pytest.raises(TrainingDiverged, match=r"training diverged: (loss|gradient norm) (nan|inf) at step \d"):
        train(tiny(tmp_path, lr=float("inf"), steps=20))
    text = (tmp_path / "results.jsonl").read_text()
    assert text.startswith(earlier)
    records = [strict_json(line) for line in text.splitlines()]
    assert len(records) == 2 and records[1]["status"] == "diverged"
    assert records[1]["run_id"] == tiny(tmp_path, lr=float("inf"), steps=20).run_id()
    assert records[1]["config"]["lr"] is None  # inf has no strict-JSON spelling
    assert 1 <= records[1]["step"] < 20
    # A rerun does not train it again (it would diverge again), nor add a line.
    with pytest.raises(TrainingDiverged, match="diverged earlier"):
        train(tiny(tmp_path, lr=float("inf"), steps=20))
    assert (tmp_path / "results.jsonl").read_text() == text


def test_divergence_through_the_cli_is_exit_3(tmp_path):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--task", "passkey", "--mixer", "toy_attention", "--context", "24",
                     "--steps", "5", "--batch-size", "4", "--dim", "8", "--depth", "1",
                     "--task-param", "length=24", "--lr", "inf", "--out", str(tmp_path), "--quiet"])
    assert code == 3 and err.getvalue().startswith("longmix train: error: training diverged")
    (line,) = (tmp_path / "results.jsonl").read_text().splitlines()
    assert strict_json(line)["status"] == "diverged"


def test_a_finished_record_is_strict_json_with_provenance(tmp_path):
    record = train(tiny(tmp_path))
    (line,) = (tmp_path / "results.jsonl").read_text().splitlines()
    assert strict_json(line) == record and record["status"] == "finished"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["date"])
    assert {"git_describe", "git_commit", "git_dirty", "git_diff_sha256"} <= set(record)
