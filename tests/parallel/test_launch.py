"""The local launcher: results by rank, failures named, timeouts enforced, both start methods."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from longmix.parallel.launch import RankFailure, run_local


def sum_of_ranks(group, offset):
    t = torch.tensor([float(dist.get_rank(group))])
    dist.all_reduce(t, group=group)
    return dist.get_rank(group), dist.get_world_size(group), t.item() + offset


def raise_on(group, bad_rank):
    if dist.get_rank(group) == bad_rank:
        raise ValueError("bad value on this rank")
    return dist.get_rank(group)


def sleep_forever(group):
    time.sleep(600)


def test_results_come_back_by_rank():
    results = run_local(sum_of_ranks, 3, (10.0,), timeout=60)
    assert results == [(r, 3, 3.0 + 10.0) for r in range(3)]


def test_spawn_start_method():
    assert run_local(sum_of_ranks, 1, (0.0,), timeout=120, start_method="spawn") == [(0, 1, 0.0)]


def test_raising_rank_is_named_with_traceback():
    with pytest.raises(RankFailure) as info:
        run_local(raise_on, 2, (1,), timeout=60)
    assert info.value.rank == 1
    assert "ValueError: bad value on this rank" in str(info.value)
    assert "Traceback" in str(info.value)
    # one line for a table: the head and the exception line, not the head alone
    assert info.value.summary() == "rank 1 failed: ValueError: bad value on this rank"


def exit_on(group, bad_rank, code):
    if dist.get_rank(group) == bad_rank:
        os._exit(code)
    dist.barrier(group=group)  # the survivor then fails on its dead peer
    return dist.get_rank(group)


def test_a_rank_that_exits_is_named_with_its_exit_code():
    with pytest.raises(RankFailure) as info:
        run_local(exit_on, 2, (1, 86), timeout=60, collective_timeout=20)
    assert info.value.rank == 1 and info.value.exitcode == 86
    assert "exit code 86" in str(info.value)


def test_timeout_kills_the_ranks():
    start = time.monotonic()
    with pytest.raises(RankFailure, match="timed out"):
        run_local(sleep_forever, 2, timeout=3)
    assert time.monotonic() - start < 20


def test_bad_nprocs():
    with pytest.raises(ValueError, match="nprocs"):
        run_local(sum_of_ranks, 0)


_ORPHAN_SCRIPT = """
import os, sys, time
from longmix.parallel.launch import run_local

def report_pid_and_sleep(group, folder):
    with open(os.path.join(folder, f"rank{os.getpid()}"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)

if __name__ == "__main__":
    run_local(report_pid_and_sleep, 2, (sys.argv[1],), timeout=600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_ranks_die_with_their_launcher(tmp_path, sig):
    """SIGKILL or SIGTERM to the launching process: its ranks are gone within a few seconds."""
    script = tmp_path / "launcher.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("rank*"))) < 2:
            assert time.monotonic() < deadline and parent.poll() is None, "ranks never started"
            time.sleep(0.1)
        ranks = [int(p.read_text()) for p in tmp_path.glob("rank*")]
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in ranks), f"orphaned ranks after {sig.name}"
    finally:
        parent.kill()
        for p in tmp_path.glob("rank*"):
            try:
                os.kill(int(p.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_torchrun_world_size_and_a_procs_that_disagrees(monkeypatch):
    from longmix.parallel.launch import torchrun_world_size

    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    assert torchrun_world_size(3) is None  # not under torchrun: --procs is the user's to choose
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    assert torchrun_world_size(None) == torchrun_world_size(2) == 2
    with pytest.raises(ValueError, match="--procs 3 disagrees with torchrun's WORLD_SIZE=2"):
        torchrun_world_size(3)


@pytest.mark.parametrize("command", [
    ["attend", "--seq-len", "64"],
    ["train", "--task", "passkey", "--mixer", "softmax", "--context", "16", "--steps", "1"],
])
def test_both_commands_refuse_a_procs_that_disagrees_with_torchrun(monkeypatch, capsys, tmp_path, command):
    from longmix.cli import main

    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    argv = [*command, "--procs", "3"] + (["--out", str(tmp_path / "run")] if command[0] == "train" else [])
    try:
        code = main(argv)
    except SystemExit as exc:  # attend reports argument errors through argparse
        code = exc.code
    assert code == 2
    assert "--procs 3 disagrees with torchrun's WORLD_SIZE=2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written
