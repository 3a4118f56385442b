"""What the kill-and-resume tests share: killing a run mid-way, and comparing the resumed run
with an uninterrupted one."""
import json
import math
import signal
import time

import torch

from longmix.train import load_checkpoint


def sigkill_after_first_checkpoint(proc, folder, timeout: float, poll_s: float, settle_s: float) -> None:
    """Wait until the run ``proc`` writes ``folder/checkpoint.pt``, let it go ``settle_s`` further
    (mid-step), then SIGKILL ``proc`` and reap it."""
    deadline = time.monotonic() + timeout
    while not (folder / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(poll_s)
    time.sleep(settle_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def assert_resumed_equals_uninterrupted(killed, clean) -> tuple[dict, dict]:
    """The first records of the resumed run (folder ``killed``) and of the uninterrupted one
    (``clean``) agree on metrics, and their final weights agree; returns both records."""
    a, b = (json.loads((d / "results.jsonl").read_text().splitlines()[0]) for d in (killed, clean))
    assert a["run_id"] == b["run_id"] and a["steps"] == b["steps"]
    for split in ("test", "valid"):
        for key, value in b[split].items():
            assert math.isclose(a[split][key], value, rel_tol=1e-6, abs_tol=1e-9), (split, key)
    wa, wb = (load_checkpoint(d / "checkpoint.pt")["model"] for d in (killed, clean))
    for name in wb:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-6, atol=1e-7)
    return a, b
