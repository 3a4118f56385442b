"""`longmix study`: a tiny grid end to end (sweep, floors, report.md, PNGs, reading.txt,
resumability), and the report's numbers, flags and reading against independent computations on
synthetic records."""
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
from longmix.study import grid as study_grid
from longmix.study import runner as study_runner

pytestmark = pytest.mark.usefixtures("toy_registry")

TINY = ["study", "--tasks", "near-16", "--mixers", "toy_attention", "--contexts", "16", "32",
        "--seeds", "1", "--steps", "3", "--lrs", "1e-3", "--quiet"]


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def lines(path):
    return Path(path).read_text().splitlines()


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, toy_registry):
    """One tiny study (a sweep of 2 candidates, 2 grid runs of 3 steps), run once; tests work on
    copies of it."""
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
    everything = [json.loads(x) for x in lines(tmp_path / "results.jsonl")]
    sweep = [r for r in everything if r["study"]["phase"] == "sweep"]
    records = [r for r in everything if r["study"]["phase"] == "grid"]
    # The sweep tries both positional schemes at the longest context; the grid's C=32 run is
    # the chosen sweep run itself (reused, not trained again).
    assert sorted(r["positional"] for r in sweep) == ["learned", "sinusoidal"]
    assert all(r["context"] == 32 and r["seed"] == 0 for r in sweep)
    chosen = max(sweep, key=lambda r: r["valid"]["accuracy"])  # first max: the order of the sweep
    assert sorted(r["context"] for r in records) == [16, 32]
    assert all(r["study"]["label"] == "near-16" and r["steps"] == 3 for r in records)
    assert all(r["positional"] == chosen["positional"] for r in records)
    assert next(r for r in records if r["context"] == 32)["reused_from"] == chosen["study"]["run"]
    assert len(list((tmp_path / "runs").iterdir())) == 3
    assert all("git_describe" in r for r in everything)

    md = (tmp_path / "report.md").read_text()
    accs = {r["context"]: r["test"]["accuracy"] for r in records}
    assert "| mixer (family) | params (dim) | C=16 | C=32 |" in md
    assert f"| toy_attention (attention) | " in md and f"{accs[16]:.3f}" in md
    assert "| floor: chance | | 0.100 | 0.100 |" in md
    assert "Validation sweep" in md and "**lr 0.001, " + chosen["positional"] in md
    assert "![near-16](plot_near-16.png)" in md
    floors = json.loads((tmp_path / "floors.json").read_text())
    assert len(floors) == 2 and all(f["chance"] == 0.1 for f in floors.values())
    for png in ("plot_near-16.png", "curves_near-16.png", "summary.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reading = (tmp_path / "reading.txt").read_text()
    assert reading.startswith("near-16 (accuracy") and "(near-16, toy_attention, C=32" in reading
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
    (tmp_path / "results.jsonl").write_text("\n".join(study_lines[:2]) + "\n")  # the sweep only
    assert cli(*TINY, "--out", str(tmp_path))[0] == 0
    again = [json.loads(x) for x in lines(tmp_path / "results.jsonl")]
    assert len(again) == len(study_lines)
    assert sorted(r["study"]["run"] for r in again) == sorted(json.loads(x)["study"]["run"] for x in study_lines)
    assert all(r["sessions"] == 1 for r in again)  # not retrained


def test_a_superseded_sweep_takes_no_part_in_the_report(study_copy):
    # A sweep record of another budget (another run id) stays in the file but is not counted.
    path = study_copy / "results.jsonl"
    sweep = next(json.loads(x) for x in lines(path) if json.loads(x)["study"]["phase"] == "sweep")
    old = {**sweep, "study": {**sweep["study"], "run": sweep["study"]["run"] + "-old"},
           "valid": {k: 1.0 for k in sweep["valid"]}}
    path.write_text(path.read_text() + json.dumps(old) + "\n")
    assert cli(*TINY, "--out", str(study_copy))[0] == 0
    text = (study_copy / "report.md").read_text()
    assert "sweep runs: 2 of 2" in text and "-old" not in text


@pytest.mark.skipif("softmax" not in mixers.available(), reason="needs the softmax mixer")
def test_parallel_jobs_record_every_run_once(tmp_path):
    # Worker processes import longmix afresh (spawn), so this uses a registered mixer, not a toy.
    argv = ["study", "--tasks", "near-16", "--mixers", "softmax", "--contexts", "8", "16",
            "--seeds", "1", "--steps", "2", "--lrs", "1e-3", "--jobs", "2", "--out", str(tmp_path)]
    code, out, err = cli(*argv)
    assert code == 0, err
    records = [json.loads(x) for x in lines(tmp_path / "results.jsonl")]
    assert sorted(r["context"] for r in records if r["study"]["phase"] == "grid") == [8, 16]
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
    choices = {(st.label, m): grid.candidates(m)[0] for st, m in grid.cells()}
    runs = grid.runs(choices)
    assert len(runs) == grid.planned_runs() == sum(len(grid.contexts_of(st)) * len(grid.seeds)
                                                    for st, _ in grid.cells())
    assert len({r.run_id for r in runs}) == len(runs)
    assert {t.expect for t in grid.tasks} == {"rises", "flat", "jump"}
    assert {"mqar_all", "listops", "distance"} <= {t.task for t in grid.tasks}
    assert len(grid.seeds) >= 3 and len(grid.lrs) >= 3
    assert all(r.config.pool == "last" and r.config.train_last == r.config.eval_last for r in runs)
    # The sweep: every cell's candidates at its task's longest context, seed 0; positions are
    # swept for attention only.
    sweep = grid.sweep_runs()
    assert all(r.config.seed == 0 and r.config.context == grid.contexts_of(
        next(t for t in grid.tasks if t.label == r.label))[-1] for r in sweep)
    assert {r.config.positional for r in sweep if r.config.mixer == "softmax"} == {"sinusoidal", "learned"}
    assert {r.config.positional for r in sweep if r.config.mixer == "s4d"} == {"auto"}
    # Cells without a finished sweep have no grid runs yet.
    assert grid.runs({}) == []
    # The full grid leaves out mixers that cannot drive the causal text model, and long contexts
    # on tasks whose examples are shorter.
    full = get_grid("full")
    assert all(not (st.label == "pathfinder" and max(full.contexts_of(st)) > 1024) for st, _ in full.cells())
    assert SMALL.select(seeds=3).seeds == [0, 1, 2]


def test_task_steps_set_a_tasks_budget_and_steps_override_every_task():
    grid = get_grid("small")
    steps = {r.label: r.config.steps for r in grid.sweep_runs()}
    assert steps["mqar"] == grid.task_steps["mqar"] > grid.train["steps"] == steps["text"]
    tasks = {st.label: st for st in grid.tasks}
    assert grid.task_train(tasks["mqar"]) == {"steps": grid.task_steps["mqar"]} and grid.task_train(tasks["text"]) == {}
    # --steps (a smoke test) applies to every task, the long ones too, and caps the schedule.
    short = grid.with_steps(5)
    assert {r.config.steps for r in short.sweep_runs()} == {5}
    assert all(r.config.warmup <= 5 and r.config.eval_every <= 5 for r in short.sweep_runs())
    assert grid.task_steps == {"mqar": 6000}  # the shipped grid is left alone
    with pytest.raises(ValueError, match="--steps"):
        grid.with_steps(0)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_parameter_counts_are_matched_within_ten_percent(name):
    grid = get_grid(name)
    for st in grid.tasks:
        sizes = {m: grid.matched(st, m) for s2, m in grid.cells() if s2 is st}
        reference = sizes[grid.reference]["parameters"]
        for m, size in sizes.items():
            assert abs(size["parameters"] - reference) <= 0.10 * reference, (st.label, m, size, reference)
            assert size["reference"] == reference


def sweep_record(run, valid, test, status="finished"):
    rec = {"run_id": run.config.run_id(), "metric": "accuracy", "higher_is_better": True, "status": status,
           "valid": {"accuracy": valid} if valid is not None else None, "test": {"accuracy": test},
           "study": {"run": run.run_id, "phase": "sweep"}}
    return rec


def test_choice_follows_validation_never_test_and_skips_diverged():
    grid = get_grid("tiny").select(tasks_=["near-16"], mixers_=["softmax"])
    sweep = grid.sweep_runs()
    assert len(sweep) == len(grid.lrs) * len(grid.positionals)
    # valid ranks the candidates one way, test the other; the last one diverged.
    records = [sweep_record(r, valid=0.1 * i, test=1.0 - 0.1 * i) for i, r in enumerate(sweep[:-1])]
    records.append(sweep_record(sweep[-1], valid=None, test=1.0, status="diverged"))
    choices, table = study_grid.choose(grid, records)
    best = sweep[-2].config
    assert choices[("near-16", "softmax")] == {"lr": best.lr, "positional": best.positional}
    assert [v for _, v in table[("near-16", "softmax")]] == [0.1 * i for i in range(len(sweep) - 1)] + [None]
    # An unfinished sweep chooses nothing yet.
    assert study_grid.choose(grid, records[:-1])[0] == {}


# -- the report on synthetic records --------------------------------------------------------
def record(label, mixer, context, seed, value, metric="accuracy", scored=10_000, expect="rises",
           history=(), describe="v1", jump_at=None):
    return {"task": "passkey", "mixer": mixer, "family": {"a": "attention", "s": "ssm"}[mixer[0]],
            "context": context, "seed": seed, "metric": metric, "higher_is_better": metric == "accuracy",
            "test": {metric: value, "scored": scored}, "wall_s": 1.0 + context / 64, "status": "finished",
            "history": [{"step": s_, f"valid_{metric}": v} for s_, v in history], "git_describe": describe,
            "task_info": {"num_classes": 10},
            "study": {"label": label, "expect": expect, "note": "", "jump_at": jump_at}}


def synthetic():
    recs = []
    # "attn" rises clearly; "ssm" is flat with a seed spread larger than its tiny trend.
    for c, (a0, a1, s0, s1) in {64: (0.10, 0.12, 0.50, 0.60), 256: (0.50, 0.52, 0.56, 0.52),
                                1024: (0.95, 0.97, 0.58, 0.50)}.items():
        recs += [record("far", "attn", c, 0, a0), record("far", "attn", c, 1, a1),
                 record("far", "ssm", c, 0, s0), record("far", "ssm", c, 1, s1)]
    return recs


def chance_floors(label, contexts, floor=0.1):
    return {(label, c): {"chance": floor, "majority": floor / 2, "floor": floor, "floor_name": "chance",
                         "higher_is_better": True} for c in contexts}


def test_table_cells_are_mean_and_sample_std():
    (t,) = report.tables(synthetic(), matched={("far", "attn"): {"dim": 32, "parameters": 1000, "reference": 1000},
                                               ("far", "ssm"): {"dim": 30, "parameters": 1050, "reference": 1000}})
    cell = t.cells["ssm"][64]
    assert cell.mean == pytest.approx(statistics.mean([0.50, 0.60]), abs=1e-12)
    assert cell.std == pytest.approx(statistics.stdev([0.50, 0.60]), abs=1e-12)
    md = report.markdown([t], {"grid": "x"}, {}, "reading")
    assert f"| ssm (ssm) | 1050 (30) | {0.55:.3f} ± {statistics.stdev([0.5, 0.6]):.3f} |" in md


def test_cost_table_is_per_step_across_tasks_of_different_budgets():
    short = record("far", "attn", 64, 0, 0.5)
    long = {**record("near", "attn", 64, 0, 0.5), "task": "distance"}
    short.update(steps=100, wall_s=2.0)
    long.update(steps=1000, wall_s=40.0)
    tabs = report.tables([short, long])
    assert "| attn | 30.0 |" in report.cost_table(tabs)  # mean of 20 ms and 40 ms per step
    md = report.markdown(tabs, {"grid": "x"}, {}, "reading")
    assert "Training steps per run: 100." in md and "Training steps per run: 1000." in md


def test_reading_is_computed_from_the_numbers_and_cites_its_cells():
    text = report.reading(report.tables(synthetic(), floors=chance_floors("far", (64, 256, 1024))))
    assert "attn accuracy rises from 0.110 at C=64 to 0.960 at C=1024 (far, attn, C=1024 vs C=64)" in text
    assert "ssm accuracy stays within the spread from C=64 to C=1024" in text and "(far, ssm, C=1024 vs C=64)" in text
    assert ("at C=1024 the best trained mixer is attn (attention, 0.960), ahead beyond the spread of "
            "ssm (0.540) (far, attn vs ssm, C=1024)") in text
    assert "improves with context beyond the spread for 1 of 2 trained task/mixer pairs (far/attn)" in text
    # Change the numbers and the reading changes with them.
    flipped = [dict(r, test={"accuracy": 1.0 - r["test"]["accuracy"], "scored": 10_000}) for r in synthetic()]
    assert "attn accuracy falls from 0.890 at C=64 to 0.040 at C=1024" in report.reading(report.tables(flipped))


def test_rows_below_their_floor_support_no_claim():
    # With a floor of 0.6, ssm (0.54 at C=1024) is not trained: no trend sentence, no ranking.
    t = report.tables(synthetic(), floors=chance_floors("far", (64, 256, 1024), floor=0.6))
    assert t[0].trained("ssm") is False and t[0].trained("attn") is True
    text = report.reading(t)
    assert "no claim from ssm: at C=1024 it scores 0.540, not beyond the chance floor 0.600" in text
    assert "ssm accuracy" not in text and "best trained mixer" not in text
    assert "for 1 of 1 trained task/mixer pairs (far/attn)" in text
    md = report.markdown(t, {"grid": "x"}, {}, text)
    assert "**Not trained** (below the floor at C=1024): ssm" in md
    assert "| floor: chance | | 0.600 | 0.600 | 0.600 |" in md
    assert "0.540 ± 0.057 †" in md and "0.960 ± 0.014 †" not in md


def test_control_jump_convergence_and_dirty_flags():
    rising = [(100, 0.1), (200, 0.5), (300, 0.9)]  # still moving over its last third: not converged
    flat = [(100, 0.9), (200, 0.95), (300, 0.955)]
    recs = [record("ctl", "attn", c, s, v, expect="jump", jump_at=100, history=h,
                   describe="v1-dirty" if c == 128 else "v1")
            for c, v, h in ((64, 0.1, flat), (128, 0.95, rising)) for s in (0, 1)]
    (t,) = report.tables(recs, floors=chance_floors("ctl", (64, 128)))
    assert report.converged(recs[2]) is False and report.converged(recs[0]) is True
    text = report.reading([t])
    assert ("attn jumps where C crosses the key's distance 100: 0.100 at C=64, 0.950 at C=128 "
            "(ctl, attn, C=128 vs C=64)") in text
    assert "not converged at C=128" in text
    assert "controls: accuracy jumps where C crosses the key's distance for 1 of 1" in text
    # at C=64 the key is out of sight: the cell cannot beat chance, and says so
    assert report.cell_flags(t, "attn", 128) == " ~ *" and report.cell_flags(t, "attn", 64) == " †"
    summary = report.provenance_summary(recs)
    assert summary["dirty"] == 2 and summary["total"] == 4


def test_reading_flags_lower_is_better_metrics():
    recs = [record("t", "attn", c, s, 2.0 - c / 1024, metric="bits_per_byte", expect="flat")
            for c in (64, 1024) for s in (0, 1)]
    text = report.reading(report.tables(recs))
    assert "attn bits per byte falls from 1.938 at C=64 to 1.000 at C=1024" in text
    assert "lower is better" in text and "(no floor known)" in text


def test_dry_run_times_every_cell_and_prints_the_estimate(tmp_path):
    code, out, err = cli("study", "--grid", "tiny", "--tasks", "near-16", "--mixers", "toy_attention",
                         "--contexts", "16", "32", "--seeds", "3", "--lrs", "1e-3", "3e-3", "--dry-run",
                         "--out", str(tmp_path / "never"))
    assert code == 0, err
    assert "grid 'tiny': 4 sweep runs, 6 grid runs" in out  # 2 lrs x 2 positionals; 2 contexts x 3 seeds
    assert out.count("ms/step") == 2
    # 5 grid runs left to train: seed 0 at C=32 is the chosen sweep run
    assert "grid: 5 runs" in out and "sweep: 4 runs" in out and "h of one core" in out
    assert not (tmp_path / "never").exists()  # nothing trained, nothing written


def test_run_seconds_counts_steps_and_evaluations():
    from longmix.study.budget import run_seconds
    from longmix.train import TrainConfig

    cfg = TrainConfig(task="passkey", mixer="softmax", context=8, steps=100, eval_every=25, eval_batches=4)
    assert run_seconds(cfg, per_step=0.5, per_eval=0.1) == pytest.approx(100 * 0.5 + 5 * 4 * 0.1)


def test_a_diverged_run_keeps_the_trainers_record(tmp_path):
    from longmix.study.runner import _train_one
    from longmix.train import TrainConfig

    cfg = TrainConfig(task="passkey", mixer="softmax", context=16, steps=6, batch_size=4, dim=8,
                      depth=1, lr=float("inf"), eval_every=6, eval_batches=1, progress=False,
                      threads=1, task_params={"length": 16}, out=str(tmp_path / "run"))
    record, error = _train_one(cfg)
    assert error is None and record["status"] == "diverged" and record["run_id"] == cfg.run_id()
    written = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert written == [record]  # the one record the trainer wrote, not a second version of it
    assert record["step"] >= 1 and "git_describe" in record and "machine" in record
