"""Atomic checkpoints: a crash at any point of a save leaves the previous checkpoint intact;
corrupt files get a clear error naming them and are never deleted; RNG states round-trip."""
import collections
import os
import pickle
import random
import re
import traceback

import numpy as np
import pytest
import torch

from longmix.fileio import remove_stale_temps
from longmix.train import checkpoint
from longmix.train.checkpoint import CheckpointError


def payload(step):
    return {"format": checkpoint.FORMAT, "identity": {"lr": 1e-3}, "step": step,
            "model": {"w": torch.full((64, 64), float(step))}, "optimizer": {}, "scheduler": {},
            "rng": checkpoint.rng_state(), "history": [], "wall_s": 0.0, "sessions": 1}


def test_round_trip(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_atomic(payload(3), path)
    loaded = checkpoint.load(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.full((64, 64), 3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("where", ["during_write", "before_rename"])
def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_atomic(payload(1), path)
    before = path.read_bytes()

    class Crash(Exception):
        pass

    if where == "during_write":
        real_save = torch.save

        def torn_save(obj, f):  # write half a checkpoint, then die
            real_save(obj, f)
            f.truncate(f.tell() // 2)
            raise Crash

        monkeypatch.setattr(torch, "save", torn_save)
    else:
        def no_rename(src, dst):
            raise Crash

        monkeypatch.setattr(checkpoint.os, "replace", no_rename)
    with pytest.raises(Crash):
        checkpoint.save_atomic(payload(2), path)
    assert path.read_bytes() == before
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no stray temp file


def test_a_stale_temp_file_from_a_hard_kill_is_harmless(tmp_path):
    # SIGKILL cannot run cleanup: the torn temp file stays until the next run clears it.
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_atomic(payload(1), path)
    stale = tmp_path / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"torn")
    assert checkpoint.load(path)["step"] == 1
    checkpoint.save_atomic(payload(2), path)
    assert checkpoint.load(path)["step"] == 2
    assert remove_stale_temps(path) == [stale]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_planted_symlink_is_never_written_through(tmp_path):
    # The old fixed temporary name, and the names a pid or a counter would give: an attacker (or
    # a second run) can plant links there; the save must not follow any of them.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = tmp_path / "checkpoint.pt"
    planted = [tmp_path / name for name in ("checkpoint.pt.tmp", f"checkpoint.pt.tmp{os.getpid()}",
                                            ".checkpoint.pt.tmp", f".checkpoint.pt.{os.getpid()}.tmp")]
    for link in planted:
        link.symlink_to(victim)
    checkpoint.save_atomic(payload(1), path)
    checkpoint.save_atomic(payload(2), path)
    assert victim.read_text() == "precious"
    assert checkpoint.load(path)["step"] == 2 and not path.is_symlink()
    assert all(link.is_symlink() for link in planted)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "half", "pickled object"])
def test_corrupt_checkpoint_is_a_clear_error_and_is_kept(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    if content == "half":
        checkpoint.save_atomic(payload(1), path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    elif content == "pickled object":  # code a weights_only load refuses to run
        content = pickle.dumps({"step": collections.OrderedDict, "f": os.getcwd})
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt or unreadable.*left in place") as info:
        checkpoint.load(path)
    # torch's advice to retry with weights_only=False (i.e. run the file's code) is not repeated
    shown = "".join(traceback.format_exception(info.value))  # what a user sees, chained errors included
    assert "weights_only" not in shown and "\n" not in str(info.value)
    assert path.read_bytes() == content


@pytest.mark.parametrize("field,value,expected", [
    ("step", "3", "'step' must be an int >= 0, got '3'"),
    ("step", True, "'step' must be an int >= 0, got True"),
    ("step", -1, "'step' must be an int >= 0, got -1"),
    ("model", {"w": [1.0]}, "'model' must be a dict of tensors"),
    ("history", {"step": 1}, "'history' must be a list of dicts"),
    ("wall_s", float("nan"), "'wall_s' must be a finite number >= 0, got nan"),
    ("sessions", 1.5, "'sessions' must be an int >= 0, got 1.5"),
    ("rng", {}, "'rng' must be a dict of RNG states"),
    ("identity", [], "'identity' must be a dict"),
])
def test_a_field_of_the_wrong_type_is_a_clear_error(tmp_path, field, value, expected):
    path = tmp_path / "checkpoint.pt"
    torch.save({**payload(1), field: value}, path)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is damaged: field {re.escape(expected)}"):
        checkpoint.load(path)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a longmix training checkpoint"):
        checkpoint.load(path)
    assert isinstance(CheckpointError("x"), ValueError)


def test_rng_states_round_trip(tmp_path):
    checkpoint.seed_everything(5)
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_atomic(payload(0), path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    checkpoint.set_rng_state(checkpoint.load(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
