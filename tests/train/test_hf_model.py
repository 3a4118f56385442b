"""`longmix train --hf-model DIR`: a transformers causal LM from a local folder, trained on
longmix's tasks; on 2 ranks (through longmix.hf.parallelize) the same run as on one process,
where transformers runs the model itself; its own loss as the reference of the task's mapping;
checkpoints that resume; clear errors naming --hf-model."""
import math
import os
import re

import pytest
import torch

pytest.importorskip("transformers")

import toys  # noqa: E402
from longmix.cli import main  # noqa: E402
from longmix.parallel.launch import run_local  # noqa: E402
from longmix.train import TrainConfig, load_checkpoint, train  # noqa: E402
from longmix.train import checkpoint as checkpoint_module  # noqa: E402

pytestmark = pytest.mark.usefixtures("toy_registry")

VOCAB = 40  # passkey (length 21) needs 29 tokens + 10 answer tokens


def llama_config(vocab=VOCAB):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       max_position_embeddings=64)


def mamba_config():
    from transformers import MambaConfig

    return MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=4,
                       conv_kernel=3, expand=2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A Llama with saved random weights, and a Mamba saved as its config only (its weights are
    initialised from the config with the run's seed)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(llama_config()).save_pretrained(root / "llama")
    mamba_config().save_pretrained(root / "mamba")
    return {"llama": str(root / "llama"), "mamba": str(root / "mamba")}


# Each case: a different model, task kind, layout and weights source; lengths uneven over 2 ranks.
CASES = {
    "llama-passkey-zigzag": dict(model="llama", task="passkey", task_params={"length": 21}, context=21,
                                 layout="zigzag"),
    "mamba-lm-contiguous": dict(model="mamba", task="toy_copy", task_params={"length": 19, "lag": 3},
                                context=19, layout="contiguous", train_last=11, eval_last=7),
}
COMMON = dict(mixer=None, steps=4, batch_size=3, eval_every=1, eval_batches=2, checkpoint_every=2,
              progress=False, threads=1, lr=3e-3)
# Relative tolerance of 2 ranks against one process, float64. Llama: longmix's attention against
# transformers' sdpa, rounding only (measured 0 on losses, 2e-16 on weights). Mamba: transformers'
# own Mamba keeps its SSM's A = -exp(A_log.float()) and its discretisation in float32, longmix's
# mamba form (2 ranks) does not: measured 1.7e-8 relative on losses, 1.4e-8 on weights; the
# exactness of longmix.hf.parallelize against its own one-process run (1e-10) is tests/hf's.
RTOL = {"llama": 1e-9, "mamba": 1e-6}


def config(out, name, folders, **kw):
    case = dict(CASES[name])
    model = case.pop("model")
    return TrainConfig(**{**COMMON, **case, "hf_model": folders[model], "out": str(out), **kw})


def outcome(cfg):
    record = train(cfg)
    return record, load_checkpoint(os.path.join(cfg.out, "checkpoint.pt"))["model"]


def as_ranks(group, cfgs):
    toys.register_toys()
    torch.set_default_dtype(torch.float64)
    return [(train(cfg, group=group), load_checkpoint(os.path.join(cfg.out, "checkpoint.pt"))["model"])
            for cfg in cfgs]


def in_float64(fn, *args):
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return fn(*args)
    finally:
        torch.set_default_dtype(before)


def assert_close(a, b, rtol, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], rtol, f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, rtol, f"{where}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12), (where, a, b)
    else:
        assert a == b, (where, a, b)


# --checkpoint-activations: the Llama case, each layer recomputed in backward (on 2 ranks with
# its ring attention's collectives), over fewer steps
CHECKPOINTED = dict(checkpoint_activations=True, steps=2)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, folders):
    """One 2-rank launch: every case of CASES, then the checkpointed Llama case."""
    root = tmp_path_factory.mktemp("two_ranks")
    cfgs = [config(root / n, n, folders) for n in CASES]
    cfgs.append(config(root / "checkpointed", "llama-passkey-zigzag", folders, **CHECKPOINTED))
    return run_local(as_ranks, 2, args=(cfgs,), timeout=300)


