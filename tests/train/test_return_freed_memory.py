"""``longmix train --return-freed-memory`` fixes malloc's threshold on the rank that trains (the
effect itself: tests/test_machine.py), and is not part of the run's identity."""
import pytest

from longmix import machine
from longmix.cli import build_parser
from longmix.commands.train import config_from_args
from longmix.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("toy_registry")

RUN = dict(task="toy_copy", task_params={"length": 8, "lag": 2}, context=8, mixer="s4d",
           mixer_options={"d_state": 4}, steps=1, batch_size=2, dim=8, depth=1, eval_every=1,
           eval_batches=1, checkpoint_every=1, progress=False, threads=1)


@pytest.mark.parametrize("flag", [False, True])
def test_train_calls_it_only_when_asked(tmp_path, monkeypatch, flag):
    calls = []
    monkeypatch.setattr(machine, "return_freed_memory", lambda: calls.append(1) or True)
    cfg = TrainConfig(**RUN, out=str(tmp_path), return_freed_memory=flag)
    record = train(cfg)
    assert len(calls) == int(flag)
    assert record["run_id"] == TrainConfig(**RUN, out=str(tmp_path)).run_id()


def test_cli_flag_and_bad_value():
    base = ["train", "--task", "toy_copy", "--mixer", "s4d", "--context", "8"]
    assert config_from_args(build_parser().parse_args(base + ["--return-freed-memory"])).return_freed_memory
    assert not config_from_args(build_parser().parse_args(base)).return_freed_memory
    with pytest.raises(ValueError, match="return_freed_memory must be True or False"):
        TrainConfig(task="toy_copy", mixer="s4d", context=8, return_freed_memory="yes")
