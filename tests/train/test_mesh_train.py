"""``longmix train --procs 4 --seq-parallel 2``: a 2 x 2 data x seq grid trains exactly like one
process on the combined batch (float64: losses, metrics, weights), and records its mesh."""
import pytest
import torch

from longmix.parallel.launch import run_local
from longmix.train import TrainConfig
from test_procs import COMMON, as_ranks, assert_close, in_float64

pytestmark = pytest.mark.usefixtures("toy_registry")

CASES = {  # an LM over the state form, and a classifier whose logits are whole within a row
    "lm-linear": dict(task="toy_copy", task_params={"length": 13, "lag": 2}, context=13,
                      mixer="linear", heads=1, layout="zigzag", form="state"),
    "classify-softmax": dict(task="passkey", task_params={"length": 15}, context=15,
                             mixer="softmax", heads=2, layout="contiguous"),
}


def config(out, name, **kw):
    return TrainConfig(**{**COMMON, "batch_size": 4, **CASES[name], "out": str(out), **kw})


def test_a_2x2_grid_trains_like_one_process_on_the_combined_batch(tmp_path):
    names = list(CASES)
    one = [in_float64(config(tmp_path / f"p1-{n}", n)) for n in names]
    grid = [config(tmp_path / f"p4-{n}", n, procs=4, seq_parallel=2) for n in names]
    got = run_local(as_ranks, 4, args=(grid,), timeout=300)
    for i, name in enumerate(names):
        (rec4, w4), (rec1, w1) = got[0][i], one[i]
        assert rec4["mesh"] == [2, 2] and rec1["mesh"] is None
        assert rec4["world_size"] == 4
        for key in ("history", "test", "valid", "steps", "tokens_seen", "parameters"):
            assert_close(rec4[key], rec1[key], f"{name}: {key}")
        for k in w1:
            torch.testing.assert_close(w4[k], w1[k], rtol=1e-9, atol=1e-10, msg=f"{name}: {k}")


def test_a_grid_that_does_not_fit_the_ranks_or_the_batch_is_refused():
    with pytest.raises(ValueError, match="seq_parallel=3 must divide the number of ranks"):
        config("unused", "lm-linear", procs=4, seq_parallel=3)
    with pytest.raises(ValueError, match="batch_size=3 must be divisible by the data-parallel size 2"):
        config("unused", "lm-linear", procs=4, seq_parallel=2, batch_size=3)
