"""``init_from``: a run that starts from another run's weights (a curriculum of contexts), and
``causal``: causal mixers for classification."""
import pytest
import torch

from longmix.train import TrainConfig, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("toy_registry")

TINY = dict(task="passkey", mixer="toy_attention", context=16, steps=3, batch_size=4, dim=8,
            depth=1, eval_every=3, eval_batches=1, checkpoint_every=3, progress=False,
            task_params={"length": 16}, threads=1, weight_decay=0.0)


def tiny(out, **kw):
    return TrainConfig(**{**TINY, "out": str(out), **kw})


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A finished run at context 16: the first stage of a curriculum."""
    out = tmp_path_factory.mktemp("short")
    train(tiny(out))
    return out


def test_the_longer_stage_starts_from_the_shorter_stages_weights(short_run, tmp_path):
    # A learning rate too small to move the weights: the checkpoint then shows where it started.
    record = train(tiny(tmp_path / "long", context=32, task_params={"length": 32}, steps=1, lr=1e-12,
                        warmup=0, init_from=str(short_run)))
    start = load_checkpoint(short_run / "checkpoint.pt")["model"]
    after = load_checkpoint(tmp_path / "long" / "checkpoint.pt")["model"]
    assert start.keys() == after.keys()
    for name in start:
        torch.testing.assert_close(after[name], start[name], rtol=0, atol=1e-9, msg=name)
    assert record["config"]["init_from"] == str(short_run)


def test_init_from_changes_the_run_id_and_defaults_keep_old_run_ids(short_run, tmp_path):
    plain = tiny(tmp_path)
    assert "init_from" not in plain.identity() and "causal" not in plain.identity()
    assert tiny(tmp_path, init_from=str(short_run)).run_id() != plain.run_id()
    assert tiny(tmp_path, causal=True).run_id() != plain.run_id()


def test_resume_reads_its_own_checkpoint_not_init_from(short_run, tmp_path, monkeypatch):
    source = tmp_path / "source"
    train(tiny(source))
    train(tiny(tmp_path / "whole", steps=4, init_from=str(source)))
    uninterrupted = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]

    from longmix.tasks.passkey import Passkey
    batch = Passkey.batch

    def crash_at_step_3(self, split, index, *args):
        if split == "train" and index == 3:
            raise RuntimeError("crash")
        return batch(self, split, index, *args)

    part = tiny(tmp_path / "part", steps=4, init_from=str(source), checkpoint_every=2)
    with monkeypatch.context() as patch:
        patch.setattr(Passkey, "batch", crash_at_step_3)
        with pytest.raises(RuntimeError, match="crash"):
            train(part)
    source.rename(tmp_path / "moved")  # the resumed run must not need it
    train(part)
    resumed = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["model"]
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], msg=name)


@pytest.mark.parametrize("change, message", [
    (dict(dim=16), "dim: 8 there, 16 here"),
    (dict(mixer="toy_global", causal=False), "mixer: 'toy_attention' there"),
])
def test_another_architecture_is_a_clear_error(short_run, tmp_path, change, message):
    with pytest.raises(ValueError, match="init_from") as err:
        train(tiny(tmp_path, init_from=str(short_run), **change))
    assert message in str(err.value)


def test_a_folder_without_a_finished_run_is_a_clear_error(short_run, tmp_path):
    with pytest.raises(ValueError, match="has no checkpoint.pt"):
        train(tiny(tmp_path / "x", init_from=str(tmp_path / "empty")))
    unfinished = tmp_path / "unfinished"
    train(tiny(unfinished, steps=4, checkpoint_every=2))
    state = load_checkpoint(unfinished / "checkpoint.pt")
    state["step"] = 2  # as if killed after the checkpoint at step 2
    torch.save(state, unfinished / "checkpoint.pt")
    with pytest.raises(ValueError, match="stopped at step 2 of 4"):
        train(tiny(tmp_path / "y", init_from=str(unfinished)))


def test_causal_classification_is_causal(tmp_path):
    from longmix import tasks
    from longmix.models import SequenceModel
    from longmix.train.loop import model_config

    cfg = tiny(tmp_path, causal=True)
    model = SequenceModel(model_config(cfg, tasks.build("passkey", length=16)))
    assert model.causal
    with pytest.raises(ValueError, match="causal must be"):
        tiny(tmp_path, causal="yes")


def test_evaluate_checkpoint_reproduces_the_record_and_runs_at_another_context(short_run, tmp_path):
    from longmix.train import evaluate_checkpoint, results

    record = results.find(short_run / "results.jsonl", tiny(short_run).run_id())
    again = evaluate_checkpoint(tiny(short_run), short_run / "checkpoint.pt")
    assert again == record["test"]
    longer = evaluate_checkpoint(tiny(short_run, context=64, task_params={"length": 64}), short_run / "checkpoint.pt")
    assert longer["scored"] == TINY["batch_size"] * TINY["eval_batches"]
    with pytest.raises(ValueError, match="its weights do not fit this model"):
        evaluate_checkpoint(tiny(short_run, dim=16), short_run / "checkpoint.pt")
