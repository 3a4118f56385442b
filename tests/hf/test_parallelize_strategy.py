"""``longmix.hf.parallelize(..., strategy=)``: every attention layer runs the strategy asked for,
exactly. The ring (the strategy that holds O(L/P) memory per rank whatever the head counts, which
``benchmarks/hf_context.py`` uses for the longest context) on the GQA Llama family at P = 2 and 4,
L = 11 (uneven) and L = 3 (< P at 4), both layouts, float64: logits, loss and every parameter
gradient against transformers' unsharded model and longmix's one-process run (the bounds of
test_parallelize_attention, which runs "auto")."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import longmix.hf as lh  # noqa: E402
from hf_models import (errors, inputs, load_cached, parallel_run, run_once,  # noqa: E402
                       save_families, strategy_worker)
from longmix.hf.attention import SETUP_ATTRIBUTE  # noqa: E402
from longmix.parallel.launch import run_local  # noqa: E402

TOL_HF, TOL_P1 = 3e-6, 1e-10  # as test_parallelize_attention (its doc gives the measured errors)
SIZES = (2, 4)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_families(tmp_path_factory.mktemp("hf_strategy"), names=("llama",))["llama"]


def test_ring_matches_transformers_and_one_process(llama):
    cases = [(llama, "float64", seq_len, layout, "ring") for seq_len in (11, 3)
             for layout in ("contiguous", "zigzag")]
    results = run_local(strategy_worker, max(SIZES), (SIZES, cases), timeout=300,
                        collective_timeout=120)[0]
    problems = []
    for seq_len in (11, 3):
        hf_ref = run_once(load_cached(llama, torch.float64), *inputs(seq_len))
        one_ref = parallel_run(llama, torch.float64, seq_len, "contiguous", strategy="ring")
        for size in SIZES:
            for case, result in zip(cases, results[size]):
                if case[2] != seq_len:
                    continue
                for what, ref, tol in (("transformers", hf_ref, TOL_HF), ("P=1", one_ref, TOL_P1)):
                    errs = errors(result, ref)
                    if not max(errs.values()) <= tol:
                        problems.append(f"P={size} L={seq_len} {case[3]} vs {what}: {errs}")
    assert not problems, "\n".join(problems)


def test_strategy_reaches_every_attention_layer_and_a_bad_one_is_refused(llama):
    model = load_cached(llama, torch.float64)
    pmodel = lh.parallelize(model, strategy="ring")
    setups = [getattr(m, SETUP_ATTRIBUTE) for m in pmodel.modules() if hasattr(m, SETUP_ATTRIBUTE)]
    assert len(setups) == 2 and all(s.strategy == "ring" for s in setups)
    with pytest.raises(ValueError, match=r"strategy must be one of .*got 'rings'"):
        lh.parallelize(model, strategy="rings")
