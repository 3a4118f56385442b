"""Multi-node launch: two torchrun agents ("nodes") on localhost meet through c10d rendezvous and
run `longmix attend` as one world of 2 ranks, verified against float64."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from longmix.parallel.launch import free_port

TIMEOUT_S = 150


def _agent(port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
           "--rdzv-id", f"longmix-test-{port}", "--max-restarts", "0",
           "-m", "longmix.cli", "attend", *extra, "--no-progress", "--timeout", "120"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # own session, so a timeout kills the agent together with the worker it started
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)


def _run_two_nodes(extra: list[str]) -> list[tuple[int, str]]:
    """Both agents' (exit code, output). The rendezvous port must be named to both agents, so it
    is chosen free beforehand, and a concurrent process can take it before the first agent binds
    it: that (and only that) is retried once, on a new port."""
    results = _run_two_nodes_on(free_port(), extra)
    if any("EADDRINUSE" in out or "address already in use" in out for _, out in results):
        results = _run_two_nodes_on(free_port(), extra)
    return results


def _run_two_nodes_on(port: int, extra: list[str]) -> list[tuple[int, str]]:
    agents = [_agent(port, extra) for _ in range(2)]
    results = []
    try:
        for agent in agents:
            out, _ = agent.communicate(timeout=TIMEOUT_S)
            results.append((agent.returncode, out))
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun agents did not finish within {TIMEOUT_S}s")
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
    return results


def test_two_torchrun_nodes_run_attend_as_one_world():
    results = _run_two_nodes(["--seq-len", "3001", "--heads", "4", "--kv-heads", "2",
                              "--head-dim", "16", "--dtype", "fp32", "--strategy", "ring"])
    for code, out in results:
        assert code == 0, out
    reports = [out for _, out in results if "verification:" in out]
    assert len(reports) == 1, [out for _, out in results]  # only global rank 0 prints
    report = reports[0]
    assert "world size: 2 (torchrun" in report
    assert "plan: ring" in report
    assert "PASS" in report