def test_two_ranks_train_an_hf_model_like_one_process(tmp_path, folders, two_ranks):
    names = list(CASES)
    one = [in_float64(outcome, config(tmp_path / f"p1-{n}", n, folders)) for n in names]
    two = [ranks[:len(names)] for ranks in two_ranks]
    assert all(two[0][i][0] == two[1][i][0] for i in range(len(names)))  # rank 0's record on both
    for i, name in enumerate(names):
        (rec2, w2), (rec1, w1) = two[0][i], one[i]
        rtol = RTOL[CASES[name]["model"]]
        assert rec1["world_size"] == 1 and rec2["world_size"] == 2
        assert len(rec1["history"]) == COMMON["steps"]  # a loss curve, one point per step
        for key in ("history", "test", "valid", "steps", "tokens_seen", "run_id", "parameters"):
            assert_close(rec2[key], rec1[key], rtol, f"{name}: {key}")
        for k in w1:  # the HF model's own state_dict, as saved in the checkpoint
            torch.testing.assert_close(w2[k], w1[k], rtol=rtol, atol=rtol * 1e-2, msg=f"{name}: {k}")
        hf = rec2["hf_model"]
        kind = {"llama": "attention", "mamba": "mixer"}[CASES[name]["model"]]
        assert [layer["kind"] for layer in hf["layers"]] == [kind, kind]
        assert hf["dtype"] == "float64" and "layers" not in rec1["hf_model"]
    llama, mamba = one[0][0], one[1][0]
    assert llama["hf_model"]["class"] == "LlamaForCausalLM" and llama["hf_model"]["weights"] == "saved"
    assert llama["hf_model"]["config"]["hidden_size"] == 32 and llama["metric"] == "accuracy"
    assert mamba["hf_model"]["class"] == "MambaForCausalLM" and mamba["metric"] == "bits_per_token"
    assert mamba["hf_model"]["weights"].startswith("initialised from the config")
    assert "dim" not in llama["config"] and llama["config"]["hf_model"] == folders["llama"]
    assert llama["mixer"] is None and llama["task_info"]["as_next_token"]["answer_tokens"] == [29, 39]


def test_checkpointed_activations_train_an_hf_model_like_plain_training(tmp_path, folders, two_ranks):
    """One process (transformers' own per-layer checkpointing, longmix's options) and 2 ranks
    (in longmix.hf.parallelize's copy): the same run as without checkpointing."""
    name = "llama-passkey-zigzag"
    plain = in_float64(outcome, config(tmp_path / "plain", name, folders, steps=CHECKPOINTED["steps"]))
    kept = in_float64(outcome, config(tmp_path / "kept", name, folders, **CHECKPOINTED))
    two = two_ranks[0][len(CASES)]
    assert plain[0]["checkpoint_activations"] is False
    assert kept[0]["checkpoint_activations"] is True and two[0]["checkpoint_activations"] is True
    assert kept[0]["run_id"] == plain[0]["run_id"] == two[0]["run_id"]  # the same run
    for (record, weights), rtol in ((kept, 1e-12), (two, RTOL["llama"])):
        for key in ("history", "test", "valid", "steps", "tokens_seen"):
            assert_close(record[key], plain[0][key], rtol, f"{key}")
        for k in plain[1]:
            torch.testing.assert_close(weights[k], plain[1][k], rtol=rtol, atol=rtol * 1e-2, msg=k)


def test_the_first_loss_is_transformers_own_loss_of_the_answer_token(tmp_path, folders):
    """The independent reference of the task mapping: transformers' own causal LM loss of the
    sequence followed by its answer token, only that token labelled (its HF convention: labels
    unshifted, the shift inside), at the saved weights; transformers computes it in float32."""
    from transformers import AutoModelForCausalLM

    from longmix import tasks

    cfg = config(tmp_path / "run", "llama-passkey-zigzag", folders, steps=1)
    record = in_float64(train, cfg)
    x, label = tasks.build("passkey", seed=0, length=21).batch("train", 0, cfg.batch_size, cfg.context)
    answer = 29 + label[:, None]
    labels = torch.cat([torch.full_like(x, -100), answer], dim=1)
    model = AutoModelForCausalLM.from_pretrained(folders["llama"], dtype=torch.float64)
    with torch.no_grad():
        own = model(input_ids=torch.cat([x, answer], dim=1), labels=labels).loss.item()
    assert math.isclose(record["history"][0]["train_loss"], own, rel_tol=1e-6)


class Crash(Exception):
    pass


def test_a_crashed_hf_run_resumes_from_its_checkpoint_exactly(tmp_path, folders, monkeypatch):
    clean = in_float64(outcome, config(tmp_path / "clean", "llama-passkey-zigzag", folders))
    save = checkpoint_module.save_atomic

    def save_then_crash(state, path):  # the step-2 checkpoint is written, then the run dies
        save(state, path)
        raise Crash

    monkeypatch.setattr(checkpoint_module, "save_atomic", save_then_crash)
    cfg = config(tmp_path / "crashed", "llama-passkey-zigzag", folders)
    with pytest.raises(Crash):
        in_float64(train, cfg)
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] == 2
    monkeypatch.setattr(checkpoint_module, "save_atomic", save)
    resumed = in_float64(outcome, cfg)
    assert resumed[0]["sessions"] == 2 and clean[0]["sessions"] == 1
    assert_close(resumed[0]["history"], clean[0]["history"], 1e-12)
    assert_close(resumed[0]["test"], clean[0]["test"], 1e-12)
    for k in clean[1]:
        torch.testing.assert_close(resumed[1][k], clean[1][k], rtol=1e-12, atol=0)


