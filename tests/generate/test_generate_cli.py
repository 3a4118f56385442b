"""`longmix generate` on a tiny text run trained here: the continuation is one process's greedy
choice at every position (float32, up to rounding), on 1 and 2 ranks, with the figures it must
report, and bad input is a clear error (exit 2)."""
from __future__ import annotations

import json

import pytest
import torch

from generate_cases import reference_logits
from longmix.cli import main
from longmix.generate import expected_cache_bytes
from longmix.generate.run_folder import load_run

CONTEXT = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--task", "text", "--mixer", "softmax", "--context", str(CONTEXT),
                 "--steps", "2", "--batch-size", "2", "--dim", "16", "--depth", "2", "--heads", "2",
                 "--eval-every", "2", "--eval-batches", "1", "--eval-last", "8",
                 "--checkpoint-every", "2", "--task-param", "max_bytes=20000", "--out", str(out),
                 "--quiet"])
    assert code == 0
    return str(out)


@pytest.mark.parametrize("procs", [1, 2])
def test_text_prompt_continues_like_one_process(run_dir, tmp_path, capsys, procs):
    report_path = tmp_path / "out.json"
    code = main(["generate", "--run", run_dir, "--prompt", "def main(", "--max-new-tokens", "6",
                 "--procs", str(procs), "--layout", "zigzag", "--json", str(report_path), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(report_path.read_text())
    run = load_run(run_dir)
    prompt = torch.tensor([run.encode("def main(")])
    tokens = torch.tensor([report["tokens"]])
    # float32 weights: each token must be the argmax of one forward's logits up to rounding (a
    # near-tie may break either way on another summation order)
    logits = reference_logits(run.model, prompt, tokens)[0]
    chosen = logits.gather(-1, tokens[0, :, None])[:, 0]
    assert (chosen >= logits.max(-1).values - 1e-5).all(), (report["tokens"], logits)
    assert report["text"] == run.decode(report["tokens"]) and captured.out.startswith(report["text"])
    assert report["world_size"] == procs and len(report["peak_rss_bytes_per_rank"]) == procs
    assert report["cache_bytes_per_rank"] == [
        expected_cache_bytes(run.model, prompt.shape[1], 6, procs, r, "zigzag") for r in range(procs)]
    for words in ("prefill", "tokens/s", "peak memory per rank", "cache bytes per rank"):
        assert words in captured.err


def test_prompt_ids(run_dir, capsys):
    assert main(["generate", "--run", run_dir, "--prompt-ids", "101,102,103", "--max-new-tokens", "3",
                 "--quiet"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("extra, match", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "x" * CONTEXT, "--max-new-tokens", "1"], "exceeds the model's max_len=32"),
    (["--prompt-ids", "1,999"], r"token ids must be in \[0, 257\)"),
    (["--prompt-ids", "1,a"], "--prompt-ids must be integers"),
    (["--prompt-file", "/nonexistent/prompt.txt"], "--prompt-file '/nonexistent/prompt.txt'"),
    (["--prompt", "a", "--max-new-tokens", "-1"], "--max-new-tokens must be an int >= 0"),
])
def test_bad_input_is_a_clear_error(run_dir, capsys, extra, match):
    assert main(["generate", "--run", run_dir, "--quiet", *extra]) == 2
    import re
    assert re.search(match, capsys.readouterr().err)


def test_a_folder_without_a_run_is_refused(tmp_path, capsys):
    assert main(["generate", "--run", str(tmp_path), "--prompt", "a"]) == 2
    assert "has no checkpoint.pt" in capsys.readouterr().err


def test_under_torchrun_every_rank_is_reported(run_dir, tmp_path):
    """Two ranks started by torchrun join its group; rank 0 reports both ranks' figures."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "torchrun.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "0", "-m", "longmix.cli", "generate",
           "--run-dir", run_dir, "--prompt", "def main(", "--max-new-tokens", "4", "--quiet",
           "--timeout", "60", "--json", str(out)]
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        text, _ = agent.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
        pytest.fail("torchrun did not finish within 150 s")
    assert agent.returncode == 0, text
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and len(report["cache_bytes_per_rank"]) == 2
    run = load_run(run_dir)
    prompt = torch.tensor([run.encode("def main(")])
    assert report["cache_bytes_per_rank"] == [
        expected_cache_bytes(run.model, prompt.shape[1], 4, 2, r) for r in range(2)]
