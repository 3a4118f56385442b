"""A full disk stops a study at once with exit status 4 and the path, instead of being recorded
as one failed run after another."""
import contextlib
import io

from longmix.cli import EXIT_DISK_FULL, main
from longmix.fileio import DiskFull
from longmix.study import runner


def test_a_full_disk_stops_the_study_with_its_exit_status(tmp_path, monkeypatch):
    calls = []

    def train_on_a_full_disk(cfg):
        calls.append(cfg.run_id())
        raise DiskFull(f"{cfg.out}/checkpoint.pt", 1000, 10)

    monkeypatch.setattr(runner, "train", train_on_a_full_disk)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["study", "--grid", "tiny", "--out", str(tmp_path), "--quiet"])
    assert code == EXIT_DISK_FULL
    assert len(calls) == 1  # the first run's full disk ends the study; no run after it is tried
    assert "longmix study: error: no space left on the device writing" in err.getvalue()
    assert "checkpoint.pt: it needed about 1000 bytes, 10 bytes free there" in err.getvalue()
