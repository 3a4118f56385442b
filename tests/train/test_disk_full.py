"""A full disk mid-checkpoint: exit status 4 with the path, the bytes needed and free, and the
previous checkpoint intact, so that a rerun with space resumes from it."""
import contextlib
import errno
import io

import torch

from longmix.cli import EXIT_DISK_FULL, main
from longmix.train import checkpoint, load_checkpoint

ARGS = ["train", "--task", "passkey", "--mixer", "toy_attention", "--context", "24", "--steps", "6",
        "--batch-size", "8", "--dim", "8", "--depth", "1", "--eval-every", "3", "--eval-batches", "2",
        "--checkpoint-every", "2", "--task-param", "length=24", "--threads", "1", "--quiet"]


class FillsUp(io.RawIOBase):
    """A file that takes ``room`` more bytes, then answers ENOSPC, as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, data):
        data = memoryview(data).cast("B")
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self.f.write(data[:self.room])
        self.room -= n
        return n

    def flush(self):
        self.f.flush()


def test_full_disk_at_the_second_checkpoint(tmp_path, monkeypatch, toy_registry):
    real_save, calls = torch.save, []

    def save_on_a_filling_disk(obj, f):
        calls.append(1)
        real_save(obj, FillsUp(f, 4096) if len(calls) >= 2 else f)

    monkeypatch.setattr(checkpoint.torch, "save", save_on_a_filling_disk)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([*ARGS, "--out", str(tmp_path)])
    text = err.getvalue()
    assert code == EXIT_DISK_FULL == 4, text
    path = tmp_path / "checkpoint.pt"
    assert f"no space left on the device writing {path}" in text
    assert "it needed about" in text and "free there" in text and "Traceback" not in text
    assert load_checkpoint(path)["step"] == 2  # the previous checkpoint survives
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []

    monkeypatch.setattr(checkpoint.torch, "save", real_save)  # space again: the rerun resumes
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*ARGS, "--out", str(tmp_path)]) == 0
    assert load_checkpoint(path)["step"] == 6
