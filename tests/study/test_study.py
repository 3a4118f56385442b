"""`longmix study`: a tiny grid end to end (report.md, PNGs, reading.txt, resumability), and the
report's numbers and reading against independent computations on synthetic records."""
import contextlib
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest

from longmix import mixers
from longmix.cli import main
from longmix.study import SMALL, get_grid, report
from longmix.study import runner as study_runner

pytestmark = pytest.mark.usefixtures("toy_registry")

TINY = ["study", "--tasks", "passkey-near", "--mixers", "toy_attention", "--contexts", "16", "32",
        "--seeds", "1", "--steps", "3", "--quiet"]


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def lines(path):
    return Path(path).read_text().splitlines()


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, toy_registry):
    """One tiny study (2 runs of 3 steps), run once; tests work on copies of it."""
    path = tmp_path_factory.mktemp("study")
    code, out, err = cli(*TINY, "--out", str(path))
    assert code == 0, err
    return path


@pytest.fixture
def study_copy(tiny_study, tmp_path):
    shutil.copytree(tiny_study, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_tiny_grid_end_to_end_then_rerun_skips_finished_runs(study_copy, monkeypatch):
    tmp_path = study_copy
    records = [json.loads(x) for x in lines(tmp_path / "results.jsonl")]
    assert sorted(r["context"] for r in records) == [16, 32]
    assert all(r["study"]["label"] == "passkey-near" and r["steps"] == 3 for r in records)
    assert len(list((tmp_path / "runs").iterdir())) == 2

    md = (tmp_path / "report.md").read_text()
    accs = {r["context"]: r["test"]["accuracy"] for r in records}
    assert "| mixer (family) | C=16 | C=32 |" in md
    assert f"| toy_attention (attention) | {accs[16]:.3f} | {accs[32]:.3f} |" in md
    assert "![passkey-near](plot_passkey-near.png)" in md
    for png in ("plot_passkey-near.png", "summary.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reading = (tmp_path / "reading.txt").read_text()
    assert reading.startswith("passkey-near (accuracy") and "toy_attention" in reading
    assert reading in md

    # A rerun trains nothing and appends nothing.
    def no_training(cfg):
        raise AssertionError(f"{cfg.out} was trained again")

    monkeypatch.setattr(study_runner, "train", no_training)
    before = (tmp_path / "results.jsonl").read_text()
    code, out, err = cli(*TINY, "--out", str(tmp_path))
    assert code == 0, err
    assert (tmp_path / "results.jsonl").read_text() == before


def test_interrupted_study_resumes_without_duplicates(study_copy):
    # Crash after a run finished but before the study recorded it: the rerun picks the run's
    # own record up without training again, and records each run exactly once.
    tmp_path = study_copy
    study_lines = lines(tmp_path / "results.jsonl")
    (tmp_path / "results.jsonl").write_text(study_lines[0] + "\n")
    assert cli(*TINY, "--out", str(tmp_path))[0] == 0
    again = [json.loads(x) for x in lines(tmp_path / "results.jsonl")]
    assert len(again) == 2 and again[1]["run_id"] == json.loads(study_lines[1])["run_id"]
    assert again[1]["sessions"] == 1  # not retrained


@pytest.mark.skipif("softmax" not in mixers.available(), reason="needs the softmax mixer")
def test_parallel_jobs_record_every_run_once(tmp_path):
    # Worker processes import longmix afresh (spawn), so this uses a registered mixer, not a toy.
    argv = ["study", "--tasks", "passkey-near", "--mixers", "softmax", "--contexts", "8", "16",
            "--seeds", "1", "--steps", "2", "--jobs", "2", "--out", str(tmp_path)]
    code, out, err = cli(*argv)
    assert code == 0, err
    records = [json.loads(x) for x in lines(tmp_path / "results.jsonl")]
    assert sorted(r["context"] for r in records) == [8, 16]
    assert (tmp_path / "report.md").exists()


def test_bad_study_arguments_are_clear_errors(tmp_path):
    code, _, err = cli("study", "--tasks", "nope", "--out", str(tmp_path))
    assert code == 2 and "--tasks: unknown task 'nope'" in err and "passkey-far" in err
    code, _, err = cli("study", "--mixers", "nope", "--out", str(tmp_path))
    assert code == 2 and "unknown mixer name 'nope'" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli(*TINY, "--out", str(blocker / "study"))
    assert code == 2 and "is not a writable directory" in err


def test_small_grid_shape():
    grid = get_grid("small")
    runs = grid.runs()
    assert len(runs) == len(grid.tasks) * len(grid.mixers) * len(grid.contexts) * len(grid.seeds)
    assert len({r.run_id for r in runs}) == len(runs)
    assert {t.expect for t in grid.tasks} == {"rises", "flat"}
    assert all(r.config.pool == "last" for r in runs)
    # The full grid leaves out mixers that cannot drive the causal text model, and long contexts
    # on tasks whose examples are shorter.
    full = get_grid("full")
    assert all(not (r.label == "pathfinder" and r.config.context > 1024) for r in full.runs())
    assert SMALL.select(seeds=3).seeds == [0, 1, 2]


# -- the report on synthetic records --------------------------------------------------------
def record(label, mixer, context, seed, value, metric="accuracy", scored=10_000, expect="rises"):
    return {"task": "passkey", "mixer": mixer, "family": {"a": "attention", "s": "ssm"}[mixer[0]],
            "context": context, "seed": seed, "metric": metric, "higher_is_better": metric == "accuracy",
            "test": {metric: value, "scored": scored}, "wall_s": 1.0 + context / 64,
            "task_info": {"num_classes": 10}, "study": {"label": label, "expect": expect, "note": ""}}


def synthetic():
    recs = []
    # "attn" rises clearly; "ssm" is flat with a seed spread larger than its tiny trend.
    for c, (a0, a1, s0, s1) in {64: (0.10, 0.12, 0.50, 0.60), 256: (0.50, 0.52, 0.56, 0.52),
                                1024: (0.95, 0.97, 0.58, 0.50)}.items():
        recs += [record("far", "attn", c, 0, a0), record("far", "attn", c, 1, a1),
                 record("far", "ssm", c, 0, s0), record("far", "ssm", c, 1, s1)]
    return recs


def test_table_cells_are_mean_and_sample_std():
    (t,) = report.tables(synthetic())
    cell = t.cells["ssm"][64]
    assert cell.mean == pytest.approx(statistics.mean([0.50, 0.60]), abs=1e-12)
    assert cell.std == pytest.approx(statistics.stdev([0.50, 0.60]), abs=1e-12)
    md = report.markdown([t], {"grid": "x"}, {}, "reading")
    assert f"| ssm (ssm) | {0.55:.3f} ± {statistics.stdev([0.5, 0.6]):.3f} |" in md


def test_reading_is_computed_from_the_numbers():
    text = report.reading(report.tables(synthetic()))
    assert "attn accuracy rises from 0.110 at C=64 to 0.960 at C=1024" in text
    assert "ssm accuracy stays within the spread from C=64 to C=1024" in text
    assert "at C=1024 the best is attn (attention, 0.960), ahead beyond the spread ssm (0.540)" in text
    assert "improves with context beyond the spread for 1 of 2 task/mixer pairs (far/attn)" in text
    # Change the numbers and the reading changes with them.
    flipped = [dict(r, test={"accuracy": 1.0 - r["test"]["accuracy"], "scored": 10_000}) for r in synthetic()]
    assert "attn accuracy falls from 0.890 at C=64 to 0.040 at C=1024" in report.reading(report.tables(flipped))


def test_reading_flags_chance_and_lower_is_better_metrics():
    recs = [record("t", "attn", c, s, 2.0 - c / 1024, metric="bits_per_byte", expect="flat")
            for c in (64, 1024) for s in (0, 1)]
    recs += [record("far", "ssm", c, s, 0.1, scored=2000) for c in (64, 1024) for s in (0, 1)]
    text = report.reading(report.tables(recs))
    assert "attn bits per byte falls from 1.938 at C=64 to 1.000 at C=1024" in text
    assert "lower is better" in text
    assert "indistinguishable from chance at every context" in text
