"""``longmix train --plan time``: each layer's form chosen by steps timed on the run's ranks, and
the run still equals one process's (the timing touches neither the model nor the random stream)."""
import pytest
import torch

from longmix.cli import build_parser
from longmix.commands.train import config_from_args
from longmix.parallel.launch import run_local
from longmix.train import TrainConfig

from test_procs import COMMON, as_ranks, assert_close, config, in_float64

pytestmark = pytest.mark.usefixtures("toy_registry")


def test_plan_by_time_on_two_ranks_trains_like_one_process(tmp_path):
    name = "lm-linear-contiguous"
    timed = config(tmp_path / "p2", name, form=None, plan="time")
    (rec2, w2), = run_local(as_ranks, 2, args=([timed],), timeout=240)[0]
    rec1, w1 = in_float64(config(tmp_path / "p1", name, form=None, plan="time"))
    assert rec2["plan"] == "time" and rec1["plan"] is None  # one process plans nothing
    assert len(rec2["forms"]) == COMMON["depth"] and set(rec2["forms"]) <= {"shuffle", "state"}
    for key in ("history", "test", "steps", "run_id"):
        assert_close(rec2[key], rec1[key], key)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-9, atol=1e-10, msg=k)


@pytest.mark.parametrize("kwargs,match", [({"plan": "fast"}, "plan must be one of"),
                                          ({"plan": "time", "form": "state"}, "give one of them"),
                                          ({"plan": "time", "pack": True}, "--pack")])
def test_a_plan_that_cannot_apply_is_refused_by_name(kwargs, match):
    base = dict(COMMON, task="toy_copy", task_params={"length": 20, "lag": 2}, context=20,
                mixer="linear", out="unused")
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**base, **kwargs})


def test_the_command_line_passes_plan_through():
    base = ["train", "--task", "toy_copy", "--mixer", "linear", "--context", "8"]
    assert config_from_args(build_parser().parse_args(base + ["--plan", "time"])).plan == "time"
    assert config_from_args(build_parser().parse_args(base)).plan == "bytes"