def test_a_longer_context_starts_from_a_finished_run_of_the_same_folder(tmp_path, folders):
    short = config(tmp_path / "short", "llama-passkey-zigzag", folders, steps=2)
    in_float64(train, short)
    # a learning rate too small to move the weights: the checkpoint shows where the run started
    longer = config(tmp_path / "long", "llama-passkey-zigzag", folders, context=24, steps=1, lr=1e-12,
                    warmup=0, task_params={"length": 24}, init_from=short.out)
    record = in_float64(train, longer)
    start = load_checkpoint(tmp_path / "short" / "checkpoint.pt")["model"]
    after = load_checkpoint(tmp_path / "long" / "checkpoint.pt")["model"]
    for name in start:
        torch.testing.assert_close(after[name], start[name], rtol=0, atol=1e-9, msg=name)
    assert record["config"]["init_from"] == short.out
    other = config(tmp_path / "other", "llama-passkey-zigzag", folders, hf_model=folders["mamba"],
                   init_from=short.out)
    with pytest.raises(ValueError, match="holds another architecture: hf_model: .*llama.* there, "
                                         ".*mamba.* here"):
        in_float64(train, other)


def cli(*argv):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def test_bad_hf_model_folders_are_clear_errors_naming_hf_model(tmp_path, folders):
    from transformers import AutoModelForCausalLM

    empty = tmp_path / "empty"
    empty.mkdir()
    small = tmp_path / "small"
    AutoModelForCausalLM.from_config(llama_config(vocab=30)).save_pretrained(small)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    base = ["train", "--task", "passkey", "--task-param", "length=21", "--context", "21",
            "--steps", "1", "--quiet", "--out", str(tmp_path / "out")]
    for args, message in [
        (["--hf-model", str(tmp_path / "nope")], f"--hf-model '{tmp_path / 'nope'}': not a directory"),
        (["--hf-model", str(empty)], "has no config.json; expected a folder written by save_pretrained"),
        (["--hf-model", str(broken)], "its config.json does not load"),
        (["--hf-model", str(small)], "the model's vocab_size is 30, but task 'passkey' needs 39 tokens "
                                     "\\(29 task tokens \\+ 10 answer tokens"),
        (["--hf-model", folders["llama"], "--dim", "16"], "--dim cannot be combined with --hf-model"),
        (["--hf-model", folders["llama"], "--pack"], "--pack cannot be combined with --hf-model"),
    ]:
        code, err = cli(*base, *args)
        assert code == 2 and err.startswith("longmix train: error: ") and re.search(message, err), (args, err)
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_argparse_requires_a_mixer_or_an_hf_model_but_not_both(capsys, folders):
    for args, message in [([], "one of the arguments --mixer --hf-model is required"),
                          (["--hf-model", folders["llama"], "--mixer", "softmax"], "not allowed with")]:
        with pytest.raises(SystemExit) as info:
            main(["train", "--task", "passkey", "--context", "8", *args])
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_the_cli_flag_checkpoints_an_hf_model(tmp_path, folders):
    import json

    out = tmp_path / "out"
    code, err = cli("train", "--hf-model", folders["llama"], "--task", "passkey", "--task-param",
                    "length=21", "--context", "21", "--steps", "1", "--batch-size", "2", "--quiet",
                    "--threads", "1", "--checkpoint-activations", "--out", str(out))
    assert code == 0, err
    record = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert record["checkpoint_activations"] is True and record["hf_model"]["class"] == "LlamaForCausalLM"


def test_a_2x2_data_by_sequence_grid_trains_an_hf_model_like_one_process(tmp_path, folders):
    """``--procs 4 --seq-parallel 2``: each data row reads its half of the batch, each sequence
    pair splits it through longmix.hf.parallelize; losses, metrics and weights equal one process
    on the combined batch (float64; measured 1e-13 relative on Llama's weights, 1.4e-7 on Mamba's,
    whose one-process run is transformers' float32 SSM: see RTOL), and the record carries the
    mesh."""
    names = list(CASES)
    one = [in_float64(outcome, config(tmp_path / f"p1-{n}", n, folders, batch_size=4)) for n in names]
    grid = [config(tmp_path / f"p4-{n}", n, folders, batch_size=4, procs=4, seq_parallel=2)
            for n in names]
    got = run_local(as_ranks, 4, args=(grid,), timeout=300)
    for i, name in enumerate(names):
        (rec4, w4), (rec1, w1) = got[0][i], one[i]
        rtol = RTOL[CASES[name]["model"]]
        assert rec4["mesh"] == [2, 2] and rec1["mesh"] is None and rec4["world_size"] == 4
        assert len(rec4["hf_model"]["layers"]) == 2  # the sequence pairs ran longmix.hf.parallelize
        assert all(got[r][i][0] == rec4 for r in range(4))  # rank 0's record on every rank
        for key in ("history", "test", "valid", "steps", "tokens_seen", "run_id", "parameters"):
            assert_close(rec4[key], rec1[key], rtol, f"{name}: {key}")
        for k in w1:
            torch.testing.assert_close(w4[k], w1[k], rtol=rtol, atol=rtol * 1e-2, msg=f"{name}: {k}")
