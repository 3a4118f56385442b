"""``longmix train --checkpoint-activations`` trains exactly the run without it (float64), and
the record says which way it ran."""
import os

import pytest
import torch

from longmix.cli import build_parser
from longmix.commands.train import config_from_args
from longmix.train import TrainConfig, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("toy_registry")

RUN = dict(task="toy_copy", task_params={"length": 12, "lag": 2}, context=12, mixer="s4d",
           mixer_options={"d_state": 4}, steps=3, batch_size=2, dim=8, depth=2, eval_every=3,
           eval_batches=1, checkpoint_every=3, progress=False, threads=1, lr=3e-3)


def trained(out, **kw):
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        cfg = TrainConfig(**RUN, out=str(out), **kw)
        return train(cfg), load_checkpoint(os.path.join(cfg.out, "checkpoint.pt"))["model"]
    finally:
        torch.set_default_dtype(before)


def test_checkpointed_training_equals_plain_training(tmp_path):
    plain, plain_weights = trained(tmp_path / "plain")
    kept, kept_weights = trained(tmp_path / "kept", checkpoint_activations=True)
    assert plain["checkpoint_activations"] is False and kept["checkpoint_activations"] is True
    assert plain["run_id"] == kept["run_id"]  # the same run, computed another way
    for a, b in zip(plain["history"], kept["history"]):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key
    for name in plain_weights:
        torch.testing.assert_close(kept_weights[name], plain_weights[name], rtol=1e-12, atol=1e-12)


def test_cli_flag_sets_the_config():
    args = build_parser().parse_args(["train", "--task", "toy_copy", "--mixer", "s4d", "--context", "8",
                                      "--checkpoint-activations"])
    assert config_from_args(args).checkpoint_activations is True
    args = build_parser().parse_args(["train", "--task", "toy_copy", "--mixer", "s4d", "--context", "8"])
    assert config_from_args(args).checkpoint_activations is False


def test_bad_value_is_a_clear_error():
    with pytest.raises(ValueError, match="checkpoint_activations must be True or False"):
        TrainConfig(task="toy_copy", mixer="s4d", context=8, checkpoint_activations="yes")
